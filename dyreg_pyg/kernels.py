"""Separable region kernels, node pooling, position embedding and re-mapping (Eq. 5-7, 10).

Coordinates are normalised to the feature map: ``x`` and ``y`` run over ``[0, 1]`` and the
centre of cell ``(row, col)`` of an ``H x W`` map sits at ``((col + 0.5) / W, (row + 0.5) / H)``.
A region is ``(cx, cy, w, h)``: its centre and the *radius* of the kernel's support on each axis,
so the box it covers is ``(cx - w, cy - h, cx + w, cy + h)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "kernel_1d",
    "region_kernels",
    "pool_nodes",
    "remap_nodes",
    "remap_moments",
    "remap_residual",
    "fold_norm",
    "fold_group_norm",
    "conv1x1",
    "regions_to_boxes",
    "KernelPositionEmbedding",
    "RegionPositionEmbedding",
]


def _check_regions(regions: Tensor) -> None:
    if regions.dim() < 2 or regions.shape[-1] != 4:
        raise ValueError(
            f"regions: expected a tensor [..., N, 4] of (cx, cy, w, h), got shape "
            f"{tuple(regions.shape)}"
        )


def kernel_1d(center: Tensor, radius: Tensor, size: int) -> Tensor:
    """One axis of the region kernel, ``k(p) = max(0, w - |c - p|)`` (Eq. 6).

    The centre is clamped to ``[0, 1]`` and the radius to at least one cell (``1 / size``) so
    that at least one cell centre lies strictly inside the support: the kernel is never all
    zero, whatever the parameters. Both clamps are no-ops for regions produced by
    :mod:`dyreg_pyg.regions`, which already respect these bounds.

    Args:
        center: centres ``c + delta`` in ``[0, 1]``, any shape ``[...]``.
        radius: support radii ``w`` (normalised), same shape as ``center``.
        size: number of cells along the axis.

    Returns:
        The un-normalised kernel ``[..., size]``.
    """
    if size < 1:
        raise ValueError(f"size: expected a positive number of cells, got {size}")
    p = (torch.arange(size, device=center.device, dtype=center.dtype) + 0.5) / size
    c = center.clamp(0.0, 1.0).unsqueeze(-1)
    w = radius.clamp_min(1.0 / size).unsqueeze(-1)
    return (w - (c - p).abs()).clamp_min(0.0)  # Eq. 6


def region_kernels(regions: Tensor, height: int, width: int) -> Tensor:
    """Separable kernels ``K_i(p_x, p_y) = k_x(p_x) k_y(p_y)``, normalised to sum 1 (Eq. 5).

    Each axis factor is normalised separately, so the product sums to one over the map.

    Args:
        regions: ``[..., N, 4]`` regions ``(cx, cy, w, h)``.
        height: ``H`` of the feature map.
        width: ``W`` of the feature map.

    Returns:
        Kernels ``[..., N, H, W]``: non-negative, each summing to 1, zero outside the support.
    """
    _check_regions(regions)
    kx = kernel_1d(regions[..., 0], regions[..., 2], width)
    ky = kernel_1d(regions[..., 1], regions[..., 3], height)
    kx = kx / kx.sum(-1, keepdim=True)
    ky = ky / ky.sum(-1, keepdim=True)
    return ky.unsqueeze(-1) * kx.unsqueeze(-2)  # Eq. 5


def pool_nodes(x: Tensor, kernels: Tensor) -> Tensor:
    """Node features ``v_i = sum_p K_i(p) x_p`` (Eq. 7).

    Args:
        x: feature maps ``[G, C, H, W]`` (``G`` frames).
        kernels: ``[G, N, H, W]``.

    Returns:
        Node features ``[G, N, C]`` (one batched matmul).
    """
    g, c, h, w = x.shape
    k = kernels.reshape(g, -1, h * w).to(x.dtype)
    return torch.bmm(k, _positions_by_channels(x))  # Eq. 7


def _positions_by_channels(x: Tensor) -> Tensor:
    """``x [G, C, H, W]`` as ``[G, H*W, C]`` without a copy, whatever its memory format
    (contiguous: a transposed view; channels-last: a plain view)."""
    g, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x.permute(0, 2, 3, 1).reshape(g, h * w, c)
    return x.reshape(g, c, h * w).transpose(1, 2)


def remap_nodes(nodes: Tensor, kernels: Tensor) -> Tensor:
    """Re-mapping ``y_p = sum_i K_i(p) v_i`` back onto the feature map (Eq. 10).

    Args:
        nodes: ``[G, N, C]``.
        kernels: ``[G, N, H, W]``.

    Returns:
        Feature maps ``[G, C, H, W]``.
    """
    g, n, h, w = kernels.shape
    k = kernels.reshape(g, n, h * w).to(nodes.dtype)
    return torch.bmm(nodes.transpose(1, 2), k).reshape(g, nodes.shape[-1], h, w)  # Eq. 10


def remap_moments(nodes: Tensor, kernels: Tensor, shift: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    r"""Sums over the map of ``y`` and ``y^2`` for ``y = remap_nodes(nodes, kernels) + shift``,
    computed on the nodes, without ``y``:

    .. math::
        \sum_p y_{pc} = \sum_i v_{ic} s_i + P b_c, \qquad
        \sum_p y_{pc}^2 = \sum_{i,j} v_{ic} M_{ij} v_{jc} + 2 b_c \sum_i v_{ic} s_i + P b_c^2

    with :math:`s_i = \sum_p K_i(p)`, :math:`M = K K^\top` (``N x N`` per frame) and ``P``
    the number of positions. Exact (the normalisations of the re-mapped map are sums over
    positions); computed in float64 so that a variance taken from them as
    ``E[y^2] - E[y]^2`` loses nothing to cancellation in float32.

    Args:
        nodes: ``[G, N, C]``.
        kernels: ``[G, N, H, W]``.
        shift: per-channel constant ``b`` ``[C]`` added to every position, or ``None``.

    Returns:
        ``(sum_y, sum_y2)``, each ``[G, C]`` in float64.
    """
    g, n, h, w = kernels.shape
    k = kernels.reshape(g, n, h * w).double()
    v = nodes.double()
    ksum = k.sum(-1)  # [G, N]
    gram = torch.bmm(k, k.transpose(1, 2))  # [G, N, N]
    s1 = (v * ksum.unsqueeze(-1)).sum(1)  # [G, C]
    s2 = (v * torch.bmm(gram, v)).sum(1)
    if shift is not None:
        b = shift.double()
        s2 = s2 + 2 * b * s1 + (h * w) * b * b
        s1 = s1 + (h * w) * b
    return s1, s2


def remap_residual(x: Tensor, nodes: Tensor, kernels: Tensor, shift: Tensor | None = None
                   ) -> Tensor:
    """``x + remap_nodes(nodes, kernels) + shift`` in one batched contraction (Eq. 10 added
    to a residual): the shift rides along as one more node whose kernel is 1 everywhere, and
    ``x`` is the matmul's accumulator, so the map is read and written once and autograd saves
    no map. Keeps ``x``'s memory format (contiguous or channels-last) and dtype.

    Args:
        x: ``[G, C, H, W]``.
        nodes: ``[G, N, C]``.
        kernels: ``[G, N, H, W]``.
        shift: ``[C]`` or ``[G, C]``, or ``None``.

    Returns:
        ``[G, C, H, W]``.
    """
    g, n, h, w = kernels.shape
    c = nodes.shape[-1]
    k = kernels.reshape(g, n, h * w).to(nodes.dtype)
    if shift is not None:
        k = torch.cat((k, k.new_ones(1, 1, 1).expand(g, 1, h * w)), 1)
        nodes = torch.cat((nodes, shift.to(nodes.dtype).reshape(-1, 1, c).expand(g, 1, c)), 1)
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    # Under autocast the matmul runs in the low precision; an accumulator of another dtype
    # would change the output's dtype, so it is added separately then.
    one_pass = (not torch.is_autocast_enabled(x.device.type)
                or x.dtype == torch.get_autocast_dtype(x.device.type))
    if cl:
        xt = x.permute(0, 2, 3, 1).reshape(g, h * w, c)
        if one_pass:
            out = torch.baddbmm(xt, k.transpose(1, 2), nodes)  # Eq. 10 + residual
        else:
            out = xt + torch.bmm(k.transpose(1, 2), nodes)
        return out.view(g, h, w, c).permute(0, 3, 1, 2)
    xf = x.reshape(g, c, h * w)
    if one_pass:
        out = torch.baddbmm(xf, nodes.transpose(1, 2), k)  # Eq. 10 + residual
    else:
        out = xf + torch.bmm(nodes.transpose(1, 2), k)
    return out.view(g, c, h, w)


def fold_group_norm(norm: nn.GroupNorm, nodes: Tensor, kernels: Tensor, shift: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """``GroupNorm(1, C)`` (LayerNorm over ``(C, H, W)`` of each map, per-channel affine) of
    ``y = remap_nodes(nodes, kernels) + shift`` as ``remap_nodes(nodes * scale, kernels) +
    shift'``: returns ``scale, shift'`` ``[G, C]`` (statistics from
    :func:`~dyreg_pyg.kernels.remap_moments`)."""
    g, n, h, w = kernels.shape
    c = nodes.shape[-1]
    s1, s2 = remap_moments(nodes, kernels, shift)
    count = c * h * w
    mean = s1.sum(1, keepdim=True) / count  # [G, 1]
    var = (s2.sum(1, keepdim=True) / count - mean * mean).clamp_min(0)
    rstd = torch.rsqrt(var + norm.eps)
    a = rstd if norm.weight is None else norm.weight.double() * rstd  # [G, C]
    base = -mean if shift is None else shift.double() - mean
    out_shift = base * a
    if norm.bias is not None:
        out_shift = out_shift + norm.bias.double()
    dt = torch.promote_types(nodes.dtype, torch.float32)
    return a.expand(g, c).to(dt), out_shift.to(dt)


def fold_norm(norm: nn.Module, nodes: Tensor, kernels: Tensor, shift: Tensor | None
               ) -> tuple[Tensor, Tensor | None]:
    """``norm(remap_nodes(nodes, kernels) + shift)`` as ``remap_nodes(nodes * scale,
    kernels) + shift'`` for :class:`~dyreg_pyg.DyRegBlock`'s norms (BatchNorm2d, GroupNorm(1, C),
    Identity): ``scale`` ``[C]`` or ``[G, C]``, ``shift'`` the same or ``None``."""
    dt = torch.promote_types(nodes.dtype, torch.float32)
    if isinstance(norm, nn.Identity):
        return torch.ones((), dtype=dt, device=nodes.device).expand(nodes.shape[-1]), shift
    if isinstance(norm, nn.GroupNorm):
        return fold_group_norm(norm, nodes, kernels, shift)
    g, n, h, w = kernels.shape
    if norm.training or not norm.track_running_stats:  # batch statistics, as BatchNorm2d
        s1, s2 = remap_moments(nodes, kernels, shift)
        count = g * h * w
        mean = s1.sum(0) / count
        var = (s2.sum(0) / count - mean * mean).clamp_min(0)
        if norm.training and norm.track_running_stats:
            with torch.no_grad():
                norm.num_batches_tracked.add_(1)
                m = (1.0 / float(norm.num_batches_tracked) if norm.momentum is None
                     else norm.momentum)
                unbiased = var * (count / (count - 1))
                norm.running_mean.mul_(1 - m).add_(m * mean.to(norm.running_mean.dtype))
                norm.running_var.mul_(1 - m).add_(m * unbiased.to(norm.running_var.dtype))
    else:
        mean, var = norm.running_mean.double(), norm.running_var.double()
    a = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        a = norm.weight.double() * a
    base = -mean if shift is None else shift.double() - mean
    out_shift = base * a
    if norm.bias is not None:
        out_shift = out_shift + norm.bias.double()
    return a.to(dt), out_shift.to(dt)


def conv1x1(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x)`` for a 1x1 convolution (stride 1, no padding, one group), as one batched
    matmul over the frames when ``x`` is a contiguous ``[G, C, H, W]`` CPU map with more
    cells than channels (``H * W > C``): the same function. There the batched matmul is up to
    10 % cheaper than the convolution kernel on CPU; with fewer cells than channels (deep
    layers: 2048 channels at 7 x 7) its weight gradient, one product per frame and then a sum,
    costs up to 2x the convolution's (``benchmarks/bench_module.py``). Other layouts
    (channels-last), devices and convolutions go to ``conv`` itself."""
    if (conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0)
            or conv.dilation != (1, 1) or conv.groups != 1 or not x.is_contiguous()
            or x.dim() != 4 or x.device.type != "cpu" or x.shape[2] * x.shape[3] <= x.shape[1]
            or torch.is_autocast_enabled(x.device.type)):
        return conv(x)
    g, c, h, w = x.shape
    weight = conv.weight.view(1, conv.out_channels, c).expand(g, -1, -1)
    xf = x.view(g, c, h * w)
    if conv.bias is None:
        out = torch.bmm(weight, xf)
    else:
        bias = conv.bias.view(1, -1, 1).expand(g, -1, h * w)
        out = torch.baddbmm(bias, weight, xf)
    return out.view(g, conv.out_channels, h, w)


def regions_to_boxes(regions: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)`` support boxes, clipped to ``[0, 1]``."""
    _check_regions(regions)
    cx, cy, w, h = regions.unbind(-1)
    return torch.stack((cx - w, cy - h, cx + w, cy + h), -1).clamp(0.0, 1.0)


class _ScaledLinearEmbedding(nn.Module):
    """``s * Linear(in_features -> C)``, the common part of the position embeddings: the
    scale's check, the projection ``lin`` (state-dict keys ``lin.weight``, ``lin.bias``) and
    the repr."""

    def __init__(self, in_features: int, out_channels: int, scale: float) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale: expected a positive number, got {scale}")
        self.scale = float(scale)
        self.lin = nn.Linear(in_features, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def _project(self, x: Tensor) -> Tensor:
        out = self.lin(x.to(self.lin.weight.dtype))
        return out if self.scale == 1.0 else out * self.scale

    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = "" if self.scale == 1.0 else f", scale={self.scale:g}"
        return f"{self.__class__.__name__}({self._describe()}out={self.lin.out_features}{extra})"


class KernelPositionEmbedding(_ScaledLinearEmbedding):
    r"""Position embedding of a node: a linear projection of its kernel map (Section 3.2).

    .. math::
        \mathbf{e}_i = s \, (\mathbf{W}_e \operatorname{vec}(\mathcal{K}_i) + \mathbf{b}_e)

    The projection reads the kernel on a fixed ``grid`` (the feature-map size the module was
    built for). A kernel of another size is area-resampled to that grid first, so the module
    accepts any ``H x W``; at the built size this is exactly the paper's ``Linear(H*W -> C)``.

    Args:
        grid: ``(H, W)`` the projection reads.
        out_channels: embedding size ``C``.
        scale: the constant ``s`` (1: the paper). Not in the paper: a study knob for the
            embedding's loudness against the node's appearance part (at ``s = 1``, in the
            trained CPU demo model, about 1/9 of its norm and 1/70 of its change from frame to
            frame: ``study/node_scale.py``).

    Shapes:
        - **input:** kernels ``[G, N, H', W']``
        - **output:** ``[G, N, C]``
    """

    def __init__(self, grid: tuple[int, int], out_channels: int, scale: float = 1.0) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        super().__init__(self.grid[0] * self.grid[1], out_channels, scale)

    def forward(self, kernels: Tensor) -> Tensor:
        g, n, h, w = kernels.shape
        if (h, w) != self.grid:
            kernels = F.adaptive_avg_pool2d(kernels, self.grid) * (h * w) / (
                self.grid[0] * self.grid[1]
            )
        return self._project(kernels.reshape(g, n, -1))

    def _describe(self) -> str:
        return f"grid={self.grid}, "


class RegionPositionEmbedding(_ScaledLinearEmbedding):
    r"""Position embedding of a node from its region's four numbers (not in the paper).

    .. math::
        \mathbf{e}_i = s \, (\mathbf{W}_r (c_x, c_y, w, h)_i^\top + \mathbf{b}_r)

    An alternative to :class:`KernelPositionEmbedding` (``DyRegConfig.position_input =
    "region"``): the same displacement gives the same embedding change wherever the region
    is, whereas a linear map of a kernel that covers one or two cells of the map changes by
    a place-dependent vector. On the pixel-free probe of ``study/gnn_sync_probe.py`` (two
    digits, does anything move in sync; one seed) the graph leaves chance after 144-160k
    videos from coordinates (32-48k from coordinates x 10) but not within 384k from the
    oracle's kernel maps on an 8 x 8 map (x 10: 56 % at 384k) (``study/LOG.md``).

    Args:
        out_channels: embedding size ``C``.
        scale: the constant ``s`` (1: no scaling).

    Shapes:
        - **input:** regions ``[G, N, 4]`` ``(cx, cy, w, h)``, normalised
        - **output:** ``[G, N, C]``
    """

    def __init__(self, out_channels: int, scale: float = 1.0) -> None:
        super().__init__(4, out_channels, scale)

    def forward(self, regions: Tensor) -> Tensor:
        _check_regions(regions)
        # float32 even under autocast: bf16 would round (cx, cy) to ~0.4 %, the size of a
        # one-pixel move, and this embedding exists to carry small motions (4 -> C: cheap)
        with torch.autocast(regions.device.type, enabled=False):
            return self._project(regions)
