"""Spatial message-passing layers by name: ``"rstg"`` or any ``torch_geometric.nn`` conv,
resolved by PyG's own :func:`torch_geometric.resolver.resolver` (names compared as PyG
normalises them: case, ``-``, ``_`` and spaces ignored; the ``Conv`` suffix optional)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import torch
import torch_geometric.nn as pyg_nn
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.resolver import normalize_string, resolver

from .conv import AuthorsRSTGConv, RSTGConv

__all__ = ["make_spatial_layer", "available_layers", "TESTED_LAYERS"]

SpatialLayerSpec = str | Callable[[int], MessagePassing]

TESTED_LAYERS = (
    "rstg", "rstg_authors", "GATConv", "GATv2Conv", "TransformerConv", "GCNConv", "GraphConv",
    "SAGEConv", "GINConv",
)
"""Names covered by the test-suite; other ``(in, out)`` PyG convs are accepted as well."""


def available_layers() -> list[str]:
    """Names accepted by :func:`make_spatial_layer`: ``"rstg"``, ``"rstg_authors"`` and
    PyG's conv classes."""
    names = ["rstg", "rstg_authors"]
    for name in sorted(pyg_nn.conv.__all__):
        cls = getattr(pyg_nn, name, None)
        if inspect.isclass(cls) and issubclass(cls, MessagePassing):
            names.append(name)
    return names


def _factories() -> dict[str, Callable[[int], nn.Module]]:
    """``{normalised name: (channels) -> layer}`` for :func:`torch_geometric.resolver.resolver`:
    our two RSTG layers and every PyG conv under its name with and without ``Conv``."""
    out: dict[str, Callable[[int], nn.Module]] = {
        "rstg": lambda c: RSTGConv(c, c), "rstgauthors": lambda c: AuthorsRSTGConv(c)}
    for name in available_layers()[2:]:
        build = partial(_build_pyg, getattr(pyg_nn, name))
        low = normalize_string(name)
        out.setdefault(low, build)
        out.setdefault(low.removesuffix("conv"), build)
    return out


def _build_pyg(cls: type[MessagePassing], channels: int) -> nn.Module:
    if cls is pyg_nn.GINConv:
        mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))
        return pyg_nn.GINConv(mlp, train_eps=True)
    if cls is pyg_nn.EdgeConv:  # h_theta([x_i, x_j - x_i]): a 2-layer MLP, as for GINConv
        mlp = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(),
                            nn.Linear(channels, channels))
        return pyg_nn.EdgeConv(mlp)
    try:
        layer = cls(channels, channels)
    except (TypeError, AttributeError, ValueError, AssertionError) as err:
        raise ValueError(
            f"gnn: {cls.__name__} cannot be built as {cls.__name__}({channels}, {channels}) "
            f"({err}); pass a callable (channels) -> MessagePassing instead"
        ) from err
    return _check_runs(layer, channels)


def make_spatial_layer(spec: SpatialLayerSpec, channels: int) -> MessagePassing:
    """Build a ``channels -> channels`` message-passing layer.

    Args:
        spec: ``"rstg"`` (Eq. 8, default of :class:`~dyreg_pyg.DyRegGNN`); ``"rstg_authors"``
            (:class:`~dyreg_pyg.nn.conv.AuthorsRSTGConv`, the authors' code); the name of a
            ``torch_geometric.nn`` conv class whose constructor takes
            ``(in_channels, out_channels)`` (case-insensitive, the ``Conv`` suffix optional,
            e.g. ``"GATConv"``, ``"gatv2"``, ``"sage"``); ``"GINConv"`` gets a 2-layer MLP; or
            a callable ``(channels) -> MessagePassing``.
        channels: node feature size.

    Raises:
        ValueError: unknown name, or a class that cannot be built as ``(channels, channels)``.
    """
    if callable(spec) and not isinstance(spec, str):
        layer = spec(channels)
        if not isinstance(layer, nn.Module):
            raise ValueError(f"gnn: the callable must return an nn.Module, got {type(layer)}")
        return _check_runs(layer, channels)
    if not isinstance(spec, str):
        raise ValueError(f"gnn: expected a layer name or a callable, got {type(spec)}")
    try:  # PyG's own resolver, on a table of builders (it returns them as they are)
        build = resolver([], _factories(), spec, None, "Conv")
    except ValueError:
        raise ValueError(
            f"gnn: unknown layer {spec!r}; expected 'rstg', 'rstg_authors', a callable, or "
            f"one of {available_layers()[2:]}"
        ) from None
    return build(channels)


def _check_runs(layer: nn.Module, channels: int) -> nn.Module:
    """Run ``layer(x, edge_index)`` once on a small complete graph (deterministic input, no
    gradient, eval mode) and reject layers that need more than that - positions, normals,
    the initial features ``x_0`` (e.g. ``PointNetConv``, ``PPFConv``, ``FAConv``,
    ``GCN2Conv``) - or that do not map ``channels`` to ``channels``, at construction rather
    than deep inside the first forward."""
    name = type(layer).__name__
    ref = next(iter(layer.parameters()), None)
    device = ref.device if ref is not None else None
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    n = 4
    x = torch.linspace(-1.0, 1.0, n * channels, device=device, dtype=dtype).view(n, channels)
    idx = torch.arange(n, device=device)
    edge_index = torch.stack((idx.repeat(n), idx.repeat_interleave(n)))
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            out = layer(x, edge_index)
    except Exception as err:  # noqa: BLE001 - any failure means it cannot run as the module does
        raise ValueError(
            f"gnn: {name} cannot run as {name}(x, edge_index) on node features "
            f"[num_nodes, {channels}] ({type(err).__name__}: {err}); it needs more inputs "
            f"than the frame graph has (e.g. positions or the initial features x_0) - pass a "
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
