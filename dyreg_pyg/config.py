""":class:`DyRegConfig`: the hyper-parameters of DyReg-GNN, validated in one place."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from dataclasses import replace as _replace
from typing import Any

from .nn.regions import REGION_GENERATORS, check_region_init, default_init, encoder_geometry
from .nn.temporal import resolve_temporal

__all__ = ["DyRegConfig", "FLAVORS", "BACKENDS", "NORMS", "POSITION_INPUTS"]

FLAVORS = ("paper", "authors")
"""Flavour names; each names a :class:`~dyreg_pyg.DyRegGNN` class
(:func:`dyreg_pyg.module.flavor_class`)."""
BACKENDS = ("pyg", "dense")
NORMS = ("batch", "layer", "none")
POSITION_INPUTS = ("kernel", "region")


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


@dataclass
class DyRegConfig:
    """Hyper-parameters of :class:`~dyreg_pyg.DyRegGNN` (paper defaults); loadable from YAML
    presets. Every field is checked here (``__post_init__``, also after
    ``dataclasses.replace``); ``None`` fields resolve to the flavour's defaults.

    Attributes:
        num_nodes: ``N`` regions / graph nodes per frame (paper: 9).
        node_channels: node feature size; ``None`` keeps the input's channel count.
        regions: region mode, one of :data:`~dyreg_pyg.nn.regions.REGION_MODES` or a mode
            registered with :func:`~dyreg_pyg.nn.regions.register_region_mode`.
        init: reference points, ``"center"`` or ``"grid"``; ``None``: the mode's
            (:func:`~dyreg_pyg.nn.regions.default_init`: the grid for ``fixed`` and ``static``,
            which reject ``"center"`` - their N regions would be one region - and the centre
            for the others).
        init_size: starting kernel radius (normalised); ``None`` picks one per ``init``.
        init_jitter: per-node random offset of the references (0: the paper's start; > 0
            breaks the symmetry of the centre start, see
            :class:`~dyreg_pyg.nn.regions.RegionAlpha`).
        region_channels: ``C'`` of the region branch ``f``/``g``/GRU (Eq. 1-3); ``None``:
            the flavour's (paper 32, authors 128).
        gnn: spatial layer: ``"rstg"`` (the flavour's Eq. 8: :class:`~dyreg_pyg.nn.RSTGConv`
            or, for ``flavor="authors"``, their ``AuthorsRSTGConv``), ``"rstg_authors"``, or
            a ``torch_geometric.nn`` conv name.
        temporal: ``"gru"`` (Eq. 9), ``"lstm"`` or ``"none"`` (any case, kept in lower case),
            or a callable ``(channels) -> module`` mapping ``[B, T, N, C]`` to
            ``[B, T, N, C]`` (:class:`~dyreg_pyg.nn.TemporalUpdate`; paper flavour).
        iterations: ``K`` alternations of space and time (paper: 3).
        share_weights: one spatial and one temporal layer reused by all iterations;
            ``None``: the flavour's (paper ``False``, authors ``True``).
        self_loops: frame graphs include ``i -> i`` edges.
        position_embedding: add a position embedding to the nodes (Section 3.2).
        position_input: what it reads: ``"kernel"`` (the paper: ``Linear(vec K_i)``,
            :class:`~dyreg_pyg.nn.position.KernelPositionEmbedding`) or ``"region"`` (ours: a
            linear map of the region's ``(cx, cy, w, h)``,
            :class:`~dyreg_pyg.nn.position.RegionPositionEmbedding`, whose change under a
            displacement does not depend on the place).
        position_scale: constant multiplier of that embedding (1: the paper). Ours, for the
            study of issue 15: at 1 a trained node's motion reaches the graph at about 1/200
            of the node (:class:`~dyreg_pyg.nn.position.KernelPositionEmbedding`).
        spatial_size: ``(H, W)`` the position embedding reads; ``None``: 14 x 14 unless the
            caller knows the feature-map size (the model factory infers it). An int ``s``
            means ``(s, s)``.
        backend: ``"pyg"`` (message passing on a PyG ``Batch``) or ``"dense"`` (batched
            matmuls; ``gnn="rstg"`` only, same parameters and result).
        edge_geometry: hand the region geometry to space layers whose ``forward`` takes it
            (``pos``, ``edge_attr``, ``edge_weight``; :mod:`dyreg_pyg.nn.inputs`) and
            ``edge_dim`` to their constructors; ``False``: ``(x, edge_index)`` only, as before
            issue 35 (configs saved before it load so, :func:`~dyreg_pyg.compat.legacy_config`).
            The RSTG layers take none either way.
        edge_motion: append to that ``edge_attr`` the change of each pair's offset since the
            previous frame and its length (:func:`~dyreg_pyg.geometry.pair_motion`; 9
            columns, ``edge_dim=9``): ours, not the paper's - a relation across frames handed
            to the space layer, which sees one frame at a time (issue 35 item 6). Needs
            ``edge_geometry``; the RSTG layers take no ``edge_attr`` and ignore it.
        live_graph: ``details.graph`` (``return_details=True``) keeps its ``x``, ``pos`` and
            ``edge_attr`` attached to autograd, so a PyG head on the region graph trains with
            the video model (its loss reaches the backbone and the region generator); ``False``
            (default): detached, nothing kept for backward beyond the forward's own graph.
            Refused with ``backend="dense"``, which builds no graph (``details.graph`` None).
        norm: normalisation of the block output in :class:`~dyreg_pyg.DyRegBlock`; ``None``:
            the flavour's (paper ``"batch"``, authors ``"layer"``: their LayerNorm write-back).
        gate_init: starting value of :class:`~dyreg_pyg.DyRegBlock`'s residual scale
            ``gamma`` (0: the block starts as the identity, which keeps a pretrained backbone's
            function; a network trained from scratch may open the gate from the start). For
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
    temporal: Any = "gru"
    iterations: int = 3
    share_weights: bool | None = None
    self_loops: bool = True
    position_embedding: bool = True
    position_input: str = "kernel"
    position_scale: float = 1.0
    spatial_size: tuple[int, int] | None = None
    backend: str = "pyg"
    edge_geometry: bool = True
    edge_motion: bool = False
    live_graph: bool = False
    norm: str | None = None
    gate_init: float = 0.0
    flavor: str = "paper"

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor: expected one of {FLAVORS}, got {self.flavor!r}")
        self.temporal = resolve_temporal(self.temporal)
        authors = self.flavor == "authors"
        if self.init is None:
            self.init = default_init(self.regions)
        if self.region_channels is None:
            self.region_channels = 128 if authors else 32
        if self.share_weights is None:
            self.share_weights = authors
        if self.norm is None:
            self.norm = "layer" if authors else "batch"
        if self.spatial_size is not None:
            s = self.spatial_size
            self.spatial_size = (s, s) if isinstance(s, int) else tuple(s)
        self._check_position()
        self._check_structure()
        if authors:
            self._check_authors()

    def _check_position(self) -> None:
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

    def _check_structure(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {self.norm!r}")
        _positive_int("num_nodes", self.num_nodes)
        _positive_int("region_channels", self.region_channels)
        _positive_int("node_channels", self.node_channels, allow_none=True)
        if self.regions not in REGION_GENERATORS:  # the registry: built-in and registered
            raise ValueError(f"regions: unknown mode {self.regions!r}; expected one of "
                             f"{tuple(REGION_GENERATORS)}")
        check_region_init(self.regions, self.num_nodes, self.init, self.init_size,
                          self.init_jitter)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "dense" and self.live_graph is True:
            raise ValueError("live_graph: expected False with backend='dense' (it builds no "
                             "PyG graph, details.graph is None); got True - use backend='pyg'")
        if self.backend == "dense" and self.gnn not in ("rstg", "rstg_authors"):
            raise ValueError(
                f"backend: 'dense' implements gnn='rstg' and 'rstg_authors' only, got "
                f"gnn={self.gnn!r}"
            )
        for key in ("self_loops", "share_weights", "position_embedding", "edge_geometry",
                    "edge_motion", "live_graph"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key}: expected True or False, got {getattr(self, key)!r}")
        if self.edge_motion and not self.edge_geometry:
            raise ValueError("edge_motion: expected False with edge_geometry=False (the motion "
                             "columns extend the edge geometry); got True")
        _positive_int("iterations", self.iterations)
        if isinstance(self.gate_init, bool) or not isinstance(self.gate_init, (int, float)):
            raise ValueError(f"gate_init: expected a number, got {self.gate_init!r}")

    def _check_authors(self) -> None:
        """Reject the fields the authors' module has no counterpart for."""
        if self.regions != "dyreg":
            raise ValueError(
                f"regions: flavor='authors' implements 'dyreg' only, got {self.regions!r}")
        side = math.isqrt(self.num_nodes)
        if side * side != self.num_nodes:
            raise ValueError(
                f"num_nodes: flavor='authors' places the nodes on a square grid (theirs: "
                f"3 x 3), got {self.num_nodes}"
            )
        for side in self.spatial_size or ():
            encoder_geometry(side)  # their region encoder's map sides (<= 50, and fitting)
        if self.init_size is not None:
            raise ValueError(
                "init_size: flavor='authors' starts every region at the radius "
                f"H / (2 sqrt(N)) + 2 cells (their exponential size); got "
                f"init_size={self.init_size}"
            )
        if self.init_jitter:
            raise ValueError(f"init_jitter: not part of flavor='authors', got {self.init_jitter}")
        if self.position_scale != 1.0:
            raise ValueError(
                f"position_scale: not part of flavor='authors', got {self.position_scale}")
        if self.position_input != "kernel":
            raise ValueError(f"position_input: flavor='authors' embeds the kernel map, got "
                             f"{self.position_input!r}")
        if self.temporal not in ("gru", "lstm"):
            raise ValueError(
                f"temporal: flavor='authors' runs a recurrent network ('gru' or 'lstm'), got "
                f"{self.temporal!r}"
            )
        if self.norm != "layer":
            raise ValueError(
                f"norm: flavor='authors' writes back with their LayerNorm over (C, H, W) "
                f"('layer'), got {self.norm!r}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DyRegConfig:
        """Build from a mapping, rejecting unknown keys with the list of valid ones."""
        values = dict(values or {})
        cls._check_keys(values)
        return cls(**values)

    def replace(self, **changes: Any) -> DyRegConfig:
        """A copy with ``changes`` (``dataclasses.replace``: checked again), rejecting
        unknown keys with the list of valid ones."""
        self._check_keys(changes)
        return _replace(self, **changes)

    @classmethod
    def _check_keys(cls, values: dict[str, Any]) -> None:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"dyreg config: unknown keys {unknown}; valid keys: {sorted(valid)}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (a callable ``gnn`` / ``temporal`` as its ``repr``), for
        YAML/JSON."""
        d = asdict(self)
        for key in ("gnn", "temporal"):
            if not isinstance(getattr(self, key), str):
                d[key] = repr(getattr(self, key))
        return d
