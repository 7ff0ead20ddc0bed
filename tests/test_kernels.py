import pytest
import torch

from dyreg_pyg.geometry import regions_to_boxes
from dyreg_pyg.nn.kernels import kernel_1d, pool_nodes, region_kernels
from dyreg_pyg.nn.position import KernelPositionEmbedding
from dyreg_pyg.nn.regions import reference_points
from dyreg_pyg.nn.remap import remap_nodes


def test_kernel_values_match_eq6():
    k = kernel_1d(torch.tensor([0.5]), torch.tensor([0.25]), 8)
    p = (torch.arange(8) + 0.5) / 8
    expected = (0.25 - (0.5 - p).abs()).clamp_min(0)
    assert torch.allclose(k[0], expected)
    assert (k[0] > 0).sum() == 4  # cells 2..5 inside the open support


@pytest.mark.parametrize("hw", [(7, 7), (6, 11), (1, 5)])
def test_kernels_nonnegative_sum_one_zero_outside(hw):
    h, w = hw
    torch.manual_seed(0)
    regions = torch.cat((torch.rand(3, 5, 2), torch.rand(3, 5, 2) * 0.5 + 0.01), -1)
    k = region_kernels(regions, h, w)
    assert k.shape == (3, 5, h, w)
    assert (k >= 0).all()
    assert torch.allclose(k.sum((-1, -2)), torch.ones(3, 5), atol=1e-6)
    px = (torch.arange(w) + 0.5) / w
    py = (torch.arange(h) + 0.5) / h
    rad_x = regions[..., 2:3].clamp_min(1 / w)
    rad_y = regions[..., 3:4].clamp_min(1 / h)
    outside_x = (px - regions[..., 0:1]).abs() >= rad_x  # [3, 5, W]
    outside_y = (py - regions[..., 1:2]).abs() >= rad_y
    outside = outside_y.unsqueeze(-1) | outside_x.unsqueeze(-2)
    assert (k[outside] == 0).all()


def test_kernel_never_all_zero_at_extremes():
    regions = torch.tensor(
        [[[5.0, -3.0, 0.0, 0.0], [0.0, 1.0, 1e-9, 1e-9], [1.0, 0.0, 100.0, 1.0]]]
    )
    k = region_kernels(regions, 5, 9)
    assert torch.isfinite(k).all()
    assert torch.allclose(k.sum((-1, -2)), torch.ones(1, 3))


def test_pool_and_remap_are_the_sums_of_eq7_and_eq10():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 5)
    regions = torch.cat((torch.rand(2, 6, 2), torch.rand(2, 6, 2) * 0.4 + 0.1), -1)
    k = region_kernels(regions, 4, 5)
    v = pool_nodes(x, k)
    assert torch.allclose(v, torch.einsum("gnhw,gchw->gnc", k, x), atol=1e-6)
    y = remap_nodes(v, k)
    assert torch.allclose(y, torch.einsum("gnhw,gnc->gchw", k, v), atol=1e-6)


def test_gradcheck_pooling_wrt_centre_and_size():
    torch.manual_seed(2)
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64)
    # Away from the non-differentiable kinks of max(0, .) and |.|
    regions = torch.tensor([[[0.43, 0.58, 0.31, 0.27], [0.61, 0.37, 0.22, 0.36]]],
                           dtype=torch.float64, requires_grad=True)

    def fn(r):
        return pool_nodes(x, region_kernels(r, 6, 7))

    assert torch.autograd.gradcheck(fn, (regions,), eps=1e-6, atol=1e-5)
    g = torch.autograd.grad(fn(regions).pow(2).sum(), regions)[0]
    assert (g.abs() > 0).all()  # centre and size both receive gradient


def test_boxes():
    r = torch.tensor([[0.5, 0.5, 0.25, 0.1], [0.1, 0.9, 0.3, 0.3]])
    b = regions_to_boxes(r)
    assert torch.allclose(b[0], torch.tensor([0.25, 0.4, 0.75, 0.6]))
    assert torch.allclose(b[1], torch.tensor([0.0, 0.6, 0.4, 1.0]))


def test_reference_points_grid_and_center():
    g = reference_points(9, "grid")
    assert torch.allclose(g[0], torch.tensor([1 / 6, 1 / 6]))
    assert torch.allclose(g[4], torch.tensor([0.5, 0.5]))
    assert torch.allclose(g[5], torch.tensor([5 / 6, 0.5]))
    assert torch.allclose(reference_points(4, "center"), torch.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="perfect square"):
        reference_points(8, "grid")


def test_position_embedding_resamples_other_sizes():
    emb = KernelPositionEmbedding((4, 4), 3)
    regions = torch.tensor([[[0.3, 0.6, 0.2, 0.2]]])
    k4 = region_kernels(regions, 4, 4)
    assert torch.allclose(emb(k4), emb.lin(k4.reshape(1, 1, 16)))
    k8 = region_kernels(regions, 8, 8)
    out = emb(k8)
    assert out.shape == (1, 1, 3) and torch.isfinite(out).all()


def test_position_embedding_scale_multiplies_the_embedding_only():
    torch.manual_seed(0)
    plain, loud = KernelPositionEmbedding((4, 4), 3), KernelPositionEmbedding((4, 4), 3, 10.0)
    loud.load_state_dict(plain.state_dict())  # the scale is a constant, not a weight
    k = region_kernels(torch.tensor([[[0.3, 0.6, 0.2, 0.2]]]), 4, 4)
    assert torch.allclose(loud(k), 10 * plain(k))
    assert "scale=10" in repr(loud) and "scale" not in repr(plain)
    with pytest.raises(ValueError, match="scale"):
        KernelPositionEmbedding((4, 4), 3, 0.0)
