"""Nodes and regions -> one PyG :class:`~torch_geometric.data.Batch` of spatio-temporal graphs.

Node order is ``(b, t, n)``: ``batch.x.view(B, T, N, C)`` recovers the dense layout for free.
The batch is assembled directly (no Python loop over frames) together with the slice and
increment bookkeeping that :meth:`Batch.from_data_list` would have written, so
``to_data_list()`` / ``get_example(i)`` return the per-frame (or per-video) :class:`Data`.

Given the regions, every graph carries their geometry (:mod:`dyreg_pyg.geometry`): ``pos``
(the centres) and ``edge_attr`` (offsets, distance, log size ratios, IoU; led by the one-hot
edge kind on space-time graphs). :func:`with_geometry` recomputes both on a :class:`Data`
after a transform changed its edges; :func:`to_hetero` splits a space-time graph into its
spatial and temporal relations.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data, HeteroData
from torch_geometric.transforms import BaseTransform

from .geometry import edge_attr as geometry_edge_attr
from .geometry import edge_attr_columns, edge_kind, region_centres

__all__ = [
    "complete_edge_index", "frame_edge_index", "build_graph_batch", "with_geometry",
    "RegionGeometry", "to_hetero", "SPATIAL", "TEMPORAL", "EDGE_TYPE_NAMES",
]

SPATIAL = 0
"""``edge_type`` of an edge inside a frame."""
TEMPORAL = 1
"""``edge_type`` of an edge from node ``n`` at ``t`` to node ``n`` at ``t + 1``."""
EDGE_TYPE_NAMES = ("spatial", "temporal")
"""The relation names of :data:`SPATIAL` and :data:`TEMPORAL` edges (:func:`to_hetero`)."""


def complete_edge_index(
    num_nodes: int, self_loops: bool = True, device: torch.device | None = None
) -> Tensor:
    """``edge_index [2, E]`` of the complete directed graph on ``num_nodes`` nodes.

    Edges are ordered by receiver then sender (row 0 = source ``j``, row 1 = target ``i``).
    """
    idx = torch.arange(num_nodes, device=device)
    src = idx.repeat(num_nodes)
    dst = idx.repeat_interleave(num_nodes)
    if not self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    return torch.stack((src, dst))


def frame_edge_index(
    num_graphs: int, num_nodes: int, self_loops: bool = True,
    device: torch.device | None = None,
) -> Tensor:
    """``edge_index`` of ``num_graphs`` disjoint complete graphs of ``num_nodes`` nodes each,
    numbered consecutively (the ``edge_index`` of :func:`build_graph_batch`)."""
    one = complete_edge_index(num_nodes, self_loops, device)
    offsets = torch.arange(num_graphs, device=device) * num_nodes
    return (one.unsqueeze(1) + offsets.view(1, -1, 1)).reshape(2, -1)


def _temporal_edge_index(num_frames: int, num_nodes: int, device: torch.device) -> Tensor:
    t = torch.arange(num_frames - 1, device=device).repeat_interleave(num_nodes)
    n = torch.arange(num_nodes, device=device).repeat(num_frames - 1)
    src = t * num_nodes + n
    return torch.stack((src, src + num_nodes))


def build_graph_batch(x: Tensor, regions: Tensor | None = None, self_loops: bool = True,
                      temporal_edges: bool = False, geometry: bool = True) -> Batch:
    """Assemble the graphs of a clip batch, vectorised.

    ``temporal_edges=False`` (default, as :class:`~dyreg_pyg.DyRegGNN`): ``B * T`` frame
    graphs, each complete on its ``N`` nodes. ``temporal_edges=True``: ``B`` space-time graphs
    of ``T * N`` nodes, the same spatial edges plus ``n@t -> n@t+1``, with an ``edge_type``
    (:data:`SPATIAL` / :data:`TEMPORAL`) for one PyG layer over the clip (e.g. ``RGCNConv``).

    With ``regions`` (and ``geometry``) each graph also carries ``pos [num_nodes, 2]`` (the
    centres; sizes stay in ``region[:, 2:]``) and ``edge_attr``: ``[E, 6]`` geometry on frame
    graphs, ``[E, 8]`` (one-hot kind, then geometry) on space-time graphs
    (:mod:`dyreg_pyg.geometry`: columns and why), differentiable in ``regions``: live regions
    (``details.live_regions``, or ``live_graph=True``) let a loss on them reach the region
    generator; detached ones keep nothing for backward. Cost: a few gathers per edge.

    Args:
        x: node features ``[B, T, N, C]``.
        regions: node regions ``[B, T, N, 4]`` as ``(cx, cy, w, h)`` (optional).
        self_loops: include ``i -> i`` edges in each frame.
        temporal_edges: build per-video space-time graphs instead of per-frame graphs.
        geometry: add ``pos`` and ``edge_attr`` when ``regions`` are given.

    Returns:
        A :class:`Batch` with ``x [B*T*N, C]``, ``edge_index``, ``batch`` (graph id), ``ptr``,
        per-node ``frame`` (``t``) and ``video`` (``b``) ids, and with ``regions`` also
        ``region [B*T*N, 4]``, ``pos [B*T*N, 2]``, ``edge_attr``.
    """
    if x.dim() != 4:
        raise ValueError(f"x: expected node features [B, T, N, C], got shape {tuple(x.shape)}")
    b, t, n, c = x.shape
    if regions is not None and regions.shape != (b, t, n, 4):
        raise ValueError(f"regions: expected shape {(b, t, n, 4)} to match x, got "
                         f"{tuple(regions.shape)}")
    dev = x.device
    graphs, nodes_per_graph = (b, t * n) if temporal_edges else (b * t, n)
    edge_index, edge_type = _clip_edges(b, t, n, self_loops, temporal_edges, dev)

    ids = torch.arange(b * t * n, device=dev)
    video = ids // (t * n)
    frame = (ids // n) % t
    store: dict[str, Tensor] = {"x": x.reshape(b * t * n, c), "edge_index": edge_index,
                                "frame": frame, "video": video}
    if regions is not None:
        store["region"] = regions.reshape(b * t * n, 4)
        if geometry:
            store["pos"] = region_centres(store["region"])
            store["edge_attr"] = geometry_edge_attr(store["region"], edge_index,
                                                    frame if temporal_edges else None)
    if edge_type is not None:
        store["edge_type"] = edge_type

    batch = Batch(_base_cls=Data, **store)
    batch.batch = video if temporal_edges else ids // n
    batch.ptr = torch.arange(graphs + 1, device=dev) * nodes_per_graph
    _set_bookkeeping(batch, graphs, edge_index.shape[1] // graphs, list(store))
    return batch


def _clip_edges(b: int, t: int, n: int, self_loops: bool, temporal_edges: bool,
                dev: torch.device) -> tuple[Tensor, Tensor | None]:
    """``edge_index`` of all the graphs of :func:`build_graph_batch` and, for space-time
    graphs, the ``edge_type`` of every edge (else ``None``)."""
    if not temporal_edges:
        return frame_edge_index(b * t, n, self_loops, dev), None
    # Edges of one space-time graph, then offset copies for every video.
    spatial = complete_edge_index(n, self_loops, dev)  # [2, Es]
    frame_off = (torch.arange(t, device=dev) * n).repeat_interleave(spatial.shape[1])
    spatial = spatial.repeat(1, t) + frame_off
    temporal = _temporal_edge_index(t, n, dev)
    one = torch.cat((spatial, temporal), 1)
    one_type = torch.cat((
        torch.full((spatial.shape[1],), SPATIAL, device=dev, dtype=torch.long),
        torch.full((temporal.shape[1],), TEMPORAL, device=dev, dtype=torch.long),
    ))
    offsets = torch.arange(b, device=dev) * t * n
    edge_index = (one.unsqueeze(1) + offsets.view(1, -1, 1)).reshape(2, -1)
    return edge_index, one_type.repeat(b)


_EDGE_KEYS = ("edge_index", "edge_attr", "edge_type")


def _set_bookkeeping(batch: Batch, graphs: int, edges_per_graph: int, keys: list[str]) -> None:
    """The slices and increments :meth:`Batch.from_data_list` would have written for
    ``keys``, so ``to_data_list()`` / ``get_example(i)`` work."""
    node_slices = batch.ptr.cpu()
    edge_slices = torch.arange(graphs + 1) * edges_per_graph
    zeros = torch.zeros(graphs, dtype=torch.long)
    slice_dict, inc_dict = {}, {}
    for key in keys:
        slice_dict[key] = edge_slices if key in _EDGE_KEYS else node_slices
        inc_dict[key] = node_slices[:-1].clone() if key == "edge_index" else zeros
    batch._num_graphs = graphs
    batch._slice_dict = slice_dict
    batch._inc_dict = inc_dict


def with_geometry(data: Data, kind: bool | None = None) -> Data:
    """Set ``data.pos`` and ``data.edge_attr`` from its ``region`` and ``edge_index``,
    replacing what was there: the geometry of edges that a transform added or reversed, or of
    a graph that has none. ``T.ToUndirected`` (``reduce="add"``) gives a new reverse edge the
    attributes of its edge (a reversed temporal edge's offset points the wrong way) and adds
    up the attributes of an edge and of its existing reverse (the frame graphs' edges: the
    offsets cancel, the kind column becomes 2) - recompute after it (:class:`RegionGeometry`).

    ``kind``: lead ``edge_attr`` with the one-hot edge kind (from ``frame``, which it then
    needs); by default when the graph is a space-time one - it has an ``edge_type``, an
    ``edge_attr`` with the kind columns, or nodes of several frames. Returns ``data``;
    differentiable in ``region``."""
    if getattr(data, "region", None) is None or data.edge_index is None:
        raise ValueError("with_geometry: expected a region graph with `region [num_nodes, 4]` "
                         f"and `edge_index`, got {data}")
    frame = getattr(data, "frame", None)
    if kind is None:
        old = getattr(data, "edge_attr", None)
        kind = (getattr(data, "edge_type", None) is not None
                or (old is not None and old.dim() == 2
                    and old.shape[1] == len(edge_attr_columns(True)))
                or (frame is not None and frame.numel() > 0 and bool((frame != frame[0]).any())))
    if kind and frame is None:
        raise ValueError("with_geometry: the edge kind needs the nodes' `frame`, which "
                         f"{data} lacks")
    data.pos = region_centres(data.region)
    data.edge_attr = geometry_edge_attr(data.region, data.edge_index, frame if kind else None)
    return data


class RegionGeometry(BaseTransform):
    """:func:`with_geometry` as a PyG transform: ``T.Compose([T.ToUndirected(),
    RegionGeometry()])`` gives the reversed edges their own geometry (``T.ToUndirected`` adds
    up the attributes of an edge and of its reverse, which cancels the offsets of the frame
    graphs' edges, present in both directions)."""

    def __init__(self, kind: bool | None = None) -> None:
        self.kind = kind

    def forward(self, data: Data) -> Data:
        return with_geometry(data, self.kind)


def to_hetero(data: Data, node_type: str = "region") -> HeteroData:
    """A space-time region graph as a :class:`HeteroData` with one node type and two
    relations, ``(node_type, "spatial", node_type)`` and ``(node_type, "temporal",
    node_type)``; node attributes (``x``, ``pos``, ``region``, ...) and edge attributes
    (``edge_attr``) are split accordingly, graph attributes (``y``, ``video_id``) kept.

    The relation of an edge is read from the nodes' ``frame``
    (:func:`~dyreg_pyg.geometry.edge_kind`), not from a stored ``edge_type``, so it is right
    after transforms that add edges (``T.AddSelfLoops``, ``T.ToUndirected``)."""
    if getattr(data, "frame", None) is None or data.edge_index is None:
        raise ValueError("to_hetero: expected a region graph with `frame [num_nodes]` and "
                         f"`edge_index`, got {data}")
    kind = edge_kind(data.frame, data.edge_index)
    return data.to_heterogeneous(
        edge_type=kind, node_type_names=[node_type],
        edge_type_names=[(node_type, name, node_type) for name in EDGE_TYPE_NAMES])
