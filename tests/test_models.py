import pytest
import torch

from dyreg_pyg.models import (
    PRESETS,
    SYNCMNIST_PAPER_PARAMS_M,
    build_preset,
    build_video_model,
    temporal_shift,
)


def _params_m(model):
    return sum(p.numel() for p in model.parameters()) / 1e6


def syncmnist_param_table() -> dict[str, tuple[float, float]]:
    """(ours, paper) parameter counts in millions for the Table 6 models."""
    return {k: (_params_m(build_preset(f"syncmnist_r18_{k}")), v)
            for k, v in SYNCMNIST_PAPER_PARAMS_M.items()}


def test_syncmnist_parameter_counts_near_table6():
    table = syncmnist_param_table()
    print(table)
    for name, (ours, paper) in table.items():
        assert abs(ours - paper) / paper < 0.15, (name, ours, paper)
    assert table["dyreg"][0] > table["fixed"][0] > table["nograph"][0]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_forward_backward(name):
    torch.manual_seed(0)
    small = name.startswith("tsm")
    kw = dict(num_frames=2, input_size=64) if small else {}
    model = build_preset(name, **kw)
    t, c, s = (2, 3, 64) if small else (10, 1, 64)
    logits = model(torch.randn(1, t, c, s, s))
    assert logits.shape == (1, model.num_classes)
    logits.sum().backward()
    grads = [p.grad.abs().sum() for p in model.parameters() if p.grad is not None]
    assert len(grads) > 0 and sum(grads) > 0


@pytest.mark.parametrize("backbone, at", [("resnet18", ["layer3.1"]),
                                          ("regnetx_002", ["s2"]),
                                          ("convnext_atto", ["stages.2"])])
def test_dyreg_identity_at_step0_on_three_families(backbone, at):
    torch.manual_seed(0)
    bare = build_video_model(backbone, 5, 2, input_size=64)
    torch.manual_seed(0)
    with_dyreg = build_video_model(backbone, 5, 2, dyreg_at=at, input_size=64,
                                   dyreg={"node_channels": 16})
    missing = with_dyreg.load_state_dict(bare.state_dict(), strict=False).missing_keys
    assert all("dyreg" in k for k in missing)
    bare.eval()
    with_dyreg.eval()
    x = torch.randn(2, 2, 3, 64, 64)
    assert torch.allclose(bare(x), with_dyreg(x), atol=1e-6)
    assert list(with_dyreg.dyreg_blocks()) == at


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="close names.*resnet50"):
        build_video_model("resnet5O", 3, 2, input_size=32)
    with pytest.raises(ValueError, match="valid names.*layer2"):
        build_video_model("resnet18", 3, 2, dyreg_at=["layer9"], input_size=32)
    with pytest.raises(ValueError, match="unknown"):
        build_preset("tsm_r51")
    with pytest.raises(ValueError, match="pretrained_file"):
        build_video_model("resnet18", 3, 2, pretrained=True)
    m = build_video_model("resnet18", 3, 2, shift=True, input_size=32)
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        m(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="num_frames=2"):
        m(torch.randn(1, 3, 3, 32, 32))


def test_pretrained_file_loads_local_weights(tmp_path):
    import timm

    src = timm.create_model("resnet18", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    m = build_video_model("resnet18", 4, 2, pretrained_file=str(tmp_path / "r18.pth"),
                          input_size=32)
    assert torch.equal(m.backbone.conv1.weight, src.conv1.weight)


def test_temporal_shift_semantics():
    b, t, c = 1, 3, 16  # fold = 2 channels each way
    x = torch.arange(t, dtype=torch.float32).add(1).view(1, t, 1, 1, 1).expand(b, t, c, 1, 1)
    out = temporal_shift(x.reshape(b * t, c, 1, 1), t).view(b, t, c)
    # channels 0-1 read the next frame (zero at the last), 2-3 the previous (zero at the first)
    assert out[0, :, 0].tolist() == [2, 3, 0]
    assert out[0, :, 2].tolist() == [0, 1, 2]
    assert out[0, :, 4:].tolist() == [[1] * 12, [2] * 12, [3] * 12]
    with pytest.raises(ValueError, match="num_frames"):
        temporal_shift(torch.zeros(4, 8, 1, 1), 3)


@pytest.mark.parametrize("backbone", ["r3d_18", "mc3_18"])
def test_torchvision_video_resnet_with_dyreg(backbone):
    torch.manual_seed(0)
    m = build_video_model(backbone, 4, 4, dyreg_at=["layer2"], input_size=32,
                          dyreg={"node_channels": 16, "init": "grid"})
    assert list(m.dyreg_blocks()) == ["layer2"]
    out = m(torch.randn(2, 4, 3, 32, 32))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert m.dyreg_blocks()["layer2"].gamma.grad is not None
    with pytest.raises(ValueError, match="valid names"):
        build_video_model(backbone, 4, 4, dyreg_at=["layer7"], input_size=32)
