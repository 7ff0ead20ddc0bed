"""The ``"authors"`` flavour: DyReg-GNN as the authors' released code computes it.

``DyRegConfig(flavor="authors")`` builds :class:`AuthorsDyRegGNN` (inside
:class:`~dyreg_pyg.DyRegGNN`) and :class:`AuthorsWriteBack` (inside
:class:`~dyreg_pyg.DyRegBlock`). Each piece below reproduces one part of the authors' code
(github bit-ml/DyReg-GNN: ``ops/dyreg.py``, ``ops/rstg.py``, ``ops/models_utils.py``) and names
the paper equation it implements and how it departs from the paper's text. The equality with
their code, with converted weights, is measured by ``benchmarks/compare_official.py``; their
checkpoints load with :func:`dyreg_pyg.compat.load_official`.

Map coordinates of this flavour are the authors' *pixel indices* (``0 .. H-1``); the regions
reported in :class:`~dyreg_pyg.DyRegDetails` are converted to the library's normalised
``(cx, cy, w, h)`` (cell ``p`` has its centre at ``(p + 0.5) / H``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .graph import build_graph_batch, frame_edge_index
from .kernels import (
    KernelPositionEmbedding,
    conv1x1,
    fold_group_norm,
    pool_nodes,
    regions_to_boxes,
    remap_nodes,
)
from .nn.authors import AuthorsRSTGConv, GraphLayerNorm
from .nn.registry import make_spatial_layer
from .nn.temporal import TemporalUpdate, gru_over_time

if TYPE_CHECKING:
    from .module import DyRegConfig

__all__ = [
    "AUTHORS_REGION_CHANNELS",
    "check_authors_config",
    "encoder_geometry",
    "AuthorsRegionEncoder",
    "AuthorsRegions",
    "authors_reference_points",
    "authors_region_kernels",
    "authors_graph_stack",
    "AuthorsDyRegGNN",
    "AuthorsWriteBack",
]

AUTHORS_REGION_CHANNELS = 128
"""Their ``offset_lstm_dim``: size of the region branch's node latents and GRU."""

_KERNEL_EPS = 1e-37  # their kernel normaliser: k / (sum k + 1e-37)


def check_authors_config(cfg: DyRegConfig) -> None:
    """Reject the :class:`~dyreg_pyg.DyRegConfig` fields the authors' module has no
    counterpart for (``ValueError`` naming the field)."""
    if cfg.regions != "dyreg":
        raise ValueError(f"regions: flavor='authors' implements 'dyreg' only, got {cfg.regions!r}")
    side = math.isqrt(cfg.num_nodes)
    if side * side != cfg.num_nodes:
        raise ValueError(
            f"num_nodes: flavor='authors' places the nodes on a square grid (theirs: 3 x 3), "
            f"got {cfg.num_nodes}"
        )
    if cfg.init not in ("center", "grid"):
        raise ValueError(f"init: expected 'center' or 'grid', got {cfg.init!r}")
    if cfg.init_size is not None:
        raise ValueError(
            "init_size: flavor='authors' starts every region at the radius H / (2 sqrt(N)) + 2 "
            f"cells (their exponential size); got init_size={cfg.init_size}"
        )
    if cfg.init_jitter:
        raise ValueError(f"init_jitter: not part of flavor='authors', got {cfg.init_jitter}")
    if cfg.position_scale != 1.0:
        raise ValueError(
            f"position_scale: not part of flavor='authors', got {cfg.position_scale}")
    if cfg.position_input != "kernel":
        raise ValueError(
            f"position_input: flavor='authors' embeds the kernel map, got {cfg.position_input!r}")
    if cfg.temporal not in ("gru", "lstm"):
        raise ValueError(
            f"temporal: flavor='authors' runs a recurrent network ('gru' or 'lstm'), got "
            f"{cfg.temporal!r}"
        )
    if cfg.norm != "layer":
        raise ValueError(
            f"norm: flavor='authors' writes back with their LayerNorm over (C, H, W) "
            f"('layer'), got {cfg.norm!r}"
        )


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
        ``(cx, cy, w, h)`` (radii, see :mod:`dyreg_pyg.kernels`).
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


def authors_graph_stack(
    nodes: Tensor,
    input_norm: GraphLayerNorm,
    temporal: Sequence[nn.Module],
    spatial: Sequence[nn.Module],
    temporal_out: nn.Module,
    iterations: int,
    backend: str = "pyg",
    self_loops: bool = True,
    want_attention: bool = False,
) -> tuple[Tensor, Tensor | None]:
    r"""The graph stack of their ``RSTG`` (Eq. 8-9 as their code runs them) on node tensors.

    .. math::
        V \leftarrow \mathrm{LN}_{N,C}(V);\quad K \times \big(V \leftarrow \mathrm{GRU}_{int}(V);
        \ V \leftarrow \mathrm{Space}(V)\big);\quad V \leftarrow \mathrm{GRU}_{ext}(V)

    Each frame is one complete graph of its ``N`` nodes (:func:`~dyreg_pyg.graph.frame_edge_index`);
    the input LayerNorm and those of :class:`~dyreg_pyg.nn.authors.AuthorsRSTGConv` run per
    frame graph. :class:`AuthorsDyRegGNN` runs it on its pooled nodes; it runs as well on nodes
    from anywhere else (``study/gnn_sync_probe.py --flavor authors``).

    Departs from the paper's text (space then time, K times): a LayerNorm before the graph,
    time before space in each iteration, one internal GRU shared by the iterations (theirs)
    and an extra external GRU.

    Args:
        nodes: ``[B, T, N, C]``.
        input_norm: the LayerNorm over ``(N, C)`` of each frame before the graph.
        temporal: the internal recurrent update (:class:`~dyreg_pyg.nn.TemporalUpdate`), one
            shared by the ``iterations`` (theirs) or one per iteration.
        spatial: the space step, as many as ``temporal``: ``AuthorsRSTGConv`` or any PyG
            layer (``backend="pyg"``), or a layer with ``forward_dense`` (``"dense"``).
        temporal_out: the external recurrent update after the iterations.
        iterations: ``K``.
        backend: ``"pyg"`` (message passing on frame graphs) or ``"dense"``.
        self_loops: whether a node also sends to itself (theirs: yes).
        want_attention: also return the attention of the last space step (``"pyg"`` backend,
            layers that report it).

    Returns:
        nodes ``[B, T, N, C]`` and the last attention ``[E]`` (or ``None``).
    """
    if nodes.dim() != 4:
        raise ValueError(f"nodes: expected [B, T, N, C], got shape {tuple(nodes.shape)}")
    if len(spatial) != len(temporal) or len(spatial) not in (1, iterations):
        raise ValueError(
            f"spatial, temporal: expected 1 (shared) or iterations={iterations} layers each, "
            f"got {len(spatial)} and {len(temporal)}"
        )
    b, t, n, c = nodes.shape
    nodes = input_norm.forward_dense(nodes.reshape(b * t, n, c), 2)  # LN over (N, C)
    attention = None
    edge_index = batch = None
    if backend == "pyg":
        edge_index = frame_edge_index(b * t, n, self_loops, nodes.device)
        batch = torch.arange(b * t, device=nodes.device).repeat_interleave(n)
    for k in range(iterations):
        idx = k if len(spatial) > 1 else 0
        nodes = temporal[idx](nodes.view(b, t, n, -1)).reshape(b * t, n, -1)  # Eq. 9
        layer = spatial[idx]
        if backend == "dense":
            nodes = layer.forward_dense(nodes, self_loops=self_loops)  # Eq. 8
            continue
        v = nodes.reshape(b * t * n, -1)
        if isinstance(layer, AuthorsRSTGConv):
            res = layer(v, edge_index, batch, b * t, return_attention_weights=want_attention)
        elif want_attention and hasattr(layer, "lin_query"):
            res = layer(v, edge_index, return_attention_weights=True)
        else:
            res = layer(v, edge_index)  # Eq. 8 (or any PyG layer)
        if isinstance(res, tuple):
            v, (_, attention) = res
        else:
            v = res
        nodes = v.view(b * t, n, -1)
    return temporal_out(nodes.view(b, t, n, -1)), attention  # their extra (external) GRU


class AuthorsDyRegGNN(nn.Module):
    r"""The authors' DyReg-GNN module (their ``DynamicGraph`` + ``RSTG``), on our layers.

    With ``C`` the node size: an optional input projection (1x1 conv + LayerNorm over
    ``(C, H, W)``, when ``node_channels`` differs from the input, their layer-4
    ``project_i3d``), regions (:class:`AuthorsRegions`, :func:`authors_region_kernels`,
    Eq. 1-6), nodes pooled with a linear position embedding of their kernels (Eq. 7), then
    the schedule of their ``RSTG``:

    .. math::
        V \leftarrow \mathrm{LN}(V);\quad K \times \big(V \leftarrow \mathrm{GRU}_{int}(V);
        \ V \leftarrow \mathrm{Space}(V)\big);\quad V \leftarrow \mathrm{GRU}_{ext}(V)

    and the re-mapping (Eq. 10) followed by the projection back (1x1 conv).

    Departs from the paper's text (Eq. 8-9 alternate space then time, K times): a LayerNorm
    before the graph, time before space in each iteration, one internal GRU and one spatial
    layer shared by the iterations (``share_weights=True``; ``False`` gives each iteration
    its own), and an extra external GRU.

    Args:
        in_channels: ``C_in`` of the map.
        cfg: a validated :class:`~dyreg_pyg.DyRegConfig` with ``flavor="authors"``.

    Shapes:
        - **input:** ``[B, T, C_in, H, W]`` with ``(H, W)`` = ``cfg.spatial_size``
        - **output:** ``[B, T, C_in, H, W]``
    """

    def __init__(self, in_channels: int, cfg: DyRegConfig) -> None:
        super().__init__()
        self.config = cfg
        self.in_channels = in_channels
        self.num_nodes = cfg.num_nodes
        ch = cfg.node_channels or in_channels
        self.node_channels = ch
        self.size = tuple(cfg.spatial_size or (14, 14))
        if ch != in_channels:
            self.proj_in: nn.Module | None = nn.Conv2d(in_channels, ch, 1)
            self.proj_in_norm: nn.Module | None = nn.GroupNorm(1, ch)
            self.proj_out: nn.Module | None = nn.Conv2d(ch, in_channels, 1)
        else:
            self.proj_in = self.proj_in_norm = self.proj_out = None
        self.regions = AuthorsRegions(ch, cfg.num_nodes, cfg.region_channels, self.size,
                                      cfg.temporal)
        rows, cols = authors_reference_points(cfg.num_nodes, cfg.init, self.size)
        self.register_buffer("ref_rows", rows, persistent=False)
        self.register_buffer("ref_cols", cols, persistent=False)
        self.pos_embed = KernelPositionEmbedding(self.size, ch) if cfg.position_embedding \
            else None
        self.input_norm = GraphLayerNorm(ch)
        gnn = "rstg_authors" if cfg.gnn == "rstg" else cfg.gnn
        n_layers = 1 if cfg.share_weights else cfg.iterations
        self.spatial = nn.ModuleList(make_spatial_layer(gnn, ch) for _ in range(n_layers))
        self.temporal = nn.ModuleList(TemporalUpdate(ch, cfg.temporal) for _ in range(n_layers))
        self.temporal_out = TemporalUpdate(ch, cfg.temporal)
        if cfg.backend == "dense" and not all(hasattr(m, "forward_dense") for m in self.spatial):
            raise ValueError(
                f"backend: 'dense' needs a layer with forward_dense ('rstg', 'rstg_authors'), "
                f"got gnn={cfg.gnn!r}"
            )

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self.regions.reset_parameters()  # last: the zero gain

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[2] != self.in_channels or tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"x: expected [B, T, {self.in_channels}, {self.size[0]}, {self.size[1]}] "
                f"(flavor='authors' is built for one map size, spatial_size), got shape "
                f"{tuple(x.shape)}"
            )

    def _graph(self, nodes: Tensor, b: int, t: int, want_attention: bool
               ) -> tuple[Tensor, Tensor | None]:
        """Their RSTG schedule (:func:`authors_graph_stack`) on ``nodes [B*T, N, C]``;
        returns the nodes and the last attention (pyg backend)."""
        cfg = self.config
        out, attention = authors_graph_stack(
            nodes.reshape(b, t, self.num_nodes, -1), self.input_norm, self.temporal,
            self.spatial, self.temporal_out, cfg.iterations, cfg.backend, cfg.self_loops,
            want_attention)
        return out.reshape(b * t, self.num_nodes, -1), attention

    def _process(self, x: Tensor, want_attention: bool
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Nodes ``[B*T, N, C]``, regions ``[B, T, N, 4]``, kernels ``[B*T, N, H, W]``."""
        self._check_input(x)
        b, t, c, h, w = x.shape
        xf = x.reshape(b * t, c, h, w)
        if self.proj_in is not None:
            xf = self.proj_in_norm(conv1x1(xf, self.proj_in))  # their project_i3d (+ LN2D)
        rdtype = torch.float64 if xf.dtype == torch.float64 else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            raw = self.regions(xf.to(rdtype), b, t)  # Eq. 1-4
            kernels, regions = authors_region_kernels(raw, self.ref_rows, self.ref_cols, h, w)
        flat_k = kernels.reshape(b * t, self.num_nodes, h, w)
        nodes = pool_nodes(xf, flat_k)  # Eq. 7
        if self.pos_embed is not None:
            nodes = nodes + self.pos_embed(flat_k).to(nodes.dtype)
        nodes, attention = self._graph(nodes, b, t, want_attention)
        return nodes, regions, flat_k, attention

    def node_states(self, x: Tensor) -> Tensor:
        """The nodes after the graph (and the external GRU): ``[B, T, N, C]``."""
        b, t = x.shape[:2]
        return self._process(x, False)[0].view(b, t, self.num_nodes, -1)

    def forward(self, x: Tensor, return_details: bool = False
                ) -> Tensor | tuple[Tensor, dict[str, Any]]:
        """``y [B, T, C_in, H, W]``; with ``return_details`` also the fields of a
        :class:`~dyreg_pyg.DyRegDetails` (which :class:`~dyreg_pyg.DyRegGNN` returns)."""
        nodes, flat_k, shift, details = self.remap_parts(x, return_details)
        b, t, c, h, w = x.shape
        y = remap_nodes(nodes, flat_k)  # Eq. 10 (+ their projection back, on the nodes)
        if shift is not None:
            y = y + shift.to(y.dtype).view(1, c, 1, 1)
        y = y.view(b, t, c, h, w)
        return (y, details) if return_details else y

    def remap_parts(self, x: Tensor, return_details: bool = False
                    ) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Any] | None]:
        """``forward(x) = remap_nodes(nodes, kernels) + shift`` (see
        :meth:`dyreg_pyg.DyRegGNN.remap_parts`; the details as a dict). Their projection
        back (``project_back_i3d_linear``, a 1x1 conv after the re-mapping) is applied to the
        nodes: ``W (sum_i K_i v_i) + b = sum_i K_i (W v_i) + b``, the same map at
        ``N / (H W)`` of the cost; its bias is ``shift``."""
        nodes, regions, flat_k, attention = self._process(x, return_details)
        b, t, c, h, w = x.shape
        out_nodes, shift = nodes, None
        if self.proj_out is not None:
            out_nodes = F.linear(nodes, self.proj_out.weight.flatten(1))  # their
            shift = self.proj_out.bias  # project_back_i3d_linear (no norm), on the nodes
        if not return_details:
            return out_nodes, flat_k, shift, None
        n = self.num_nodes
        graph = None
        if self.config.backend == "pyg":
            graph = build_graph_batch(nodes.detach().view(b, t, n, -1), regions.detach().float(),
                                      self.config.self_loops)
        details = dict(
            regions=regions.detach(), boxes=regions_to_boxes(regions.detach()),
            kernels=flat_k.detach().view(b, t, n, h, w), graph=graph,
            attention=None if attention is None else attention.detach(), live_regions=regions,
        )
        return out_nodes, flat_k, shift, details


class AuthorsWriteBack(nn.Module):
    """The residual write-back (Eq. 10 insertion) as theirs: ``x + LN(y) * s + b`` with the
    LayerNorm over ``(C, H, W)`` and per-channel ``s``, ``b`` (``GroupNorm(1, C)``), ``s``
    starting at ``gate_init`` (theirs: 0) and ``b`` at 0, so the block starts as the identity.

    Departs from the paper's text (a plain residual sum): the normalisation and the gate.

    Shapes:
        - **input:** ``x, y [B, T, C, H, W]``
        - **output:** ``[B, T, C, H, W]``
    """

    def __init__(self, channels: int, gate_init: float = 0.0) -> None:
        super().__init__()
        self.gate_init = float(gate_init)
        self.norm = nn.GroupNorm(1, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.norm.weight, self.gate_init)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        b, t, c, h, w = y.shape
        return x + self.norm(y.reshape(b * t, c, h, w)).view(b, t, c, h, w)

    def fold(self, nodes: Tensor, kernels: Tensor, shift: Tensor | None
             ) -> tuple[Tensor, Tensor]:
        """The LayerNorm of ``y = remap_nodes(nodes, kernels) + shift`` folded into the nodes:
        ``scale, shift'`` ``[G, C]`` with ``LN(y) = remap_nodes(nodes * scale, kernels) +
        shift'`` (:class:`~dyreg_pyg.DyRegBlock` then adds it to ``x`` in one pass)."""
        return fold_group_norm(self.norm, nodes, kernels, shift)
