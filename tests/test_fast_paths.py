"""Issue 20: every optimised path computes what the straightforward one did.

The straightforward implementations are frozen below as they were before the optimisations
(commit aba455e): the write-back on the re-mapped map (``x + gamma * norm(y)``), ``nn.GRU`` on
re-laid-out sequences, ``F.conv2d`` for the 1x1 convolutions, the authors' projection back
as a convolution on the map, and :class:`AuthorsRSTGConv` with a LayerNorm over the formed
per-edge messages. Each test runs a module on the fast paths, then the same module (a deep
copy) with the frozen functions patched in, and compares outputs, input gradients, parameter
gradients and BatchNorm statistics - in float64 (to 1e-10: the rewrites are exact) and in
float32 (float rounding).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import softmax

import dyreg_pyg.authors as authors_mod
import dyreg_pyg.nn.regions.authors_regions as authors_regions_mod
import dyreg_pyg.nn.regions.generators as regions_mod
import dyreg_pyg.nn.temporal as temporal_mod
from dyreg_pyg import DyRegBlock, DyRegGNN
from dyreg_pyg.authors import AuthorsDyRegGNN
from dyreg_pyg.graph import frame_edge_index
from dyreg_pyg.nn.conv import AuthorsRSTGConv, edge_dot
from dyreg_pyg.nn.kernels import pool_nodes
from dyreg_pyg.nn.remap import conv1x1, remap_moments, remap_nodes, remap_residual
from dyreg_pyg.nn.temporal import gru_over_time

# ---- the frozen straightforward implementations (before issue 20) -----------------------


def old_gru_over_time(gru: nn.RNNBase, x: Tensor) -> Tensor:
    b, t, n, c = x.shape
    seq = x.permute(0, 2, 1, 3).reshape(b * n, t, c)
    out, _ = gru(seq)
    return out.reshape(b, n, t, -1).permute(0, 2, 1, 3)


def old_conv1x1(x: Tensor, conv: nn.Conv2d) -> Tensor:
    return conv(x)


def old_authors_conv_forward(self, x, edge_index, batch=None, num_graphs=None,
                             return_attention_weights=None):
    if batch is None:
        batch = x.new_zeros(x.shape[0], dtype=torch.long)
        num_graphs = 1
    h = F.linear(x, self.lin_message.weight)
    src, dst = edge_index
    m = F.relu(h[dst] + h[src] + self.lin_message.bias)
    m = self.message_norm(m, batch[dst], num_graphs)  # LN over the formed messages
    alpha = softmax((self.lin_query(x)[dst] * self.lin_key(x)[src]).sum(-1), dst,
                    num_nodes=x.shape[0])
    out = torch.zeros_like(x).index_add_(0, dst, alpha.unsqueeze(-1) * m)
    out = F.relu(out + self.att_bias)
    out = self.update_norm(x + out, batch, num_graphs)
    if return_attention_weights:
        return out, (edge_index, alpha)
    return out


def old_authors_conv_dense(self, x, self_loops=True):
    g, n, c = x.shape
    h = F.linear(x, self.lin_message.weight)
    m = F.relu(h.unsqueeze(2) + h.unsqueeze(1) + self.lin_message.bias)
    logits = self.lin_query(x) @ self.lin_key(x).transpose(1, 2)
    mask = None
    if not self_loops:
        mask = ~torch.eye(n, dtype=torch.bool, device=x.device)
        logits = logits.masked_fill(~mask, float("-inf"))
    m = self.message_norm.forward_dense(m, 3, mask)
    a = torch.softmax(logits, -1)
    out = F.relu((a.unsqueeze(-1) * m).sum(2) + self.att_bias)
    return self.update_norm.forward_dense(x + out, 2)


def old_gnn_forward(self, x, regions=None, return_details=False):
    assert not return_details
    nodes, regions, kernels, _ = self._process(x, regions, False)
    b, t, c, h, w = x.shape
    if isinstance(self, AuthorsDyRegGNN):
        y = remap_nodes(nodes, kernels)
        if self.proj_out is not None:
            y = self.proj_out(y)  # their 1x1 convolution on the map
        return y.view(b, t, c, h, w)
    return remap_nodes(self.proj_out(nodes), kernels).view(b, t, c, h, w)


def old_block_forward(self, x, regions=None):
    y = self.gnn(x, regions)
    if self.gamma is None:
        return self.norm(x, y)
    b, t, c, h, w = y.shape
    y = self.norm(y.reshape(b * t, c, h, w)).view(b, t, c, h, w)
    return x + self.gamma.view(1, 1, c, 1, 1).to(y.dtype) * y


def patch_old(mp: pytest.MonkeyPatch) -> None:
    for mod in (temporal_mod, regions_mod, authors_regions_mod, authors_mod):
        if hasattr(mod, "gru_over_time"):
            mp.setattr(mod, "gru_over_time", old_gru_over_time)
    for mod in (regions_mod, authors_regions_mod, authors_mod):
        mp.setattr(mod, "conv1x1", old_conv1x1)
    mp.setattr(AuthorsRSTGConv, "forward", old_authors_conv_forward)
    mp.setattr(AuthorsRSTGConv, "forward_dense", old_authors_conv_dense)
    mp.setattr(DyRegGNN, "forward", old_gnn_forward)
    mp.setattr(DyRegBlock, "forward", old_block_forward)


# ---- helpers ------------------------------------------------------------------------------


def _randomise(module: nn.Module, seed: int) -> None:
    """Every parameter random (norm scales, gates and the authors' zero gain included), so
    that every branch contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _run(block: nn.Module, x: Tensor, r: Tensor, steps: int = 2):
    """Two training steps' worth of forwards (running statistics move), then the output and
    every gradient of ``sum(out * r)``."""
    x = x.clone().requires_grad_()
    for _ in range(steps - 1):
        with torch.no_grad():
            block(x)
    out = block(x)
    (out * r).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
    bufs = {n: b.clone() for n, b in block.named_buffers() if b.is_floating_point()}
    return out.detach(), x.grad.clone(), grads, bufs


def _close(a: Tensor, b: Tensor, rel: float, what: str, floor: float = 1e-12) -> None:
    scale = b.abs().max().clamp_min(floor)
    err = ((a - b).abs().max() / scale).item()
    assert err <= rel, f"{what}: max |diff| / scale = {err:.3e} > {rel}"


CASES = [
    ("paper", "pyg", "batch", None, (2, 3, 8, 7, 7)),
    ("paper", "dense", "batch", 6, (1, 4, 8, 6, 5)),
    ("paper", "pyg", "layer", None, (2, 2, 8, 5, 5)),
    ("paper", "dense", "none", 6, (1, 3, 8, 7, 7)),
    ("authors", "pyg", None, None, (2, 3, 8, 7, 7)),
    ("authors", "dense", None, None, (1, 4, 8, 7, 7)),
    ("authors", "pyg", None, 6, (1, 3, 8, 14, 14)),  # their projection in and back
    ("authors", "dense", None, 6, (2, 2, 8, 14, 14)),
]
MODES = [(torch.float64, 1e-10, True), (torch.float64, 1e-10, False), (torch.float32, 2e-4, True)]


@pytest.mark.parametrize(("dtype", "rel", "train"), MODES)
@pytest.mark.parametrize(("flavor", "backend", "norm", "node", "shape"), CASES)
def test_fast_block_equals_the_straightforward_one(flavor, backend, norm, node, shape, dtype,
                                                   rel, train, monkeypatch):
    b, t, c, h, w = shape
    torch.manual_seed(0)
    kw = dict(flavor=flavor, backend=backend, spatial_size=(h, w), node_channels=node,
              gate_init=0.5)
    if norm is not None:
        kw["norm"] = norm
    if flavor == "authors" and node is None:
        kw["init"] = "grid"
    block = DyRegBlock(c, kw)
    _randomise(block, 1)
    block.to(dtype).train(train)
    ref = copy.deepcopy(block)
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.3).to(dtype)
    r = torch.randn(shape, generator=gen).to(dtype)
    got = _run(block, x, r)
    with monkeypatch.context() as mp:
        patch_old(mp)
        want = _run(ref, x, r)
    _close(got[0], want[0], rel, "output")
    _close(got[1], want[1], rel, "input gradient")
    assert got[2].keys() == want[2].keys()
    # floor: some gradients are zero in exact arithmetic (e.g. the key bias under a softmax
    # over senders) and only rounding noise remains; that noise scales with the gradients it is
    # computed from, so the floor is a share of the block's largest gradient (a fixed 1e-2
    # failed in float32 with 2 threads: 2.3e-6 of noise on a zero gradient, where the
    # block's largest gradient is 93)
    floor = 1e-2 * max(float(g.abs().max()) for g in want[2].values())
    for name in want[2]:
        _close(got[2][name], want[2][name], rel, f"gradient of {name}", floor=max(floor, 1e-2))
    for name in want[3]:
        _close(got[3][name], want[3][name], rel, f"buffer {name}")


def test_fast_block_records_the_same_details(monkeypatch):
    torch.manual_seed(0)
    block = DyRegBlock(16, dict(spatial_size=(7, 7), gate_init=0.5)).double()
    _randomise(block, 3)
    ref = copy.deepcopy(block)
    block.record = True
    x = torch.randn(2, 3, 16, 7, 7, dtype=torch.float64)
    out = block(x)
    with monkeypatch.context() as mp:
        patch_old(mp)
        ref_out = ref(x)
    ref_det = ref.gnn(x, return_details=True)[1]
    assert torch.allclose(out, ref_out, atol=1e-10)
    assert block.last is not None and block.last.graph is not None
    assert torch.allclose(block.last.kernels, ref_det.kernels)
    assert torch.allclose(block.last.graph.x, ref_det.graph.x)


def test_sync_batch_norm_takes_the_plain_path(monkeypatch):
    """A norm the fold does not cover (here a BatchNorm2d subclass) runs on the map."""

    class MyNorm(nn.BatchNorm2d):
        pass

    torch.manual_seed(0)
    block = DyRegBlock(16, dict(spatial_size=(7, 7), gate_init=0.5)).double()
    ref = copy.deepcopy(block)
    block.norm = MyNorm(16).double()
    ref.norm = MyNorm(16).double()
    x = torch.randn(2, 3, 16, 7, 7, dtype=torch.float64)
    assert not block.gnn.can_fold_write_back(block.norm, x)
    with monkeypatch.context() as mp:
        patch_old(mp)
        ref_out = ref(x)
    assert torch.allclose(block(x), ref_out, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 5, 3, 8), (1, 16, 9, 8), (3, 1, 2, 8)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gru_over_time_equals_nn_gru(shape, dtype):
    torch.manual_seed(0)
    gru = nn.GRU(8, 6, batch_first=True).to(dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out = gru_over_time(gru, x)
    ref = old_gru_over_time(gru, x2)
    r = torch.randn(ref.shape, dtype=dtype)
    params = list(gru.parameters())
    g_new = torch.autograd.grad((out * r).sum(), [x, *params])
    g_ref = torch.autograd.grad((ref * r).sum(), [x2, *params])
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    _close(out, ref, rel, "output")
    for a, b in zip(g_new, g_ref):
        _close(a, b, rel, "gradient")


def test_gru_over_time_lstm_and_autocast_take_nn_rnn():
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 8, batch_first=True)
    x = torch.randn(2, 4, 3, 8)
    assert torch.allclose(gru_over_time(lstm, x), old_gru_over_time(lstm, x))
    gru = nn.GRU(8, 8, batch_first=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = gru_over_time(gru, x), old_gru_over_time(gru, x)
    assert got.dtype == want.dtype
    assert torch.allclose(got.float(), want.float())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels,matmul", [(12, True), (42, False), (64, False)])
def test_conv1x1_equals_the_convolution(bias, channels, matmul):
    # 6 x 7 = 42 cells: more cells than channels takes the batched matmul, otherwise the
    # convolution kernel runs (its weight gradient is cheaper there)
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 5, 1, bias=bias).double()
    x = torch.randn(3, channels, 6, 7, dtype=torch.float64, requires_grad=True)
    calls = []
    handle = conv.register_forward_hook(lambda *a: calls.append(1))
    out = conv1x1(x, conv)
    handle.remove()
    assert len(calls) == (0 if matmul else 1)
    ref = conv(x)
    assert torch.allclose(out, ref, atol=1e-12)
    g1 = torch.autograd.grad(out.sum(), [x, *conv.parameters()])
    g2 = torch.autograd.grad(ref.sum(), [x, *conv.parameters()])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-12)
    cl = x.detach().contiguous(memory_format=torch.channels_last)
    assert torch.allclose(conv1x1(cl, conv), conv(cl), atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_remap_residual_and_moments(channels_last):
    torch.manual_seed(0)
    g, n, c, h, w = 4, 5, 6, 7, 3
    x = torch.randn(g, c, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    k = torch.rand(g, n, h, w, dtype=torch.float64)
    k = k / k.sum((-2, -1), keepdim=True)
    v = torch.randn(g, n, c, dtype=torch.float64)
    shift = torch.randn(c, dtype=torch.float64)
    y = remap_nodes(v, k) + shift.view(1, c, 1, 1)
    out = remap_residual(x, v, k, shift)
    assert torch.allclose(out, x + y, atol=1e-12)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    s1, s2 = remap_moments(v, k, shift)
    assert torch.allclose(s1, y.sum((-2, -1)), atol=1e-10)
    assert torch.allclose(s2, (y * y).sum((-2, -1)), atol=1e-10)
    assert torch.allclose(pool_nodes(x, k), torch.einsum("gnp,gcp->gnc", k.flatten(2),
                                                         x.flatten(2)), atol=1e-12)


def test_edge_dot_and_authors_conv_on_a_sparse_graph(monkeypatch):
    """The folded message norm also holds on any graph (receivers without edges included)."""
    torch.manual_seed(0)
    q = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    ei = torch.tensor([[0, 1, 2, 3, 1, 5], [1, 2, 0, 0, 3, 3]])
    torch.autograd.gradcheck(lambda a, b: edge_dot(a, b, ei), (q, k))
    conv = AuthorsRSTGConv(4).double()
    _randomise(conv, 4)
    x = torch.randn(7, 4, dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    out = conv(x, ei, batch, 2)
    want = old_authors_conv_forward(conv, x, ei, batch, 2)
    assert torch.allclose(out, want, atol=1e-10)
    dense = frame_edge_index(3, 4, True)
    xs = torch.randn(12, 4, dtype=torch.float64)
    assert torch.allclose(conv.forward_dense(xs.view(3, 4, 4)).reshape(12, 4),
                          old_authors_conv_dense(conv, xs.view(3, 4, 4)).reshape(12, 4),
                          atol=1e-10)
    assert torch.allclose(conv(xs, dense, torch.arange(3).repeat_interleave(4), 3),
                          old_authors_conv_dense(conv, xs.view(3, 4, 4)).reshape(12, 4),
                          atol=1e-10)
