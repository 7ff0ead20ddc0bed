import pytest
import timm
import torch

from dyreg_pyg.models import (
    PRESETS,
    SYNCMNIST_PAPER_PARAMS_M,
    VideoModel,
    add_temporal_shift,
    build_preset,
    build_video_model,
    list_presets,
    syncmnist_param_table,
    temporal_shift,
)
from dyreg_pyg.models.tsm import TemporalShift

PAPER_PRESETS = [
    "tsm_r50_dyreg", "tsm_r50_dyreg_r4", "tsm_r18_dyreg", "syncmnist_r18_nograph",
    "syncmnist_r18_fixed", "syncmnist_r18_static", "syncmnist_r18_constant_time",
    "syncmnist_r18_pos_only", "syncmnist_r18_dyreg", "syncmnist_r18_dyreg_lite",
    "syncmnist_r18_semantic",
]


def test_preset_names():
    assert set(PAPER_PRESETS) <= set(list_presets()) == set(PRESETS)


def test_syncmnist_parameter_counts_near_table6():
    table = syncmnist_param_table()
    print({k: f"ours {o:.3f} M, paper {p} M" for k, (o, p) in table.items()})
    assert {k for k, (_, p) in table.items() if p is not None} == set(SYNCMNIST_PAPER_PARAMS_M)
    for name, (ours, paper) in table.items():
        if paper is not None:
            assert abs(ours - paper) / paper < 0.15, (name, ours, paper)
    assert table["dyreg"][0] > table["dyreg_lite"][0] > table["fixed"][0] > table["nograph"][0]


def test_syncmnist_preset_structure():
    m = build_preset("syncmnist_r18_dyreg")
    assert m.in_chans == 1 and m.num_frames == 10 and m.num_classes == 56
    assert isinstance(m.backbone.layer4, torch.nn.Identity) and m.fc.in_features == 256
    (name, block), = m.dyreg_blocks().items()
    assert name == "layer2" and block.gnn.in_channels == 128
    assert block.gnn.config.spatial_size == (8, 8)  # inferred: 64 x 64 input, stride 8
    assert block.gnn.config.regions == "dyreg" and block.gnn.config.init == "center"
    fixed = build_preset("syncmnist_r18_fixed").dyreg_blocks()["layer2"].gnn.config
    assert (fixed.regions, fixed.init) == ("fixed", "grid")
    assert build_preset("syncmnist_r18_nograph").dyreg_blocks() == {}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_forward_backward(name):
    torch.manual_seed(0)
    ssv = name.startswith("tsm")
    # the authors' region encoder needs maps of >= 4 cells (layer4: 112 / 32 = 4, as theirs)
    size = 112 if name.endswith("_authors") else 64
    model = build_preset(name, num_frames=2, input_size=size) if ssv else build_preset(name)
    assert isinstance(model, VideoModel)
    t, c = (2, 3) if ssv else (10, 1)
    regions = _boxes(1, t, 5) if model.needs_regions() else None
    logits = model(torch.randn(1, t, c, size, size), regions=regions)
    assert logits.shape == (1, model.num_classes)
    logits.sum().backward()
    assert model.fc.weight.grad.abs().sum() > 0
    for block in model.dyreg_blocks().values():  # gate = 0 still receives a gradient
        gate = block.gamma if block.gamma is not None else block.norm.norm.weight  # authors
        assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_record_regions_normalised():
    torch.manual_seed(0)
    m = build_preset("syncmnist_r18_dyreg", num_frames=3).eval()
    block = m.dyreg_blocks()["layer2"]
    block.record = True
    m(torch.randn(2, 3, 1, 64, 64))
    regions = block.last.regions
    assert regions.shape == (2, 3, 9, 4)
    assert torch.allclose(regions[..., :2], torch.full_like(regions[..., :2], 0.5))  # "center"
    assert (regions >= 0).all() and (regions <= 1).all()


@pytest.mark.parametrize("backbone, at", [("resnet18", ["layer2.1", "layer3.1"]),
                                          ("regnetx_002", ["s2"]),
                                          ("convnext_atto", ["stages.2"])])
def test_dyreg_identity_at_step0_on_three_families(backbone, at):
    torch.manual_seed(0)
    bare = build_video_model(backbone, 5, 2, input_size=64)
    torch.manual_seed(1)
    with_dyreg = build_video_model(backbone, 5, 2, dyreg_at=at, input_size=64,
                                   dyreg={"node_channels": 16})
    missing = with_dyreg.load_state_dict(bare.state_dict(), strict=False).missing_keys
    assert missing and all(".dyreg_after." in k for k in missing)
    bare.eval()
    with_dyreg.eval()
    x = torch.randn(2, 2, 3, 64, 64)
    assert torch.allclose(bare(x), with_dyreg(x), atol=1e-6)
    assert list(with_dyreg.dyreg_blocks()) == at


def test_pretrained_file_identity_with_tsm(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=1000).eval()
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    kw = dict(pretrained_file=str(path), input_size=32, shift=True)
    bare = build_video_model("resnet18", 4, 2, **kw).eval()
    dy = build_video_model("resnet18", 4, 2, dyreg_at=["layer3.1"], **kw,
                           dyreg={"node_channels": 16}).eval()
    assert torch.equal(dy.backbone.layer1[0].conv1.layer.weight, src.layer1[0].conv1.weight)
    x = torch.randn(1, 2, 3, 32, 32)
    fb, fd = bare.forward_features(x), dy.forward_features(x)
    assert torch.allclose(fb, fd, atol=1e-6)
    # 1 input channel: timm adapts the pretrained stem (sums the RGB filters)
    gray = build_video_model("resnet18", 4, 2, in_chans=1, pretrained_file=str(path),
                             input_size=32)
    assert torch.allclose(gray.backbone.conv1.weight, src.conv1.weight.sum(1, keepdim=True))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="close timm names.*resnet50"):
        build_video_model("resnet5O", 3, 2, input_size=32)
    with pytest.raises(ValueError, match=r"'layer9' is not a module.*valid block names.*layer2"):
        build_video_model("resnet18", 3, 2, dyreg_at=["layer9"], input_size=32)
    with pytest.raises(ValueError, match="does not output a 4-D map"):
        build_video_model("resnet18", 3, 2, dyreg_at=["global_pool"], input_size=32,
                          global_pool="avg")
    with pytest.raises(ValueError, match="list of block names"):
        build_video_model("resnet18", 3, 2, dyreg_at="layer2", input_size=32)
    with pytest.raises(ValueError, match="unknown name 'tsm_r51'"):
        build_preset("tsm_r51")
    with pytest.raises(ValueError, match="pretrained_file"):
        build_video_model("resnet18", 3, 2, pretrained=True)
    with pytest.raises(ValueError, match="no such file"):
        build_video_model("resnet18", 3, 2, pretrained_file="/nonexistent/r18.pth")
    with pytest.raises(ValueError, match="num_frames"):
        build_video_model("resnet18", 3, 0)
    with pytest.raises(ValueError, match="dyreg config: unknown keys"):
        build_video_model("resnet18", 3, 2, dyreg_at=["layer2"], dyreg={"nodes": 4},
                          input_size=32)
    with pytest.raises(ValueError, match="shift: temporal shift supports"):
        build_video_model("convnext_atto", 3, 2, shift=True, input_size=32)
    with pytest.raises(ValueError, match="4-D feature map"):
        build_video_model("vit_tiny_patch16_224", 3, 2, img_size=32, input_size=32)
    with pytest.raises(ValueError, match="input_size: the dummy forward"):
        build_video_model("vit_tiny_patch16_224", 3, 2, img_size=32)
    m = build_video_model("resnet18", 3, 2, shift=True, input_size=32)
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        m(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="num_frames=2"):
        m(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="C=3 channels"):
        m(torch.randn(1, 2, 1, 32, 32))


def test_plain_backbone_accepts_any_clip_length():
    m = build_video_model("resnet18", 3, 4, input_size=32).eval()
    assert m(torch.randn(1, 3, 3, 32, 32)).shape == (1, 3)


def test_temporal_shift_semantics():
    b, t, c = 2, 3, 16  # fold = 16 / 8 = 2 channels each way
    x = torch.arange(b * t, dtype=torch.float32).add(1).view(b, t, 1, 1, 1)
    x = x.expand(b, t, c, 1, 1).reshape(b * t, c, 1, 1)
    out = temporal_shift(x, t).view(b, t, c)
    for v, off in enumerate((0, 3)):  # clips do not leak into each other
        first, second, third = 1 + off, 2 + off, 3 + off
        # channels 0-1 read the next frame (zero at the clip's last frame)
        assert out[v, :, 0:2].tolist() == [[second] * 2, [third] * 2, [0] * 2]
        # channels 2-3 read the previous frame (zero at the clip's first frame)
        assert out[v, :, 2:4].tolist() == [[0] * 2, [first] * 2, [second] * 2]
        # the other 3/4 stay
        assert out[v, :, 4:].tolist() == [[first] * 12, [second] * 12, [third] * 12]
    with pytest.raises(ValueError, match="num_frames"):
        temporal_shift(torch.zeros(4, 8, 1, 1), 3)


def test_shift_sits_in_the_residual_branch_only():
    net = timm.create_model("resnet18", num_classes=0)
    assert add_temporal_shift(net, 2) == 8  # every BasicBlock
    block = net.layer1[0].eval()
    assert isinstance(block.conv1, TemporalShift)
    torch.manual_seed(0)
    x = torch.randn(4, 64, 4, 4)  # 2 clips x 2 frames
    with torch.no_grad():
        branch = block.bn2(block.conv2(block.act1(block.bn1(
            block.conv1.layer(temporal_shift(x, 2))))))
        expected = block.act2(branch + x)  # the shortcut carries the unshifted input
        assert torch.allclose(block(x), expected, atol=1e-6)


@pytest.mark.parametrize("backbone", ["r3d_18", "mc3_18"])
def test_torchvision_video_resnet_with_dyreg(backbone):
    torch.manual_seed(0)
    bare = build_video_model(backbone, 4, 4, input_size=32)
    m = build_video_model(backbone, 4, 4, dyreg_at=["layer2"], input_size=32,
                          dyreg={"node_channels": 16, "init": "grid"})
    assert isinstance(m, VideoModel) and list(m.dyreg_blocks()) == ["layer2"]
    m.load_state_dict(bare.state_dict(), strict=False)
    x = torch.randn(2, 4, 3, 32, 32)
    bare.eval()
    m.eval()
    assert torch.allclose(bare(x), m(x), atol=1e-6)  # identity at step 0 in 3-D too
    m.train()
    out = m(x)
    assert out.shape == (2, 4)
    out.sum().backward()
    assert m.dyreg_blocks()["layer2"].gamma.grad is not None
    with pytest.raises(ValueError, match="valid block names"):
        build_video_model(backbone, 4, 4, dyreg_at=["layer7"], input_size=32)


def test_video_resnet_one_channel_input():
    m = build_video_model("r3d_18", 3, 2, in_chans=1, input_size=32).eval()
    assert m(torch.randn(1, 2, 1, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="2-D timm backbones"):
        build_video_model("r3d_18", 3, 2, shift=True)


def _boxes(b: int, t: int, n: int) -> torch.Tensor:
    """Random ``(cx, cy, w, h)`` boxes inside the frame, normalised."""
    wh = 0.1 + 0.3 * torch.rand(b, t, n, 2)
    centre = wh / 2 + (1 - wh) * torch.rand(b, t, n, 2)
    return torch.cat([centre, wh], -1)


def test_oracle_preset_pools_the_given_boxes_and_keeps_no_state():
    torch.manual_seed(0)
    model = build_preset("syncmnist_r18_oracle").eval()
    assert model.needs_regions() and not build_preset("syncmnist_r18_dyreg").needs_regions()
    block = model.dyreg_blocks()["layer2"]
    assert block.gnn.config.regions == "external" and block.gnn.config.num_nodes == 5
    block.gamma.data.fill_(1.0)  # open the gate so that the regions reach the logits
    clip, boxes = torch.randn(2, 10, 1, 64, 64), _boxes(2, 10, 5)
    block.record = True
    with torch.no_grad():
        out = model(clip, regions=boxes)
        assert torch.equal(block.last.regions, boxes)
        moved = boxes.clone()
        moved[..., :2] = 1 - moved[..., :2]
        assert not torch.allclose(model(clip, regions=moved), out)
        assert torch.allclose(model(clip, regions=boxes), out)
        with pytest.raises(ValueError, match="external"):
            model(clip)  # the boxes of the previous call are not kept
        with pytest.raises(ValueError, match=r"\(2, 10, 5, 4\)"):
            model(clip, regions=boxes[:, :, :4])


def test_oracle_regions_reach_only_the_external_blocks():
    """A model mixing an ``external`` block with a predicting one: the caller's regions go to
    the external block only (a predicting mode rejects given regions)."""
    torch.manual_seed(0)
    model = build_video_model(
        "resnet18", 4, 4, dyreg_at=["layer2", "layer3"], in_chans=1,
        dyreg=dict(node_channels=8, num_nodes=5, region_channels=8), input_size=64,
        dyreg_per_block={"layer2": dict(regions="external")},
    ).eval()
    blocks = model.dyreg_blocks()
    assert blocks["layer2"].gnn.config.regions == "external"
    assert blocks["layer3"].gnn.config.regions == "dyreg"
    with torch.no_grad():
        out = model(torch.randn(2, 4, 1, 64, 64), regions=_boxes(2, 4, 5))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
