"""DyRegGNN: regions -> pooled nodes -> K x (space, time) graph processing -> re-mapping.

:class:`DyRegGNN` is the paper's flavour; it builds its parts through hooks (``init_regions``,
``init_projections``, ``init_position_embedding``, ``init_graph``, ``init_write_back``) and
runs them through hooks (``compute_regions``, ``embed_nodes``, ``graph_stack``,
``project_out``, ``write_back``, ``fold_write_back``), as PyG's ``BasicGNN`` builds its
layers through ``init_conv``. A flavour is a subclass that overrides them
(:class:`~dyreg_pyg.authors.AuthorsDyRegGNN`), registered by name with
:func:`register_flavor`; ``DyRegGNN(..., flavor="authors")`` and :class:`DyRegBlock` pick the
class from that registry (:func:`flavor_class`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from .config import FLAVORS, DyRegConfig
from .geometry import regions_to_boxes
from .graph import build_graph_batch
from .nn import TemporalUpdate, make_spatial_layer
from .nn.inputs import GraphInputs, edge_dim, needs_geometry
from .nn.kernels import pool_nodes
from .nn.position import KernelPositionEmbedding, RegionPositionEmbedding
from .nn.regions import make_region_generator
from .nn.registry import SpatialLayerSpec
from .nn.remap import fold_norm, remap_nodes, remap_residual
from .nn.stack import paper_graph_stack
from .nn.temporal import TemporalSpec

__all__ = ["DyRegConfig", "DyRegDetails", "DyRegGNN", "DyRegBlock", "register_flavor",
           "flavor_class", "FLAVOR_CLASSES"]

log = logging.getLogger(__name__)

FLAVOR_CLASSES: dict[str, type[DyRegGNN]] = {}
"""Flavour name -> :class:`DyRegGNN` class (filled by :func:`register_flavor`)."""


def register_flavor(name: str) -> Callable[[type[DyRegGNN]], type[DyRegGNN]]:
    """Class decorator: register a :class:`DyRegGNN` subclass as the flavour ``name`` (one
    of :data:`~dyreg_pyg.config.FLAVORS`, which :class:`DyRegConfig` validates)."""
    if name not in FLAVORS:
        raise ValueError(f"flavor: expected one of {FLAVORS}, got {name!r}")

    def add(cls: type[DyRegGNN]) -> type[DyRegGNN]:
        if name in FLAVOR_CLASSES and FLAVOR_CLASSES[name] is not cls:
            raise ValueError(f"flavor: {name!r} is already registered "
                             f"({FLAVOR_CLASSES[name].__name__})")
        cls.flavor = name
        FLAVOR_CLASSES[name] = cls
        return cls

    return add


def flavor_class(name: str) -> type[DyRegGNN]:
    """The :class:`DyRegGNN` class of the flavour ``name``."""
    try:
        return FLAVOR_CLASSES[name]
    except KeyError:
        raise ValueError(f"flavor: expected one of {sorted(FLAVOR_CLASSES)}, got "
                         f"{name!r}") from None


@dataclass
class DyRegDetails:
    """What a :class:`DyRegGNN` forward predicted (detached from autograd, but for
    ``live_regions`` and, with ``live_graph=True``, ``graph``).

    Attributes:
        regions: ``[B, T, N, 4]`` ``(cx, cy, w, h)`` normalised to the feature map.
        boxes: ``[B, T, N, 4]`` ``(x0, y0, x1, y1)`` kernel supports, clipped to ``[0, 1]``.
        kernels: ``[B, T, N, H, W]`` pooling / re-mapping weights (each sums to 1).
        graph: the PyG ``Batch`` of ``B * T`` frame graphs; ``graph.x`` holds the nodes after
            the last iteration (``[B*T*N, node_channels]``), ``graph.region`` the regions,
            ``graph.pos`` / ``graph.edge_attr`` their geometry. Detached, unless the module was
            built with ``live_graph=True``: then ``x``, ``region``, ``pos`` and ``edge_attr``
            carry the gradient to the backbone and the region generator.
        attention: per-edge attention ``[E]`` of the last space step whose layer reports it
            (our RSTG layers; :mod:`dyreg_pyg.nn.stack`), else ``None``.
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

    This class is the paper's flavour. ``DyRegGNN(..., flavor="authors")`` (or a ``config``
    with that flavour) builds the registered subclass instead
    (:class:`~dyreg_pyg.authors.AuthorsDyRegGNN`); both are ``DyRegGNN`` instances.

    Args:
        in_channels: channels ``C`` of the input map.
        node_channels: node size; ``None`` keeps ``C``. Linear projections map ``C`` to it
            after pooling and back before re-mapping (pooling is linear with weights summing
            to one, so projecting the nodes equals projecting the map, at ``N/(HW)`` the cost).
        num_nodes, regions, init, gnn, temporal, iterations: see :class:`DyRegConfig`.
        config: a whole :class:`DyRegConfig` instead of the fields (then no other field).
        **kwargs: any other :class:`DyRegConfig` field.

    Shapes:
        - **input:** ``x [B, T, C, H, W]``; ``regions [B, T, N, 4]`` for ``regions="external"``
        - **output:** ``[B, T, C, H, W]`` (and :class:`DyRegDetails` with
          ``return_details=True``)
    """

    flavor: ClassVar[str] = "paper"

    def __new__(cls, *args: Any, **kwargs: Any) -> DyRegGNN:
        if cls is DyRegGNN:  # the flavour's class, from the registry
            config = kwargs.get("config")
            name = config.flavor if isinstance(config, DyRegConfig) else kwargs.get(
                "flavor", DyRegGNN.flavor)
            cls = flavor_class(name)
        return super().__new__(cls)

    def __init__(
        self,
        in_channels: int,
        node_channels: int | None = None,
        num_nodes: int = 9,
        regions: str = "dyreg",
        init: str | None = None,
        gnn: SpatialLayerSpec = "rstg",
        temporal: TemporalSpec = "gru",
        iterations: int = 3,
        *,
        config: DyRegConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        named = dict(node_channels=node_channels, num_nodes=num_nodes, regions=regions,
                     init=init, gnn=gnn, temporal=temporal, iterations=iterations)
        if config is None:
            kwargs.setdefault("flavor", self.flavor)
            config = DyRegConfig.from_dict({**named, **kwargs})
        else:
            defaults = DyRegConfig(init=None)
            given = sorted(kwargs) + sorted(k for k, v in named.items()
                                            if k != "init" and v != getattr(defaults, k)
                                            or k == "init" and v is not None)
            if given:
                raise ValueError(f"config: pass either a DyRegConfig or its fields, got both "
                                 f"(fields {given})")
        if config.flavor != self.flavor:
            raise ValueError(f"flavor: {type(self).__name__} implements {self.flavor!r}, got "
                             f"a config with flavor={config.flavor!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels: expected a positive integer, got {in_channels}")
        self.config = config
        self.in_channels = in_channels
        self.num_nodes = config.num_nodes
        self.node_channels = config.node_channels or in_channels
        self.init_parts(in_channels, self.node_channels)

    # ---- construction hooks ---------------------------------------------------------------

    def init_parts(self, in_channels: int, channels: int) -> None:
        """Build every part, in the order their parameters are registered (which an
        optimizer's saved state relies on)."""
        self.init_regions(in_channels, channels)
        self.init_projections(in_channels, channels)
        self.init_position_embedding(channels)
        self.init_graph(channels)

    def init_regions(self, in_channels: int, channels: int) -> None:
        """Eq. 1-6: ``region_generator``, one class per region mode."""
        cfg = self.config
        self.region_generator = make_region_generator(
            cfg.regions, in_channels, cfg.num_nodes, cfg.init, cfg.init_size, cfg.region_channels,
            cfg.init_jitter,
        )

    def init_projections(self, in_channels: int, channels: int) -> None:
        """``proj_in`` / ``proj_out``: linear maps between the input's and the nodes' size."""
        same = channels == in_channels
        self.proj_in = nn.Identity() if same else nn.Linear(in_channels, channels)
        self.proj_out = nn.Identity() if same else nn.Linear(channels, in_channels)

    def init_position_embedding(self, channels: int) -> None:
        """``pos_embed`` (Section 3.2) of the kernel or of the region; ``None`` without."""
        cfg = self.config
        self.pos_embed: nn.Module | None = None
        if cfg.position_embedding and cfg.position_input == "region":
            self.pos_embed = RegionPositionEmbedding(channels, cfg.position_scale)
        elif cfg.position_embedding:
            self.pos_embed = KernelPositionEmbedding(cfg.spatial_size or (14, 14), channels,
                                                     cfg.position_scale)

    def init_graph(self, channels: int) -> None:
        """``spatial`` (Eq. 8) and ``temporal`` (Eq. 9) layers: one pair, or one per
        iteration."""
        cfg = self.config
        n_layers = 1 if cfg.share_weights else cfg.iterations
        self.spatial = nn.ModuleList(
            make_spatial_layer(cfg.gnn, channels, cfg.edge_geometry, edge_dim(cfg.edge_motion))
            for _ in range(n_layers))
        self.temporal = nn.ModuleList(
            TemporalUpdate(channels, cfg.temporal) for _ in range(n_layers))

    def init_write_back(self, channels: int) -> tuple[nn.Module, nn.Parameter | None]:
        """The :class:`DyRegBlock`'s normalisation and residual scale ``gamma`` (per channel,
        starting at ``gate_init``): ``x + gamma * norm(y)``."""
        kind = self.config.norm
        norm: nn.Module = nn.Identity()
        if kind == "batch":
            norm = nn.BatchNorm2d(channels)
        elif kind == "layer":
            norm = nn.GroupNorm(1, channels)
        return norm, nn.Parameter(torch.full((channels,), float(self.config.gate_init)))

    # ---- forward hooks ------------------------------------------------------------------

    def compute_regions(self, x: Tensor, regions: Tensor | None
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 1-6: the map the nodes are pooled from ``[B*T, C, H, W]``, the regions
        ``[B, T, N, 4]`` and the kernels ``[B*T, N, H, W]``."""
        b, t, c, h, w = x.shape
        regions, kernels = self.region_generator(x, regions)  # Eq. 1-6, float32
        return x.reshape(b * t, c, h, w), regions, kernels.reshape(b * t, self.num_nodes, h, w)

    def embed_nodes(self, xf: Tensor, regions: Tensor, kernels: Tensor) -> Tensor:
        """Eq. 7 and the position embedding: nodes ``[B*T, N, C']``."""
        nodes = self.proj_in(pool_nodes(xf, kernels))  # Eq. 7
        if self.pos_embed is not None:
            where = regions.reshape(kernels.shape[0], self.num_nodes, 4) \
                if self.config.position_input == "region" else kernels
            nodes = nodes + self.pos_embed(where).to(nodes.dtype)
        return nodes

    def graph_stack(self, nodes: Tensor, want_attention: bool,
                    graph_inputs: GraphInputs | None = None) -> tuple[Tensor, Tensor | None]:
        """Eq. 8-9 on ``nodes [B, T, N, C']`` (:func:`~dyreg_pyg.nn.stack.paper_graph_stack`);
        ``graph_inputs``: the live regions, given when a space layer takes the geometry."""
        cfg = self.config
        return paper_graph_stack(nodes, self.spatial, self.temporal, cfg.iterations,
                                 cfg.backend, cfg.self_loops, want_attention, graph_inputs)

    def project_out(self, nodes: Tensor) -> tuple[Tensor, Tensor | None]:
        """Nodes back to the input's channels and a per-channel shift (or ``None``) added
        after the re-mapping."""
        return self.proj_out(nodes), None

    def write_back(self, norm: nn.Module, gamma: Tensor | None, x: Tensor, y: Tensor) -> Tensor:
        """:class:`DyRegBlock`'s output ``x + gamma * norm(y)`` on maps ``[B, T, C, H, W]``."""
        b, t, c, h, w = y.shape
        y = norm(y.reshape(b * t, c, h, w)).view(b, t, c, h, w)
        return x + gamma.view(1, 1, c, 1, 1).to(y.dtype) * y

    def fold_write_back(self, norm: nn.Module, gamma: Tensor | None, nodes: Tensor,
                        kernels: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """:meth:`write_back` folded into the nodes: ``scale [G, C]`` and ``shift`` with
        ``gamma * norm(y) = remap_nodes(nodes * scale, kernels) + shift``."""
        scale, shift = fold_norm(norm, nodes, kernels, shift)
        gamma = gamma.to(scale.dtype)
        return scale * gamma, None if shift is None else shift * gamma

    def can_fold_write_back(self, norm: nn.Module, x: Tensor) -> bool:
        """Whether :meth:`fold_write_back` covers ``norm`` on ``x`` (else the plain path)."""
        kind = type(norm)
        if kind is nn.BatchNorm2d:
            return not (norm.training and x.shape[0] * x.shape[1] * x.shape[3] * x.shape[4]
                        <= 1)  # BatchNorm's own error for one value per channel
        return kind is nn.Identity or (kind is nn.GroupNorm and norm.num_groups == 1)

    # ---- the module -----------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Re-initialise every parameter as at construction (regions back on their
        references: each submodule's own ``reset_parameters`` decides for its subtree)."""
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
        """Regions, kernels, pooled nodes and the graph: node states ``[B*T, N, C']``,
        regions ``[B, T, N, 4]``, kernels ``[B*T, N, H, W]`` and the last attention."""
        self._check_input(x)
        b, t = x.shape[:2]
        xf, regions, kernels = self.compute_regions(x, regions)  # Eq. 1-6
        nodes = self.embed_nodes(xf, regions, kernels)  # Eq. 7
        inputs = (GraphInputs(regions, self.config.edge_motion)
                  if needs_geometry(self.spatial) else None)
        nodes, attention = self.graph_stack(nodes.reshape(b, t, self.num_nodes, -1),
                                            want_attention, inputs)  # Eq. 8-9
        return nodes.reshape(b * t, self.num_nodes, -1), regions, kernels, attention

    def node_states(self, x: Tensor, regions: Tensor | None = None) -> Tensor:
        """The nodes after the graph iterations, before re-mapping, attached to autograd:
        ``[B, T, N, node_channels]`` - for node-level read-outs and losses."""
        b, t = x.shape[:2]
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
        nodes, regions, kernels, attention = self._process(x, regions, return_details)
        out_nodes, shift = self.project_out(nodes)
        if not return_details:
            return out_nodes, kernels, shift, None
        return out_nodes, kernels, shift, self._details(nodes, regions, kernels, attention)

    def _details(self, nodes: Tensor, regions: Tensor, kernels: Tensor,
                 attention: Tensor | None) -> DyRegDetails:
        b, t, n = regions.shape[:3]
        graph = None
        if self.config.backend == "pyg":  # live_graph: x, pos, edge_attr keep their gradient
            live = self.config.live_graph
            graph = build_graph_batch((nodes if live else nodes.detach()).view(b, t, n, -1),
                                      regions if live else regions.detach(),
                                      self.config.self_loops)
        return DyRegDetails(
            regions=regions.detach(),
            boxes=regions_to_boxes(regions.detach()),
            kernels=kernels.detach().view(b, t, n, *kernels.shape[-2:]),
            graph=graph,
            attention=None if attention is None else attention.detach(),
            live_regions=regions,
        )


register_flavor("paper")(DyRegGNN)


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
    """Residual insertion of :class:`DyRegGNN`: ``x + gamma * norm(DyRegGNN(x))`` (the
    paper's flavour; each flavour defines its write-back, :meth:`DyRegGNN.init_write_back`).

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
            cfg = config.replace(**kwargs)
        else:
            cfg = DyRegConfig.from_dict({**(config or {}), **kwargs})
        self.gnn = flavor_class(cfg.flavor)(in_channels, config=cfg)
        self.norm_kind = cfg.norm
        norm, gamma = self.gnn.init_write_back(in_channels)
        self.norm = norm
        self.register_parameter("gamma", gamma)
        self.last: DyRegDetails | None = None
        self.record = False

    def forward(self, x: Tensor, regions: Tensor | None = None) -> Tensor:
        """Residual DyReg update. With ``record=True`` the details land in ``self.last``.

        The normalisation's statistics are sums over the map of the re-mapped output, which
        :func:`~dyreg_pyg.nn.remap.remap_moments` takes from the nodes; the normalisation and
        ``gamma`` then fold into the nodes and a per-channel shift, and
        :func:`~dyreg_pyg.nn.remap.remap_residual` writes ``x + gamma * norm(y)`` in one pass
        (the same function, without the re-mapped map ``y``, its normalised copy or their
        saved activations). Norm modules this does not cover (e.g. ``SyncBatchNorm``) take
        the plain path."""
        if x.dim() != 5 or not self.gnn.can_fold_write_back(self.norm, x):
            if self.record:  # the plain path (it also raises the input errors)
                y, self.last = self.gnn(x, regions, return_details=True)
            else:
                y = self.gnn(x, regions)
            return self.gnn.write_back(self.norm, self.gamma, x, y)
        nodes, kernels, shift, details = self.gnn.remap_parts(x, regions, self.record)
        if self.record:
            self.last = details
        b, t, c, h, w = x.shape
        scale, shift = self.gnn.fold_write_back(self.norm, self.gamma, nodes, kernels, shift)
        out = remap_residual(x.reshape(b * t, c, h, w), nodes * scale.unsqueeze(-2), kernels,
                             shift)  # x + gamma * norm(Eq. 10)
        return out.view(b, t, c, h, w)
