"""Separable region kernels (Eq. 5-6) and node pooling (Eq. 7).

Coordinates are normalised to the feature map: ``x`` and ``y`` run over ``[0, 1]`` and the
centre of cell ``(row, col)`` of an ``H x W`` map sits at ``((col + 0.5) / W, (row + 0.5) / H)``.
A region is ``(cx, cy, w, h)``: its centre and the *radius* of the kernel's support on each axis,
so the box it covers is ``(cx - w, cy - h, cx + w, cy + h)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import check_regions

__all__ = [
    "kernel_1d",
    "region_kernels",
    "pool_nodes",
]


def kernel_1d(center: Tensor, radius: Tensor, size: int) -> Tensor:
    """One axis of the region kernel, ``k(p) = max(0, w - |c - p|)`` (Eq. 6).

    The centre is clamped to ``[0, 1]`` and the radius to at least one cell (``1 / size``) so
    that at least one cell centre lies strictly inside the support: the kernel is never all
    zero, whatever the parameters. Both clamps are no-ops for regions produced by
    :mod:`dyreg_pyg.nn.regions`, which already respect these bounds.

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
    check_regions(regions)
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
