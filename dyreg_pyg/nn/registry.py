"""Spatial message-passing layers by name: ``"rstg"`` or any ``torch_geometric.nn`` conv,
resolved by PyG's own :func:`torch_geometric.resolver.resolver` (names compared as PyG
normalises them: case, ``-``, ``_`` and spaces ignored; the ``Conv`` suffix optional)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import torch
import torch_geometric.nn as pyg_nn
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.resolver import normalize_string, resolver

from ..graph import frame_edge_index
from .conv import AuthorsRSTGConv, RSTGConv
from .inputs import (
    EDGE_DIM,
    POS_DIM,
    GraphInputs,
    InputPlan,
    forward_plan,
    input_plan,
    plan_of,
    space_inputs,
)
from .stack import call_space_layer

__all__ = ["make_spatial_layer", "available_layers", "pyg_conv_classes", "TESTED_LAYERS"]

SpatialLayerSpec = str | Callable[[int], MessagePassing]

TESTED_LAYERS = (
    "rstg", "rstg_authors", "GATConv", "GATv2Conv", "TransformerConv", "GCNConv", "GraphConv",
    "SAGEConv", "GINConv",
)
"""Names covered by the test-suite; other ``(in, out)`` PyG convs are accepted as well."""


def available_layers() -> list[str]:
    """Names accepted by :func:`make_spatial_layer`: ``"rstg"``, ``"rstg_authors"`` and
    the classes of ``torch_geometric.nn.conv`` (all but the base class ``MessagePassing``;
    a class may still be refused at construction, with the reason)."""
    return ["rstg", "rstg_authors", *pyg_conv_classes()]


def pyg_conv_classes() -> list[str]:
    """The layer classes of ``torch_geometric.nn.conv`` (``__all__`` without
    ``MessagePassing``), sorted."""
    return sorted(name for name in pyg_nn.conv.__all__
                  if inspect.isclass(cls := getattr(pyg_nn.conv, name, None))
                  and issubclass(cls, nn.Module) and cls is not MessagePassing)


def _factories() -> dict[str, Callable[[int, bool, int], nn.Module]]:
    """``{normalised name: (channels, geometry, edge_dim) -> layer}`` for
    :func:`torch_geometric.resolver.resolver`: our two RSTG layers and every PyG conv under
    its name with and without ``Conv``."""
    out: dict[str, Callable[[int, bool, int], nn.Module]] = {
        "rstg": lambda c, g, e: RSTGConv(c, c),
        "rstgauthors": lambda c, g, e: AuthorsRSTGConv(c)}
    for name in available_layers()[2:]:
        build = partial(_build_pyg, getattr(pyg_nn.conv, name))
        low = normalize_string(name)
        out.setdefault(low, build)
        out.setdefault(low.removesuffix("conv"), build)
    return out


def _mlp(inp: int, out: int, hidden: int) -> nn.Module:
    """The small MLP handed to layers that take a network: ``Linear-ReLU-Linear``."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


def _networks(name: str, c: int, e: int = EDGE_DIM) -> dict[str, object]:
    """Constructor arguments that are networks (or need a choice), per PyG class: sized for
    ``c`` node channels, ``e`` edge and :data:`~dyreg_pyg.nn.inputs.POS_DIM` position
    columns."""
    p = POS_DIM
    table: dict[str, Callable[[], dict[str, object]]] = {
        "GINConv": lambda: {"nn": _mlp(c, c, c), "train_eps": True},
        "GINEConv": lambda: {"nn": _mlp(c, c, c), "train_eps": True},
        "EdgeConv": lambda: {"nn": _mlp(2 * c, c, c)},  # h([x_i, x_j - x_i])
        "DynamicEdgeConv": lambda: {"nn": _mlp(2 * c, c, c), "k": 4},
        "NNConv": lambda: {"nn": _mlp(e, c * c, c)},  # edge_attr -> a [c, c] weight
        "PointNetConv": lambda: {"local_nn": _mlp(c + p, c, c)},  # [x_j, pos_j - pos_i]
        "PointTransformerConv": lambda: {"pos_nn": _mlp(p, c, c)},
        "PointGNNConv": lambda: {"mlp_h": _mlp(c, p, c), "mlp_f": _mlp(c + p, c, c),
                                 "mlp_g": _mlp(c, c, c)},
        # complete frame graphs: every node has one degree, the degree scalers are constants
        "PNAConv": lambda: {"aggregators": ["mean", "min", "max", "std"],
                            "scalers": ["identity"], "deg": torch.ones(1, dtype=torch.long)},
        "GPSConv": lambda: {"conv": pyg_nn.GINConv(_mlp(c, c, c), train_eps=True)},
        "DirGNNConv": lambda: {"conv": pyg_nn.GCNConv(c, c)},
    }
    return table[name]() if name in table else {}


_REQUIRED_DEFAULTS: dict[str, object] = {
    "K": 2, "alpha": 0.1, "num_layers": 1, "kernel_size": 2, "filter_size": 2}
"""Values for required constructor arguments that have a harmless small choice."""


def _constructor_kwargs(cls: type[nn.Module], channels: int, geometry: bool,
                        edge_dim: int = EDGE_DIM) -> dict[str, object]:
    """Keyword arguments for ``cls``: channels, ``edge_dim`` (or ``dim`` /
    ``in_edge_channels``) where its ``forward`` takes ``edge_attr``, the networks of
    :func:`_networks`; a one-line ``ValueError`` naming the arguments left without a value."""
    fwd = inspect.signature(cls.forward).parameters
    edge = geometry and "edge_attr" in fwd
    kwargs, missing = _networks(cls.__name__, channels, edge_dim), []
    for name, par in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or name in kwargs or par.kind in (par.VAR_POSITIONAL, par.VAR_KEYWORD):
            continue
        if name in ("in_channels", "out_channels", "channels", "hidden_channels"):
            kwargs[name] = channels
        elif name in ("edge_dim", "in_edge_channels") and edge:
            kwargs[name] = edge_dim
        elif name == "dim" and (edge or (geometry and "pos" in fwd)):
            kwargs[name] = edge_dim if edge else POS_DIM
        elif par.default is inspect.Parameter.empty:
            if name not in _REQUIRED_DEFAULTS:
                missing.append(name)
                continue
            kwargs[name] = _REQUIRED_DEFAULTS[name]
    if missing:
        hint = "".join(_HINTS.get(m, "") for m in missing)
        raise ValueError(f"gnn: {cls.__name__} needs {', '.join(missing)}{hint}, which the "
                         f"region graph does not supply; pass a callable (channels) -> "
                         f"MessagePassing")
    return kwargs


_HINTS = {"num_relations": " (the frame graphs have one kind of edge)",
          "metadata": " (a heterogeneous graph's node and edge types)"}


def _check_forward(cls: type[nn.Module], geometry: bool) -> None:
    """Refuse a class whose ``forward`` does not take a homogeneous graph's ``(x,
    edge_index)``, or requires an input the region graph lacks (one line, naming it)."""
    name = cls.__name__
    params = inspect.signature(cls.forward).parameters
    if "x" not in params:
        raise ValueError(f"gnn: {name}'s forward takes {', '.join(list(params)[1:3])}, not "
                         f"the node features x of a homogeneous graph (a heterogeneous layer)")
    if "edge_index" not in params:
        args = ", ".join(k for k in params if k != "self")
        raise ValueError(f"gnn: {name}'s forward takes ({args}) and no edge_index, so it "
                         f"cannot run on the region graph's edges")
    forward_plan(cls.forward, name, geometry)


def _build_pyg(cls: type[MessagePassing], channels: int, geometry: bool = True,
               edge_dim: int = EDGE_DIM) -> nn.Module:
    _check_forward(cls, geometry)
    kwargs = _constructor_kwargs(cls, channels, geometry, edge_dim)
    try:
        layer = cls(**kwargs)
    except Exception as err:  # noqa: BLE001 - missing packages, asserts on the arguments
        raise ValueError(
            f"gnn: {cls.__name__} cannot be built with {sorted(kwargs)} "
            f"({_first_line(err)}); pass a callable (channels) -> "
            f"MessagePassing instead"
        ) from err
    return _with_plan(layer, channels, geometry, edge_dim)


def _first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (``Type`` alone for an empty message)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def make_spatial_layer(spec: SpatialLayerSpec, channels: int, geometry: bool = True,
                       edge_dim: int = EDGE_DIM) -> MessagePassing:
    """Build a ``channels -> channels`` message-passing layer, with the plan of its inputs
    (``layer.dyreg_inputs``, :func:`~dyreg_pyg.nn.inputs.input_plan`).

    Args:
        spec: ``"rstg"`` (Eq. 8, default of :class:`~dyreg_pyg.DyRegGNN`); ``"rstg_authors"``
            (:class:`~dyreg_pyg.nn.conv.AuthorsRSTGConv`, the authors' code); the name of a
            ``torch_geometric.nn`` conv class (case-insensitive, the ``Conv`` suffix optional,
            e.g. ``"GATConv"``, ``"gatv2"``, ``"sage"``), built with its channels, ``edge_dim``
            (or ``dim``) = :data:`~dyreg_pyg.nn.inputs.EDGE_DIM` where its ``forward`` takes
            ``edge_attr``, and a small MLP for the networks it takes (``GINConv``,
            ``GINEConv``, ``NNConv``, ``PointNetConv``, ...); or a callable
            ``(channels) -> MessagePassing``.
        channels: node feature size.
        geometry: hand the region geometry (``pos``, ``edge_attr``, ``edge_weight``) to
            layers that take it (:class:`~dyreg_pyg.DyRegConfig` ``edge_geometry``).
        edge_dim: width of the ``edge_attr`` the layer will be given (its ``edge_dim`` and
            the input width of the networks that read edges): :data:`~dyreg_pyg.nn.inputs.EDGE_DIM`
            (6), 9 with the motion columns (:func:`~dyreg_pyg.nn.inputs.edge_dim`), or the
            width of a caller's own edge attributes.

    Raises:
        ValueError: unknown name, a bad ``edge_dim``, or a layer that needs what the region
            graph cannot supply or fails on it (one line naming what).
    """
    if isinstance(edge_dim, bool) or not isinstance(edge_dim, int) or edge_dim < 1:
        raise ValueError(f"edge_dim: expected an integer >= 1 (the width of edge_attr), got "
                         f"{edge_dim!r}")
    if callable(spec) and not isinstance(spec, str):
        layer = spec(channels)
        if not isinstance(layer, nn.Module):
            raise ValueError(f"gnn: the callable must return an nn.Module, got "
                             f"{type(layer).__name__}")
        return _with_plan(layer, channels, geometry, edge_dim)
    if not isinstance(spec, str):
        raise ValueError(f"gnn: expected a layer name or a callable, got {type(spec).__name__}")
    try:  # PyG's own resolver, on a table of builders (it returns them as they are)
        build = resolver([], _factories(), spec, None, "Conv")
    except ValueError:
        raise ValueError(
            f"gnn: unknown layer {spec!r}; expected 'rstg', 'rstg_authors', a callable, or "
            f"one of {available_layers()[2:]}"
        ) from None
    return build(channels, geometry, edge_dim)


def _with_plan(layer: nn.Module, channels: int, geometry: bool, edge_dim: int = EDGE_DIM
               ) -> nn.Module:
    """Store ``layer.dyreg_inputs`` and check that the layer runs on a small frame graph."""
    plan = input_plan(layer, geometry)
    if isinstance(layer, pyg_nn.FAConv) and layer.normalize:  # it asserts edge_weight=None
        plan = InputPlan(tuple(n for n in plan.names if n != "edge_weight"))
    if not plan.plain:
        layer.dyreg_inputs = plan
    return _check_runs(layer, channels, edge_dim)


def _fit_columns(attr: Tensor, width: int) -> Tensor:
    """``attr [E, D]`` cut or zero-padded to ``[E, width]``."""
    if attr.shape[1] >= width:
        return attr[:, :width]
    return torch.cat((attr, attr.new_zeros(attr.shape[0], width - attr.shape[1])), -1)


def _check_runs(layer: nn.Module, channels: int, edge_dim: int = EDGE_DIM) -> nn.Module:
    """Run the layer once as the graph stack calls it (its plan's inputs) on a small complete
    graph (deterministic input and regions, no gradient, eval mode) and reject layers that
    fail there or do not map ``channels`` to ``channels``, at construction rather than deep
    inside the first forward."""
    name = type(layer).__name__
    ref = next(iter(layer.parameters()), None)
    device = ref.device if ref is not None else None
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    n = 6  # two frame graphs of 3 nodes
    x = torch.linspace(-1.0, 1.0, n * channels, device=device, dtype=dtype).view(n, channels)
    edge_index = frame_edge_index(2, 3, True, device)
    batch = torch.arange(2, device=device).repeat_interleave(3)
    centre = torch.linspace(0.2, 0.8, n, device=device, dtype=dtype)
    regions = torch.stack((centre, centre.flip(0), 0.1 + centre / 4, 0.3 - centre / 4), -1)
    plan = plan_of(layer)
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            graph = GraphInputs(regions.view(1, 2, 3, 4), motion=edge_dim > EDGE_DIM)
            inputs = space_inputs([layer], edge_index, batch, x, graph)
            if "edge_attr" in inputs:  # the width the layer was built for
                inputs["edge_attr"] = _fit_columns(inputs["edge_attr"], edge_dim)
            out, _ = call_space_layer(layer, x, edge_index, batch, 2, False, inputs)
    except Exception as err:  # noqa: BLE001 - any failure means it cannot run as the module does
        raise ValueError(
            f"gnn: {name} cannot run as {name}({', '.join(plan.names)}) on node features "
            f"[num_nodes, {channels}] ({_first_line(err)}) - pass a "
            f"callable (channels) -> MessagePassing that adapts it"
        ) from err
    finally:
        layer.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, channels):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"gnn: {name} returned an output of shape {got} for node features of shape "
            f"{(n, channels)}; expected {(n, channels)} (a channels -> channels layer)"
        )
    return layer
