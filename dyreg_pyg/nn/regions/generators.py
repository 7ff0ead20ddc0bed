"""Node region generation (Eq. 1-4): one small class per region mode.

Every generator maps a clip of feature maps ``x [B, T, C, H, W]`` to regions
``[B, T, N, 4]`` as ``(cx, cy, w, h)`` in normalised map coordinates (see
:mod:`dyreg_pyg.nn.kernels`) and to the kernels ``[B, T, N, H, W]`` that pool the nodes. Regions
and kernels are computed in float32, also under autocast (in float64 for a float64 input,
i.e. a module cast with ``.double()``; half-precision modules are not supported - use
autocast).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import region_kernels
from ..remap import conv1x1
from ..temporal import SequenceRNN, gru_over_time

log = logging.getLogger(__name__)

__all__ = [
    "REGION_MODES",
    "REGION_GENERATORS",
    "register_region_mode",
    "INITS",
    "RegionAlpha",
    "RegionGenerator",
    "DynamicRegions",
    "PositionOnlyRegions",
    "ConstantTimeRegions",
    "StaticRegions",
    "FixedRegions",
    "SemanticRegions",
    "ExternalRegions",
    "make_region_generator",
    "check_region_init",
    "reference_points",
    "default_init",
    "ZeroLinear",
]

INITS = ("center", "grid")


def reference_points(num_nodes: int, init: str) -> Tensor:
    """Reference centres ``c_i`` ``[N, 2]``: all at the frame centre, or on a sqrt(N) grid."""
    _check_init(num_nodes, init)
    if init == "center":
        return torch.full((num_nodes, 2), 0.5)
    side = math.isqrt(num_nodes)
    ticks = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    ys, xs = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack((xs.reshape(-1), ys.reshape(-1)), -1)


def _check_init(num_nodes: int, init: Any) -> None:
    """The rule for ``init``: one of :data:`INITS`; ``"grid"`` needs a perfect square ``N``."""
    if init not in INITS:
        raise ValueError(f"init: expected one of {INITS}, got {init!r}")
    side = math.isqrt(num_nodes)
    if init == "grid" and side * side != num_nodes:
        raise ValueError(
            f"num_nodes: init='grid' needs a perfect square number of nodes, got {num_nodes}"
        )


def _check_init_size(init_size: Any) -> None:
    """The rule for ``init_size``: ``None`` (the default radius) or a radius in ``(0, 1]``."""
    if init_size is None:
        return
    if isinstance(init_size, bool) or not isinstance(init_size, numbers.Real) or not (
        0.0 < init_size <= 1.0
    ):
        raise ValueError(f"init_size: expected None or a radius in (0, 1], got {init_size!r}")


def _check_init_jitter(init_jitter: Any) -> None:
    """The rule for ``init_jitter``: a number >= 0."""
    if isinstance(init_jitter, bool) or not isinstance(init_jitter, numbers.Real) or not (
        init_jitter >= 0
    ):
        raise ValueError(f"init_jitter: expected >= 0 (a number), got {init_jitter!r}")


def default_init(mode: str) -> str:
    """The reference points a region mode starts from when ``init`` is not given: the grid
    for the input-independent modes (``fixed``, ``static``: from the centre their regions
    would all be the same one), the frame centre (the paper's start) for the others."""
    return "grid" if mode in ("fixed", "static") else "center"


def default_init_size(num_nodes: int, init: str) -> float:
    """Starting kernel radius: one grid cell for ``grid`` (neighbouring tents overlap so that
    the nodes cover the map), a quarter of the map for ``center``."""
    if init == "grid":
        return 1.0 / math.isqrt(num_nodes)
    return 0.25


class RegionAlpha(nn.Module):
    r"""The transform :math:`\alpha` of Eq. 4: raw outputs -> ``(cx, cy, w, h)``.

    .. math::
        c_x = \sigma(\operatorname{logit}(r_x) + u_x), \qquad
        w = w_{\min} + (1 - w_{\min})\,\sigma(s_0 + u_w)

    (and likewise for ``y``/``h``), where :math:`r` is the node's reference point,
    :math:`w_{\min}` one feature cell (``1/W``) and :math:`s_0` is chosen so that
    :math:`u = 0` gives the initial radius. Centres stay inside the frame, radii between one
    cell and the whole frame; at :math:`u = 0` regions sit exactly on their reference points.

    With ``init_jitter > 0`` each node's reference moves by a fixed random offset (normal,
    that standard deviation, in logit units; drawn once and saved with the weights). This
    breaks the symmetry of the centre start, where all nodes pool the same region and get the
    same gradient; ``0`` is the paper's start.

    Args:
        num_nodes: ``N``.
        init: ``"center"`` or ``"grid"`` reference points.
        init_size: starting radius (normalised); default :func:`default_init_size`.
        learn_size: if ``False`` the radius stays at ``init_size`` (the ``pos_only`` mode).
        init_jitter: standard deviation of the per-node offsets of the references.
    """

    def __init__(
        self, num_nodes: int, init: str = "center", init_size: float | None = None,
        learn_size: bool = True, init_jitter: float = 0.0,
    ) -> None:
        super().__init__()
        _check_init_size(init_size)
        _check_init_jitter(init_jitter)
        ref = reference_points(num_nodes, init).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("ref_logit", torch.logit(ref), persistent=False)
        jitter = torch.randn(num_nodes, 2) * init_jitter if init_jitter > 0 else None
        self.register_buffer("ref_jitter", jitter)  # None: not in the state dict
        size = default_init_size(num_nodes, init) if init_size is None else float(init_size)
        self.init_size = size
        self.learn_size = learn_size

    def forward(self, raw: Tensor, height: int, width: int) -> Tensor:
        """``raw [..., N, 4]`` (or ``[..., N, 2]`` when the size is not learned) -> regions."""
        ref = self.ref_logit if self.ref_jitter is None else self.ref_logit + self.ref_jitter
        centre = torch.sigmoid(ref + raw[..., :2])  # Eq. 4, position
        min_size = raw.new_tensor([1.0 / width, 1.0 / height])
        start = torch.full_like(min_size, self.init_size).maximum(min_size)
        if not self.learn_size:
            return torch.cat((centre, start.expand_as(centre)), -1)
        # An axis of one cell has min_size = 1: its only radius is the whole axis (span 0;
        # the clamp keeps 0/0 out of the graph, the size there is exactly 1, gradient 0).
        span = 1 - min_size
        frac = ((start - min_size) / span.clamp_min(1e-6)).clamp(1e-4, 1 - 1e-4)
        size = min_size + span * torch.sigmoid(torch.logit(frac) + raw[..., 2:4])
        return torch.cat((centre, size), -1)  # Eq. 4, size

    def extra_repr(self) -> str:
        return f"init_size={self.init_size}, learn_size={self.learn_size}"


class RegionGenerator(nn.Module):
    """Base class: ``forward(x, regions=None) -> (regions [B,T,N,4], kernels [B,T,N,H,W])``.

    Subclasses implement :meth:`predict`; kernels come from :func:`region_kernels` (Eq. 5-6)
    unless a subclass overrides :meth:`kernels`.
    """

    uses_input = True
    takes_regions = False
    """Whether ``forward`` takes the caller's regions (only ``external``); the others raise
    rather than silently ignore them."""
    mode = ""

    def __init__(self, num_nodes: int) -> None:
        super().__init__()
        self.num_nodes = num_nodes

    def predict(self, x: Tensor, regions: Tensor | None) -> Tensor:
        raise NotImplementedError

    def kernels(self, x: Tensor, regions: Tensor) -> Tensor:
        return region_kernels(regions, x.shape[-2], x.shape[-1])

    def _prepare(self, x: Tensor, regions: Tensor | None) -> Tensor:
        """Reject regions this mode would ignore; ``x`` in the computation's precision:
        float32, or float64 for a float64 input (a module cast with ``.double()``)."""
        if regions is not None and not self.takes_regions:
            raise ValueError(
                f"regions: regions={self.mode!r} predicts its own regions and would ignore the "
                f"given ones (shape {tuple(regions.shape)}); only regions='external' takes them"
            )
        return x if x.dtype == torch.float64 else x.float()

    def forward(self, x: Tensor, regions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            x = self._prepare(x, regions)
            regions = self.predict(x, regions)
            return regions, self.kernels(x, regions)


class _RegionFeatures(nn.Module):
    """``f`` (Eq. 1) and the per-node ``g_i`` (Eq. 2).

    ``f``: a 1x1 then a 3x3 convolution, each with BatchNorm and ReLU (position-preserving,
    the 1x1 first keeps it cheap on wide maps, as in the authors' code), then an
    adaptive average pool to a fixed ``pool x pool`` grid so ``g`` works at any ``H x W``.
    ``g_i`` (``"fc"``): a fully connected layer per node on the flattened ``M_t``.
    ``g_i`` (``"lite"``): global average pooling enriched with position: node ``i`` pools
    ``M_t`` with its own learned spatial weights (softmax over the grid) and adds a learned
    per-node embedding, followed by one shared linear layer.
    """

    def __init__(
        self, in_channels: int, channels: int, num_nodes: int, g: str = "fc", pool: int = 4
    ) -> None:
        super().__init__()
        if g not in ("fc", "lite"):
            raise ValueError(f"g: expected 'fc' or 'lite', got {g!r}")
        self.g_kind, self.pool = g, pool
        self.f = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(pool),
        )
        cells = pool * pool
        if g == "fc":
            self.g_weight = nn.Parameter(torch.empty(num_nodes, cells * channels, channels))
            self.g_bias = nn.Parameter(torch.zeros(num_nodes, channels))
        else:
            self.g_logits = nn.Parameter(torch.zeros(num_nodes, cells))
            self.g_embed = nn.Parameter(torch.zeros(num_nodes, channels))
            self.g_lin = nn.Linear(channels, channels)
        self._reset_g()

    def reset_parameters(self) -> None:
        for m in self.f:
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.reset_parameters()
        self._reset_g()

    def _reset_g(self) -> None:
        if self.g_kind == "fc":
            bound = 1.0 / math.sqrt(self.g_weight.shape[1])
            nn.init.uniform_(self.g_weight, -bound, bound)
            nn.init.zeros_(self.g_bias)
        else:
            nn.init.normal_(self.g_logits, std=0.5)
            nn.init.normal_(self.g_embed, std=0.02)
            self.g_lin.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """``x [G, C, H, W]`` -> per-node latents ``[G, N, C']``."""
        m = conv1x1(x, self.f[0])  # Eq. 1: the 1x1 convolution as a batched matmul, then
        for layer in self.f[1:]:  # BatchNorm, ReLU, the 3x3 convolution, ...
            m = layer(m)
        if self.g_kind == "fc":
            flat = m.flatten(1)
            return F.relu(torch.einsum("gd,ndc->gnc", flat, self.g_weight) + self.g_bias)  # Eq. 2
        att = torch.softmax(self.g_logits, -1)  # [N, cells]
        pooled = torch.einsum("gcp,np->gnc", m.flatten(2), att) + self.g_embed
        return F.relu(self.g_lin(pooled))  # Eq. 2 (lite)


class ZeroLinear(nn.Linear):
    """A linear layer whose (re-)initialisation is all zeros: ``W_o`` of Eq. 4, so that the
    regions start on their references also after any ``reset_parameters()`` loop."""

    def reset_parameters(self) -> None:
        super().reset_parameters()  # the same random draws as nn.Linear: seeded runs keep
        nn.init.zeros_(self.weight)  # the initialisation of every later layer
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class DynamicRegions(RegionGenerator):
    """``dyreg``: position and size predicted from the input at every time step (Eq. 1-4).

    ``f`` and ``g_i`` (Eq. 1-2) give one latent per node and frame, a GRU shared by the nodes
    runs over time (Eq. 3), and a zero-initialised linear ``W_o`` followed by
    :class:`RegionAlpha` gives the regions (Eq. 4), which therefore start on the references.
    """

    mode = "dyreg"
    learn_size = True
    recurrent = True
    """Whether the latents run through the GRU of Eq. 3 (subclasses without time steps
    build no GRU, so that every parameter gets a gradient, as DDP requires)."""

    def __init__(
        self, in_channels: int, num_nodes: int = 9, init: str = "center",
        init_size: float | None = None, channels: int = 32, g: str = "fc",
        init_jitter: float = 0.0,
    ) -> None:
        super().__init__(num_nodes)
        self.features = _RegionFeatures(in_channels, channels, num_nodes, g)
        self.gru = SequenceRNN(channels, channels) if self.recurrent else None
        self.out = ZeroLinear(channels, 4 if self.learn_size else 2)
        self.alpha = RegionAlpha(num_nodes, init, init_size, learn_size=self.learn_size,
                                 init_jitter=init_jitter)
        self.features._reset_g()  # the draws of earlier versions: a seed gives the same init
        self._reset_head()

    def reset_parameters(self) -> None:
        self.features.reset_parameters()
        self._reset_head()

    def _reset_head(self) -> None:
        if self.gru is not None:
            self.gru.reset_parameters()
        nn.init.zeros_(self.out.weight)  # W_o = 0: the regions start on the references
        nn.init.zeros_(self.out.bias)

    def latents(self, x: Tensor) -> Tensor:
        """``z`` ``[B, T, N, C']``: Eq. 1-2 per frame, then the shared GRU over time (Eq. 3)."""
        b, t, c, h, w = x.shape
        m = self.features(x.reshape(b * t, c, h, w))  # [BT, N, C']
        n, cc = m.shape[1:]
        return gru_over_time(self.gru, m.reshape(b, t, n, cc))  # Eq. 3

    def predict(self, x: Tensor, regions: Tensor | None) -> Tensor:
        return self.alpha(self.out(self.latents(x)), x.shape[-2], x.shape[-1])  # Eq. 4


class PositionOnlyRegions(DynamicRegions):
    """``pos_only``: as ``dyreg`` but every region keeps its initial size."""

    mode = "pos_only"
    learn_size = False


class ConstantTimeRegions(DynamicRegions):
    """``constant_time``: regions predicted once per clip from the time-averaged input, then
    used at every frame (no recurrence over time, hence no GRU)."""

    mode = "constant_time"
    recurrent = False

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checkpoints written before the unused GRU was removed still load; its weights
        # never influenced the output.
        stale = [k for k in state_dict if k.startswith(prefix + "gru.")]
        if stale:
            log.info("constant_time regions: ignoring %d weights of the removed, unused GRU "
                     "(%s...)", len(stale), stale[0])
            for k in stale:
                del state_dict[k]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def latents(self, x: Tensor) -> Tensor:
        b, t = x.shape[:2]
        z = self.features(x.mean(1))  # [B, N, C'], Eq. 1-2 on the time-pooled clip
        return z.unsqueeze(1).expand(b, t, *z.shape[1:])


class StaticRegions(RegionGenerator):
    """``static``: regions learned per node over the dataset; the input is ignored.

    The latents ``z_i`` of Eq. 4 become parameters; ``W_o z_i`` is then just a learned
    4-vector per node, stored directly (zero at initialisation: regions start on the
    references).
    """

    mode = "static"
    uses_input = False

    def __init__(
        self, num_nodes: int = 9, init: str = "grid", init_size: float | None = None,
        init_jitter: float = 0.0,
    ) -> None:
        super().__init__(num_nodes)
        self.raw = nn.Parameter(torch.zeros(num_nodes, 4))
        self.alpha = RegionAlpha(num_nodes, init, init_size, init_jitter=init_jitter)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.raw)

    def predict(self, x: Tensor, regions: Tensor | None) -> Tensor:
        b, t = x.shape[:2]
        r = self.alpha(self.raw, x.shape[-2], x.shape[-1])
        return r.expand(b, t, *r.shape)


class FixedRegions(RegionGenerator):
    """``fixed``: the reference regions (a grid by default) with a fixed size; no parameters."""

    mode = "fixed"
    uses_input = False

    def __init__(
        self, num_nodes: int = 9, init: str = "grid", init_size: float | None = None
    ) -> None:
        super().__init__(num_nodes)
        self.alpha = RegionAlpha(num_nodes, init, init_size, learn_size=False)

    def predict(self, x: Tensor, regions: Tensor | None) -> Tensor:
        b, t = x.shape[:2]
        r = self.alpha(x.new_zeros(self.num_nodes, 2), x.shape[-2], x.shape[-1])
        return r.expand(b, t, *r.shape)


class SemanticRegions(RegionGenerator):
    """``semantic``: each node pools the whole map with an attention map predicted from the
    features at each position (a 1x1 convolution, softmax over positions) - the paper's
    "Semantic" baseline, which cannot tell apart two positions with the same features.

    Its ``regions`` are summaries of the maps for metrics and plots: the attention-weighted
    mean position as the centre and the standard deviation per axis as the radius.
    """

    mode = "semantic"

    def __init__(self, in_channels: int, num_nodes: int = 9) -> None:
        super().__init__(num_nodes)
        self.att = nn.Conv2d(in_channels, num_nodes, 1)

    def reset_parameters(self) -> None:
        self.att.reset_parameters()

    def predict(self, x: Tensor, regions: Tensor | None) -> Tensor:
        return self.forward(x)[0]

    def forward(self, x: Tensor, regions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            x = self._prepare(x, regions)
            b, t, c, h, w = x.shape
            logits = self.att(x.reshape(b * t, c, h, w)).reshape(b, t, self.num_nodes, h * w)
            maps = torch.softmax(logits, -1).reshape(b, t, self.num_nodes, h, w)
            px = (torch.arange(w, device=x.device) + 0.5) / w
            py = (torch.arange(h, device=x.device) + 0.5) / h
            mx, my = maps.sum(-2), maps.sum(-1)  # marginals [B, T, N, W], [B, T, N, H]
            cx, cy = (mx * px).sum(-1), (my * py).sum(-1)
            sx = (mx * (px - cx.unsqueeze(-1)) ** 2).sum(-1).clamp_min(1e-8).sqrt()
            sy = (my * (py - cy.unsqueeze(-1)) ** 2).sum(-1).clamp_min(1e-8).sqrt()
            regions = torch.stack((cx, cy, sx.clamp_min(1 / w), sy.clamp_min(1 / h)), -1)
            return regions, maps


class ExternalRegions(RegionGenerator):
    """``external``: regions given by the caller (e.g. detector boxes), ``[B, T, N, 4]`` as
    ``(cx, cy, w, h)`` normalised to the feature map; they must be finite."""

    mode = "external"
    uses_input = False
    takes_regions = True

    def predict(self, x: Tensor, regions: Tensor | None) -> Tensor:
        b, t, _, h, w = x.shape
        expected = (b, t, self.num_nodes, 4)
        if regions is None:
            raise ValueError(
                f"regions: mode 'external' needs regions of shape {expected} passed to forward"
            )
        if tuple(regions.shape) != expected:
            raise ValueError(
                f"regions: expected shape {expected} (B, T, N, 4), got {tuple(regions.shape)}"
            )
        if torch.compiler.is_compiling():  # the check reads the values back (a host
            return regions.to(x.dtype)  # synchronisation): eager mode only
        bad = ~torch.isfinite(regions)
        if bad.any():
            first = [int(i) for i in bad.nonzero()[0]]
            raise ValueError(
                f"regions: expected finite values (cx, cy, w, h), got {int(bad.sum())} NaN or "
                f"inf, the first at index {first} of the [B, T, N, 4] tensor"
            )
        return regions.to(x.dtype)


RegionBuilder = Callable[..., RegionGenerator]
"""``(in_channels, num_nodes, init, init_size, channels, init_jitter) -> RegionGenerator``."""

REGION_GENERATORS: dict[str, RegionBuilder] = {}
"""Region mode name -> builder, filled by :func:`register_region_mode` (in registration order,
which :data:`REGION_MODES` lists)."""

LEARNED_MODES: set[str] = set()
"""Modes whose regions are learned (they accept ``init_jitter``)."""


def register_region_mode(name: str, learned: bool = False
                         ) -> Callable[[RegionBuilder], RegionBuilder]:
    """Decorator: register ``builder`` as the region mode ``name`` (as timm's
    ``register_model``); ``learned`` modes accept ``init_jitter``."""

    def add(builder: RegionBuilder) -> RegionBuilder:
        if name in REGION_GENERATORS:
            raise ValueError(f"regions: mode {name!r} is already registered")
        REGION_GENERATORS[name] = builder
        if learned:
            LEARNED_MODES.add(name)
        return builder

    return add


@register_region_mode("dyreg", learned=True)
def _dyreg(in_channels: int, num_nodes: int, init: str, init_size: float | None,
           channels: int, init_jitter: float) -> RegionGenerator:
    return DynamicRegions(in_channels, num_nodes, init, init_size, channels, "fc", init_jitter)


@register_region_mode("dyreg_lite", learned=True)
def _dyreg_lite(in_channels: int, num_nodes: int, init: str, init_size: float | None,
                channels: int, init_jitter: float) -> RegionGenerator:
    gen = DynamicRegions(in_channels, num_nodes, init, init_size, channels, "lite", init_jitter)
    gen.mode = "dyreg_lite"
    return gen


@register_region_mode("pos_only", learned=True)
def _pos_only(in_channels: int, num_nodes: int, init: str, init_size: float | None,
              channels: int, init_jitter: float) -> RegionGenerator:
    return PositionOnlyRegions(in_channels, num_nodes, init, init_size, channels,
                               init_jitter=init_jitter)


@register_region_mode("constant_time", learned=True)
def _constant_time(in_channels: int, num_nodes: int, init: str, init_size: float | None,
                   channels: int, init_jitter: float) -> RegionGenerator:
    return ConstantTimeRegions(in_channels, num_nodes, init, init_size, channels,
                               init_jitter=init_jitter)


@register_region_mode("static", learned=True)
def _static(in_channels: int, num_nodes: int, init: str, init_size: float | None,
            channels: int, init_jitter: float) -> RegionGenerator:
    return StaticRegions(num_nodes, init, init_size, init_jitter)


@register_region_mode("fixed")
def _fixed(in_channels: int, num_nodes: int, init: str, init_size: float | None,
           channels: int, init_jitter: float) -> RegionGenerator:
    return FixedRegions(num_nodes, init, init_size)


@register_region_mode("semantic")
def _semantic(in_channels: int, num_nodes: int, init: str, init_size: float | None,
              channels: int, init_jitter: float) -> RegionGenerator:
    return SemanticRegions(in_channels, num_nodes)


@register_region_mode("external")
def _external(in_channels: int, num_nodes: int, init: str, init_size: float | None,
              channels: int, init_jitter: float) -> RegionGenerator:
    return ExternalRegions(num_nodes)


REGION_MODES = tuple(REGION_GENERATORS)
"""The built-in region modes, in registration order."""


def check_region_init(
    mode: str, num_nodes: int, init: Any, init_size: Any = None, init_jitter: Any = 0.0,
) -> None:
    """The one place of the rules on a region mode's start (used by
    :class:`~dyreg_pyg.DyRegConfig` at construction and by :func:`make_region_generator`):
    ``init`` one of :data:`INITS` (``"grid"``: ``num_nodes`` a perfect square), ``init_size``
    ``None`` or in ``(0, 1]``, ``init_jitter`` >= 0 and non-zero only for the learned modes,
    and no ``init="center"`` for ``fixed`` (nor ``static`` without jitter).

    Raises:
        ValueError: one line naming the field, what was expected and what was received.
    """
    _check_init(num_nodes, init)
    _check_init_size(init_size)
    _check_init_jitter(init_jitter)
    if init_jitter and mode not in LEARNED_MODES:
        raise ValueError(f"init_jitter: only for learned regions, got mode {mode!r}")
    if init == "center" and num_nodes > 1 and (
        mode == "fixed" or (mode == "static" and not init_jitter)
    ):
        raise ValueError(
            f"init: regions={mode!r} with init='center' gives {num_nodes} identical regions "
            f"that nothing can separate (they do not depend on the input); expected "
            f"init='grid' (the default of this mode)"
            + (" or init_jitter > 0" if mode == "static" else "") + ", got init='center'"
        )


def make_region_generator(
    mode: str,
    in_channels: int,
    num_nodes: int = 9,
    init: str | None = None,
    init_size: float | None = None,
    channels: int = 32,
    init_jitter: float = 0.0,
) -> RegionGenerator:
    """Build the region generator for ``mode`` (one of :data:`REGION_GENERATORS`, built-in:
    :data:`REGION_MODES`).

    ``init`` ``None`` picks :func:`default_init` of the mode. ``init_jitter`` (see
    :class:`RegionAlpha`) applies to the learned modes (``dyreg``, ``dyreg_lite``,
    ``pos_only``, ``constant_time``, ``static``); other modes reject it.

    ``dyreg_lite`` is ``dyreg`` with the light ``g_i`` (global pooling with positional
    information). The input-independent modes ``fixed`` and ``static`` reject
    ``init="center"``: all N regions would be the same region, and nothing (no input, no
    gradient difference) could ever separate them (``static`` accepts it with
    ``init_jitter > 0``, whose offsets separate them). The paper's Fixed model is the grid.
    """
    if mode not in REGION_GENERATORS:
        raise ValueError(f"regions: unknown mode {mode!r}; expected one of "
                         f"{tuple(REGION_GENERATORS)}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"num_nodes: expected a positive integer, got {num_nodes!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"region_channels: expected a positive integer, got {channels!r}")
    init = default_init(mode) if init is None else init
    check_region_init(mode, num_nodes, init, init_size, init_jitter)
    return REGION_GENERATORS[mode](in_channels, num_nodes, init, init_size, channels,
                                   init_jitter)
