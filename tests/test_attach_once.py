"""A DyReg block attached to a backbone block runs once per forward, also after an
``nn.Sequential`` stage (e.g. ``dyreg_at=["layer2"]`` of the MultiSyncMNIST presets), which
runs its attached child itself: a forward hook as well ran it a second time."""

import pytest
import torch
from torch import nn

from dyreg_pyg import DyRegBlock
from dyreg_pyg.models import build_video_model
from dyreg_pyg.models.base import attach_dyreg


def _count_calls(model: nn.Module) -> list[int]:
    calls = [0]
    for mod in model.modules():
        if isinstance(mod, DyRegBlock):
            mod.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("block", [
    nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),  # runs its children
    nn.Conv2d(4, 4, 3, padding=1),  # a plain block: the hook runs the attachment
])
def test_attachment_runs_once_and_after_the_block(block):
    torch.manual_seed(0)
    ref = nn.Sequential(*block) if isinstance(block, nn.Sequential) else block
    dyreg = DyRegBlock(4, dict(regions="fixed", num_nodes=4, spatial_size=(6, 6),
                               gate_init=1.0))
    x = torch.randn(6, 4, 6, 6)
    want = dyreg(ref(x).view(2, 3, 4, 6, 6)).view(6, 4, 6, 6)
    attach_dyreg(block, dyreg, num_frames=3)
    calls = _count_calls(block)
    got = block(x)
    assert calls[0] == 1
    torch.testing.assert_close(got, want)


def test_stage_attachment_in_a_model_runs_once():
    model = build_video_model("resnet18", 3, 2, dyreg_at=["layer2", "layer3.1"],
                              input_size=32, dyreg=dict(num_nodes=4, iterations=1))
    calls = _count_calls(model)
    with torch.no_grad():
        model(torch.randn(1, 2, 3, 32, 32))
    assert calls[0] == 2  # one per attached block
