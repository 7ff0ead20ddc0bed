"""Temporal node updates (Eq. 9): a recurrent network over time for every (video, node)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["TemporalUpdate", "TEMPORAL_UPDATES", "TemporalSpec", "resolve_temporal",
           "gru_over_time"]

TEMPORAL_UPDATES = ("gru", "lstm", "none")


class _GRUSequence(torch.autograd.Function):
    """One GRU layer over dim 1 of ``x [B, T, S, C]`` (``B * S`` sequences), from a zero
    state, as :class:`torch.nn.GRU` computes it. The step loop is the same; the backward
    keeps only the step-to-step product in the loop and computes the weight and input
    gradients of all steps as three matmuls afterwards."""

    @staticmethod
    def forward(ctx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
                ) -> Tensor:
        b, t, s, c = x.shape
        hid = w_hh.shape[1]
        xt = x.transpose(0, 1).reshape(t * b * s, c)  # time-major rows
        gi = torch.addmm(b_ih, xt, w_ih.t()).view(t, b * s, 3 * hid)
        w_hh_t = w_hh.t()
        h = x.new_zeros(b * s, hid)
        hs, rzs, ns, ghns = [], [], [], []
        for k in range(t):
            gh = torch.addmm(b_hh, h, w_hh_t)
            g = gi[k]
            rz = torch.sigmoid(g[:, : 2 * hid] + gh[:, : 2 * hid])
            ghn = gh[:, 2 * hid:]
            n = torch.tanh(torch.addcmul(g[:, 2 * hid:], rz[:, :hid], ghn))
            h = torch.lerp(n, h, rz[:, hid:])  # (1 - z) n + z h
            hs.append(h)
            rzs.append(rz)
            ns.append(n)
            ghns.append(ghn)
        out = torch.stack(hs)  # [T, B*S, H]
        ctx.save_for_backward(xt, w_ih, w_hh, out, torch.stack(rzs), torch.stack(ns),
                              torch.stack(ghns))
        ctx.dims = (b, t, s, c)
        return out.view(t, b, s, hid).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        xt, w_ih, w_hh, out, rz, n, ghn = ctx.saved_tensors
        b, t, s, c = ctx.dims
        hid = w_hh.shape[1]
        grad = grad.transpose(0, 1).reshape(t, b * s, hid)
        r, z = rz[..., :hid], rz[..., hid:]
        hprev = torch.cat((out.new_zeros(1, b * s, hid), out[:-1]))
        c_n = (1 - z) * (1 - n * n)  # d h / d n_pre
        c_z = (hprev - n) * z * (1 - z)  # d h / d z_pre
        c_r = ghn * r * (1 - r)  # d n_pre / d r_pre
        d_gh = grad.new_empty(t, b * s, 3 * hid)
        d_gin = grad.new_empty(t, b * s, hid)
        dh = grad.new_zeros(b * s, hid)
        for k in range(t - 1, -1, -1):
            dh = dh + grad[k]
            dn = torch.mul(dh, c_n[k], out=d_gin[k])
            torch.mul(dn, c_r[k], out=d_gh[k, :, :hid])
            torch.mul(dh, c_z[k], out=d_gh[k, :, hid: 2 * hid])
            torch.mul(dn, r[k], out=d_gh[k, :, 2 * hid:])
            dh = torch.addmm(dh * z[k], d_gh[k], w_hh)
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


def gru_over_time(gru: nn.RNNBase, x: Tensor) -> Tensor:
    """Run a one-layer, batch-first GRU (or LSTM) over dim 1 of ``x [B, T, ..., C]`` for
    every sequence of the other dims, from a zero state: ``[B, T, ..., H]``.

    On CPU (float32/float64, outside autocast and ``torch.compile``) a GRU runs
    :class:`_GRUSequence`, the same function as ``gru`` with a cheaper backward and no
    re-layout of the sequences; elsewhere ``gru`` itself (cuDNN on CUDA)."""
    b, t = x.shape[:2]
    rest = x.shape[2:-1]
    fast = (isinstance(gru, nn.GRU) and gru.num_layers == 1 and not gru.bidirectional
            and gru.bias and gru.batch_first and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and gru.weight_hh_l0.dtype == x.dtype
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())
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
    ``[B, T, N, C]`` to the same shape (run once on a small zero input, no gradient)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"temporal: the callable must return an nn.Module, got "
                         f"{type(module).__name__}")
    ref = next(iter(module.parameters()), None)
    x = torch.zeros(1, 2, 3, channels, device=None if ref is None else ref.device,
                    dtype=ref.dtype if ref is not None and ref.is_floating_point()
                    else torch.float32)
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as err:  # noqa: BLE001 - any failure means it cannot run as the stack does
        raise ValueError(f"temporal: {type(module).__name__} cannot run on nodes of shape "
                         f"[B, T, N, C] = {tuple(x.shape)} ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})"
                         ) from err
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
        self.rnn: nn.RNNBase | None = None
        if not isinstance(spec, str):
            self.kind = "custom"
            self.module = _check_temporal_module(spec(channels), channels)
            return
        self.kind = spec
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}.get(spec)
        self.rnn = rnn(channels, channels, batch_first=True) if rnn is not None else None

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
