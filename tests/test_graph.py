import pytest
import torch
from torch_geometric.data import Batch, Data

from dyreg_pyg.graph import SPATIAL, TEMPORAL, build_graph_batch, complete_edge_index


def _per_frame(x, regions, self_loops):
    b, t, n, _ = x.shape
    ei = complete_edge_index(n, self_loops)
    return [
        Data(x=x[i, j], edge_index=ei, frame=torch.full((n,), j), video=torch.full((n,), i),
             region=regions[i, j])
        for i in range(b) for j in range(t)
    ]


@pytest.mark.parametrize("self_loops", [True, False])
def test_vectorised_batch_equals_from_data_list(self_loops):
    torch.manual_seed(0)
    x, regions = torch.randn(2, 3, 4, 5), torch.rand(2, 3, 4, 4)
    ours = build_graph_batch(x, regions, self_loops=self_loops)
    ref = Batch.from_data_list(_per_frame(x, regions, self_loops))
    assert ours.num_graphs == ref.num_graphs == 6
    for key in ("x", "edge_index", "frame", "video", "region", "batch", "ptr"):
        assert torch.equal(ours[key], ref[key]), key
    for i in range(6):
        a, b = ours.get_example(i), ref.get_example(i)
        for key in ("x", "edge_index", "frame", "video", "region"):
            assert torch.equal(a[key], b[key]), (i, key)
    assert len(ours.to_data_list()) == 6
    e = 16 if self_loops else 12
    assert ours.edge_index.shape == (2, 6 * e)
    # node order is (b, t, n): the dense layout is a view
    assert torch.equal(ours.x.view(2, 3, 4, 5), x)


def test_temporal_edges_space_time_graph():
    x = torch.randn(2, 3, 2, 4)
    g = build_graph_batch(x, temporal_edges=True, self_loops=False)
    assert g.num_graphs == 2
    sp = g.edge_index[:, g.edge_type == SPATIAL]
    tm = g.edge_index[:, g.edge_type == TEMPORAL]
    assert sp.shape[1] == 2 * 3 * 2  # 2 videos x 3 frames x 2 directed edges
    assert tm.shape[1] == 2 * 2 * 2  # 2 videos x (T-1) x N
    # temporal edges link the same node index at t -> t+1 inside one video
    assert torch.equal(g.frame[tm[1]], g.frame[tm[0]] + 1)
    assert torch.equal(tm[1] - tm[0], torch.full((tm.shape[1],), 2))
    assert torch.equal(g.video[tm[0]], g.video[tm[1]])
    # spatial edges stay inside a frame
    assert torch.equal(g.frame[sp[0]], g.frame[sp[1]])
    ex = g.get_example(1)
    assert ex.num_nodes == 6 and torch.equal(ex.x, x[1].reshape(6, 4))
    assert ex.edge_index.max() < 6


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[B, T, N, C\]"):
        build_graph_batch(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="regions"):
        build_graph_batch(torch.randn(1, 2, 3, 4), torch.rand(1, 2, 3, 2))
