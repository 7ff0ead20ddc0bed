"""Region geometry on the graph (issue 35 item 1): pos and edge_attr of build_graph_batch,
their values, their gradient to the region generator, and the helpers for PyG transforms."""

import math

import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Data

from dyreg_pyg import DyRegGNN
from dyreg_pyg.geometry import (
    GEOMETRY_COLUMNS,
    MOTION_COLUMNS,
    edge_attr,
    edge_attr_columns,
    edge_geometry,
    edge_kind,
    pair_motion,
    self_loop_edge_attr,
)
from dyreg_pyg.graph import (
    SPATIAL,
    TEMPORAL,
    build_graph_batch,
    complete_edge_index,
    to_hetero,
    with_geometry,
)


def test_edge_geometry_columns_by_hand():
    # node 0: box [0.1, 0.3] x [0.2, 0.4]; node 1: box [0.2, 0.6] x [0.3, 0.5] (cx, cy, w, h)
    region = torch.tensor([[0.2, 0.3, 0.1, 0.1], [0.4, 0.4, 0.2, 0.1]], dtype=torch.float64)
    edge_index = torch.tensor([[1, 0, 0], [0, 1, 0]])  # 1 -> 0, 0 -> 1, self-loop 0 -> 0
    g = edge_geometry(region, edge_index)
    assert GEOMETRY_COLUMNS == ("dx", "dy", "distance", "log_w", "log_h", "iou")
    inter = (0.3 - 0.2) * (0.4 - 0.3)
    iou = inter / (0.2 * 0.2 + 0.4 * 0.2 - inter)
    expect = torch.tensor([
        [0.2, 0.1, math.hypot(0.2, 0.1), math.log(2.0), 0.0, iou],  # sender 1 seen from 0
        [-0.2, -0.1, math.hypot(0.2, 0.1), -math.log(2.0), 0.0, iou],
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    ], dtype=torch.float64)
    torch.testing.assert_close(g, expect, rtol=0, atol=1e-12)
    torch.testing.assert_close(g[2], self_loop_edge_attr(False, torch.float64))
    # disjoint boxes do not overlap; zero-size regions give finite values
    far = torch.tensor([[0.1, 0.1, 0.05, 0.05], [0.9, 0.9, 0.0, 0.0]])
    out = edge_geometry(far, torch.tensor([[0], [1]]))
    assert float(out[0, -1]) == 0.0 and bool(torch.isfinite(out).all())


def test_edge_attr_kind_columns_follow_the_frames():
    region = torch.rand(4, 4) * 0.3 + 0.1
    frame = torch.tensor([0, 0, 1, 1])
    ei = torch.tensor([[0, 1, 0, 3], [1, 0, 2, 1]])
    a = edge_attr(region, ei, frame)
    assert a.shape == (4, 8) and edge_attr_columns(True)[:2] == ("spatial", "temporal")
    assert a[:, :2].tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert edge_kind(frame, ei).tolist() == [SPATIAL, SPATIAL, TEMPORAL, TEMPORAL]
    torch.testing.assert_close(a[:, 2:], edge_geometry(region, ei))
    with pytest.raises(ValueError, match=r"region: expected \[num_nodes, 4\]"):
        edge_geometry(torch.rand(2, 3), ei)


@pytest.mark.parametrize("self_loops", [True, False])
def test_frame_graphs_carry_pos_and_edge_attr(self_loops):
    torch.manual_seed(0)
    x, regions = torch.randn(2, 3, 4, 5), torch.rand(2, 3, 4, 4) * 0.4 + 0.05
    g = build_graph_batch(x, regions, self_loops=self_loops)
    e = 16 if self_loops else 12
    assert g.pos.shape == (24, 2) and g.edge_attr.shape == (6 * e, 6)
    torch.testing.assert_close(g.pos, regions.reshape(-1, 4)[:, :2], rtol=0, atol=0)
    one = complete_edge_index(4, self_loops)
    for i, d in enumerate(g.to_data_list()):  # per frame, local indices
        assert torch.equal(d.pos, regions.view(6, 4, 4)[i, :, :2])
        torch.testing.assert_close(d.edge_attr, edge_geometry(regions.view(6, 4, 4)[i], one),
                                   rtol=0, atol=0)
    plain = build_graph_batch(x, regions, geometry=False)
    assert "pos" not in plain and "edge_attr" not in plain and "region" in plain
    assert "edge_attr" not in build_graph_batch(x)


def test_space_time_graphs_lead_with_the_edge_kind():
    torch.manual_seed(1)
    x, regions = torch.randn(2, 3, 2, 4), torch.rand(2, 3, 2, 4) * 0.4 + 0.05
    g = build_graph_batch(x, regions, temporal_edges=True, self_loops=False)
    assert g.edge_attr.shape == (g.edge_index.shape[1], 8)
    assert torch.equal(g.edge_attr[:, 1].long(), g.edge_type)
    assert torch.equal(g.edge_attr[:, :2].sum(1), torch.ones(g.edge_index.shape[1]))
    tm = g.edge_type == TEMPORAL
    src, dst = g.edge_index[:, tm]
    # a temporal edge's offset is the region's motion from t to t + 1 (seen from t + 1)
    motion = g.region[src, :2] - g.region[dst, :2]
    torch.testing.assert_close(g.edge_attr[tm, 2:4], motion, rtol=0, atol=0)
    ex = g.get_example(1)
    assert ex.edge_attr.shape == (ex.edge_index.shape[1], 8)
    torch.testing.assert_close(ex.edge_attr, edge_attr(ex.region, ex.edge_index, ex.frame))


def test_edge_geometry_gradcheck():
    torch.manual_seed(2)
    region = (torch.rand(5, 4, dtype=torch.float64) * 0.3 + 0.1).requires_grad_(True)
    region.data[:, :2] = torch.rand(5, 2, dtype=torch.float64) * 0.4 + 0.3  # overlapping
    ei = complete_edge_index(5, self_loops=False)
    assert torch.autograd.gradcheck(lambda r: edge_geometry(r, ei), (region,))


@pytest.mark.parametrize("flavor", ["paper", "authors"])
def test_geometry_gradient_reaches_the_region_generator(flavor):
    """A loss on pos / edge_attr of the graph built from the live regions trains the region
    generator (finite, non-zero gradients on its parameters)."""
    torch.manual_seed(3)
    kw = dict(num_nodes=4, iterations=1, region_channels=4)
    if flavor == "authors":
        kw.update(flavor="authors", spatial_size=(6, 6))
    gnn = DyRegGNN(8, **kw)
    x = torch.randn(1, 2, 8, 6, 6)
    _, details = gnn(x, return_details=True)
    assert "edge_attr" in details.graph and not details.graph.edge_attr.requires_grad
    b, t, n = details.live_regions.shape[:3]
    g = build_graph_batch(details.graph.x.view(b, t, n, -1), details.live_regions,
                          temporal_edges=True)
    loss = g.edge_attr[:, 2:].pow(2).sum() + g.pos.sum()
    loss.backward()
    gen = gnn.regions if flavor == "authors" else gnn.region_generator
    grads = [p.grad for p in gen.parameters() if p.requires_grad]
    assert grads and all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads)
    assert max(float(gr.abs().max()) for gr in grads) > 0


def _video_graph() -> Data:
    torch.manual_seed(4)
    g = build_graph_batch(torch.randn(1, 3, 3, 5), torch.rand(1, 3, 3, 4) * 0.3 + 0.1,
                          temporal_edges=True)
    return g.get_example(0)


def test_pyg_transforms_and_hetero_on_a_space_time_graph():
    d = _video_graph()
    e = d.edge_index.shape[1]
    looped = T.AddSelfLoops(attr="edge_attr", fill_value=self_loop_edge_attr(True))(d.clone())
    assert looped.edge_index.shape[1] == looped.edge_attr.shape[0] == e + d.num_nodes
    torch.testing.assert_close(looped.edge_attr[e:], with_geometry(looped.clone()).edge_attr[e:])
    und = T.ToUndirected()(d.clone())
    assert und.edge_index.shape[1] == und.edge_attr.shape[0] == e + 6  # reversed temporal
    fixed = with_geometry(und.clone())
    assert fixed.edge_attr.shape == und.edge_attr.shape
    src, dst = fixed.edge_index
    torch.testing.assert_close(fixed.edge_attr[:, 2:4], d.pos[src] - d.pos[dst])
    assert torch.equal(fixed.edge_attr[:, 1].long(), edge_kind(d.frame, fixed.edge_index))
    cart = T.Cartesian(norm=False, cat=False)(d.clone())
    torch.testing.assert_close(cart.edge_attr, d.edge_attr[:, 2:4])
    dist = T.Distance(norm=False, cat=False)(d.clone())
    torch.testing.assert_close(dist.edge_attr, d.edge_attr[:, 4:5])
    h = to_hetero(looped)
    sp, tm = h["region", "spatial", "region"], h["region", "temporal", "region"]
    assert sp.edge_index.shape[1] == 3 * 9 + 9 and tm.edge_index.shape[1] == 2 * 3
    assert bool((sp.edge_attr[:, 0] == 1).all()) and bool((tm.edge_attr[:, 1] == 1).all())
    assert h["region"].pos.shape == (9, 2)
    with pytest.raises(ValueError, match="frame"):
        to_hetero(Data(edge_index=d.edge_index, num_nodes=9))


def test_pair_motion_by_hand():
    """The motion columns: the change of each edge's offset since the previous frame, 0 in
    the first frame, and 0 in every frame for two regions that move together."""
    # one video, 3 frames, one edge per frame: offsets (0.1, 0), (0.3, 0), (0.3, -0.4)
    offset = torch.tensor([[[[0.1, 0.0]], [[0.3, 0.0]], [[0.3, -0.4]]]], dtype=torch.float64)
    out = pair_motion(offset)
    assert MOTION_COLUMNS == ("ddx", "ddy", "dd") and out.shape == (1, 3, 1, 3)
    expect = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.2], [0.0, -0.4, 0.4]],
                          dtype=torch.float64)
    torch.testing.assert_close(out.view(3, 3), expect, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"offset: expected \[\.\.\., T, E_f, 2\]"):
        pair_motion(torch.zeros(4, 2))


def test_edge_motion_reaches_the_space_layer_with_its_gradient():
    """``edge_motion=True``: the space layer gets ``edge_attr [E, 9]`` - the six geometry
    columns, then ``pair_motion`` of the live regions (0 in frame 0) - a constructor's
    ``edge_dim`` is 9, and a loss on the motion columns trains the region generator."""
    from torch_geometric.nn import MessagePassing

    seen = []

    class Recorder(MessagePassing):
        def __init__(self, c):
            super().__init__()
            self.lin = torch.nn.Linear(c, c)

        def forward(self, x, edge_index, edge_attr):
            seen.append(edge_attr)
            return self.lin(x) + edge_attr[:, 6:].sum() * 0

    torch.manual_seed(5)
    gnn = DyRegGNN(8, num_nodes=3, iterations=1, region_channels=4, gnn=Recorder,
                   edge_motion=True)
    with torch.no_grad():  # regions that differ between frames (at init they are constant)
        for p in gnn.region_generator.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    seen.clear()
    _, details = gnn(torch.randn(2, 3, 8, 6, 6), return_details=True)
    attr, regions = seen[0], details.live_regions  # [B, T, N, 4]
    b, t, n = regions.shape[:3]
    assert attr.shape == (b * t * n * n, 9)
    flat = regions.reshape(-1, 4)
    from dyreg_pyg.graph import frame_edge_index
    ei = frame_edge_index(b * t, n, True)
    torch.testing.assert_close(attr[:, :6], edge_geometry(flat, ei))
    offset = (flat[ei[0], :2] - flat[ei[1], :2]).view(b, t, n * n, 2)
    motion = attr[:, 6:].view(b, t, n * n, 3)
    assert float(motion[:, 0].detach().abs().max()) == 0.0
    torch.testing.assert_close(motion[:, 1:, :, :2], offset[:, 1:] - offset[:, :-1])
    assert float(motion[:, 1:, :, 2].detach().max()) > 0.01  # the regions move
    motion.pow(2).sum().backward()
    grads = [p.grad for p in gnn.region_generator.parameters() if p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) > 0
    layer = DyRegGNN(8, num_nodes=3, gnn="TransformerConv", edge_motion=True).spatial[0]
    assert layer.lin_edge.in_channels == 9
    assert DyRegGNN(8, num_nodes=3, gnn="TransformerConv").spatial[0].lin_edge.in_channels == 6
    with pytest.raises(ValueError, match="edge_motion: expected False with edge_geometry=False"):
        DyRegGNN(8, num_nodes=3, edge_motion=True, edge_geometry=False)


def test_motion_columns_refuse_regions_without_frames_and_bad_edge_dim():
    """The motion columns need regions ``[B, T, N, 4]`` (a flat ``[num_nodes, 4]`` would have
    its frames guessed from the shape); ``edge_dim`` must be a width >= 1."""
    from dyreg_pyg.graph import frame_edge_index
    from dyreg_pyg.nn import GraphInputs, make_spatial_layer
    from dyreg_pyg.nn.inputs import space_inputs

    layer = make_spatial_layer("TransformerConv", 4, edge_dim=9)
    ei = frame_edge_index(2, 3, True)
    x, batch = torch.randn(6, 4), torch.arange(2).repeat_interleave(3)
    regions = torch.rand(1, 2, 3, 4) * 0.3 + 0.1
    out = space_inputs([layer], ei, batch, x, GraphInputs(regions, motion=True))
    assert out["edge_attr"].shape == (18, 9)
    with pytest.raises(ValueError, match=r"expected regions \[B, T, N, 4\], got shape \(6, 4\)"):
        space_inputs([layer], ei, batch, x, GraphInputs(regions.reshape(6, 4), motion=True))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="edge_dim: expected an integer >= 1"):
            make_spatial_layer("TransformerConv", 4, edge_dim=bad)
