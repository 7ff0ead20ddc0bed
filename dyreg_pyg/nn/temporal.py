"""Temporal node updates (Eq. 9): a recurrent network over time for every (video, node)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TemporalUpdate", "TEMPORAL_UPDATES", "TemporalSpec", "resolve_temporal",
           "SequenceRNN", "gru_over_time"]

TEMPORAL_UPDATES = ("gru", "lstm", "none")


class SequenceRNN(nn.Module):
    """A one-layer, batch-first, unidirectional GRU or LSTM with the parameters of
    :class:`torch.nn.GRU` / :class:`torch.nn.LSTM` (names, shapes, initialisation: the same
    state dict and, seeded, the same draws) and their call, ``rnn(seq [N, T, C]) -> (out,
    h_n)`` (LSTM: ``(out, (h_n, c_n))``), through the same ``torch.gru`` / ``torch.lstm``.

    Not an ``nn.RNNBase``: ``torch.compile`` traces a model holding it into one graph
    (Dynamo refuses to trace into a model's ``nn.GRU`` / ``nn.LSTM`` modules; there
    :func:`gru_over_time` runs the steps as plain operations).

    Args:
        input_size: ``C``.
        hidden_size: ``H``.
        kind: ``"gru"`` or ``"lstm"``.
    """

    def __init__(self, input_size: int, hidden_size: int, kind: str = "gru") -> None:
        super().__init__()
        if kind not in ("gru", "lstm"):
            raise ValueError(f"kind: expected 'gru' or 'lstm', got {kind!r}")
        gates = 3 if kind == "gru" else 4
        self.kind, self.input_size, self.hidden_size = kind, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first, self.bidirectional = 1, True, True, False
        self.weight_ih_l0 = nn.Parameter(torch.empty(gates * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gates * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(gates * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``U(-1/sqrt(H), 1/sqrt(H))`` for every parameter, in order (as ``nn.GRU``)."""
        std = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -std, std)

    def forward(self, seq: Tensor) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """``seq [N, T, C]`` from a zero state -> ``(out [N, T, H], h_n [1, N, H])`` (LSTM:
        ``(out, (h_n, c_n))``), as ``nn.GRU`` / ``nn.LSTM``."""
        weights = [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]
        h0 = seq.new_zeros(1, seq.shape[0], self.hidden_size)
        if self.kind == "gru":
            return tuple(torch.gru(seq, h0, weights, True, 1, 0.0, self.training, False,
                                   True))
        out, h, c = torch.lstm(seq, (h0, h0), weights, True, 1, 0.0, self.training, False, True)
        return out, (h, c)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, kind={self.kind!r}"


class _GRUSequence(torch.autograd.Function):
    """One GRU layer over dim 1 of ``x [B, T, S, C]`` (``B * S`` sequences), from a zero
    state, as :class:`torch.nn.GRU` computes it.

    What does not depend on the previous step runs once over the whole sequence (the input
    projection and biases; in the backward the gate derivatives, the weight and input
    gradients); the loops keep only the step-to-step work, written into per-step views of
    preallocated buffers (no per-step slicing, stacking or bookkeeping): 5 operations a step
    forward (one product for the three gates), 3 backward (:func:`_gru_state_gradients`)."""

    @staticmethod
    def forward(ctx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
                ) -> Tensor:
        b, t, s, c = x.shape
        hid = w_hh.shape[1]
        xt = x.transpose(0, 1).reshape(t * b * s, c)  # time-major rows
        # every step's bias of W_hh h: r and z see W_ih x + b_ih + b_hh; n's part (W_hn h +
        # b_hn) is kept apart, as r multiplies it; W_in x + b_in goes to gi_n
        gi = torch.addmm(b_ih, xt, w_ih.t()).view(t, b * s, 3 * hid)
        gh = gi + b_hh  # [T, R, 3H]: becomes (sigmoid(r), sigmoid(z), W_hn h + b_hn) per step
        gh[..., 2 * hid:] = b_hh[2 * hid:]
        gi_n = gi[..., 2 * hid:]
        out, n = x.new_empty(2, t, b * s, hid).unbind()
        r, z, ghn = gh.split(hid, -1)
        w_t = w_hh.t()
        steps = zip(gh.unbind(), gh[..., : 2 * hid].unbind(), gi_n.unbind(), out.unbind(),
                    r.unbind(), z.unbind(), ghn.unbind(), n.unbind())
        h = x.new_zeros(b * s, hid)
        for gh_k, rz_k, gi_n_k, h_k, r_k, z_k, ghn_k, n_k in steps:
            gh_k.addmm_(h, w_t)  # one product for the three gates
            rz_k.sigmoid_()
            torch.addcmul(gi_n_k, r_k, ghn_k, out=n_k).tanh_()
            h = torch.lerp(n_k, h, z_k, out=h_k)  # (1 - z) n + z h
        rz, ghn = gh.split([2 * hid, hid], -1)
        ctx.save_for_backward(xt, w_ih, w_hh, out, rz, n, ghn)
        ctx.dims = (b, t, s, c)
        return out.view(t, b, s, hid).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        xt, w_ih, w_hh, out, rz, n, ghn = ctx.saved_tensors
        b, t, s, c = ctx.dims
        hid = w_hh.shape[1]
        hprev = torch.cat((out.new_zeros(1, b * s, hid), out[:-1]))
        d_gh, d_gin = _gru_state_gradients(grad.transpose(0, 1).reshape(t, b * s, hid),
                                           hprev, rz, n, ghn, w_hh)
        d_gi = torch.cat((d_gh[..., : 2 * hid], d_gin), -1).view(-1, 3 * hid)
        d_gh = d_gh.view(-1, 3 * hid)
        gx = gw_ih = gw_hh = gb_ih = gb_hh = None
        if ctx.needs_input_grad[0]:
            gx = (d_gi @ w_ih).view(t, b, s, c).transpose(0, 1)
        if ctx.needs_input_grad[1]:
            gw_ih = d_gi.t() @ xt
        if ctx.needs_input_grad[2]:
            gw_hh = d_gh.t() @ hprev.view(-1, hid)
        if ctx.needs_input_grad[3]:
            gb_ih = d_gi.sum(0)
        if ctx.needs_input_grad[4]:
            gb_hh = d_gh.sum(0)
        return gx, gw_ih, gw_hh, gb_ih, gb_hh


def _gru_state_gradients(grad: Tensor, hprev: Tensor, rz: Tensor, n: Tensor, ghn: Tensor,
                         w_hh: Tensor) -> tuple[Tensor, Tensor]:
    """The backward recurrence of :class:`_GRUSequence`, from the gradients of its outputs
    ``grad [T, R, H]``: the gradients of the recurrent pre-activations ``W_hh h + b_hh``
    ``[T, R, 3H]`` (r, z, n) and of the input's n pre-activation ``[T, R, H]``.

    Each is the gradient ``dh[k]`` of the state at step ``k`` times coefficients computed
    for all steps at once, so the loop runs 3 operations a step: ``dh[k] = grad[k] +
    dh[k+1] z[k+1] + d_gh[k+1] W_hh`` and ``d_gh[k] = dh[k] coef[k]``."""
    t, rows, hid = grad.shape
    r, z = rz.split(hid, -1)
    one_z = 1 - z
    c_n = one_z * (1 - n * n)  # d h / d n_pre
    coef = torch.stack((c_n * ghn * r * (1 - r),  # d h / d r_pre
                        (hprev - n) * z * one_z,  # d h / d z_pre
                        c_n * r), 2)  # d h / d (W_hn h + b_hn)
    d_gh = grad.new_empty(t, rows, 3, hid)
    dh = grad.new_empty(t, rows, hid)
    steps = list(zip(grad.unbind(), z.unbind(), dh.unbind(), dh.unsqueeze(2).unbind(),
                     coef.unbind(), d_gh.unbind(), d_gh.view(t, rows, 3 * hid).unbind()))
    for k in range(t - 1, -1, -1):
        g_k, _, dh_k, dh3_k, coef_k, d_gh_k, _ = steps[k]
        if k == t - 1:
            dh_k.copy_(g_k)
        else:
            _, z_next, dh_next, _, _, _, d_gh_next = steps[k + 1]
            torch.addmm(torch.addcmul(g_k, dh_next, z_next), d_gh_next, w_hh, out=dh_k)
        torch.mul(dh3_k, coef_k, out=d_gh_k)
    return d_gh.view(t, rows, 3 * hid), dh * c_n


def _rnn_unrolled(rnn: nn.Module, kind: str, x: Tensor) -> Tensor:
    """``rnn`` (one-layer, unidirectional, batch-first GRU or LSTM) over dim 1 of ``x [B, T,
    S, C]`` from a zero state, as plain tensor operations with the step loop in Python:
    what ``torch.compile`` traces into one graph (Dynamo does not trace ``nn.GRU`` /
    ``nn.LSTM``); the same function as ``rnn``."""
    gi = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)  # [B, T, S, G * H], all steps
    h = x.new_zeros(*x.shape[:1], *x.shape[2:-1], rnn.hidden_size).to(gi.dtype)
    cell = torch.zeros_like(h)
    outs = []
    for g in gi.unbind(1):
        gh = F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
        if kind == "gru":
            i_r, i_z, i_n = g.chunk(3, -1)
            h_r, h_z, h_n = gh.chunk(3, -1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            h = torch.lerp(torch.tanh(i_n + r * h_n), h, z)  # (1 - z) n + z h
        else:
            i, f, gg, o = (g + gh).chunk(4, -1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(gg)
            h = torch.sigmoid(o) * torch.tanh(cell)
        outs.append(h)
    return torch.stack(outs, 1)


def _plain_rnn(rnn: nn.Module) -> str | None:
    """``"gru"`` / ``"lstm"`` for a one-layer, batch-first, unidirectional GRU / LSTM with
    biases (a :class:`SequenceRNN`, or such an ``nn.GRU`` / ``nn.LSTM``), else ``None``."""
    if isinstance(rnn, SequenceRNN):
        return rnn.kind
    plain = (type(rnn) in (nn.GRU, nn.LSTM) and rnn.num_layers == 1 and not rnn.bidirectional
             and rnn.bias and rnn.batch_first and getattr(rnn, "proj_size", 0) == 0)
    return ("gru" if type(rnn) is nn.GRU else "lstm") if plain else None


def gru_over_time(gru: nn.Module, x: Tensor) -> Tensor:
    """Run a one-layer, batch-first GRU (or LSTM) over dim 1 of ``x [B, T, ..., C]`` for
    every sequence of the other dims, from a zero state: ``[B, T, ..., H]``.

    On CPU (float32/float64, outside autocast and ``torch.compile``) a GRU runs
    :class:`_GRUSequence`, the same function as ``gru`` with a cheaper backward and no
    re-layout of the sequences; under ``torch.compile`` the steps as plain operations
    (:func:`_rnn_unrolled`, one graph); elsewhere ``gru`` itself (cuDNN on CUDA)."""
    b, t = x.shape[:2]
    rest = x.shape[2:-1]
    kind = _plain_rnn(gru)
    if torch.compiler.is_compiling() and kind is not None:
        out = _rnn_unrolled(gru, kind, x.reshape(b, t, -1, x.shape[-1]))
        return out.reshape(b, t, *rest, out.shape[-1])
    fast = (kind == "gru" and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and gru.weight_hh_l0.dtype == x.dtype and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())
    if fast:
        xs = x.reshape(b, t, -1, x.shape[-1])
        out = _GRUSequence.apply(xs, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0,
                                 gru.bias_hh_l0)
        return out.reshape(b, t, *rest, out.shape[-1])
    c = x.shape[-1]
    seq = x.reshape(b, t, -1, c).transpose(1, 2).reshape(-1, t, c)
    out, _ = gru(seq)
    s = seq.shape[0] // b
    return out.reshape(b, s, t, -1).transpose(1, 2).reshape(b, t, *rest, out.shape[-1])


TemporalSpec = str | Callable[[int], nn.Module]
"""What ``temporal=`` takes: a name of :data:`TEMPORAL_UPDATES` (any case) or a callable
``(channels) -> module`` mapping ``[B, T, N, C]`` to ``[B, T, N, C]``."""


def resolve_temporal(spec: TemporalSpec) -> str | Callable[[int], nn.Module]:
    """``spec`` as :class:`TemporalUpdate` takes it: a name in lower case (checked) or the
    callable itself.

    Raises:
        ValueError: an unknown name, or neither a name nor a callable (one line).
    """
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name not in TEMPORAL_UPDATES:
            raise ValueError(f"temporal: unknown update {spec!r}; expected one of "
                             f"{TEMPORAL_UPDATES} (any case) or a callable (channels) -> module "
                             f"mapping [B, T, N, C] to [B, T, N, C]")
        return name
    if callable(spec):
        return spec
    raise ValueError(f"temporal: expected a name of {TEMPORAL_UPDATES} or a callable "
                     f"(channels) -> module, got {type(spec).__name__}")


def _check_temporal_module(module: object, channels: int) -> nn.Module:
    """Refuse what a ``temporal=`` callable returned unless it is a module mapping
    ``[B, T, N, C]`` to the same shape (run once on a small zero input, no gradient, in eval
    mode - a BatchNorm's running statistics do not move - then back to its mode)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"temporal: the callable must return an nn.Module, got "
                         f"{type(module).__name__}")
    ref = next(iter(module.parameters()), None)
    x = torch.zeros(1, 2, 3, channels, device=None if ref is None else ref.device,
                    dtype=ref.dtype if ref is not None and ref.is_floating_point()
                    else torch.float32)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as err:  # noqa: BLE001 - any failure means it cannot run as the stack does
        raise ValueError(f"temporal: {type(module).__name__} cannot run on nodes of shape "
                         f"[B, T, N, C] = {tuple(x.shape)} ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})"
                         ) from err
    finally:
        module.train(was_training)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"temporal: {type(module).__name__} returned {got} for nodes of shape "
                         f"{tuple(x.shape)}; expected the same shape [B, T, N, C]")
    return module


class TemporalUpdate(nn.Module):
    r"""Updates each node across time with a recurrent cell shared by all nodes (Eq. 9).

    .. math::
        \hat{\mathbf{v}}_{i,t+1} = \mathrm{GRU}(\hat{\mathbf{v}}_{i,t}, \mathbf{v}_{i,t})

    The recurrent state starts at zero for every clip; its output at every step is the
    updated node feature.

    Args:
        channels: node feature size ``C``.
        kind: ``"gru"`` (paper), ``"lstm"``, or ``"none"`` (identity, no temporal update), in
            any case; or a callable ``(channels) -> module`` whose module maps
            ``[B, T, N, C]`` to ``[B, T, N, C]`` (``kind`` is then ``"custom"`` and the module
            ``self.module``), checked once on a small input.

    Raises:
        ValueError: an unknown name, or a callable whose module does not keep the shape.

    Shapes:
        - **input:** ``[B, T, N, C]``
        - **output:** ``[B, T, N, C]``
    """

    def __init__(self, channels: int, kind: TemporalSpec = "gru") -> None:
        super().__init__()
        spec = resolve_temporal(kind)
        self.channels = channels
        self.module: nn.Module | None = None
        self.rnn: SequenceRNN | None = None
        if not isinstance(spec, str):
            self.kind = "custom"
            self.module = _check_temporal_module(spec(channels), channels)
            return
        self.kind = spec
        self.rnn = SequenceRNN(channels, channels, spec) if spec != "none" else None

    def reset_parameters(self) -> None:
        if self.rnn is not None:
            self.rnn.reset_parameters()
        elif self.module is not None and hasattr(self.module, "reset_parameters"):
            self.module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if self.module is not None:
            return self.module(x)
        if self.rnn is None:
            return x
        return gru_over_time(self.rnn, x)  # Eq. 9

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, channels={self.channels}"
