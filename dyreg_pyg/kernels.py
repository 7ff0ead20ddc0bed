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
    "regions_to_boxes",
    "KernelPositionEmbedding",
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
    return torch.bmm(k, x.reshape(g, c, h * w).transpose(1, 2))  # Eq. 7


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


def regions_to_boxes(regions: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)`` support boxes, clipped to ``[0, 1]``."""
    _check_regions(regions)
    cx, cy, w, h = regions.unbind(-1)
    return torch.stack((cx - w, cy - h, cx + w, cy + h), -1).clamp(0.0, 1.0)


class KernelPositionEmbedding(nn.Module):
    r"""Position embedding of a node: a linear projection of its kernel map (Section 3.2).

    .. math::
        \mathbf{e}_i = \mathbf{W}_e \operatorname{vec}(\mathcal{K}_i) + \mathbf{b}_e

    The projection reads the kernel on a fixed ``grid`` (the feature-map size the module was
    built for). A kernel of another size is area-resampled to that grid first, so the module
    accepts any ``H x W``; at the built size this is exactly the paper's ``Linear(H*W -> C)``.

    Args:
        grid: ``(H, W)`` the projection reads.
        out_channels: embedding size ``C``.

    Shapes:
        - **input:** kernels ``[G, N, H', W']``
        - **output:** ``[G, N, C]``
    """

    def __init__(self, grid: tuple[int, int], out_channels: int) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.lin = nn.Linear(self.grid[0] * self.grid[1], out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def forward(self, kernels: Tensor) -> Tensor:
        g, n, h, w = kernels.shape
        if (h, w) != self.grid:
            kernels = F.adaptive_avg_pool2d(kernels, self.grid) * (h * w) / (
                self.grid[0] * self.grid[1]
            )
        return self.lin(kernels.reshape(g, n, -1).to(self.lin.weight.dtype))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(grid={self.grid}, out={self.lin.out_features})"
