"""The embedded main job (``python -m train demo``) end to end, at a toy size."""

import json

import pytest

from train.checkpoint import load_checkpoint
from train.demo import run_demo


def test_demo_builds_data_trains_the_schedule_and_reports(tmp_path):
    # 70 clips / batch 32 = 2 full batches per epoch; 2 epochs -> 4 optimiser steps
    summary = run_demo(str(tmp_path), train_videos=70, val_videos=8, epochs=2)
    assert summary["train_steps"] == 4
    assert summary["train_videos_seen"] == 128
    assert summary["val_samples"] == 8 and summary["task"] == "multisync"
    assert summary["chance"] == 1 / 56 and summary["appearance_only_ceiling"] == 0.3198
    assert json.loads((tmp_path / "data" / "val-manifest.json").read_text())["num_classes"] \
        == 56
    assert 0.0 <= summary["val_top1"] <= summary["val_top5"] <= 1.0
    assert set(summary["region_object_distance"]) >= {"layer2", "fixed_grid"}
    assert sorted(p.rsplit("/", 1)[-1] for p in summary["pictures"]) == [
        "regions.json", "regions_0.png", "regions_1.png", "regions_2.png"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    cfg = ckpt["config"]
    from train.step import cpu_has_bf16

    fast = cpu_has_bf16()  # bf16 + channels-last where the CPU has native bf16, else fp32
    assert (cfg["precision"], cfg["channels_last"], cfg["data"]["in_memory"]) == (
        "bf16" if fast else "fp32", fast, True)
    assert cfg["optim"]["schedule"] == "onecycle" and ckpt["state"]["epoch"] == 2
    # a second call reuses the generated shards instead of writing new ones
    mtime = (tmp_path / "data" / "train-manifest.json").stat().st_mtime_ns
    run_demo(str(tmp_path), train_videos=70, val_videos=8, epochs=1, minutes=5)
    assert (tmp_path / "data" / "train-manifest.json").stat().st_mtime_ns == mtime


def test_demo_data_of_another_task_or_count_is_rewritten_not_reused(tmp_path):
    from train.demo import _make_split

    d = tmp_path / "data"
    first = _make_split(d, "val", 6, 0, "direction2")
    stamp = (d / "val-manifest.json").stat().st_mtime_ns
    moved = tmp_path / "moved"
    d.rename(moved)                                                       # reused as is, and
    again = _make_split(moved, "val", 6, 0, "direction2")                 # read where it is now
    assert (moved / "val-manifest.json").stat().st_mtime_ns == stamp
    assert again["pattern"] == first["pattern"].replace(str(d), str(moved))
    moved.rename(d)
    multi = _make_split(d, "val", 4, 0, "multisync")                      # another task
    assert multi["num_classes"] == 56 and multi["num_samples"] == 4
    again = _make_split(d, "val", 3, 0, "direction2")                     # another count
    assert again["num_classes"] == 2 and again["num_samples"] == 3
    assert _make_split(d, "val", 3, 1, "direction2")["seed"] == 1 + 7919  # another seed
    with pytest.raises(ValueError, match="task: expected one of"):
        run_demo(str(tmp_path), task="sync2")
    # a garbage, truncated or non-object manifest is not trusted: the split is written anew
    for junk in (b"\x00\xff garbage", b'{"num_samples": 3, "se', b"[1, 2]"):
        (d / "val-manifest.json").write_bytes(junk)
        fresh = _make_split(d, "val", 3, 1, "direction2")
        assert fresh["num_samples"] == 3 and fresh["num_classes"] == 2
        assert json.loads((d / "val-manifest.json").read_text())["num_samples"] == 3
    # the reduced task end to end: 2 classes, chance and ceiling 50 %
    summary = run_demo(str(tmp_path / "d2"), train_videos=40, val_videos=4, epochs=1,
                       task="direction2")
    assert summary["task"] == "direction2" and summary["val_samples"] == 4
    assert summary["chance"] == 0.5 and summary["appearance_only_ceiling"] == 0.5
    assert load_checkpoint(tmp_path / "d2" / "run" / "last.pt")["num_classes"] == 2
