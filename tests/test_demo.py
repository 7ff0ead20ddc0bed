"""The embedded main job (``python -m train demo``) end to end, at a toy size."""

import json

from train.checkpoint import load_checkpoint
from train.demo import run_demo


def test_demo_builds_data_trains_the_schedule_and_reports(tmp_path):
    # 70 clips / batch 32 = 2 full batches per epoch; 2 epochs -> 4 optimiser steps
    summary = run_demo(str(tmp_path), train_videos=70, val_videos=8, epochs=2)
    assert summary["train_steps"] == 4
    assert summary["train_videos_seen"] == 128
    assert summary["val_samples"] == 8
    assert 0.0 <= summary["val_top1"] <= summary["val_top5"] <= 1.0
    assert set(summary["region_object_distance"]) >= {"layer2", "fixed_grid"}
    assert sorted(p.rsplit("/", 1)[-1] for p in summary["pictures"]) == [
        "regions.json", "regions_0.png", "regions_1.png", "regions_2.png"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    cfg = ckpt["config"]
    assert (cfg["precision"], cfg["channels_last"], cfg["data"]["in_memory"]) == (
        "bf16", True, True)
    assert cfg["optim"]["schedule"] == "onecycle" and ckpt["state"]["epoch"] == 2
    # a second call reuses the generated shards instead of writing new ones
    mtime = (tmp_path / "data" / "train-manifest.json").stat().st_mtime_ns
    run_demo(str(tmp_path), train_videos=70, val_videos=8, epochs=1, minutes=5)
    assert (tmp_path / "data" / "train-manifest.json").stat().st_mtime_ns == mtime
