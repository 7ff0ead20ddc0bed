r"""What a space layer's ``forward`` is given: read once from its signature.

The frame graphs of :class:`~dyreg_pyg.DyRegGNN` can supply, besides the node features ``x``
and ``edge_index`` (complete graph per frame, :func:`~dyreg_pyg.graph.frame_edge_index`):

- ``pos [B*T*N, 2]``: the region centres (:func:`~dyreg_pyg.geometry.region_centres`);
- ``edge_attr [E, 6]``: the edge geometry (:func:`~dyreg_pyg.geometry.edge_geometry`,
  columns :data:`~dyreg_pyg.geometry.GEOMETRY_COLUMNS`); ``[E, 9]`` with
  ``DyRegConfig(edge_motion=True)``, followed by the change of each pair's offset since the
  previous frame (:func:`~dyreg_pyg.geometry.pair_motion`,
  :data:`~dyreg_pyg.geometry.MOTION_COLUMNS`);
- ``edge_weight [E]``: the proximity :math:`\exp(-|c_j - c_i|)` of the two centres, in
  ``(0, 1]``, 1 on a self-loop - positive everywhere, so a weighted layer (``GCNConv``) still
  sees every region of the frame, nearer ones more;
- ``batch [B*T*N]``: each node's frame graph (per-graph attention or normalisation, e.g.
  ``GPSConv``, ``ChebConv``);
- ``x_0``: the nodes as they entered the graph stack (``GCN2Conv``, ``FAConv``).

The first three are the *geometry*, computed from the live predicted regions, so a layer
that consumes them also trains the region generator; they are computed once per forward and
only when some space layer asks for them (:func:`space_inputs`) - the default RSTG layers
take none, and their forward computes nothing more.

:func:`input_plan` reads a layer's ``forward`` signature once, at construction
(:func:`~dyreg_pyg.nn.make_spatial_layer` stores it as ``layer.dyreg_inputs``);
:func:`~dyreg_pyg.nn.stack.call_space_layer` follows it at every step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..geometry import (
    GEOMETRY_COLUMNS,
    MOTION_COLUMNS,
    edge_geometry,
    pair_motion,
    region_centres,
)

__all__ = ["InputPlan", "GraphInputs", "input_plan", "forward_plan", "plan_of", "space_inputs",
           "SUPPLIED_INPUTS", "GEOMETRY_INPUTS", "EDGE_DIM", "POS_DIM", "needs_geometry",
           "edge_dim"]

GEOMETRY_INPUTS = ("pos", "edge_attr", "edge_weight")
"""Inputs computed from the regions."""
SUPPLIED_INPUTS = ("x", "edge_index", *GEOMETRY_INPUTS, "batch", "x_0")
"""Every ``forward`` argument the frame graphs supply, by its PyG name."""
EDGE_DIM = len(GEOMETRY_COLUMNS)
"""Width of ``edge_attr`` on the frame graphs (the ``edge_dim`` given to constructors),
without the motion columns (:func:`edge_dim`)."""
POS_DIM = 2
"""Width of ``pos`` (the centre ``(cx, cy)``)."""


@dataclass(frozen=True)
class InputPlan:
    """The ``forward`` arguments of a space layer, in :data:`SUPPLIED_INPUTS` names.

    ``names == ("x", "edge_index")`` (and a layer without a plan): the call
    ``layer(x, edge_index)`` by position, as for the RSTG layers."""

    names: tuple[str, ...] = ("x", "edge_index")

    @property
    def plain(self) -> bool:
        """Whether the layer takes just ``(x, edge_index)``."""
        return self.names == ("x", "edge_index")

    @property
    def geometry(self) -> tuple[str, ...]:
        """The geometry inputs (:data:`GEOMETRY_INPUTS`) it takes."""
        return tuple(n for n in self.names if n in GEOMETRY_INPUTS)


PLAIN = InputPlan()


def edge_dim(motion: bool = False) -> int:
    """Width of the frame graphs' ``edge_attr``: 6, or 9 with the motion columns."""
    return EDGE_DIM + (len(MOTION_COLUMNS) if motion else 0)


def input_plan(layer: nn.Module, geometry: bool = True) -> InputPlan:
    """The plan of ``layer``: the :data:`SUPPLIED_INPUTS` its ``forward`` names (without the
    geometry if not ``geometry``). A ``forward`` without an ``x`` argument (e.g.
    ``forward(self, h, ei)``) is called ``layer(x, edge_index)`` by position, as before.

    Raises:
        ValueError: the ``forward`` requires an argument the frame graphs do not supply
            (e.g. ``normal`` of ``PPFConv``), or the geometry when ``geometry`` is off.
    """
    if getattr(layer, "norms_per_graph", False):  # AuthorsRSTGConv: its own call
        return PLAIN
    return forward_plan(layer.forward, type(layer).__name__, geometry)


def forward_plan(forward: Callable[..., object], name: str, geometry: bool = True
                 ) -> InputPlan:
    """:func:`input_plan` of a ``forward`` (bound or not: ``self`` is ignored)."""
    params = {k: v for k, v in inspect.signature(forward).parameters.items() if k != "self"}
    if "x" not in params:
        return PLAIN
    supplied = SUPPLIED_INPUTS if geometry else tuple(
        n for n in SUPPLIED_INPUTS if n not in GEOMETRY_INPUTS)
    required = [p.name for p in params.values()
                if p.default is inspect.Parameter.empty and p.name not in supplied
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        extra = "" if geometry else " (edge_geometry=False withholds pos/edge_attr/edge_weight)"
        raise ValueError(f"gnn: {name}'s forward needs {', '.join(required)}, which the "
                         f"region graph does not supply (it has {', '.join(supplied)}){extra}")
    return InputPlan(tuple(n for n in params if n in supplied))


def plan_of(layer: nn.Module) -> InputPlan:
    """The plan stored on ``layer`` (``layer.dyreg_inputs``), or the plain call."""
    return getattr(layer, "dyreg_inputs", PLAIN)


def needs_geometry(layers: Iterable[nn.Module]) -> bool:
    """Whether any of ``layers`` takes ``pos``, ``edge_attr`` or ``edge_weight``."""
    return any(plan_of(layer).geometry for layer in layers)


@dataclass
class GraphInputs:
    """What the space step may need besides the nodes, for one forward: the live predicted
    regions ``[B, T, N, 4]`` (``(cx, cy, w, h)``), from which :func:`space_inputs` computes the
    geometry of the frame graphs' edges when a layer asks for it; ``motion``: append the
    motion columns to ``edge_attr`` (``DyRegConfig.edge_motion``)."""

    regions: Tensor | None = None
    motion: bool = False


def space_inputs(layers: Sequence[nn.Module], edge_index: Tensor, batch: Tensor, x_0: Tensor,
                 graph: GraphInputs | None) -> dict[str, Tensor]:
    """The inputs beyond ``(x, edge_index)`` that ``layers`` take, computed once for the
    ``K`` steps of a forward: ``{}`` when none takes any (no computation).

    Raises:
        ValueError: a layer takes the geometry and ``graph`` has no regions.
    """
    names = {n for layer in layers for n in plan_of(layer).names}
    if names <= {"x", "edge_index"}:
        return {}
    out = {"batch": batch, "x_0": x_0}
    wanted = names.intersection(GEOMETRY_INPUTS)
    if not wanted:
        return out
    if graph is None or graph.regions is None:
        raise ValueError(f"gnn: a space layer takes {sorted(wanted)}, computed from the "
                         f"regions; pass graph_inputs=GraphInputs(regions)")
    region = graph.regions.reshape(-1, 4)
    out["pos"] = region_centres(region)
    if wanted & {"edge_attr", "edge_weight"}:
        geometry = edge_geometry(region, edge_index)
        out["edge_attr"] = geometry
        if graph.motion:  # ours, not the paper's: the pair's relative motion across frames
            if graph.regions.dim() != 4:  # the frames must be known, not guessed from a shape
                raise ValueError(f"GraphInputs(motion=True): expected regions [B, T, N, 4], "
                                 f"got shape {tuple(graph.regions.shape)}")
            b, t = graph.regions.shape[:2]
            offset = geometry[:, :2].reshape(b, t, -1, 2)
            out["edge_attr"] = torch.cat((geometry, pair_motion(offset).reshape(-1, 3)), -1)
        out["edge_weight"] = torch.exp(-geometry[:, 2])  # proximity of the centres
    return out
