import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv, global_mean_pool

from dyreg_pyg.graph import build_graph_batch
from dyreg_pyg.nn import (
    TESTED_LAYERS,
    RSTGConv,
    TemporalUpdate,
    available_layers,
    make_spatial_layer,
)
from dyreg_pyg.nn.inputs import GraphInputs, plan_of, space_inputs
from dyreg_pyg.nn.stack import call_space_layer


def _dense_eq8(conv: RSTGConv, v: torch.Tensor) -> torch.Tensor:
    """Independent dense Eq. 8: the MLP runs on the explicit concatenation [v_j; v_i]."""
    g, n, c = v.shape
    w1 = torch.cat((conv.lin_src.weight, conv.lin_dst.weight), 1)  # acts on [v_j; v_i]
    vj = v.unsqueeze(1).expand(g, n, n, c)  # [g, i, j, c]
    vi = v.unsqueeze(2).expand(g, n, n, c)
    hidden = F.relu(torch.cat((vj, vi), -1) @ w1.T + conv.lin_dst.bias)
    msg = hidden @ conv.lin_out.weight.T + conv.bias  # MLP([v_j; v_i]) per edge
    q, k = v @ conv.lin_query.weight.T, v @ conv.lin_key.weight.T
    att = torch.softmax(torch.einsum("gic,gjc->gij", q, k) / math.sqrt(q.shape[-1]), -1)
    return torch.einsum("gij,gijc->gic", att, msg)


def test_rstg_equals_dense_eq8_and_attention_sums_to_one():
    torch.manual_seed(0)
    conv = RSTGConv(16, 16, attention_channels=8)
    with torch.no_grad():
        conv.bias.normal_()
    v = torch.randn(2, 3, 9, 16)
    g = build_graph_batch(v)
    out, (ei, att) = conv(g.x, g.edge_index, return_attention_weights=True)
    ref = _dense_eq8(conv, v.reshape(6, 9, 16)).reshape(-1, 16)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(conv.forward_dense(v.reshape(6, 9, 16)).reshape(-1, 16), ref, atol=1e-5)
    sums = torch.zeros(g.num_nodes).index_add_(0, ei[1], att)
    assert torch.allclose(sums, torch.ones(g.num_nodes), atol=1e-6)
    assert att.shape == (g.edge_index.shape[1],)


def test_rstg_on_sparse_graph_softmax_over_senders_only():
    torch.manual_seed(1)
    conv = RSTGConv(4)
    x = torch.randn(4, 4)
    edge_index = torch.tensor([[1, 2, 0, 3], [0, 0, 1, 1]])  # nodes 2 and 3 receive nothing
    out, (_, att) = conv(x, edge_index, return_attention_weights=True)
    assert torch.allclose(att[:2].sum(), torch.tensor(1.0)) and torch.allclose(att[2:].sum(),
                                                                                torch.tensor(1.0))
    assert torch.equal(out[2:], torch.zeros(2, 4))
    # node 0 receives from 1 and 2 only
    vj = x[[1, 2]]
    h = F.relu(conv.lin_src(vj) + conv.lin_dst(x[0]))
    msg = conv.lin_out(h) + conv.bias
    logits = (conv.lin_query(x[0]) * conv.lin_key(vj)).sum(-1) / 2.0
    assert torch.allclose(out[0], (torch.softmax(logits, 0)[:, None] * msg).sum(0), atol=1e-6)


def test_temporal_gru_is_per_node_sequence():
    torch.manual_seed(2)
    upd = TemporalUpdate(5, "gru")
    x = torch.randn(2, 4, 3, 5)
    out = upd(x)
    seq, _ = upd.rnn(x[1, :, 2].unsqueeze(0))  # video 1, node 2 over time
    assert torch.allclose(out[1, :, 2], seq[0], atol=1e-6)
    # causal: changing the last frame leaves earlier outputs unchanged
    x2 = x.clone()
    x2[:, -1] += 1
    assert torch.allclose(upd(x2)[:, :-1], out[:, :-1])
    assert torch.equal(TemporalUpdate(5, "none")(x), x)
    assert TemporalUpdate(5, "lstm")(x).shape == x.shape
    with pytest.raises(ValueError, match="temporal"):
        TemporalUpdate(5, "transformer")


@pytest.mark.parametrize("name", TESTED_LAYERS)
def test_layer_registry_forward_backward(name):
    torch.manual_seed(3)
    layer = make_spatial_layer(name, 8)
    regions = torch.rand(1, 2, 4, 4).mul(0.4).add(0.1).requires_grad_()
    g = build_graph_batch(torch.randn(1, 2, 4, 8))
    x = g.x.clone().requires_grad_()
    inputs = space_inputs([layer], g.edge_index, g.batch, x, GraphInputs(regions))
    out, _ = call_space_layer(layer, x, g.edge_index, g.batch, 2, False, inputs)
    assert out.shape == (8, 8)
    out.square().sum().backward()  # not out.sum(): rstg_authors normalises per frame graph
    assert x.grad is not None and x.grad.abs().sum() > 0
    if plan_of(layer).geometry:  # GATConv, GATv2Conv, TransformerConv: edge_attr
        assert regions.grad is not None and regions.grad.abs().sum() > 0
    assert any(p.grad is not None for p in layer.parameters())


def test_layer_registry_names_and_errors():
    assert isinstance(make_spatial_layer("gatv2", 4), type(make_spatial_layer("GATv2Conv", 4)))
    assert "GATConv" in available_layers()
    layer = make_spatial_layer(lambda c: GATConv(c, c, heads=1), 4)
    assert isinstance(layer, GATConv)
    with pytest.raises(ValueError, match="unknown layer 'nope'.*GATConv"):
        make_spatial_layer("nope", 4)
    with pytest.raises(ValueError, match="gnn: RGCNConv needs num_relations"):
        make_spatial_layer("RGCNConv", 4)


def test_pyg_layer_and_pooling_on_graph():
    g = build_graph_batch(torch.randn(2, 3, 9, 8))
    out = GATConv(8, 4)(g.x, g.edge_index)
    per_frame = global_mean_pool(out, g.batch)
    per_video = global_mean_pool(out, g.video)
    assert per_frame.shape == (6, 4) and per_video.shape == (2, 4)
    assert torch.allclose(per_video[0], out[:27].mean(0), atol=1e-6)
