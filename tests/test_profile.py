import json

import pytest

from dyreg_pyg.models import build_preset, build_video_model
from dyreg_pyg.profile import format_profile, main, profile_model


def test_profile_splits_backbone_and_dyreg():
    with_graph = build_preset("syncmnist_r18_dyreg", num_frames=2, input_size=32)
    bare = build_preset("syncmnist_r18_nograph", num_frames=2, input_size=32)
    p = profile_model(with_graph)  # frames / size / channels from the model
    q = profile_model(bare)
    assert (p.frames, p.size) == (2, 32)
    assert q.flops_dyreg == 0 and q.params_dyreg == 0
    block = with_graph.dyreg_blocks()["layer2"]
    assert p.params_dyreg == sum(x.numel() for x in block.parameters())
    assert p.params_backbone == sum(x.numel() for x in bare.parameters())
    assert 0 < p.flops_regions < p.flops_dyreg < p.flops_total
    # conv FLOPs are input-determined: the backbone part equals the bare model's count
    assert p.flops_backbone == q.flops_total


def test_profile_counts_conv_flops_exactly():
    # one conv layer of ResNet-18's stem at 32 x 32: 64 x 3 x 7 x 7 per output pixel (16 x 16)
    m = build_video_model("resnet18", 2, 1, input_size=32)
    prof = profile_model(m, frames=1, size=32)
    stem = 2 * 64 * 3 * 7 * 7 * 16 * 16
    assert stem < prof.flops_total
    assert profile_model(m, frames=2, size=32).flops_total == 2 * prof.flops_total - 2 * 2 * 512


def test_profile_cli_and_table(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["--preset", "syncmnist_r18_dyreg", "--frames", "2", "--size", "32",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GMACs" in text and "syncmnist_r18_dyreg: 1 x 2 x 32 x 32" in text
    data = json.loads(out.read_text())
    assert data["params_dyreg"] > 0 and data["flops_backbone"] > data["flops_dyreg"]
    prof = profile_model(build_preset("syncmnist_r18_nograph", num_frames=2, input_size=32))
    assert "paper DyReg" in format_profile(prof, paper=True)
    with pytest.raises(SystemExit):
        main(["--preset", "nope"])
