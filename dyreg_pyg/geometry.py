r"""Region geometry on a graph: node positions and edge attributes from the regions.

A node's region is ``(cx, cy, w, h)`` in the normalised coordinates of the feature map
(:mod:`dyreg_pyg.nn.kernels`: ``x, y`` in ``[0, 1]``, ``w, h`` the half-widths of the kernel's
support, so the region covers ``(cx - w, cy - h, cx + w, cy + h)``). Edges follow PyG:
``edge_index[0]`` is the sender ``j``, ``edge_index[1]`` the receiver ``i``.

**Node position** ``pos = (cx, cy)`` (``[num_nodes, 2]``), what
:class:`~torch_geometric.transforms.Distance`, :class:`~torch_geometric.transforms.Cartesian`
and the point-cloud layers read. The size is not put into ``pos`` (a 4-d ``pos`` would make
those transforms mix sizes into distances); it stays in ``region[:, 2:]``.

**Edge attributes** ``edge_attr [E, 6]``, one row per edge ``j -> i``, columns
:data:`GEOMETRY_COLUMNS`:

- ``dx``, ``dy``: ``c_j - c_i``, where the sender is seen from the receiver (the sign of
  ``T.Cartesian``); in ``[-1, 1]`` for regions inside the frame; 0 on a self-loop;
- ``distance``: ``|c_j - c_i|`` (``T.Distance``'s value); 0 on a self-loop;
- ``log_w``, ``log_h``: ``log(w_j / w_i)``, ``log(h_j / h_i)``; 0 on a self-loop;
- ``iou``: intersection over union of the two regions' boxes, in ``[0, 1]``; 1 on a self-loop.

Why these: the offset says where the other region is (direction and distance), the log size
ratio how much larger it is - both relative, the same wherever the pair sits in the frame, and
antisymmetric (the reversed edge carries the negated value), as in relation networks for
object detection; the log makes "twice as wide" and "half as wide" symmetric around 0. The
distance is a function of ``(dx, dy)``, but not a linear one: layers that project
``edge_attr`` linearly (``GATv2Conv``, ``TransformerConv``, ``GINEConv`` with ``edge_dim``)
could not form it themselves. The IoU says whether two regions cover the same part of the map
(they pool the same features), which neither offsets nor sizes show alone; it is 0 for
disjoint boxes, so it matters only between neighbours. Offsets stay in map units, not in
units of the receiver's size: DyReg's regions are about a grid cell or larger, so the scaled
offsets would bring nothing the columns above lack and would grow unboundedly for small
regions.

**Motion columns** (``DyRegConfig(edge_motion=True)``, on the frame graphs handed to a space
layer): :data:`MOTION_COLUMNS` appended after the six, ``[E, 9]`` - ``ddx``, ``ddy``: how the
same pair's offset changed since the previous frame, ``(c_j - c_i)(t) - (c_j - c_i)(t - 1)``
(0 in a video's first frame), which is ``v_j - v_i``, the difference of the two regions'
displacements; ``dd``: its length, 0 exactly when the two move together
(:func:`pair_motion`). The frame graphs hold one frame each (the stack's time step is the
per-node GRU), so this is how a relation across frames reaches a space layer: computed on
the edges it already has rather than on edges that span frames, whose single offset
``c_j(t-1) - c_i(t)`` mixes the pair's old offset with ``i``'s own motion.

Graphs with temporal edges (``build_graph_batch(temporal_edges=True)``, the export) carry
:data:`EDGE_KIND_COLUMNS` first, the edge kind as a one-hot (``spatial``: the two nodes are in
one frame; ``temporal``: in different frames), then the six geometry columns: ``[E, 8]``. For
a temporal edge the offset is the motion of the region from one frame to the next.

Every value is computed with differentiable torch operations from the regions it is given
(nothing detached), so a layer that consumes ``pos`` / ``edge_attr`` built from the predicted
regions also trains the region generator. The sizes are clamped to at least
:data:`SIZE_EPS` before the log and the IoU (external regions may have zero size); the
distance's gradient at a zero offset is 0 (``torch.linalg.vector_norm``), so self-loops and
still regions give no NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "GEOMETRY_COLUMNS", "MOTION_COLUMNS", "EDGE_KIND_COLUMNS", "SIZE_EPS", "pair_motion",
    "region_centres", "region_sizes",
    "centre_offset", "centre_distance", "log_size_ratio", "box_iou", "edge_kind",
    "edge_kind_one_hot", "edge_geometry", "edge_attr", "edge_attr_columns",
    "self_loop_edge_attr", "check_regions", "regions_to_boxes",
]

GEOMETRY_COLUMNS: tuple[str, ...] = ("dx", "dy", "distance", "log_w", "log_h", "iou")
"""The geometry columns of ``edge_attr`` (see the module docstring)."""
MOTION_COLUMNS: tuple[str, ...] = ("ddx", "ddy", "dd")
"""The motion columns appended with ``edge_motion`` (:func:`pair_motion`)."""
EDGE_KIND_COLUMNS: tuple[str, ...] = ("spatial", "temporal")
"""The one-hot edge kind leading ``edge_attr`` on graphs with temporal edges."""
SIZE_EPS = 1e-6
"""Smallest half-width used in the log size ratio and the IoU."""


def check_regions(regions: Tensor) -> None:
    """A clear error unless ``regions`` is ``[..., N, 4]``."""
    if regions.dim() < 2 or regions.shape[-1] != 4:
        raise ValueError(
            f"regions: expected a tensor [..., N, 4] of (cx, cy, w, h), got shape "
            f"{tuple(regions.shape)}"
        )


def regions_to_boxes(regions: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)`` support boxes, clipped to ``[0, 1]``."""
    check_regions(regions)
    cx, cy, w, h = regions.unbind(-1)
    return torch.stack((cx - w, cy - h, cx + w, cy + h), -1).clamp(0.0, 1.0)



def _check(region: Tensor, edge_index: Tensor) -> None:
    if region.dim() != 2 or region.shape[1] != 4:
        raise ValueError(f"region: expected [num_nodes, 4] (cx, cy, w, h), got shape "
                         f"{tuple(region.shape)}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index: expected [2, E], got shape {tuple(edge_index.shape)}")


def region_centres(region: Tensor) -> Tensor:
    """Node positions: the centres ``(cx, cy)`` of ``region [..., 4]`` -> ``[..., 2]``."""
    return region[..., :2]


def region_sizes(region: Tensor) -> Tensor:
    """Half-widths ``(w, h)`` of ``region [..., 4]``, at least :data:`SIZE_EPS`."""
    return region[..., 2:4].clamp_min(SIZE_EPS)


def centre_offset(region: Tensor, edge_index: Tensor) -> Tensor:
    """``c_j - c_i`` per edge ``j -> i``: ``[E, 2]`` (``dx``, ``dy``)."""
    pos = region_centres(region)
    return pos[edge_index[0]] - pos[edge_index[1]]


def centre_distance(offset: Tensor) -> Tensor:
    """``|c_j - c_i|`` from :func:`centre_offset`'s ``[E, 2]``: ``[E, 1]``."""
    return torch.linalg.vector_norm(offset, dim=-1, keepdim=True)


def pair_motion(offset: Tensor) -> Tensor:
    """:data:`MOTION_COLUMNS` from the per-frame offsets ``c_j - c_i`` of frame graphs that
    all have the same edges, ``offset [..., T, E_f, 2]`` -> ``[..., T, E_f, 3]``: the change
    of each edge's offset since the same edge one frame earlier (0 in the first frame) and
    its length."""
    if offset.dim() < 3 or offset.shape[-1] != 2:
        raise ValueError(f"offset: expected [..., T, E_f, 2] (frames, edges per frame, "
                         f"dx/dy), got shape {tuple(offset.shape)}")
    change = torch.cat((torch.zeros_like(offset[..., :1, :, :]),
                        offset[..., 1:, :, :] - offset[..., :-1, :, :]), -3)
    return torch.cat((change, centre_distance(change)), -1)


def log_size_ratio(region: Tensor, edge_index: Tensor) -> Tensor:
    """``log(w_j / w_i), log(h_j / h_i)`` per edge ``j -> i``: ``[E, 2]``."""
    log_size = region_sizes(region).log()
    return log_size[edge_index[0]] - log_size[edge_index[1]]


def box_iou(region: Tensor, edge_index: Tensor) -> Tensor:
    """Intersection over union of the boxes ``c -+ (w, h)`` of the two ends: ``[E, 1]``.

    The boxes are not clipped to the frame (a clip would stop the gradient of a region that
    reaches past the border)."""
    centre, size = region_centres(region), region_sizes(region)
    lo, hi = centre - size, centre + size
    src, dst = edge_index[0], edge_index[1]
    side = (torch.minimum(hi[src], hi[dst]) - torch.maximum(lo[src], lo[dst])).clamp_min(0)
    inter = side.prod(-1, keepdim=True)
    area = 4 * size.prod(-1, keepdim=True)
    return inter / (area[src] + area[dst] - inter)


def edge_kind(frame: Tensor, edge_index: Tensor) -> Tensor:
    """Edge kind ``[E]`` (long): 0 (:data:`~dyreg_pyg.graph.SPATIAL`) when both ends are in one
    frame, 1 (:data:`~dyreg_pyg.graph.TEMPORAL`) otherwise. Defined by the nodes' ``frame``,
    so it stays right for edges that transforms add (self-loops, reversed edges)."""
    return (frame[edge_index[0]] != frame[edge_index[1]]).long()


def edge_kind_one_hot(frame: Tensor, edge_index: Tensor, dtype: torch.dtype = torch.float32
                      ) -> Tensor:
    """:func:`edge_kind` as a one-hot ``[E, 2]`` (columns :data:`EDGE_KIND_COLUMNS`)."""
    kind = edge_kind(frame, edge_index)
    return torch.stack((1 - kind, kind), -1).to(dtype)


def edge_geometry(region: Tensor, edge_index: Tensor) -> Tensor:
    """The geometry columns :data:`GEOMETRY_COLUMNS` of ``edge_index`` over the nodes'
    ``region [num_nodes, 4]``: ``[E, 6]``, in ``region``'s dtype, differentiable."""
    _check(region, edge_index)
    offset = centre_offset(region, edge_index)
    return torch.cat((offset, centre_distance(offset), log_size_ratio(region, edge_index),
                      box_iou(region, edge_index)), -1)


def edge_attr(region: Tensor, edge_index: Tensor, frame: Tensor | None = None) -> Tensor:
    """``edge_attr`` of a region graph: :func:`edge_geometry` (``[E, 6]``), led by the one-hot
    edge kind (:func:`edge_kind_one_hot`, ``[E, 8]`` in all) when ``frame`` (the nodes' frame
    index, ``[num_nodes]``) is given - for graphs with temporal edges."""
    geometry = edge_geometry(region, edge_index)
    if frame is None:
        return geometry
    return torch.cat((edge_kind_one_hot(frame, edge_index, geometry.dtype), geometry), -1)


def edge_attr_columns(temporal: bool) -> tuple[str, ...]:
    """The names of :func:`edge_attr`'s columns, with (``temporal``) or without the kind."""
    return (EDGE_KIND_COLUMNS if temporal else ()) + GEOMETRY_COLUMNS


def self_loop_edge_attr(temporal: bool, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``edge_attr`` row of a self-loop (what :func:`edge_attr` gives for ``i -> i``):
    the ``fill_value`` of ``T.AddSelfLoops(attr="edge_attr", fill_value=...)``.

    >>> self_loop_edge_attr(temporal=True)
    tensor([1., 0., 0., 0., 0., 0., 0., 1.])
    """
    geometry = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    return torch.tensor(([1.0, 0.0] if temporal else []) + geometry, dtype=dtype)
