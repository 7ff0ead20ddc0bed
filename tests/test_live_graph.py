"""``live_graph=True``: ``details.graph`` keeps ``x``, ``pos`` and ``edge_attr`` attached, so a
user's PyG head on the region graph trains end to end with the video model; by default the
graph is detached (nothing more kept for backward)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.nn import GATv2Conv, global_mean_pool

from dyreg_pyg import DyRegConfig, DyRegGNN
from dyreg_pyg.geometry import GEOMETRY_COLUMNS

C, N = 4, 4


class TinyVideoNet(nn.Module):
    """A conv backbone, the DyReg module, and a PyG head on its region graph."""

    def __init__(self, live: bool) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, C, 3, padding=1)
        self.dyreg = DyRegGNN(C, 8, num_nodes=N, init="grid", iterations=1, live_graph=live)
        self.head = GATv2Conv(8, 5, edge_dim=len(GEOMETRY_COLUMNS))
        self.pos_head = nn.Linear(2, 5)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, object]:
        b, t = video.shape[:2]
        maps = self.backbone(video.flatten(0, 1)).unflatten(0, (b, t))
        _, details = self.dyreg(maps, return_details=True)
        g = details.graph
        h = self.head(g.x, g.edge_index, g.edge_attr) + self.pos_head(g.pos)
        return global_mean_pool(h, g.video), g  # [B, 5] per video


def _video() -> torch.Tensor:
    return torch.randn(2, 3, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def test_a_pyg_head_on_the_live_graph_trains_the_backbone_and_the_regions():
    torch.manual_seed(0)
    net = TinyVideoNet(live=True)
    logits, g = net(_video())
    assert g.x.requires_grad and g.pos.requires_grad and g.edge_attr.requires_grad
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
    assert net.backbone.weight.grad.abs().sum() > 0
    regions = {k: p.grad for k, p in net.dyreg.region_generator.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for g in regions.values())
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_the_geometry_alone_carries_the_gradient_to_the_region_generator():
    torch.manual_seed(0)
    m = DyRegGNN(C, 8, num_nodes=N, init="grid", iterations=1, live_graph=True)
    _, details = m(torch.randn(1, 2, C, 6, 6), return_details=True)
    (details.graph.edge_attr.square().sum() + details.graph.pos.sum()).backward()
    grads = [p.grad for p in m.region_generator.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in m.spatial.parameters())  # the nodes were not used


def test_by_default_the_graph_is_detached():
    torch.manual_seed(0)
    net = TinyVideoNet(live=False)
    logits, g = net(_video())
    assert not (g.x.requires_grad or g.pos.requires_grad or g.edge_attr.requires_grad)
    logits.sum().backward()  # only the head trains
    assert net.backbone.weight.grad is None and net.head.lin_l.weight.grad is not None


def test_live_graph_is_a_checked_config_field():
    assert DyRegConfig().live_graph is False
    with pytest.raises(ValueError, match="live_graph: expected True or False, got 'yes'"):
        DyRegConfig(live_graph="yes")
