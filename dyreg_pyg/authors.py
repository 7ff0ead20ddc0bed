"""The ``"authors"`` flavour: DyReg-GNN as the authors' released code computes it.

``DyRegConfig(flavor="authors")`` builds :class:`AuthorsDyRegGNN` (the subclass of
:class:`~dyreg_pyg.DyRegGNN` registered as that flavour) and, inside
:class:`~dyreg_pyg.DyRegBlock`, :class:`AuthorsWriteBack`. Each piece below reproduces one
part of the authors' code (github bit-ml/DyReg-GNN: ``ops/dyreg.py``, ``ops/rstg.py``,
``ops/models_utils.py``) and names
the paper equation it implements and how it departs from the paper's text. The equality with
their code, with converted weights, is measured by ``benchmarks/compare_official.py``; their
checkpoints load with :func:`dyreg_pyg.compat.load_official`.

Map coordinates of this flavour are the authors' *pixel indices* (``0 .. H-1``); the regions
reported in :class:`~dyreg_pyg.DyRegDetails` are converted to the library's normalised
``(cx, cy, w, h)`` (cell ``p`` has its centre at ``(p + 0.5) / H``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .module import DyRegGNN, register_flavor
from .nn.inputs import GraphInputs, edge_dim
from .nn.kernels import pool_nodes
from .nn.norm import GraphLayerNorm
from .nn.position import KernelPositionEmbedding
from .nn.regions.authors_regions import (
    AuthorsRegions,
    authors_reference_points,
    authors_region_kernels,
)
from .nn.registry import make_spatial_layer
from .nn.remap import conv1x1, fold_group_norm
from .nn.stack import authors_graph_stack
from .nn.temporal import TemporalUpdate

__all__ = [
    "authors_graph_stack",
    "AuthorsDyRegGNN",
    "AuthorsWriteBack",
]


@register_flavor("authors")
class AuthorsDyRegGNN(DyRegGNN):
    r"""The authors' DyReg-GNN module (their ``DynamicGraph`` + ``RSTG``), on our layers: the
    flavour ``"authors"`` of :class:`~dyreg_pyg.DyRegGNN`, whose build and run hooks it
    overrides.

    With ``C`` the node size: an optional input projection (1x1 conv + LayerNorm over
    ``(C, H, W)``, when ``node_channels`` differs from the input, their layer-4
    ``project_i3d``), regions (:class:`AuthorsRegions`, :func:`authors_region_kernels`,
    Eq. 1-6), nodes pooled with a linear position embedding of their kernels (Eq. 7), then
    the schedule of their ``RSTG`` (:func:`~dyreg_pyg.nn.stack.authors_graph_stack`):

    .. math::
        V \leftarrow \mathrm{LN}(V);\quad K \times \big(V \leftarrow \mathrm{GRU}_{int}(V);
        \ V \leftarrow \mathrm{Space}(V)\big);\quad V \leftarrow \mathrm{GRU}_{ext}(V)

    and the re-mapping (Eq. 10) followed by the projection back (1x1 conv); in
    :class:`~dyreg_pyg.DyRegBlock` their LayerNorm write-back (:class:`AuthorsWriteBack`).

    Departs from the paper's text (Eq. 8-9 alternate space then time, K times): a LayerNorm
    before the graph, time before space in each iteration, one internal GRU and one spatial
    layer shared by the iterations (``share_weights=True``; ``False`` gives each iteration
    its own), and an extra external GRU.

    Args:
        in_channels: ``C_in`` of the map.
        **kwargs: as :class:`~dyreg_pyg.DyRegGNN` (``flavor`` defaults to ``"authors"``).

    Shapes:
        - **input:** ``[B, T, C_in, H, W]`` with ``(H, W)`` = ``spatial_size``
        - **output:** ``[B, T, C_in, H, W]``
    """

    def init_parts(self, in_channels: int, channels: int) -> None:
        self.size = tuple(self.config.spatial_size or (14, 14))
        self.init_projections(in_channels, channels)  # theirs: projection first
        self.init_regions(in_channels, channels)
        self.init_position_embedding(channels)
        self.init_graph(channels)

    def init_projections(self, in_channels: int, channels: int) -> None:
        """Their ``project_i3d`` (1x1 conv + LayerNorm) and ``project_back_i3d_linear``."""
        if channels != in_channels:
            self.proj_in: nn.Module | None = nn.Conv2d(in_channels, channels, 1)
            self.proj_in_norm: nn.Module | None = nn.GroupNorm(1, channels)
            self.proj_out: nn.Module | None = nn.Conv2d(channels, in_channels, 1)
        else:
            self.proj_in = self.proj_in_norm = self.proj_out = None

    def init_regions(self, in_channels: int, channels: int) -> None:
        cfg = self.config
        self.regions = AuthorsRegions(channels, cfg.num_nodes, cfg.region_channels, self.size,
                                      cfg.temporal)
        rows, cols = authors_reference_points(cfg.num_nodes, cfg.init, self.size)
        self.register_buffer("ref_rows", rows, persistent=False)
        self.register_buffer("ref_cols", cols, persistent=False)

    def init_position_embedding(self, channels: int) -> None:
        self.pos_embed = KernelPositionEmbedding(self.size, channels) \
            if self.config.position_embedding else None

    def init_graph(self, channels: int) -> None:
        """Their graph stack's input LayerNorm, internal GRU and space step (``"rstg"``
        is theirs, ``AuthorsRSTGConv``), and external GRU."""
        cfg = self.config
        self.input_norm = GraphLayerNorm(channels)
        gnn = "rstg_authors" if cfg.gnn == "rstg" else cfg.gnn
        n_layers = 1 if cfg.share_weights else cfg.iterations
        self.spatial = nn.ModuleList(
            make_spatial_layer(gnn, channels, cfg.edge_geometry, edge_dim(cfg.edge_motion))
            for _ in range(n_layers))
        self.temporal = nn.ModuleList(
            TemporalUpdate(channels, cfg.temporal) for _ in range(n_layers))
        self.temporal_out = TemporalUpdate(channels, cfg.temporal)

    def init_write_back(self, channels: int) -> tuple[nn.Module, nn.Parameter | None]:
        """Their write-back ``x + LN(y) * s + b`` (:class:`AuthorsWriteBack`), no ``gamma``."""
        return AuthorsWriteBack(channels, self.config.gate_init), None

    def _check_input(self, x: Tensor) -> None:
        super()._check_input(x)  # empty clips, dtypes
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"x: expected [B, T, {self.in_channels}, {self.size[0]}, {self.size[1]}] "
                f"(flavor='authors' is built for one map size, spatial_size), got shape "
                f"{tuple(x.shape)}"
            )

    def compute_regions(self, x: Tensor, regions: Tensor | None
                        ) -> tuple[Tensor, Tensor, Tensor]:
        if regions is not None:
            raise ValueError("regions: flavor='authors' predicts its regions (mode 'dyreg')")
        b, t, c, h, w = x.shape
        xf = x.reshape(b * t, c, h, w)
        if self.proj_in is not None:
            xf = self.proj_in_norm(conv1x1(xf, self.proj_in))  # their project_i3d (+ LN2D)
        rdtype = torch.float64 if xf.dtype == torch.float64 else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            raw = self.regions(xf.to(rdtype), b, t)  # Eq. 1-4
            kernels, regions = authors_region_kernels(raw, self.ref_rows, self.ref_cols, h, w)
        return xf, regions, kernels.reshape(b * t, self.num_nodes, h, w)

    def embed_nodes(self, xf: Tensor, regions: Tensor, kernels: Tensor) -> Tensor:
        nodes = pool_nodes(xf, kernels)  # Eq. 7
        if self.pos_embed is not None:
            nodes = nodes + self.pos_embed(kernels).to(nodes.dtype)
        return nodes

    def graph_stack(self, nodes: Tensor, want_attention: bool,
                    graph_inputs: GraphInputs | None = None) -> tuple[Tensor, Tensor | None]:
        """Their RSTG schedule (:func:`~dyreg_pyg.nn.stack.authors_graph_stack`)."""
        cfg = self.config
        return authors_graph_stack(nodes, self.input_norm, self.temporal, self.spatial,
                                   self.temporal_out, cfg.iterations, cfg.backend,
                                   cfg.self_loops, want_attention, graph_inputs)

    def project_out(self, nodes: Tensor) -> tuple[Tensor, Tensor | None]:
        """Their projection back (``project_back_i3d_linear``, a 1x1 conv after the
        re-mapping) applied to the nodes: ``W (sum_i K_i v_i) + b = sum_i K_i (W v_i) + b``,
        the same map at ``N / (H W)`` of the cost; its bias is the shift."""
        if self.proj_out is None:
            return nodes, None
        return F.linear(nodes, self.proj_out.weight.flatten(1)), self.proj_out.bias

    def write_back(self, norm: nn.Module, gamma: Tensor | None, x: Tensor, y: Tensor) -> Tensor:
        return norm(x, y)

    def fold_write_back(self, norm: nn.Module, gamma: Tensor | None, nodes: Tensor,
                        kernels: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return norm.fold(nodes, kernels, shift)

    def can_fold_write_back(self, norm: nn.Module, x: Tensor) -> bool:
        return True


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
