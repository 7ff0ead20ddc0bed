"""Position embeddings of the nodes (Section 3.2): a linear map of the node's kernel (the
paper) or of its region's four numbers (ours)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import check_regions

__all__ = [
    "KernelPositionEmbedding",
    "RegionPositionEmbedding",
]


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
        check_regions(regions)
        # float32 even under autocast: bf16 would round (cx, cy) to ~0.4 %, the size of a
        # one-pixel move, and this embedding exists to carry small motions (4 -> C: cheap)
        with torch.autocast(regions.device.type, enabled=False):
            return self._project(regions)
