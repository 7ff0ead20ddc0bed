"""Re-mapping of the nodes onto the feature map (Eq. 10) and what rides on it: the
residual write-back in one pass, the block's norms folded into the nodes, and the 1x1
convolution as a batched matmul.

Maps are ``[G, C, H, W]`` (``G`` frames), nodes ``[G, N, C]`` and kernels ``[G, N, H, W]``
(:func:`~dyreg_pyg.nn.kernels.region_kernels`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "remap_nodes",
    "remap_moments",
    "remap_residual",
    "fold_norm",
    "fold_group_norm",
    "conv1x1",
]


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
    :func:`remap_moments`)."""
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
