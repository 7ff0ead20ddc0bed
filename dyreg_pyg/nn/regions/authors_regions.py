"""The authors' region branch (Eq. 1-6 as their ``ops/dyreg.py`` computes it): encoder, node
latents, GRU over time, offsets, and the pixel-index kernels of :class:`~dyreg_pyg.AuthorsDyRegGNN`.

Map coordinates here are the authors' *pixel indices* (``0 .. H-1``);
:func:`authors_region_kernels` also returns the regions in the library's normalised
``(cx, cy, w, h)`` (cell ``p`` has its centre at ``(p + 0.5) / H``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..norm import GraphLayerNorm
from ..remap import conv1x1
from ..temporal import gru_over_time

__all__ = [
    "AUTHORS_REGION_CHANNELS",
    "encoder_geometry",
    "AuthorsRegionEncoder",
    "AuthorsRegions",
    "authors_reference_points",
    "authors_region_kernels",
]

AUTHORS_REGION_CHANNELS = 128
"""Their ``offset_lstm_dim``: size of the region branch's node latents and GRU."""

_KERNEL_EPS = 1e-37  # their kernel normaliser: k / (sum k + 1e-37)


def encoder_geometry(size: int) -> tuple[tuple[int, int], tuple[int, int], int, int]:
    """Strides and paddings of the two 3x3 stages of :class:`AuthorsRegionEncoder` for a map
    side of ``size`` cells (their ``get_fishnet_params``), the side after the first stage and
    the final side ``S``.

    Raises:
        ValueError: sides their code does not support (> 50 refers to an attribute their
            function does not have; other sides where the skip connection does not fit).
    """
    if size > 50:
        raise ValueError(f"spatial_size: flavor='authors' supports maps up to 50 cells, got {size}")
    if size > 20:
        strides, pads = (2, 2), (0, 0)
    elif size > 10:
        strides, pads = (2, 1), (0, 1)
    else:
        strides, pads = (1, 1), (0, 1)
    first = (size + 2 * pads[0] - 3) // strides[0] + 1
    final = (first + 2 * pads[1] - 3) // strides[1] + 1
    up = (final - 1) * strides[1] - 2 * pads[1] + 3
    if first < 1 or final < 1 or up != first:
        raise ValueError(
            f"spatial_size: the authors' region encoder does not fit a map side of {size} "
            f"(stages {size} -> {first} -> {final}, transposed back to {up})"
        )
    return strides, pads, first, final


class AuthorsRegionEncoder(nn.Module):
    """``f`` of Eq. 1 as their ``Fishnet``: 1x1 conv to 32 channels, two strided 3x3 convs
    (32, 16), a transposed conv back (32) with a skip from the first stage, a 3x3 conv to 16;
    each conv followed by ReLU *then* a LayerNorm over ``(C, H, W)`` with per-channel affine
    (``GroupNorm(1, C)``).

    Departs from the paper's text (``f`` = "a small conv net"): an encoder-decoder with
    LayerNorms, strides chosen from the map size (:func:`encoder_geometry`).

    Shapes:
        - **input:** ``[G, C, H, W]``
        - **output:** ``[G, 16, S_h, S_w]``
    """

    def __init__(self, in_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        gh, gw = encoder_geometry(size[0]), encoder_geometry(size[1])
        st0, st1 = (gh[0][0], gw[0][0]), (gh[0][1], gw[0][1])
        pd0, pd1 = (gh[1][0], gw[1][0]), (gh[1][1], gw[1][1])
        self.out_size = (gh[3], gw[3])
        self.reduce = nn.Conv2d(in_channels, 32, 1)
        self.reduce_norm = nn.GroupNorm(1, 32)
        self.down = nn.ModuleList([nn.Conv2d(32, 32, 3, st0, pd0), nn.Conv2d(32, 16, 3, st1, pd1)])
        self.down_norm = nn.ModuleList([nn.GroupNorm(1, 32), nn.GroupNorm(1, 16)])
        self.up = nn.ConvTranspose2d(16, 32, 3, st1, pd1)
        self.up_norm = nn.GroupNorm(1, 32)
        self.head = nn.Conv2d(32, 16, 3, st1, pd1)
        self.head_norm = nn.GroupNorm(1, 16)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce_norm(F.relu(conv1x1(x, self.reduce)))  # ReLU before each LayerNorm
        skip = x = self.down_norm[0](F.relu(self.down[0](x)))
        x = self.down_norm[1](F.relu(self.down[1](x)))
        x = self.up_norm(F.relu(self.up(x))) + skip
        return self.head_norm(F.relu(self.head(x)))  # Eq. 1


class AuthorsRegions(nn.Module):
    """The region branch of Eq. 1-4 as theirs: encoder ``f`` (Eq. 1), one conv covering the
    whole ``S x S`` map to ``N x C'`` (``g`` for all nodes at once, no activation, Eq. 2),
    LayerNorm over ``(N, C')``, a GRU shared by the nodes over time (Eq. 3), LayerNorm over
    ``(N, C')``, a linear layer to 4 numbers scaled by a zero-initialised learnable gain
    ``alpha`` (Eq. 4): the regions start on their references and the gain opens with training.

    Departs from the paper's text: LayerNorms around the GRU, ``g`` without non-linearity, and
    the gain ``alpha`` (theirs ``offset_alpha``) in place of a zero-initialised output layer.

    Shapes:
        - **input:** ``x [B*T, C, H, W]`` and ``(B, T)``
        - **output:** raw offsets ``[B, T, N, 4]`` (size h, size w, position y, position x)
    """

    def __init__(self, in_channels: int, num_nodes: int, channels: int,
                 size: tuple[int, int], rnn: str = "gru") -> None:
        super().__init__()
        self.num_nodes, self.channels = num_nodes, channels
        self.encoder = AuthorsRegionEncoder(in_channels, size)
        self.node_fc = nn.Conv2d(16, num_nodes * channels, self.encoder.out_size)
        self.feature_norm = GraphLayerNorm(channels)
        self.gru = {"gru": nn.GRU, "lstm": nn.LSTM}[rnn](channels, channels, batch_first=True)
        self.gru_norm = GraphLayerNorm(channels)
        self.out = nn.Linear(channels, 4)
        self.gain = nn.Parameter(torch.empty(4))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # PyTorch defaults; LayerNorms at scale 1, bias 0
        nn.init.zeros_(self.gain)

    def forward(self, x: Tensor, b: int, t: int) -> Tensor:
        n, c = self.num_nodes, self.channels
        z = self.node_fc(self.encoder(x)).flatten(2).mean(-1)  # Eq. 1-2 (1 x 1 at its size)
        z = self.feature_norm.forward_dense(z.view(b * t, n, c), 2)
        z = gru_over_time(self.gru, z.view(b, t, n, c))  # Eq. 3
        z = self.gru_norm.forward_dense(z, 2)
        return self.out(z) * self.gain  # Eq. 4, gain alpha


def authors_reference_points(num_nodes: int, init: str, size: tuple[int, int]
                             ) -> tuple[Tensor, Tensor]:
    """Reference rows and columns ``[N]`` in pixel units (their ``compute_anchors``): all at
    ``(H/2, W/2)`` for ``center``, at ``(2r+1) H / (2 sqrt(N))`` for ``grid``; row-major node
    order. Float32, as theirs (converted with the module by ``.double()``).

    Their ``center`` uses ``H/2`` for the columns too (their maps are square); this uses
    ``W/2``."""
    side = math.isqrt(num_nodes)
    h, w = size
    if init == "center":
        rows, cols = torch.full((side,), h / 2), torch.full((side,), w / 2)
    else:
        rows = torch.linspace(0, h, 2 * side + 1)[1::2]
        cols = torch.linspace(0, w, 2 * side + 1)[1::2]
    return rows.repeat_interleave(side), cols.repeat(side)


def authors_region_kernels(raw: Tensor, ref_rows: Tensor, ref_cols: Tensor,
                           height: int, width: int) -> tuple[Tensor, Tensor]:
    """Regions and kernels from the raw offsets, as theirs (Eq. 4-6).

    Size (Eq. 4): radius ``r = (H / (2 sqrt(N)) + 1) e^u + 1`` cells. Position (Eq. 4):
    ``c = clamp(H/2 + (H/2) tanh(u + atanh(2 ref / H - 1)), 0, H - 1)`` in pixel indices.
    Kernel (Eq. 5-6): ``k(p) = max(0, r - |p - c|)`` at integer indices ``p``, the separable
    product normalised jointly to sum 1 (plus their ``1e-37``).

    Departs from the paper's text: exponential size instead of a bounded one, position gain
    ``H/2`` around the frame centre, integer pixel coordinates and a clamp to ``[0, H-1]``.

    Args:
        raw: ``[..., N, 4]`` (size h, size w, position y, position x).
        ref_rows, ref_cols: ``[N]`` references in pixels (:func:`authors_reference_points`).
        height, width: map size.

    Returns:
        kernels ``[..., N, H, W]`` and regions ``[..., N, 4]`` as normalised
        ``(cx, cy, w, h)`` (radii, see :mod:`dyreg_pyg.nn.kernels`).
    """
    side = math.isqrt(raw.shape[-2])
    size_h = torch.exp(raw[..., 0]) * (height / (2 * side) + 1) + 1  # Eq. 4, size
    size_w = torch.exp(raw[..., 1]) * (width / (2 * side) + 1) + 1
    ref_rows, ref_cols = ref_rows.to(raw.dtype), ref_cols.to(raw.dtype)
    lim = 1 - 1e-7
    ty = torch.tanh(raw[..., 2] + torch.atanh((2 * ref_rows / height - 1).clamp(-lim, lim)))
    tx = torch.tanh(raw[..., 3] + torch.atanh((2 * ref_cols / width - 1).clamp(-lim, lim)))
    dy = ty * (height / 2) + height / 2 - ref_rows  # Eq. 4, position (offset from the ref)
    dx = tx * (width / 2) + width / 2 - ref_cols
    cy = (ref_rows + dy).clamp(0, height - 1)
    cx = (ref_cols + dx).clamp(0, width - 1)
    py = torch.arange(height, dtype=raw.dtype, device=raw.device)
    px = torch.arange(width, dtype=raw.dtype, device=raw.device)
    ky = F.relu(size_h.unsqueeze(-1) - (py - cy.unsqueeze(-1)).abs())  # Eq. 6
    kx = F.relu(size_w.unsqueeze(-1) - (px - cx.unsqueeze(-1)).abs())
    kernels = ky.unsqueeze(-1) * kx.unsqueeze(-2)  # Eq. 5
    kernels = kernels / (kernels.sum((-2, -1), keepdim=True) + _KERNEL_EPS)
    regions = torch.stack(((cx + 0.5) / width, (cy + 0.5) / height, size_w / width,
                           size_h / height), -1)
    return kernels, regions
