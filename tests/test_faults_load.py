"""Faults at load and scoring time (issue 33, items 4 and 12): non-finite weights refused by
every load path, non-finite logits refused by evaluate and predict, and the messages of a
refused pickle, a truncated file, a fifo, a YAML file that is not a mapping or not YAML, a
safetensors file of another shape, and fp16 on the CPU."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dyreg_pyg._checks import NonFiniteError
from dyreg_pyg.data import write_syncmnist_shards
from dyreg_pyg.inference import load_weights, pack_videos, save_weights
from dyreg_pyg.models import build_preset
from train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from train.cli import build_parser, run
from train.config import config_to_dict, load_config
from train.loop import build_model, evaluate
from train.predict import predict
from train.step import warn_precision

T = 4


def _save_run(path: Path, data: str, nan_key: str | None = None) -> Path:
    """A tiny trained-run checkpoint (random weights), one weight NaN if ``nan_key``."""
    cfg = load_config("syncmnist_demo", [
        f"data.train={data}", f"data.val={data}", f"data.num_frames={T}",
        f"model.overrides.num_frames={T}", "model.overrides.input_size=32"])
    torch.manual_seed(0)
    state = build_model(cfg, 56).state_dict()
    if nan_key is not None:
        state[nan_key] = state[nan_key].clone()
        state[nan_key].view(-1)[3] = float("nan")
    save_checkpoint({"model": state, "config": config_to_dict(cfg), "num_classes": 56}, path)
    return path


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_load")
    write_syncmnist_shards(root / "shards", "val", 4, seed=1, size=32, shard_size=4, frames=6)
    data = f"{root}/shards/val-000000.tar"
    good = _save_run(root / "good.pt", data)
    nan = _save_run(root / "nan.pt", data, nan_key="fc.weight")
    folder = root / "frames"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((32, 32), 30 * i, np.uint8)).save(folder / f"{i}.png")
    return {"root": root, "data": data, "good": good, "nan": nan, "folder": folder}


# --- non-finite weights -------------------------------------------------------------------

def test_nan_weight_is_refused_by_load_predict_and_evaluate(run_files, tmp_path, capsys):
    nan = run_files["nan"]
    with pytest.raises(CheckpointError, match=rf"{nan}.*non-finite.*'fc.weight' has 1 of"):
        load_checkpoint(nan)
    with pytest.raises(CheckpointError, match=rf"{nan}.*'fc.weight'"):
        predict(nan, [str(run_files["folder"])])
    with pytest.raises(CheckpointError, match=rf"{nan}.*'fc.weight'"):
        evaluate(str(nan), run_files["data"], out=str(tmp_path / "m.json"), device="cpu")
    assert not (tmp_path / "m.json").exists()
    rc = run(build_parser(), ["predict", "--checkpoint", str(nan), str(run_files["folder"])])
    assert rc == 1 and "non-finite weights" in capsys.readouterr().err
    # the same run with finite weights loads (and resumes: the training state is untouched)
    assert load_checkpoint(run_files["good"])["num_classes"] == 56


def test_nan_in_exported_weights_is_refused(tmp_path):
    model = build_preset("syncmnist_r18_dyreg", num_classes=5, num_frames=T, input_size=32)
    info = {"preset": "syncmnist_r18_dyreg",
            "preset_kwargs": {"num_classes": 5, "num_frames": T, "input_size": 32}}
    with torch.no_grad():
        model.fc.bias[2] = float("inf")
    path = save_weights(model, tmp_path / "model.safetensors", info)
    with pytest.raises(NonFiniteError, match=rf"{path}.*'fc.bias' has 1 of 5"):
        load_weights(path)


def test_exported_weights_of_another_shape_list_keys_and_shapes(tmp_path):
    model = build_preset("syncmnist_r18_dyreg", num_classes=5, num_frames=T, input_size=32)
    info = {"preset": "syncmnist_r18_dyreg",  # says 7 classes: the file holds 5
            "preset_kwargs": {"num_classes": 7, "num_frames": T, "input_size": 32}}
    path = save_weights(model, tmp_path / "model.safetensors", info)
    with pytest.raises(ValueError, match=r"shape mismatches \(2\): \['fc.bias \(5,\) -> model "
                                         r"\(7,\)', 'fc.weight \(5, 256\) -> model \(7, 256\)'"):
        load_weights(path)


# --- non-finite logits at scoring time ----------------------------------------------------

@pytest.fixture
def nan_forward(monkeypatch):
    """Every VideoModel gives NaN logits (its weights stay finite)."""
    from dyreg_pyg.models.base import VideoModel

    real = VideoModel.forward

    def forward(self, clip, *args, **kwargs):
        return real(self, clip, *args, **kwargs) * float("nan")

    monkeypatch.setattr(VideoModel, "forward", forward)


def test_nan_logits_are_refused_by_evaluate(run_files, tmp_path, nan_forward):
    out = tmp_path / "metrics.json"
    with pytest.raises(NonFiniteError, match=r"validation: .*non-finite logits .* 4 sample"):
        evaluate(str(run_files["good"]), run_files["data"], out=str(out), device="cpu")
    assert not out.exists()


def test_nan_logits_are_refused_by_predict(run_files, capsys, nan_forward):
    good = run_files["good"]
    with pytest.raises(NonFiniteError, match=rf"predict: {good}: .*non-finite logits"):
        predict(good, [str(run_files["folder"])])
    rc = run(build_parser(), ["predict", "--checkpoint", str(good), str(run_files["folder"])])
    captured = capsys.readouterr()
    assert rc == 1 and "non-finite logits" in captured.err and "  1. " not in captured.out


# --- messages -----------------------------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_refused_pickle_and_truncated_checkpoint_name_the_file(tmp_path):
    from dyreg_pyg.compat import read_official_checkpoint

    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload()}, evil)
    with pytest.raises(CheckpointError, match=rf"{evil} holds Python objects that "
                                              "weights_only=True refuses"):
        load_checkpoint(evil)
    with pytest.raises(ValueError, match=rf"{evil} holds Python objects"):
        read_official_checkpoint(evil)
    good = tmp_path / "theirs.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(64)}}, good)
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match=rf"{cut} is unreadable \(truncated or corrupt\?\)"):
        read_official_checkpoint(cut)
    torch.save({"state_dict": {"w": torch.tensor([0.0, float("nan")])}}, good)
    with pytest.raises(NonFiniteError, match=rf"{good}.*'w' has 1 of 2"):
        read_official_checkpoint(good)


def test_a_fifo_is_named_as_such(tmp_path):
    fifo = tmp_path / "clip.webm"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=rf"{fifo} is a named pipe \(fifo\), not a regular "):
        pack_videos([fifo], tmp_path / "out")
    with pytest.raises(CheckpointError, match="is a named pipe"):
        load_checkpoint(fifo)
    with pytest.raises(ValueError, match=r"missing.webm does not exist"):
        pack_videos([tmp_path / "missing.webm"], tmp_path / "out")


def test_yaml_config_not_a_mapping_or_not_yaml_names_the_file(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- epochs: 3\n- seed: 1\n")
    with pytest.raises(ValueError, match=rf"{listed}: expected a mapping .* got a list"):
        load_config(listed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: 3\ndata:\n  batch_size: [1, 2\nseed: 0\n")
    with pytest.raises(ValueError, match=rf"{broken}: YAML syntax error at line \d+, column"):
        load_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert load_config(empty).epochs == load_config().epochs


def test_fp16_on_the_cpu_warns_that_it_runs_fp32(caplog, monkeypatch):
    import train.step

    cfg = load_config(None, ["precision=fp16"])
    with caplog.at_level(logging.WARNING, logger="train"):
        assert warn_precision(cfg, torch.device("cpu"))
    assert "precision=fp16 needs CUDA; on the cpu this run computes in fp32" in caplog.text
    bf16 = load_config(None, ["precision=bf16"])
    monkeypatch.setattr(train.step, "cpu_has_bf16", lambda: True)
    assert not warn_precision(bf16, torch.device("cpu"))
    # an AVX2-only CPU emulates bf16 (measured ~17x slower than fp32 here): said, not hidden
    monkeypatch.setattr(train.step, "cpu_has_bf16", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train"):
        assert warn_precision(bf16, torch.device("cpu"))
    assert "without native bf16" in caplog.text and "precision=fp32" in caplog.text


def test_multiview_checks_the_model_logits_not_the_averaged_log_scores():
    from train.validate import forward_views

    class Fixed(torch.nn.Module):
        def __init__(self, rows):
            super().__init__()
            self.rows = torch.tensor(rows)

        def forward(self, clip):
            return self.rows[: clip.shape[0]]

    video = torch.zeros(2, 2, 1, 1, 2, 2)  # [B=2, V=2, T, C, H, W]
    # a class with softmax 0 in every view gives log(0) = -inf: legitimate, not refused
    far = forward_views(Fixed([[0.0, 2000.0]] * 4), video, keys=["a", "b"])
    assert far[:, 0].isneginf().all() and far[:, 1].eq(0).all()
    with pytest.raises(NonFiniteError, match=r"1 sample\(s\), e.g. \['b'\]"):
        forward_views(Fixed([[0.0, 1.0]] * 3 + [[float("nan"), 1.0]]), video, keys=["a", "b"])
