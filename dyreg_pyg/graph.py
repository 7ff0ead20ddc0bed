"""Nodes and regions -> one PyG :class:`~torch_geometric.data.Batch` of spatio-temporal graphs.

Node order is ``(b, t, n)``: ``batch.x.view(B, T, N, C)`` recovers the dense layout for free.
The batch is assembled directly (no Python loop over frames) together with the slice and
increment bookkeeping that :meth:`Batch.from_data_list` would have written, so
``to_data_list()`` / ``get_example(i)`` return the per-frame (or per-video) :class:`Data`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

__all__ = [
    "complete_edge_index", "frame_edge_index", "build_graph_batch", "SPATIAL", "TEMPORAL"
]

SPATIAL = 0
"""``edge_type`` of an edge inside a frame."""
TEMPORAL = 1
"""``edge_type`` of an edge from node ``n`` at ``t`` to node ``n`` at ``t + 1``."""


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


def build_graph_batch(
    x: Tensor,
    regions: Tensor | None = None,
    self_loops: bool = True,
    temporal_edges: bool = False,
) -> Batch:
    """Assemble the graphs of a clip batch, vectorised.

    With ``temporal_edges=False`` (the default, used by :class:`~dyreg_pyg.DyRegGNN`) the
    result holds ``B * T`` frame graphs, each the complete graph on its ``N`` nodes. With
    ``temporal_edges=True`` it holds ``B`` space-time graphs of ``T * N`` nodes: the same
    spatial edges plus an edge from node ``n`` at ``t`` to node ``n`` at ``t + 1``, and an
    ``edge_type`` attribute (:data:`SPATIAL` or :data:`TEMPORAL`), so a single PyG layer (e.g.
    :class:`~torch_geometric.nn.conv.RGCNConv`) can run on the whole clip.

    Args:
        x: node features ``[B, T, N, C]``.
        regions: node regions ``[B, T, N, 4]`` as ``(cx, cy, w, h)`` (optional).
        self_loops: include ``i -> i`` edges in each frame.
        temporal_edges: build per-video space-time graphs instead of per-frame graphs.

    Returns:
        A :class:`Batch` with ``x [B*T*N, C]``, ``region [B*T*N, 4]``, ``edge_index``, ``batch``
        (graph id), ``ptr``, and per-node ``frame`` (``t``) and ``video`` (``b``) ids.
    """
    if x.dim() != 4:
        raise ValueError(f"x: expected node features [B, T, N, C], got shape {tuple(x.shape)}")
    b, t, n, c = x.shape
    if regions is not None and regions.shape != (b, t, n, 4):
        raise ValueError(
            f"regions: expected shape {(b, t, n, 4)} to match x, got {tuple(regions.shape)}"
        )
    dev = x.device
    if temporal_edges:
        graphs, nodes_per_graph = b, t * n
    else:
        graphs, nodes_per_graph = b * t, n

    # Edges of one graph, then offset copies for every graph.
    spatial = complete_edge_index(n, self_loops, dev)  # [2, Es]
    if temporal_edges:
        frame_off = (torch.arange(t, device=dev) * n).repeat_interleave(spatial.shape[1])
        spatial = spatial.repeat(1, t) + frame_off
        temporal = _temporal_edge_index(t, n, dev)
        one = torch.cat((spatial, temporal), 1)
        one_type = torch.cat(
            (
                torch.full((spatial.shape[1],), SPATIAL, device=dev, dtype=torch.long),
                torch.full((temporal.shape[1],), TEMPORAL, device=dev, dtype=torch.long),
            )
        )
        offsets = torch.arange(graphs, device=dev) * nodes_per_graph
        edge_index = (one.unsqueeze(1) + offsets.view(1, -1, 1)).reshape(2, -1)
    else:
        one, one_type = spatial, None
        edge_index = frame_edge_index(graphs, n, self_loops, dev)
    e = one.shape[1]

    ids = torch.arange(b * t * n, device=dev)
    video = ids // (t * n)
    frame = (ids // n) % t
    graph_id = video if temporal_edges else ids // n

    store: dict[str, Tensor] = {
        "x": x.reshape(b * t * n, c),
        "edge_index": edge_index,
        "frame": frame,
        "video": video,
    }
    if regions is not None:
        store["region"] = regions.reshape(b * t * n, 4)
    if one_type is not None:
        store["edge_type"] = one_type.repeat(graphs)

    batch = Batch(_base_cls=Data, **store)
    batch.batch = graph_id
    batch.ptr = torch.arange(graphs + 1, device=dev) * nodes_per_graph

    # The bookkeeping `Batch.from_data_list` writes, so `to_data_list()` works.
    node_slices = batch.ptr.cpu()
    edge_slices = torch.arange(graphs + 1) * e
    zeros = torch.zeros(graphs, dtype=torch.long)
    slice_dict = {"x": node_slices, "edge_index": edge_slices, "frame": node_slices,
                  "video": node_slices}
    inc_dict = {"x": zeros, "edge_index": node_slices[:-1].clone(), "frame": zeros,
                "video": zeros}
    if regions is not None:
        slice_dict["region"], inc_dict["region"] = node_slices, zeros
    if one_type is not None:
        slice_dict["edge_type"], inc_dict["edge_type"] = edge_slices, zeros
    batch._num_graphs = graphs
    batch._slice_dict = slice_dict
    batch._inc_dict = inc_dict
    return batch
