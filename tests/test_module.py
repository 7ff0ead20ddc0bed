import copy

import pytest
import torch

from dyreg_pyg import DyRegBlock, DyRegConfig, DyRegGNN
from dyreg_pyg.nn.regions import INITS, REGION_MODES, reference_points

B, T, C, H, W = 2, 3, 12, 6, 7


def _x(seed=0):
    torch.manual_seed(seed)
    return torch.randn(B, T, C, H, W)


def _ext(n=9):
    return torch.cat((torch.rand(B, T, n, 2), torch.rand(B, T, n, 2) * 0.3 + 0.15), -1)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("mode", REGION_MODES)
def test_output_shape_and_details_every_mode(mode, init):
    if mode in ("static", "fixed") and init == "center":  # N copies of one region: rejected
        with pytest.raises(ValueError, match="identical regions"):
            DyRegGNN(C, 8, regions=mode, init=init)
        return
    m = DyRegGNN(C, 8, regions=mode, init=init)
    regions = _ext() if mode == "external" else None
    y, d = m(_x(), regions, return_details=True)
    assert y.shape == (B, T, C, H, W) and torch.isfinite(y).all()
    assert d.regions.shape == (B, T, 9, 4) and d.boxes.shape == (B, T, 9, 4)
    assert d.kernels.shape == (B, T, 9, H, W)
    assert torch.allclose(d.kernels.sum((-1, -2)), torch.ones(B, T, 9), atol=1e-5)
    assert d.graph.num_graphs == B * T and d.graph.x.shape == (B * T * 9, 8)
    assert d.attention.shape == (d.graph.edge_index.shape[1],)
    if mode == "external":
        assert torch.allclose(d.regions, regions)
    elif mode != "semantic":
        ref = reference_points(9, init)
        assert torch.allclose(d.regions[..., :2], ref.expand(B, T, 9, 2), atol=1e-5)
        assert (d.regions[..., 2] >= 1 / W - 1e-6).all()
        assert (d.regions[..., 3] >= 1 / H - 1e-6).all()


def test_block_is_identity_at_init_and_learns():
    x = _x()
    block = DyRegBlock(C, node_channels=8)
    assert torch.equal(block(x), x)
    block(x).pow(2).sum().backward()
    assert block.gamma.grad.abs().sum() > 0


def test_open_gate_writes_the_normalised_graph_output_from_the_start():
    x = _x()
    torch.manual_seed(1)
    shut = DyRegBlock(C, node_channels=8, norm="none")
    torch.manual_seed(1)
    open_ = DyRegBlock(C, DyRegConfig(node_channels=8, norm="none", gate_init=0.5))
    assert torch.equal(open_.gamma, torch.full((C,), 0.5))
    assert torch.allclose(open_(x), x + 0.5 * shut.gnn(x), atol=1e-6)
    open_(x).pow(2).sum().backward()  # the graph's own weights get gradient at step 0
    assert open_.gnn.region_generator.out.weight.grad.abs().sum() > 0
    shut(x).pow(2).sum().backward()
    assert shut.gnn.region_generator.out.weight.grad is None or \
        shut.gnn.region_generator.out.weight.grad.abs().sum() == 0


def _perturbed(mode, **kw):
    m = DyRegGNN(C, 8, regions=mode, **kw)
    with torch.no_grad():  # W_o starts at zero; move it so gradients flow past it
        m.region_generator.out.weight.normal_(std=0.5)
    return m


def test_gradients_reach_region_branch():
    m = _perturbed("dyreg")
    out = m(_x())
    out.pow(2).sum().backward()
    gen = m.region_generator
    assert (gen.out.bias.grad.abs() > 0).all()  # d/d(centre x, centre y, w, h)
    for name, p in [("f", gen.features.f[0].weight), ("g", gen.features.g_weight),
                    ("gru", gen.gru.weight_ih_l0)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_w_o_gets_gradient_at_initialisation():
    m = DyRegGNN(C, 8)
    m(_x()).pow(2).sum().backward()
    assert m.region_generator.out.weight.grad.abs().sum() > 0


def test_centre_init_is_symmetric_the_grid_is_not():
    # Every node of the centre init pools the same region, so the loss gradient reaching the
    # 9 regions is the same for all of them: only their latents (through W_o) can pull them
    # apart (study/LOG.md, "why the regions stay at the centre"). A grid breaks the tie.
    spread = {}
    for init, jitter in (("center", 0.0), ("grid", 0.0), ("center+jitter", 0.1)):
        torch.manual_seed(0)
        m = DyRegGNN(C, 8, init=init.split("+")[0], init_jitter=jitter)
        y, d = m(_x(), return_details=True)
        d.live_regions.retain_grad()
        (y * torch.randn_like(y)).sum().backward()
        g = d.live_regions.grad
        assert g.abs().sum() > 0
        spread[init] = float((g - g.mean(2, keepdim=True)).norm() / g.norm())
    assert spread["center"] < 1e-5 and spread["grid"] > 0.1 and spread["center+jitter"] > 0.01


def test_init_jitter_is_saved_with_the_weights_and_only_for_learned_regions():
    assert "region_generator.alpha.ref_jitter" not in DyRegGNN(C, 8).state_dict()
    torch.manual_seed(1)
    a = DyRegGNN(C, 8, init_jitter=0.2)
    jit = a.state_dict()["region_generator.alpha.ref_jitter"]
    assert jit.shape == (9, 2) and 0.05 < float(jit.std()) < 0.5
    torch.manual_seed(2)
    b = DyRegGNN(C, 8, init_jitter=0.2)
    b.load_state_dict(a.state_dict())
    x = _x()
    assert torch.equal(a(x, return_details=True)[1].regions, b(x, return_details=True)[1].regions)
    with pytest.raises(ValueError, match="init_jitter: only for learned regions"):
        DyRegGNN(C, 8, regions="fixed", init_jitter=0.1)
    with pytest.raises(ValueError, match="init_jitter: expected >= 0"):
        DyRegGNN(C, 8, init_jitter=-1.0)


def test_mode_semantics():
    x = _x()
    ct = _perturbed("constant_time")(x, return_details=True)[1].regions
    assert torch.allclose(ct[:, :1].expand_as(ct), ct)  # same for all frames
    dy = _perturbed("dyreg")(x, return_details=True)[1].regions
    assert not torch.allclose(dy[:, :1].expand_as(dy), dy)  # varies in time
    po = _perturbed("pos_only")(x, return_details=True)[1].regions
    assert torch.allclose(po[..., 2:], po[0, 0, 0, 2:].expand_as(po[..., 2:]))  # fixed size
    assert not torch.allclose(po[..., :2], po[0, 0, 0, :2].expand_as(po[..., :2]))
    st = DyRegGNN(C, 8, regions="static", init="grid")
    with torch.no_grad():
        st.region_generator.raw.normal_()
    r1 = st(x, return_details=True)[1].regions
    r2 = st(_x(5), return_details=True)[1].regions
    assert torch.equal(r1, r2)  # ignores the input
    fixed = DyRegGNN(C, 8, regions="fixed").region_generator
    assert sum(p.numel() for p in fixed.parameters()) == 0


def test_dense_backend_equals_pyg_backend():
    m = DyRegGNN(C, 8, backend="pyg")
    m.eval()
    d = copy.deepcopy(m)
    d.config.backend = "dense"
    x = _x()
    assert torch.allclose(m(x), d(x), atol=1e-5)


@pytest.mark.parametrize("gnn", ["GATConv", "sage", "GINConv"])
@pytest.mark.parametrize("temporal", ["gru", "lstm", "none"])
def test_alternative_layers_in_module(gnn, temporal):
    m = DyRegGNN(C, 8, gnn=gnn, temporal=temporal, iterations=2)
    x = _x().requires_grad_()
    m(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_config_from_dict_and_block_config():
    cfg = DyRegConfig.from_dict({"num_nodes": 4, "init": "grid", "spatial_size": 6})
    assert cfg.spatial_size == (6, 6)
    blk = DyRegBlock(C, cfg, node_channels=8)
    assert blk.gnn.num_nodes == 4 and blk.gnn.node_channels == 8
    with pytest.raises(ValueError, match="unknown keys.*nodes"):
        DyRegConfig.from_dict({"nodes": 4})


@pytest.mark.parametrize(
    "kwargs, x, regions, match",
    [
        ({}, torch.randn(2, C, H, W), None, r"\[B, T, C, H, W\]"),
        ({}, torch.randn(1, 2, C + 1, H, W), None, "in_channels"),
        ({"init": "grid", "num_nodes": 8}, None, None, "perfect square"),
        ({"regions": "external"}, torch.randn(1, 2, C, H, W), None, "external"),
        ({"regions": "external"}, torch.randn(1, 2, C, H, W), torch.rand(1, 2, 9, 3), "shape"),
        ({"regions": "moving"}, None, None, "unknown mode"),
        ({"gnn": "nope"}, None, None, "unknown layer"),
        ({"temporal": "attention"}, None, None, "temporal"),
        ({"init": "corner"}, None, None, "init"),
        ({"backend": "dense", "gnn": "GATConv"}, None, None, "dense"),
    ],
)
def test_bad_input_raises(kwargs, x, regions, match):
    with pytest.raises(ValueError, match=match):
        m = DyRegGNN(C, 8, **kwargs)
        m(x, regions)


@pytest.mark.parametrize("backend", ["pyg", "dense"])
def test_torch_compile_runs_on_cpu(backend):
    """Inductor (the trainer's compiler) on the default backend; the dense backend through
    Dynamo and AOT autograd without inductor's code generation (the same captured graph,
    a third of the time)."""
    torch.manual_seed(0)
    m = DyRegGNN(C, 8, backend=backend)
    x = _x()
    ref = m(x)
    compiled = torch.compile(m, backend="inductor" if backend == "pyg" else "aot_eager")
    assert torch.allclose(compiled(x), ref, atol=1e-5)


@pytest.mark.parametrize("backend", ["pyg", "dense"])
def test_node_states_are_the_graph_nodes_and_carry_gradients(backend):
    m = DyRegGNN(C, 8, regions="external", num_nodes=4, backend=backend)
    x, regions = _x().requires_grad_(), _ext(4)
    nodes = m.node_states(x, regions)
    assert nodes.shape == (B, T, 4, 8)
    _, d = m(x.detach(), regions, return_details=True)
    if backend == "pyg":
        assert torch.allclose(nodes.detach().reshape(-1, 8), d.graph.x, atol=1e-6)
    nodes[:, -1, 0].sum().backward()  # a read-out of one node of the last frame
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.spatial.parameters())
    # the temporal update runs forward in time: frame 0's nodes ignore later frames
    x2 = x.detach().clone()
    x2[:, 1:] += 1.0
    with torch.no_grad():
        first = m.node_states(x.detach(), regions)[:, 0]
        assert torch.allclose(first, m.node_states(x2, regions)[:, 0], atol=1e-6)


def test_position_scale_changes_only_the_position_part_of_the_nodes():
    # nodes = pooled appearance + s * embedding: the difference of two scales is (s - 1) e
    torch.manual_seed(0)
    plain = DyRegGNN(C, 8)
    loud = DyRegGNN(C, 8, position_scale=10.0)
    loud.load_state_dict(plain.state_dict())
    seen = {}
    for name, m in (("plain", plain), ("loud", loud)):
        m.pos_embed.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(name, o))
        m(_x())
    assert torch.allclose(seen["loud"], 10 * seen["plain"])
    assert not torch.allclose(loud(_x()), plain(_x()))
    assert DyRegConfig(position_scale="1e1").position_scale == 10.0  # YAML reads 1e1 as text
    for bad in (0.0, -1.0, "ten", None):
        with pytest.raises(ValueError, match="position_scale"):
            DyRegConfig(position_scale=bad)
    with pytest.raises(ValueError, match="position_embedding is False"):
        DyRegConfig(position_scale=10.0, position_embedding=False)
    with pytest.raises(ValueError, match="position_scale"):
        DyRegConfig(flavor="authors", position_scale=10.0)


@pytest.mark.parametrize("backend", ["pyg", "dense"])
def test_region_position_embedding_reads_the_regions_numbers(backend):
    from dyreg_pyg.nn.position import KernelPositionEmbedding, RegionPositionEmbedding

    torch.manual_seed(0)
    m = DyRegGNN(C, 8, regions="external", num_nodes=2, position_input="region",
                 position_scale=3.0, backend=backend)
    assert isinstance(m.pos_embed, RegionPositionEmbedding)
    assert isinstance(DyRegGNN(C, 8).pos_embed, KernelPositionEmbedding)  # the paper's default
    regions = _ext(2)
    seen = []
    m.pos_embed.register_forward_hook(lambda mod, i, o: seen.append(o))
    x = _x().requires_grad_()
    m(x, regions).sum().backward()
    lin = m.pos_embed.lin
    want = 3.0 * (regions.reshape(B * T, 2, 4) @ lin.weight.T + lin.bias)
    assert torch.allclose(seen[0], want, atol=1e-5)
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    # the same shift moves the embedding by the same vector, wherever the region is
    emb = m.pos_embed
    a = torch.tensor([[[0.2, 0.3, 0.1, 0.1], [0.7, 0.6, 0.1, 0.1]]])
    shift = torch.tensor([0.05, -0.02, 0.0, 0.0])
    change = emb(a + shift) - emb(a)
    assert torch.allclose(change[0, 0], change[0, 1], atol=1e-5)
    with pytest.raises(ValueError, match="position_input"):
        DyRegConfig(position_input="coords")
    with pytest.raises(ValueError, match="position_embedding is False"):
        DyRegConfig(position_input="region", position_embedding=False)
    with pytest.raises(ValueError, match="position_input"):
        DyRegConfig(flavor="authors", position_input="region")
    with pytest.raises(ValueError, match=r"\[\.\.\., N, 4\]"):
        emb(torch.zeros(2, 3, 5))
    # computed in float32 under bf16 autocast: a one-pixel move is not rounded away
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = emb(a + shift)
    assert low.dtype == torch.float32
    assert torch.allclose(low, emb(a + shift).detach())
