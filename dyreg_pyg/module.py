"""DyRegGNN: regions -> pooled nodes -> K x (space, time) graph processing -> re-mapping."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from .graph import build_graph_batch, frame_edge_index
from .kernels import (
    KernelPositionEmbedding,
    RegionPositionEmbedding,
    fold_norm,
    pool_nodes,
    regions_to_boxes,
    remap_nodes,
    remap_residual,
)
from .nn import RSTGConv, TemporalUpdate, make_spatial_layer
from .nn.authors import AuthorsRSTGConv
from .nn.registry import SpatialLayerSpec
from .regions import REGION_MODES, default_init, make_region_generator

__all__ = ["DyRegConfig", "DyRegDetails", "DyRegGNN", "DyRegBlock"]

log = logging.getLogger(__name__)

BACKENDS = ("pyg", "dense")
NORMS = ("batch", "layer", "none")
FLAVORS = ("paper", "authors")
POSITION_INPUTS = ("kernel", "region")


@dataclass
class DyRegConfig:
    """Hyper-parameters of :class:`DyRegGNN` (paper defaults); loadable from YAML presets.

    Attributes:
        num_nodes: ``N`` regions / graph nodes per frame (paper: 9).
        node_channels: node feature size; ``None`` keeps the input's channel count.
        regions: region mode, one of :data:`~dyreg_pyg.regions.REGION_MODES`.
        init: reference points, ``"center"`` or ``"grid"``; ``None``: the mode's
            (:func:`~dyreg_pyg.regions.default_init`: the grid for ``fixed`` and ``static``,
            which reject ``"center"`` - their N regions would be one region - and the centre
            for the others).
        init_size: starting kernel radius (normalised); ``None`` picks one per ``init``.
        init_jitter: per-node random offset of the references (0: the paper's start; > 0
            breaks the symmetry of the centre start, see :class:`~dyreg_pyg.regions.RegionAlpha`).
        region_channels: ``C'`` of the region branch ``f``/``g``/GRU (Eq. 1-3); ``None``:
            the flavour's (paper 32, authors 128).
        gnn: spatial layer: ``"rstg"`` (the flavour's Eq. 8: :class:`~dyreg_pyg.nn.RSTGConv`
            or, for ``flavor="authors"``, their ``AuthorsRSTGConv``), ``"rstg_authors"``, or
            a ``torch_geometric.nn`` conv name.
        temporal: ``"gru"`` (Eq. 9), ``"lstm"`` or ``"none"``.
        iterations: ``K`` alternations of space and time (paper: 3).
        share_weights: one spatial and one temporal layer reused by all iterations;
            ``None``: the flavour's (paper ``False``, authors ``True``).
        self_loops: frame graphs include ``i -> i`` edges.
        position_embedding: add a position embedding to the nodes (Section 3.2).
        position_input: what it reads: ``"kernel"`` (the paper: ``Linear(vec K_i)``,
            :class:`~dyreg_pyg.kernels.KernelPositionEmbedding`) or ``"region"`` (ours: a
            linear map of the region's ``(cx, cy, w, h)``,
            :class:`~dyreg_pyg.kernels.RegionPositionEmbedding`, whose change under a
            displacement does not depend on the place).
        position_scale: constant multiplier of that embedding (1: the paper). Ours, for the
            study of issue 15: at 1 a trained node's motion reaches the graph at about 1/200
            of the node (:class:`~dyreg_pyg.kernels.KernelPositionEmbedding`).
        spatial_size: ``(H, W)`` the position embedding reads; ``None``: 14 x 14 unless the
            caller knows the feature-map size (the model factory infers it).
        backend: ``"pyg"`` (message passing on a PyG ``Batch``) or ``"dense"`` (batched
            matmuls; ``gnn="rstg"`` only, same parameters and result).
        norm: normalisation of the block output in :class:`DyRegBlock`; ``None``: the
            flavour's (paper ``"batch"``, authors ``"layer"``: their LayerNorm write-back).
        gate_init: starting value of :class:`DyRegBlock`'s residual scale ``gamma`` (0: the
            block starts as the identity, which keeps a pretrained backbone's function; a
            network trained from scratch may open the gate from the start). For
            ``flavor="authors"`` the starting scale of their LayerNorm write-back.
        flavor: ``"paper"`` (the paper's text) or ``"authors"`` (exactly the authors' released
            code, :mod:`dyreg_pyg.authors`; their checkpoints load with
            :func:`dyreg_pyg.compat.load_official`).
    """

    num_nodes: int = 9
    node_channels: int | None = None
    regions: str = "dyreg"
    init: str | None = None
    init_size: float | None = None
    init_jitter: float = 0.0
    region_channels: int | None = None
    gnn: Any = "rstg"
    temporal: str = "gru"
    iterations: int = 3
    share_weights: bool | None = None
    self_loops: bool = True
    position_embedding: bool = True
    position_input: str = "kernel"
    position_scale: float = 1.0
    spatial_size: tuple[int, int] | None = None
    backend: str = "pyg"
    norm: str | None = None
    gate_init: float = 0.0
    flavor: str = "paper"

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor: expected one of {FLAVORS}, got {self.flavor!r}")
        authors = self.flavor == "authors"
        if self.init is None:
            self.init = default_init(self.regions)
        if self.region_channels is None:
            self.region_channels = 128 if authors else 32
        if self.share_weights is None:
            self.share_weights = authors
        if self.norm is None:
            self.norm = "layer" if authors else "batch"
        try:
            self.position_scale = float(self.position_scale)
        except (TypeError, ValueError):
            raise ValueError(f"position_scale: expected a positive number, got "
                             f"{self.position_scale!r}") from None
        if not self.position_scale > 0:
            raise ValueError(f"position_scale: expected a positive number, got "
                             f"{self.position_scale}")
        if self.position_input not in POSITION_INPUTS:
            raise ValueError(f"position_input: expected one of {POSITION_INPUTS}, got "
                             f"{self.position_input!r}")
        if self.position_input != "kernel" and not self.position_embedding:
            raise ValueError(f"position_input={self.position_input!r} chooses the position "
                             f"embedding's input, but position_embedding is False")
        if self.position_scale != 1.0 and not self.position_embedding:
            raise ValueError(f"position_scale={self.position_scale} scales the position "
                             f"embedding, but position_embedding is False")
        if authors:
            from .authors import check_authors_config

            check_authors_config(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DyRegConfig:
        """Build from a mapping, rejecting unknown keys with the list of valid ones."""
        values = dict(values or {})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"dyreg config: unknown keys {unknown}; valid keys: {sorted(valid)}")
        if values.get("spatial_size") is not None:
            s = values["spatial_size"]
            values["spatial_size"] = (s, s) if isinstance(s, int) else tuple(s)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not isinstance(self.gnn, str):
            d["gnn"] = repr(self.gnn)
        return d


@dataclass
class DyRegDetails:
    """What a :class:`DyRegGNN` forward predicted (detached from autograd).

    Attributes:
        regions: ``[B, T, N, 4]`` ``(cx, cy, w, h)`` normalised to the feature map.
        boxes: ``[B, T, N, 4]`` ``(x0, y0, x1, y1)`` kernel supports, clipped to ``[0, 1]``.
        kernels: ``[B, T, N, H, W]`` pooling / re-mapping weights (each sums to 1).
        graph: the PyG ``Batch`` of ``B * T`` frame graphs; ``graph.x`` holds the nodes after
            the last iteration (``[B*T*N, node_channels]``), ``graph.region`` the regions.
        attention: per-edge attention of the last RSTG iteration (``[E]``), if available.
        live_regions: ``regions`` still attached to autograd, for losses on the regions
            (e.g. the offset distillation of the paper's implementation details).
    """

    regions: Tensor
    boxes: Tensor
    kernels: Tensor
    graph: Batch | None = None
    attention: Tensor | None = None
    live_regions: Tensor | None = None


class DyRegGNN(nn.Module):
    r"""The DyReg-GNN module: feature map in, feature map of the same shape out.

    For every frame :math:`X_t` it predicts :math:`N` regions (Eq. 1-4), pools one node from
    each with a separable kernel (Eq. 5-7) plus a position embedding of that kernel (or, with
    ``position_input="region"``, of the region's four numbers), runs
    :math:`K` alternations of spatial message passing (Eq. 8) and a temporal recurrent
    update (Eq. 9), and sends each node back to the positions it came from (Eq. 10):

    .. math::
        \mathbf{y}_{p,t} = \sum_{i=1}^{N} \mathcal{K}^{(i)}_t(p)\, \hat{\mathbf{v}}_{i,t}

    Args:
        in_channels: channels ``C`` of the input map.
        node_channels: node size; ``None`` keeps ``C``. Linear projections map ``C`` to it
            after pooling and back before re-mapping (pooling is linear with weights summing
            to one, so projecting the nodes equals projecting the map, at ``N/(HW)`` the cost).
        num_nodes, regions, init, gnn, temporal, iterations: see :class:`DyRegConfig`.
        **kwargs: any other :class:`DyRegConfig` field.

    Shapes:
        - **input:** ``x [B, T, C, H, W]``; ``regions [B, T, N, 4]`` for ``regions="external"``
        - **output:** ``[B, T, C, H, W]`` (and :class:`DyRegDetails` with
          ``return_details=True``)
    """

    def __init__(
        self,
        in_channels: int,
        node_channels: int | None = None,
        num_nodes: int = 9,
        regions: str = "dyreg",
        init: str | None = None,
        gnn: SpatialLayerSpec = "rstg",
        temporal: str = "gru",
        iterations: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        cfg = DyRegConfig.from_dict(
            dict(node_channels=node_channels, num_nodes=num_nodes, regions=regions, init=init,
                 gnn=gnn, temporal=temporal, iterations=iterations, **kwargs)
        )
        self.config = cfg
        if in_channels < 1:
            raise ValueError(f"in_channels: expected a positive integer, got {in_channels}")
        for name in ("num_nodes", "region_channels"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        nc = cfg.node_channels
        if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
            raise ValueError(f"node_channels: expected a positive integer or None, got {nc!r}")
        if cfg.regions not in REGION_MODES:
            raise ValueError(
                f"regions: unknown mode {cfg.regions!r}; expected one of {REGION_MODES}"
            )
        if cfg.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {cfg.backend!r}")
        if cfg.backend == "dense" and cfg.gnn not in ("rstg", "rstg_authors"):
            raise ValueError(
                f"backend: 'dense' implements gnn='rstg' and 'rstg_authors' only, got "
                f"gnn={cfg.gnn!r}"
            )
        if cfg.iterations < 1:
            raise ValueError(f"iterations: expected >= 1, got {cfg.iterations}")
        self.in_channels = in_channels
        self.num_nodes = cfg.num_nodes
        ch = cfg.node_channels or in_channels
        self.node_channels = ch
        self.authors: nn.Module | None = None
        if cfg.flavor == "authors":  # the authors' module, dyreg_pyg/authors.py
            from .authors import AuthorsDyRegGNN

            self.authors = AuthorsDyRegGNN(in_channels, cfg)
            return

        self.region_generator = make_region_generator(
            cfg.regions, in_channels, cfg.num_nodes, cfg.init, cfg.init_size, cfg.region_channels,
            cfg.init_jitter,
        )
        self.proj_in = nn.Linear(in_channels, ch) if ch != in_channels else nn.Identity()
        self.proj_out = nn.Linear(ch, in_channels) if ch != in_channels else nn.Identity()
        grid = cfg.spatial_size or (14, 14)
        self.pos_embed: nn.Module | None = None
        if cfg.position_embedding and cfg.position_input == "region":
            self.pos_embed = RegionPositionEmbedding(ch, cfg.position_scale)
        elif cfg.position_embedding:
            self.pos_embed = KernelPositionEmbedding(grid, ch, cfg.position_scale)
        n_layers = 1 if cfg.share_weights else cfg.iterations
        self.spatial = nn.ModuleList(make_spatial_layer(cfg.gnn, ch) for _ in range(n_layers))
        self.temporal = nn.ModuleList(TemporalUpdate(ch, cfg.temporal) for _ in range(n_layers))
        self._is_rstg = all(isinstance(m, (RSTGConv, AuthorsRSTGConv)) for m in self.spatial)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter as at construction (regions back on their
        references: each submodule's own ``reset_parameters`` decides for its subtree)."""
        if self.authors is not None:
            self.authors.reset_parameters()
            return
        for child in self.children():
            _reset_tree(child)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(
                f"x: expected a clip of feature maps [B, T, C, H, W], got shape {tuple(x.shape)}"
            )
        if x.shape[2] != self.in_channels:
            raise ValueError(
                f"x: expected {self.in_channels} channels (in_channels) at dim 2 of "
                f"[B, T, C, H, W], got {x.shape[2]} (shape {tuple(x.shape)})"
            )
        if x.numel() == 0:
            raise ValueError(
                f"x: expected a non-empty clip [B, T, C, H, W] (B, T, H, W >= 1), got shape "
                f"{tuple(x.shape)}"
            )
        dtypes = {p.dtype for p in self.parameters() if p.is_floating_point()}
        low = sorted(str(d) for d in dtypes & {torch.float16, torch.bfloat16})
        if low:
            raise ValueError(
                f"DyRegGNN: parameters in {', '.join(low)} are not supported (the regions and "
                f"kernels need float32); keep the module in float32 and run it under "
                f"torch.autocast for mixed precision"
            )
        if len(dtypes) == 1 and x.dtype not in dtypes and not torch.is_autocast_enabled(
            x.device.type
        ):
            raise ValueError(
                f"x: expected dtype {next(iter(dtypes))} (the module's parameters) outside "
                f"autocast, got {x.dtype}; cast the input or the module, or use torch.autocast"
            )

    def _process(self, x: Tensor, regions: Tensor | None, want_attention: bool
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Regions, kernels, pooled nodes and K graph iterations: node states ``[B*T, N, C']``,
        regions ``[B, T, N, 4]``, kernels ``[B, T, N, H, W]`` and the last attention."""
        self._check_input(x)
        b, t, c, h, w = x.shape
        n = self.num_nodes
        regions, kernels = self.region_generator(x, regions)  # Eq. 1-6, float32
        flat_k = kernels.reshape(b * t, n, h, w)
        nodes = self.proj_in(pool_nodes(x.reshape(b * t, c, h, w), flat_k))  # Eq. 7
        if self.pos_embed is not None:
            where = regions.reshape(b * t, n, 4) if self.config.position_input == "region" \
                else flat_k
            nodes = nodes + self.pos_embed(where).to(nodes.dtype)

        attention = None
        if self.config.backend == "dense":
            for k in range(self.config.iterations):
                idx = 0 if self.config.share_weights else k
                nodes = self.spatial[idx].forward_dense(nodes, self.config.self_loops)  # Eq. 8
                nodes = self.temporal[idx](nodes.view(b, t, n, -1)).reshape(b * t, n, -1)  # Eq. 9
            return nodes, regions, kernels, attention
        # Message passing needs only the edges; the PyG Batch is assembled for details.
        edge_index = frame_edge_index(b * t, n, self.config.self_loops, x.device)
        v = nodes.reshape(b * t * n, -1)
        graph_kw = {}
        if any(isinstance(m, AuthorsRSTGConv) for m in self.spatial):  # norms per frame graph
            graph_kw = dict(batch=torch.arange(b * t, device=x.device).repeat_interleave(n),
                            num_graphs=b * t)
        for k in range(self.config.iterations):
            idx = 0 if self.config.share_weights else k
            if self._is_rstg and want_attention:
                v, (_, attention) = self.spatial[idx](v, edge_index, return_attention_weights=True,
                                                      **graph_kw)
            else:
                v = self.spatial[idx](v, edge_index, **graph_kw)  # Eq. 8 (or any PyG layer)
            v = self.temporal[idx](v.view(b, t, n, -1)).reshape(b * t * n, -1)  # Eq. 9
        return v.view(b * t, n, -1), regions, kernels, attention

    def node_states(self, x: Tensor, regions: Tensor | None = None) -> Tensor:
        """The nodes after the K graph iterations, before re-mapping, attached to autograd:
        ``[B, T, N, node_channels]`` - for node-level read-outs and losses."""
        b, t = x.shape[:2]
        if self.authors is not None:
            self._check_input(x)  # empty clips, dtypes (the flavour checks the map size)
            return self.authors.node_states(x)
        nodes = self._process(x, regions, want_attention=False)[0]
        return nodes.view(b, t, self.num_nodes, -1)

    def forward(
        self, x: Tensor, regions: Tensor | None = None, return_details: bool = False
    ) -> Tensor | tuple[Tensor, DyRegDetails]:
        """Apply the module; see the class docstring for shapes."""
        nodes, kernels, shift, details = self.remap_parts(x, regions, return_details)
        b, t, c, h, w = x.shape
        out = remap_nodes(nodes, kernels)  # Eq. 10
        if shift is not None:
            out = out + shift.to(out.dtype).view(1, c, 1, 1)
        out = out.view(b, t, c, h, w)
        return (out, details) if return_details else out

    def remap_parts(self, x: Tensor, regions: Tensor | None = None, return_details: bool = False
                    ) -> tuple[Tensor, Tensor, Tensor | None, DyRegDetails | None]:
        """What the output is made of: ``forward(x) = remap_nodes(nodes, kernels) + shift``
        (Eq. 10; ``shift`` a per-channel constant or ``None``) with ``nodes [B*T, N, C]``
        already projected back to the input's ``C`` channels and ``kernels [B*T, N, H, W]``;
        and the :class:`DyRegDetails` when ``return_details``. :class:`DyRegBlock` adds them
        to its residual in one pass, with its normalisation folded into the nodes."""
        if self.authors is not None:
            if regions is not None:
                raise ValueError("regions: flavor='authors' predicts its regions (mode 'dyreg')")
            self._check_input(x)  # empty clips, dtypes (the flavour checks the map size)
            nodes, kernels, shift, parts = self.authors.remap_parts(x, return_details)
            return nodes, kernels, shift, None if parts is None else DyRegDetails(**parts)
        nodes, regions, kernels, attention = self._process(x, regions, return_details)
        b, t, c, h, w = x.shape
        flat_k = kernels.reshape(b * t, self.num_nodes, h, w)
        out_nodes = self.proj_out(nodes)
        if not return_details:
            return out_nodes, flat_k, None, None
        graph = None
        if self.config.backend == "pyg":
            graph = build_graph_batch(
                nodes.detach().view(b, t, self.num_nodes, -1), regions.detach(),
                self.config.self_loops,
            )
        details = DyRegDetails(
            regions=regions.detach(),
            boxes=regions_to_boxes(regions.detach()),
            kernels=kernels.detach(),
            graph=graph,
            attention=None if attention is None else attention.detach(),
            live_regions=regions,
        )
        return out_nodes, flat_k, None, details


def _reset_tree(module: nn.Module) -> None:
    """Call ``reset_parameters()`` on the outermost modules that have one (a module's own
    reset decides for its subtree, e.g. the zero ``W_o`` of the region branch); descend
    into those that have none."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    for child in module.children():
        _reset_tree(child)


class DyRegBlock(nn.Module):
    """Residual insertion of :class:`DyRegGNN`: ``x + gamma * norm(DyRegGNN(x))``.

    ``gamma`` (one per channel) starts at ``gate_init``, zero by default, so inserting the
    block leaves a pretrained network's output unchanged at step 0 (the paper adds the module
    as a residual to keep the benefit of ImageNet pre-training).

    Args:
        in_channels: channels of the map.
        config: a :class:`DyRegConfig` or a dict of its fields.
        **kwargs: overrides of ``config`` fields.

    Shapes:
        - **input:** ``[B, T, C, H, W]``
        - **output:** ``[B, T, C, H, W]``
    """

    def __init__(
        self, in_channels: int, config: DyRegConfig | dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__()
        if isinstance(config, DyRegConfig):
            cfg = {**config.to_dict(), **kwargs}
            cfg["gnn"] = config.gnn if "gnn" not in kwargs else kwargs["gnn"]
        else:
            cfg = {**(config or {}), **kwargs}
        norm = cfg.pop("norm", None)
        gate_init = cfg.pop("gate_init", 0.0)
        if norm is not None and norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        self.gnn = DyRegGNN(in_channels, norm=norm, gate_init=gate_init, **cfg)
        norm = self.gnn.config.norm  # None resolves to the flavour's
        self.norm_kind = norm
        if self.gnn.config.flavor == "authors":  # x + LN(y) * s + b, no gamma
            from .authors import AuthorsWriteBack

            self.norm: nn.Module = AuthorsWriteBack(in_channels, gate_init)
            self.register_parameter("gamma", None)
            self.last = None
            self.record = False
            return
        if norm == "batch":
            self.norm = nn.BatchNorm2d(in_channels)
        elif norm == "layer":
            self.norm = nn.GroupNorm(1, in_channels)
        else:
            self.norm = nn.Identity()
        self.gamma = nn.Parameter(torch.full((in_channels,), float(gate_init)))
        self.last: DyRegDetails | None = None
        self.record = False

    def forward(self, x: Tensor, regions: Tensor | None = None) -> Tensor:
        """Residual DyReg update. With ``record=True`` the details land in ``self.last``.

        The normalisation's statistics are sums over the map of the re-mapped output, which
        :func:`~dyreg_pyg.kernels.remap_moments` takes from the nodes; the normalisation and
        ``gamma`` then fold into the nodes and a per-channel shift, and
        :func:`~dyreg_pyg.kernels.remap_residual` writes ``x + gamma * norm(y)`` in one pass
        (the same function, without the re-mapped map ``y``, its normalised copy or their
        saved activations). Norm modules this does not cover (e.g. ``SyncBatchNorm``) take
        the plain path."""
        if not self._fusable(x):
            if self.record:
                y, self.last = self.gnn(x, regions, return_details=True)
            else:
                y = self.gnn(x, regions)
            if self.gamma is None:
                return self.norm(x, y)
            b, t, c, h, w = y.shape
            y = self.norm(y.reshape(b * t, c, h, w)).view(b, t, c, h, w)
            return x + self.gamma.view(1, 1, c, 1, 1).to(y.dtype) * y
        nodes, kernels, shift, details = self.gnn.remap_parts(x, regions, self.record)
        if self.record:
            self.last = details
        b, t, c, h, w = x.shape
        if self.gamma is None:
            scale, shift = self.norm.fold(nodes, kernels, shift)
        else:
            scale, shift = fold_norm(self.norm, nodes, kernels, shift)
            gamma = self.gamma.to(scale.dtype)
            scale = scale * gamma
            shift = None if shift is None else shift * gamma
        out = remap_residual(x.reshape(b * t, c, h, w), nodes * scale.unsqueeze(-2), kernels,
                             shift)  # x + gamma * norm(Eq. 10)
        return out.view(b, t, c, h, w)

    def _fusable(self, x: Tensor) -> bool:
        if x.dim() != 5:
            return False  # the plain path raises the input errors
        if self.gamma is None:
            return True
        kind = type(self.norm)
        if kind is nn.BatchNorm2d:
            return not (self.norm.training and x.shape[0] * x.shape[1] * x.shape[3] * x.shape[4]
                        <= 1)  # BatchNorm's own error for one value per channel
        return kind is nn.Identity or (kind is nn.GroupNorm and self.norm.num_groups == 1)

