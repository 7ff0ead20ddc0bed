"""flavor="authors": the authors' DyReg-GNN (their code is not needed: synthetic state dicts with
their key names and shapes; the equality with their code is benchmarks/compare_official.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dyreg_pyg import DyRegBlock, DyRegConfig, DyRegGNN
from dyreg_pyg.authors import AuthorsDyRegGNN
from dyreg_pyg.compat import convert_official, load_official, official_key
from dyreg_pyg.graph import build_graph_batch
from dyreg_pyg.nn import make_spatial_layer
from dyreg_pyg.nn.conv import AuthorsRSTGConv
from dyreg_pyg.nn.regions import (
    authors_reference_points,
    authors_region_kernels,
    encoder_geometry,
)


def _their_block_state(c: int, node: int, h: int, project: bool, gen: torch.Generator,
                       init: str = "center") -> dict[str, torch.Tensor]:
    """A DynamicGraphWrapper state dict as their code names and shapes it (N = 9, 128-d region
    branch, GRU), random values."""
    s = {"offset_alpha": (4,), "rstg.att_bias": (1, 1, 1, node)}
    for n in ("send_message_norm", "update_norm", "before_graph_norm"):
        s[f"rstg.norm_dict.{n}.scale"] = s[f"rstg.norm_dict.{n}.bias"] = (node,)
    for g in ("internal_lstm", "external_lstm"):
        s.update({f"rstg.{g}.weight_ih_l0": (3 * node, node), f"rstg.{g}.weight_hh_l0":
                  (3 * node, node), f"rstg.{g}.bias_ih_l0": (3 * node,),
                  f"rstg.{g}.bias_hh_l0": (3 * node,)})
    for lin in ("send_mlp.0", "att_q", "att_k"):
        s[f"rstg.{lin}.weight"], s[f"rstg.{lin}.bias"] = (node, node), (node,)
    for n in ("offset_ln_feats_coords", "offset_ln_lstm"):
        s[f"norm_dict.{n}.scale"] = s[f"norm_dict.{n}.bias"] = (128,)
    if project:
        s["norm_dict.dynamic_graph_projection.scale"] = (1, node, 1, 1)
        s["norm_dict.dynamic_graph_projection.bias"] = (1, node, 1, 1)
        s["project_i3d_linear.weight"], s["project_i3d_linear.bias"] = (node, c, 1, 1), (node,)
        s["project_back_i3d_linear.weight"] = (c, node, 1, 1)
        s["project_back_i3d_linear.bias"] = (c,)
    for n, ch in (("norm1", 32), ("tail_norm_0", 32), ("tail_norm_1", 16),
                  ("body_trans_norm_0", 32), ("head_norm_0", 16)):
        s[f"fishnet.norm_dict.{n}.scale"] = s[f"fishnet.norm_dict.{n}.bias"] = (1, ch, 1, 1)
    s.update({"fishnet.conv1.weight": (32, node, 1, 1), "fishnet.conv1.bias": (32,),
              "fishnet.tail_conv.0.weight": (32, 32, 3, 3), "fishnet.tail_conv.0.bias": (32,),
              "fishnet.tail_conv.1.weight": (16, 32, 3, 3), "fishnet.tail_conv.1.bias": (16,),
              "fishnet.body_trans_conv.0.weight": (16, 32, 3, 3),
              "fishnet.body_trans_conv.0.bias": (32,),
              "fishnet.head_conv.0.weight": (16, 32, 3, 3), "fishnet.head_conv.0.bias": (16,)})
    final = encoder_geometry(h)[3]
    s["global_conv.0.weight"], s["global_conv.0.bias"] = (9 * 128, 16, final, final), (9 * 128,)
    s.update({"offset_lstm.weight_ih_l0": (384, 128), "offset_lstm.weight_hh_l0": (384, 128),
              "offset_lstm.bias_ih_l0": (384,), "offset_lstm.bias_hh_l0": (384,),
              "offset_pred.weight": (4, 128), "offset_pred.bias": (4,),
              "kernel_projection1.weight": (node, h * h), "kernel_projection1.bias": (node,)})
    state = {"dynamic_graph." + k: torch.randn(v, generator=gen) * 0.2 for k, v in s.items()}
    state["norm_dict.residual_norm.scale"] = torch.randn(1, c, 1, 1, generator=gen)
    state["norm_dict.residual_norm.bias"] = torch.randn(1, c, 1, 1, generator=gen)
    if init == "center":
        ph = torch.full((1, 9, 1), h / 2)
        pw = ph.clone()
    else:
        ticks = torch.linspace(0, h, 7)[1::2]
        ph, pw = ticks.repeat_interleave(3).view(1, 9, 1), ticks.repeat(3).view(1, 9, 1)
    state.update({"dynamic_graph.ph_buf": ph, "dynamic_graph.pw_buf": pw,
                  "dynamic_graph.arange_h_buf": torch.arange(h).view(1, 1, h),
                  "dynamic_graph.arange_w_buf": torch.arange(h).view(1, 1, h)})
    return state


def _block(c: int, h: int, node: int | None = None, **kw) -> DyRegBlock:
    return DyRegBlock(c, DyRegConfig(flavor="authors", spatial_size=(h, h), node_channels=node,
                                     **kw))


def test_converter_maps_every_tensor_of_their_block():
    gen = torch.Generator().manual_seed(0)
    for c, node, h in ((32, 32, 28), (64, 32, 7)):
        theirs = _their_block_state(c, node, h, project=node != c, gen=gen)
        ours = _block(c, h, node if node != c else None)
        state = convert_official(ours, theirs)
        ours.load_state_dict(state)
        a = ours.gnn  # an AuthorsDyRegGNN (before issue 34: ours.gnn.authors)
        assert torch.equal(a.regions.gain, theirs["dynamic_graph.offset_alpha"])
        assert torch.equal(ours.norm.norm.weight,
                           theirs["norm_dict.residual_norm.scale"].flatten())
        assert torch.equal(a.spatial[0].att_bias, theirs["dynamic_graph.rstg.att_bias"].flatten())
        assert torch.equal(a.regions.encoder.down_norm[1].weight,
                           theirs["dynamic_graph.fishnet.norm_dict.tail_norm_1.scale"].flatten())
        assert torch.equal(a.temporal_out.rnn.weight_hh_l0,
                           theirs["dynamic_graph.rstg.external_lstm.weight_hh_l0"])
        assert (a.proj_in is not None) == (node != c)
        x = torch.randn(1, 3, c, h, h)
        assert ours(x).shape == x.shape


def test_converter_lists_what_does_not_fit():
    gen = torch.Generator().manual_seed(1)
    ours = _block(32, 14)
    good = _their_block_state(32, 32, 14, project=False, gen=gen)
    extra = dict(good, **{"dynamic_graph.rstg.mystery.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="without a counterpart.*mystery"):
        convert_official(ours, extra)
    missing = {k: v for k, v in good.items() if "offset_pred.bias" not in k}
    with pytest.raises(ValueError, match="not in the checkpoint.*regions.out.bias"):
        convert_official(ours, missing)
    wrong = dict(good, **{"dynamic_graph.offset_pred.weight": torch.zeros(4, 64)})
    with pytest.raises(ValueError, match="shape mismatches.*offset_pred.weight"):
        convert_official(ours, wrong)
    grid = _their_block_state(32, 32, 14, project=False, gen=gen, init="grid")
    with pytest.raises(ValueError, match="constants that differ.*ph_buf"):
        convert_official(ours, grid)
    convert_official(_block(32, 14, init="grid"), grid)  # their grid anchors = ours


def test_only_singleton_dimensions_are_reshaped():
    """Equal element counts are not a layout: a transposed or permuted tensor is refused with
    its key and both shapes; squeezed / unsqueezed singletons (LayerNorm2D scale, 1 x 1 conv
    <-> linear) still load."""
    from dyreg_pyg.compat import same_layout

    assert same_layout((1, 64, 1, 1), (64,)) and same_layout((1, 1, 1, 9), (9,))
    assert same_layout((64, 32, 1, 1), (64, 32)) and same_layout((64, 32), (64, 32, 1, 1))
    assert not same_layout((2048, 174), (174, 2048))
    assert not same_layout((3, 64, 7, 7), (64, 3, 7, 7))
    assert not same_layout((4, 32), (32, 4, 1))
    gen = torch.Generator().manual_seed(3)
    ours = _block(32, 14)
    good = _their_block_state(32, 32, 14, project=False, gen=gen)
    key = "dynamic_graph.offset_pred.weight"  # [4, 128] -> regions.out.weight [4, 128]
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): \['dynamic_graph.offset_pred"
                                         r".weight \(128, 4\) -> .*regions.out.weight \(4, 128\)"):
        convert_official(ours, dict(good, **{key: good[key].T.contiguous()}))
    # a 1 x 1 conv's weight for a linear layer loads (the same values)
    lin = "dynamic_graph.rstg.att_q.weight"  # [N, N] -> spatial.0.lin_query.weight
    state = convert_official(ours, dict(good, **{lin: good[lin][..., None, None]}))
    assert torch.equal(state["gnn.spatial.0.lin_query.weight"], good[lin])


def test_whole_model_refuses_a_transposed_classifier_and_a_permuted_stem():
    from dyreg_pyg.models import build_preset

    model = build_preset("tsm_r50_dyreg_authors", num_classes=174)
    theirs = {"module.new_fc.weight": torch.randn(2048, 174),
              "module.base_model.conv1.weight": torch.randn(3, 64, 7, 7)}
    with pytest.raises(ValueError) as err:
        load_official(model, {"state_dict": theirs})
    assert "module.new_fc.weight (2048, 174) -> fc.weight (174, 2048)" in str(err.value)
    assert ("module.base_model.conv1.weight (3, 64, 7, 7) -> backbone.conv1.weight "
            "(64, 3, 7, 7)") in str(err.value)
    assert "shape mismatches (2)" in str(err.value)


def test_official_key_names_of_their_tsn():
    assert official_key("module.base_model.conv1.weight") == "backbone.conv1.weight"
    assert official_key("module.base_model.layer1.0.conv1.net.weight") == \
        "backbone.layer1.0.conv1.layer.weight"
    assert official_key("module.base_model.layer2.2.conv2.0.block.weight") == \
        "backbone.layer2.2.conv2.weight"
    assert official_key("module.base_model.layer2.2.conv2.block.weight") == \
        "backbone.layer2.2.conv2.weight"  # older checkpoints, as their --resume renames them
    assert official_key("module.base_model.layer4.1.conv2.1.dynamic_graph.offset_alpha") == \
        "backbone.layer4.1.conv2.dyreg_after.dyreg.gnn.regions.gain"
    assert official_key("module.base_model.layer3.4.conv2.norm_dict.residual_norm.scale") == \
        "backbone.layer3.4.conv2.dyreg_after.dyreg.norm.norm.weight"
    assert official_key("module.new_fc.bias") == "fc.bias"
    assert official_key("module.consensus.x") is None


def test_load_official_whole_preset(tmp_path):
    """Their TSN checkpoint layout (module. prefix, TSM conv1.net, conv2.0.block, new_fc) built
    from a plain ResNet-50 state dict + three synthetic DyReg wrappers loads into the preset."""
    from dyreg_pyg.models import build_preset

    gen = torch.Generator().manual_seed(2)
    model = build_preset("tsm_r50_dyreg_authors", num_classes=174)
    places = {"layer2.2": (128, 128, 28), "layer3.4": (256, 256, 14), "layer4.1": (512, 256, 7)}
    theirs = {}
    for k, v in model.backbone.state_dict().items():
        if ".dyreg_after." in k:
            continue
        k = k.replace(".conv1.layer.", ".conv1.net.")
        for p in places:
            k = k.replace(f"{p}.conv2.weight", f"{p}.conv2.0.block.weight")
        theirs["module.base_model." + k] = torch.randn(v.shape, generator=gen).to(v.dtype)
    for p, (c, node, h) in places.items():
        for k, v in _their_block_state(c, node, h, node != c, gen).items():
            theirs[f"module.base_model.{p}.conv2.1.{k}"] = v
    theirs["module.new_fc.weight"] = torch.randn(174, 2048, generator=gen)
    theirs["module.new_fc.bias"] = torch.randn(174, generator=gen)
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 3, "state_dict": theirs, "best_prec1": 1.0}, path)
    load_official(model, path)
    assert torch.equal(model.fc.bias, theirs["module.new_fc.bias"])
    w = model.backbone.layer1[0].conv1.layer.weight
    assert torch.equal(w, theirs["module.base_model.layer1.0.conv1.net.weight"])
    # python -m train evaluate --official tsm_r50_dyreg_authors: the config builds the model
    from train.official import load_official_run

    run_model, cfg, classes = load_official_run(path, "tsm_r50_dyreg_authors", "val-{0..1}.tar")
    assert classes == 174 and cfg.data.val == "val-{0..1}.tar"
    assert torch.equal(run_model.fc.weight, theirs["module.new_fc.weight"])
    # the same checkpoint with its classifier transposed (same element count) is refused
    bad = dict(theirs, **{"module.new_fc.weight": theirs["module.new_fc.weight"].T.contiguous()})
    with pytest.raises(ValueError, match=r"does not fit the model: shape mismatches \(1\): "
                       r"\['module.new_fc.weight \(2048, 174\) -> fc.weight \(174, 2048\)'\]$"):
        load_official(model, {"state_dict": bad})
    del theirs["module.new_fc.bias"]
    with pytest.raises(ValueError, match="fc.bias"):
        load_official(model, {"state_dict": theirs})


def _their_graph_step(conv: AuthorsRSTGConv, v: torch.Tensor) -> torch.Tensor:
    """Independent dense transcription of their RSTG space step on [G, N, C]."""
    g, n, c = v.shape
    msg = F.relu((v.unsqueeze(1) + v.unsqueeze(2)) @ conv.lin_message.weight.T
                 + conv.lin_message.bias)
    msg = F.layer_norm(msg, (n, n, c)) * conv.message_norm.weight + conv.message_norm.bias
    corr = conv.lin_query(v) @ conv.lin_key(v).transpose(1, 2)
    agg = F.relu((torch.softmax(corr, -1).unsqueeze(-1) * msg).sum(2) + conv.att_bias)
    out = F.layer_norm(v + agg, (n, c))
    return out * conv.update_norm.weight + conv.update_norm.bias


def test_authors_conv_pyg_equals_dense_and_their_formula():
    torch.manual_seed(0)
    conv = make_spatial_layer("rstg_authors", 8)
    assert isinstance(conv, AuthorsRSTGConv)
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(0.3 * torch.randn_like(p))
    v = torch.randn(2, 3, 9, 8)
    g = build_graph_batch(v)
    out, (_, att) = conv(g.x, g.edge_index, g.batch, 6, return_attention_weights=True)
    ref = _their_graph_step(conv, v.reshape(6, 9, 8))
    assert torch.allclose(out.view(6, 9, 8), ref, atol=1e-5)
    assert torch.allclose(conv.forward_dense(v.reshape(6, 9, 8)), ref, atol=1e-5)
    assert torch.allclose(torch.zeros(6 * 9).index_add_(0, g.edge_index[1], att),
                          torch.ones(6 * 9), atol=1e-6)
    # without self-loops the two backends still agree
    g2 = build_graph_batch(v, self_loops=False)
    sparse = conv(g2.x, g2.edge_index, g2.batch, 6).view(6, 9, 8)
    assert torch.allclose(sparse, conv.forward_dense(v.reshape(6, 9, 8), self_loops=False),
                          atol=1e-5)


@pytest.mark.parametrize("gnn", ["rstg", "rstg_authors"])
def test_authors_flavor_backends_agree(gnn):
    torch.manual_seed(0)
    kw = dict(flavor="authors", spatial_size=(8, 8), node_channels=8, region_channels=8,
              gnn=gnn)
    pyg, dense = DyRegGNN(16, **kw), DyRegGNN(16, backend="dense", **kw)
    with torch.no_grad():
        for p in pyg.parameters():
            p.add_(0.2 * torch.randn_like(p))
    dense.load_state_dict(pyg.state_dict())
    x = torch.randn(2, 3, 16, 8, 8)
    assert torch.allclose(pyg(x), dense(x), atol=1e-5)
    y, det = pyg(x, return_details=True)
    assert det.regions.shape == (2, 3, 9, 4) and det.graph.num_graphs == 6


def test_authors_rstg_in_the_paper_flavour_backends_agree():
    torch.manual_seed(1)
    kw = dict(gnn="rstg_authors", node_channels=8, region_channels=8, spatial_size=(6, 6))
    pyg, dense = DyRegGNN(8, **kw), DyRegGNN(8, backend="dense", **kw)
    dense.load_state_dict(pyg.state_dict())
    x = torch.randn(2, 3, 8, 6, 6)
    assert torch.allclose(pyg(x), dense(x), atol=1e-5)


def test_authors_block_starts_as_identity_on_reference_regions():
    torch.manual_seed(0)
    blk = _block(16, 14, region_channels=8)
    x = torch.randn(1, 4, 16, 14, 14)
    assert torch.equal(blk(x), x)  # write-back scale and bias start at 0
    blk.gnn.reset_parameters()
    _, det = blk.gnn(x, return_details=True)
    # gain alpha = 0: every node at the centre, radius (H / 6 + 1) + 1 cells
    assert torch.allclose(det.regions[..., 0], torch.full((1, 4, 9), 7.5 / 14))
    assert torch.allclose(det.regions[..., 2], torch.full((1, 4, 9), (14 / 6 + 2) / 14))
    assert blk.gamma is None and sum(p.numel() for p in blk.norm.parameters()) == 32


def test_authors_kernels_integer_pixels_and_clamp():
    rows, cols = authors_reference_points(9, "center", (10, 10))
    raw = torch.zeros(9, 4)
    raw[0, 2] = 50.0  # far below the frame: the centre clamps to H - 1
    k, regions = authors_region_kernels(raw, rows, cols, 10, 10)
    assert torch.allclose(k.sum((-2, -1)), torch.ones(9))
    r = 10 / 6 + 2
    expect = F.relu(r - (torch.arange(10.0) - 5).abs())
    assert torch.allclose(k[1].sum(1), expect / expect.sum())  # rows of node 1, centre 5
    assert torch.isclose(regions[0, 1], torch.tensor(9.5 / 10))
    assert int(k[0].sum(1).argmax()) == 9  # most mass on the last row


def test_authors_config_resolves_and_rejects():
    cfg = DyRegConfig(flavor="authors")
    assert (cfg.region_channels, cfg.share_weights, cfg.norm) == (128, True, "layer")
    paper = DyRegConfig()
    assert (paper.region_channels, paper.share_weights, paper.norm) == (32, False, "batch")
    for bad, match in ((dict(regions="fixed"), "regions"), (dict(num_nodes=8), "num_nodes"),
                       (dict(init_size=0.3), "init_size"), (dict(norm="batch"), "norm"),
                       (dict(temporal="none"), "temporal")):
        with pytest.raises(ValueError, match=match):
            DyRegConfig(flavor="authors", **bad)
    with pytest.raises(ValueError, match="flavor"):
        DyRegConfig(flavor="theirs")
    with pytest.raises(ValueError, match="spatial_size"):
        DyRegGNN(8, flavor="authors", spatial_size=(21, 21))
    with pytest.raises(ValueError, match="x: expected"):
        DyRegGNN(8, flavor="authors", spatial_size=(8, 8))(torch.randn(1, 2, 8, 9, 9))
    assert math.isclose(encoder_geometry(28)[3], 6) and encoder_geometry(7)[3] == 5


def test_authors_block_every_parameter_gets_a_gradient_under_autocast():
    """DDP with find_unused_parameters=False needs a gradient for every parameter."""
    torch.manual_seed(0)
    blk = _block(32, 14, node=16, region_channels=8)
    x = torch.randn(2, 3, 32, 14, 14, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = blk(x)
    y.float().sum().backward()
    assert [n for n, p in blk.named_parameters() if p.grad is None] == []
    assert x.grad.abs().sum() > 0


def test_authors_graph_stack_is_their_schedule_on_node_tensors():
    """LN(N, C), K x (shared internal GRU, then their space step), external GRU; both backends;
    DyRegGNN(flavor="authors") runs the same function."""
    from dyreg_pyg.authors import authors_graph_stack
    from dyreg_pyg.nn import TemporalUpdate
    from dyreg_pyg.nn.norm import GraphLayerNorm

    torch.manual_seed(0)
    c = 8
    norm, gru, gru_out = GraphLayerNorm(c), TemporalUpdate(c), TemporalUpdate(c)
    conv = make_spatial_layer("rstg_authors", c)
    with torch.no_grad():
        for p in [*norm.parameters(), *conv.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    v = torch.randn(2, 3, 5, c)
    ref = norm.forward_dense(v, 2)
    for _ in range(2):
        ref = _their_graph_step(conv, gru(ref).reshape(6, 5, c)).view(2, 3, 5, c)
    ref = gru_out(ref)
    out, att = authors_graph_stack(v, norm, [gru], [conv], gru_out, 2, want_attention=True)
    assert torch.allclose(out, ref, atol=1e-5) and att.shape == (6 * 5 * 5,)
    dense, _ = authors_graph_stack(v, norm, [gru], [conv], gru_out, 2, backend="dense")
    assert torch.allclose(dense, ref, atol=1e-5)
    with pytest.raises(ValueError, match="spatial, temporal"):
        authors_graph_stack(v, norm, [gru, gru], [conv], gru_out, 2)
    with pytest.raises(ValueError, match="nodes"):
        authors_graph_stack(v[0], norm, [gru], [conv], gru_out, 2)
    m = DyRegGNN(c, flavor="authors", spatial_size=(6, 6), region_channels=8)
    assert type(m) is AuthorsDyRegGNN and isinstance(m, DyRegGNN)
    nodes = torch.randn(2, 3, 9, c)
    got, _ = m.graph_stack(nodes, False)
    want, _ = authors_graph_stack(nodes, m.input_norm, m.temporal, m.spatial,
                                  m.temporal_out, 3)
    assert torch.equal(got, want)
