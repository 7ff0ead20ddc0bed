r"""The graph stack: K iterations of space (Eq. 8) and time (Eq. 9) on node tensors.

One function per flavour, written once and used by :class:`~dyreg_pyg.DyRegGNN` (and its
authors' subclass) and by ``study/gnn_sync_probe.py`` alike:

- :func:`paper_graph_stack`: the paper's text, ``K x (space, time)``;
- :func:`authors_graph_stack`: the authors' released code (a LayerNorm first, time before
  space, an extra external GRU).

How a space layer is called follows ONE rule, read from two documented class attributes
(:func:`call_space_layer`):

- ``reports_edge_attention = True``: ``layer(..., return_attention_weights=True)`` returns
  ``(out, (edge_index, alpha [E]))`` with one weight per frame edge, in the order of
  :func:`~dyreg_pyg.graph.frame_edge_index` (our RSTG layers). Other layers (e.g. PyG's
  ``GATConv``, which re-adds self-loops and reports ``[E', heads]``) report no attention.
- ``norms_per_graph = True``: ``layer(x, edge_index, batch, num_graphs)`` - the layer
  normalises per frame graph (:class:`~dyreg_pyg.nn.conv.AuthorsRSTGConv`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..graph import frame_edge_index
from .norm import GraphLayerNorm

__all__ = ["paper_graph_stack", "authors_graph_stack", "call_space_layer",
           "reports_edge_attention"]


def reports_edge_attention(layer: nn.Module) -> bool:
    """Whether ``layer`` reports one attention weight per frame edge (the class attribute
    ``reports_edge_attention``; see the module docstring)."""
    return bool(getattr(layer, "reports_edge_attention", False))


def call_space_layer(layer: nn.Module, v: Tensor, edge_index: Tensor, batch: Tensor,
                     num_graphs: int, want_attention: bool) -> tuple[Tensor, Tensor | None]:
    """One space step (Eq. 8) on ``v [B*T*N, C]``: the new nodes and, for a layer that
    reports it and when ``want_attention``, the per-edge attention ``[E]`` (else ``None``)."""
    args = (batch, num_graphs) if getattr(layer, "norms_per_graph", False) else ()
    if want_attention and reports_edge_attention(layer):
        v, (_, attention) = layer(v, edge_index, *args, return_attention_weights=True)
        return v, attention
    return layer(v, edge_index, *args), None


def _check_layers(spatial: Sequence[nn.Module], temporal: Sequence[nn.Module],
                  iterations: int) -> None:
    if len(spatial) != len(temporal) or len(spatial) not in (1, iterations):
        raise ValueError(
            f"spatial, temporal: expected 1 (shared) or iterations={iterations} layers each, "
            f"got {len(spatial)} and {len(temporal)}"
        )


def _frame_graphs(g: int, n: int, self_loops: bool, device: torch.device
                  ) -> tuple[Tensor, Tensor]:
    """Edges of ``g`` complete frame graphs of ``n`` nodes and each node's graph."""
    return (frame_edge_index(g, n, self_loops, device),
            torch.arange(g, device=device).repeat_interleave(n))


def paper_graph_stack(
    nodes: Tensor,
    spatial: Sequence[nn.Module],
    temporal: Sequence[nn.Module],
    iterations: int,
    backend: str = "pyg",
    self_loops: bool = True,
    want_attention: bool = False,
) -> tuple[Tensor, Tensor | None]:
    r"""The paper's graph stack (Eq. 8-9): :math:`K \times (V \leftarrow \mathrm{Space}(V);
    \ V \leftarrow \mathrm{Time}(V))`.

    Args:
        nodes: ``[B, T, N, C]``.
        spatial: the space step (Eq. 8): one shared layer or one per iteration
            (:func:`~dyreg_pyg.nn.make_spatial_layer`; ``backend="dense"``: layers with
            ``forward_dense``).
        temporal: the time step (Eq. 9, :class:`~dyreg_pyg.nn.TemporalUpdate`), as many.
        iterations: ``K``.
        backend: ``"pyg"`` (message passing on frame graphs) or ``"dense"``.
        self_loops: whether a node also sends to itself.
        want_attention: also return the attention of the last space step (see
            :func:`call_space_layer`).

    Returns:
        nodes ``[B, T, N, C']`` and the last attention ``[E]`` (or ``None``).
    """
    _check_layers(spatial, temporal, iterations)
    b, t, n, _ = nodes.shape
    attention = None
    if backend == "dense":
        v = nodes.reshape(b * t, n, -1)
        for k in range(iterations):
            idx = k if len(spatial) > 1 else 0
            v = spatial[idx].forward_dense(v, self_loops)  # Eq. 8
            v = temporal[idx](v.view(b, t, n, -1)).reshape(b * t, n, -1)  # Eq. 9
        return v.view(b, t, n, -1), attention
    edge_index, batch = _frame_graphs(b * t, n, self_loops, nodes.device)
    v = nodes.reshape(b * t * n, -1)
    for k in range(iterations):
        idx = k if len(spatial) > 1 else 0
        v, att = call_space_layer(spatial[idx], v, edge_index, batch, b * t, want_attention)
        attention = att if att is not None else attention  # Eq. 8 (or any PyG layer)
        v = temporal[idx](v.view(b, t, n, -1)).reshape(b * t * n, -1)  # Eq. 9
    return v.view(b, t, n, -1), attention


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
    the input LayerNorm and those of :class:`~dyreg_pyg.nn.conv.AuthorsRSTGConv` run per
    frame graph. :class:`~dyreg_pyg.authors.AuthorsDyRegGNN` runs it on its pooled nodes; it
    runs as well on nodes from anywhere else (``study/gnn_sync_probe.py --flavor authors``).

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
        want_attention: also return the attention of the last space step (see
            :func:`call_space_layer`).

    Returns:
        nodes ``[B, T, N, C]`` and the last attention ``[E]`` (or ``None``).
    """
    if nodes.dim() != 4:
        raise ValueError(f"nodes: expected [B, T, N, C], got shape {tuple(nodes.shape)}")
    _check_layers(spatial, temporal, iterations)
    b, t, n, c = nodes.shape
    nodes = input_norm.forward_dense(nodes.reshape(b * t, n, c), 2)  # LN over (N, C)
    attention = None
    edge_index = batch = None
    if backend == "pyg":
        edge_index, batch = _frame_graphs(b * t, n, self_loops, nodes.device)
    for k in range(iterations):
        idx = k if len(spatial) > 1 else 0
        nodes = temporal[idx](nodes.view(b, t, n, -1)).reshape(b * t, n, -1)  # Eq. 9
        layer = spatial[idx]
        if backend == "dense":
            nodes = layer.forward_dense(nodes, self_loops=self_loops)  # Eq. 8
            continue
        v, att = call_space_layer(layer, nodes.reshape(b * t * n, -1), edge_index, batch,
                                  b * t, want_attention)  # Eq. 8 (or any PyG layer)
        attention = att if att is not None else attention
        nodes = v.view(b * t, n, -1)
    return temporal_out(nodes.view(b, t, n, -1)), attention  # their extra (external) GRU
