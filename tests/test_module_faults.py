"""Module-level faults (issue 14 item 4, issue 19 items 5 and 8): each test fails on the
code before its fix and asserts the behaviour that replaced it."""

import copy

import pytest
import torch
from torch import nn

from dyreg_pyg import DyRegConfig, DyRegGNN
from dyreg_pyg.graph import complete_edge_index, frame_edge_index
from dyreg_pyg.nn import RSTGConv, make_spatial_layer
from dyreg_pyg.nn.regions import REGION_MODES, RegionAlpha, reference_points

B, T, C, H, W = 2, 3, 12, 5, 6


def _x(seed=0, h=H, w=W, b=B, t=T):
    torch.manual_seed(seed)
    return torch.randn(b, t, C, h, w)


def _ext(n=9, b=B, t=T):
    g = torch.Generator().manual_seed(3)
    return torch.cat((torch.rand(b, t, n, 2, generator=g),
                      torch.rand(b, t, n, 2, generator=g) * 0.3 + 0.15), -1)


# --- issue 14: partial BatchNorm -------------------------------------------------------------


def test_partial_bn_freezes_backbone_norms_only():
    from dyreg_pyg.models import build_video_model
    from train.loop import freeze_partial_bn

    torch.manual_seed(0)
    model = build_video_model("resnet18", 3, 2, input_size=32, dyreg_at=["layer2.1"],
                              dyreg=dict(num_nodes=4, init="grid", node_channels=8,
                                         region_channels=8))
    model.train()
    blocks = list(model.dyreg_blocks().values())
    inside = {id(m) for b in blocks for m in b.modules()}
    dyreg_bns = [m for b in blocks for m in b.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    backbone_bns = [m for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]
    assert len(dyreg_bns) == 3  # write-back norm + two in the region branch f
    assert freeze_partial_bn(model) == len(backbone_bns) - 1
    assert backbone_bns[0].training and backbone_bns[0].weight.requires_grad
    for m in backbone_bns[1:]:
        assert not m.training and not m.weight.requires_grad
    for m in dyreg_bns:  # DyReg's norms keep training and learning
        assert m.training and m.weight.requires_grad and m.bias.requires_grad
    before = [m.running_mean.clone() for m in dyreg_bns]
    model(torch.randn(2, 2, 3, 32, 32)).sum().backward()
    for m, b in zip(dyreg_bns, before):
        assert not torch.equal(m.running_mean, b)  # their statistics are updated


# --- issue 14: reset_parameters --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dyreg", "dyreg_lite", "pos_only", "constant_time", "static"])
def test_reset_parameters_puts_regions_back_on_their_references(mode):
    init = "grid" if mode == "static" else "center"
    m = DyRegGNN(C, 8, regions=mode, init=init)
    x = _x()
    start = m(x, return_details=True)[1].regions
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(0.123)
    m.reset_parameters()
    for name, p in m.named_parameters():  # every parameter was re-drawn or re-zeroed
        assert not (p == 0.123).all(), name
    regions = m(x, return_details=True)[1].regions
    assert torch.allclose(regions, start, atol=1e-6)
    ref = reference_points(9, init)
    assert torch.allclose(regions[..., :2], ref.expand(B, T, 9, 2), atol=1e-5)


def test_a_generic_reset_loop_keeps_the_region_output_layer_at_zero():
    m = DyRegGNN(C, 8)
    for mod in m.modules():  # what users (and some trainers) do to re-initialise a model
        if mod is not m and hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    out = m.region_generator.out
    assert torch.equal(out.weight, torch.zeros_like(out.weight))
    assert torch.equal(out.bias, torch.zeros(4))


# --- issue 14: dense backend and self-loops ---------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5])
def test_rstg_dense_without_self_loops_equals_message_passing(n):
    torch.manual_seed(n)
    conv = RSTGConv(6, 6)
    with torch.no_grad():
        conv.bias.normal_()
    v = torch.randn(4, n, 6)
    ei = frame_edge_index(4, n, self_loops=False)
    sparse = conv(v.reshape(-1, 6), ei).view(4, n, 6)
    assert torch.allclose(conv.forward_dense(v, self_loops=False), sparse, atol=1e-5)
    if n > 1:  # without self-loops the result differs from the complete graph
        assert not torch.allclose(conv.forward_dense(v, self_loops=True), sparse, atol=1e-3)
    assert complete_edge_index(n, False).shape[1] == n * (n - 1)


def test_dense_backend_respects_self_loops():
    torch.manual_seed(0)
    m = DyRegGNN(C, 8, init="grid", self_loops=False).eval()  # grid: the nodes differ
    d = copy.deepcopy(m)
    d.config.backend = "dense"
    x = _x()
    assert torch.allclose(m(x), d(x), atol=1e-5)
    with_loops = copy.deepcopy(d)
    with_loops.config.self_loops = True
    assert not torch.allclose(with_loops(x), d(x), atol=1e-4)


# --- issue 14: every parameter receives a gradient (DDP find_unused_parameters=False) ---------


@pytest.mark.parametrize("backend", ["pyg", "dense"])
@pytest.mark.parametrize("mode", REGION_MODES)
def test_every_parameter_is_used_in_every_mode(mode, backend):
    torch.manual_seed(0)
    m = DyRegGNN(C, 8, regions=mode, backend=backend, num_nodes=4,
                 init="grid" if mode in ("static", "fixed") else "center")
    regions = _ext(4) if mode == "external" else None
    m(_x(), regions).pow(2).sum().backward()
    unused = [name for name, p in m.named_parameters() if p.grad is None]
    assert unused == []


def test_constant_time_loads_a_state_dict_with_the_old_unused_gru():
    torch.manual_seed(0)
    m = DyRegGNN(C, 8, regions="constant_time")
    assert not any(".gru." in k for k in m.state_dict())
    old = dict(m.state_dict())
    gru = nn.GRU(32, 32, batch_first=True)
    old.update({f"region_generator.gru.{k}": v for k, v in gru.state_dict().items()})
    m2 = DyRegGNN(C, 8, regions="constant_time")
    m2.load_state_dict(old)  # strict: the stale keys are accepted and dropped
    x = _x()
    assert torch.equal(m(x), m2(x))


# --- issue 14: centre start for input-independent regions --------------------------------------


@pytest.mark.parametrize("mode", ["static", "fixed"])
def test_centre_start_of_input_independent_regions_is_rejected(mode):
    with pytest.raises(ValueError, match=f"init: regions='{mode}' with init='center'.*'grid'"):
        DyRegGNN(C, 8, regions=mode, init="center")
    # left unset, these modes start on the grid; the input-dependent ones at the centre
    for m, init in ((mode, "grid"), ("dyreg", "center")):
        g = DyRegGNN(C, 8, regions=m)
        assert g.config.init == init
        r = g(_x(), return_details=True)[1].regions
        assert torch.allclose(r[0, 0, :, :2], reference_points(9, init), atol=1e-5)
    assert DyRegConfig().init == "center" and DyRegConfig(regions="fixed").init == "grid"


def test_static_centre_start_with_jitter_is_separable():
    torch.manual_seed(0)
    m = DyRegGNN(C, 8, regions="static", init="center", init_jitter=0.2)
    r = m(_x(), return_details=True)[1].regions
    assert r[0, 0, :, :2].unique(dim=0).shape[0] == 9


# --- issue 14: nothing silently dropped -----------------------------------------------------


def test_config_has_no_unread_extra_field():
    with pytest.raises(ValueError, match="unknown keys.*extra"):
        DyRegConfig.from_dict({"extra": {"anything": 1}})


@pytest.mark.parametrize("mode", [m for m in REGION_MODES if m != "external"])
def test_regions_given_to_a_mode_that_predicts_them_is_an_error(mode):
    m = DyRegGNN(C, 8, regions=mode, init="grid")
    with pytest.raises(ValueError, match=f"regions: .*'{mode}'.*'external'"):
        m(_x(), _ext())


# --- issue 19 item 5: one-cell maps ---------------------------------------------------------


@pytest.mark.parametrize("hw", [(1, 7), (7, 1), (1, 1)])
@pytest.mark.parametrize("mode", ["dyreg", "pos_only", "static", "fixed", "semantic"])
def test_one_cell_maps_give_finite_output_and_gradients(mode, hw):
    h, w = hw
    torch.manual_seed(0)
    m = DyRegGNN(16, node_channels=8, regions=mode)
    x = torch.randn(2, 4, 16, h, w, requires_grad=True)
    y, d = m(x, return_details=True)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.allclose(d.kernels.sum((-1, -2)), torch.ones(2, 4, 9), atol=1e-5)
    if mode != "semantic":  # a one-cell axis is covered whole by every region
        if h == 1:
            assert torch.equal(d.regions[..., 3], torch.ones(2, 4, 9))
        if w == 1:
            assert torch.equal(d.regions[..., 2], torch.ones(2, 4, 9))
    y.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_region_alpha_on_a_one_cell_axis():
    alpha = RegionAlpha(4, "center", init_size=0.25)
    raw = torch.randn(4, 4, requires_grad=True)
    r = alpha(raw, height=1, width=8)
    assert torch.isfinite(r).all() and torch.equal(r[:, 3], torch.ones(4))
    assert (r[:, 2] >= 1 / 8).all() and (r[:, 2] < 1).all()
    r.sum().backward()
    assert torch.isfinite(raw.grad).all() and torch.equal(raw.grad[:, 3], torch.zeros(4))


# --- issue 19 item 8: clear errors ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_nodes": 0}, "num_nodes: expected a positive integer, got 0"),
        ({"num_nodes": -2}, "num_nodes: expected a positive integer, got -2"),
        ({"node_channels": 0}, "node_channels: expected a positive integer or None, got 0"),
        ({"node_channels": -8}, "node_channels: expected a positive integer or None, got -8"),
        ({"region_channels": 0}, "region_channels: expected a positive integer, got 0"),
    ],
)
def test_bad_sizes_raise_at_construction(kwargs, match):
    args = {"node_channels": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        DyRegGNN(C, **args)


@pytest.mark.parametrize("shape", [(0, T, C, H, W), (B, 0, C, H, W), (B, T, C, 0, W)])
def test_empty_clips_raise(shape):
    m = DyRegGNN(C, 8)
    with pytest.raises(ValueError, match=r"x: expected a non-empty clip.*got shape"):
        m(torch.randn(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_external_regions_raise(bad):
    m = DyRegGNN(C, 8, regions="external")
    regions = _ext()
    regions[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match="regions: expected finite values"):
        m(_x(), regions)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_module_points_to_autocast(dtype):
    m = DyRegGNN(C, 8).to(dtype)
    with pytest.raises(ValueError, match="autocast"):
        m(_x().to(dtype))


def test_input_dtype_must_match_the_module_outside_autocast():
    m = DyRegGNN(C, 8)
    with pytest.raises(ValueError, match="x: expected dtype torch.float32"):
        m(_x().double())


def test_float64_module_runs_and_matches_float32():
    torch.manual_seed(0)
    m = DyRegGNN(C, 8).eval()
    with torch.no_grad():
        m.region_generator.out.weight.normal_(std=0.3)
    x = _x()
    y32 = m(x)
    m64 = copy.deepcopy(m).double()
    y64, d = m64(x.double(), return_details=True)
    assert y64.dtype == torch.float64 and d.regions.dtype == torch.float64
    assert torch.allclose(y64.float(), y32, atol=1e-5)


def test_bfloat16_autocast_on_cpu_is_the_supported_path():
    torch.manual_seed(0)
    m = DyRegGNN(C, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, d = m(_x(), return_details=True)
    assert torch.isfinite(y).all() and d.regions.dtype == torch.float32


@pytest.mark.parametrize("name", ["PointNetConv", "FAConv", "GCN2Conv", "PPFConv"])
def test_layers_that_need_more_than_edge_index_are_rejected(name):
    with pytest.raises(ValueError, match=rf"gnn: {name} cannot run as .*\(x, edge_index\)"):
        make_spatial_layer(name, 8)
    with pytest.raises(ValueError, match=f"gnn: {name}"):
        DyRegGNN(C, 8, gnn=name)


def test_edge_conv_is_adapted_and_runs():
    torch.manual_seed(0)
    layer = make_spatial_layer("EdgeConv", 8)
    x = torch.randn(5, 8)
    ei = complete_edge_index(5)
    assert layer(x, ei).shape == (5, 8)
    m = DyRegGNN(C, 8, gnn="EdgeConv", iterations=1)
    xx = _x().requires_grad_()
    m(xx).sum().backward()
    assert xx.grad.abs().sum() > 0


def test_a_callable_returning_a_layer_of_the_wrong_width_is_rejected():
    from torch_geometric.nn import GCNConv

    with pytest.raises(ValueError, match=r"gnn: .*output of shape \(4, 3\).*\(4, 8\)"):
        make_spatial_layer(lambda c: GCNConv(c, 3), 8)


def test_authors_flavour_gets_the_same_input_checks():
    m = DyRegGNN(C, 8, flavor="authors", spatial_size=(H, W))
    with pytest.raises(ValueError, match="x: expected a non-empty clip"):
        m(torch.randn(0, T, C, H, W))
    with pytest.raises(ValueError, match="x: expected a non-empty clip"):
        m.node_states(torch.randn(B, 0, C, H, W))
    with pytest.raises(ValueError, match="autocast"):
        m.to(torch.bfloat16)(_x().to(torch.bfloat16))
