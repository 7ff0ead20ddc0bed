"""End-to-end training tests on tiny MultiSyncMNIST shards (CPU)."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dyreg_pyg.data import write_syncmnist_shards
from train.checkpoint import load_checkpoint
from train.config import load_config
from train.loop import NonFiniteLossError, evaluate, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("msm")
    write_syncmnist_shards(d, "train", 48, seed=1, size=32, shard_size=12)
    write_syncmnist_shards(d, "val", 18, seed=2, size=32, shard_size=5)
    return d


def _overrides(shards, out, steps=4):
    return [
        f"data.train={shards}/train-{{000000..000003}}.tar",
        f"data.val={shards}/val-{{000000..000003}}.tar",
        f"out_dir={out}", "data.num_frames=4", "data.batch_size=4", "data.num_workers=0",
        "data.epoch_size=16", "epochs=3", f"max_steps={steps}", "ckpt_every=2",
        "model.preset=syncmnist_r18_dyreg", "model.overrides.num_frames=4",
        "model.overrides.input_size=32", "optim.name=adam", "optim.lr=0.001",
        "optim.schedule=none", "threads=1",
    ]


def _params(path):
    return load_checkpoint(path)["model"]


def test_fit_evaluate_and_multiclip(shards, tmp_path):
    cfg = load_config("syncmnist_demo", _overrides(shards, tmp_path / "run"))
    metrics = fit(cfg)
    assert metrics["samples"] == 18  # every validation sample exactly once
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "config.yaml").exists()
    assert "layer2" in metrics["region_object_distance"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any("val/top1" in json.loads(x) for x in lines)
    m1 = evaluate(str(tmp_path / "run" / "last.pt"), cfg.data.val, out=str(tmp_path / "m1.json"))
    m6 = evaluate(str(tmp_path / "run" / "last.pt"), cfg.data.val, num_clips=2, num_crops=3,
                  out=str(tmp_path / "m6.json"), overrides=["data.crop_size=32"])
    assert m1["samples"] == m6["samples"] == 18
    assert json.loads((tmp_path / "m6.json").read_text())["num_crops"] == 3
    assert sum(map(sum, m6["confusion_matrix"])) == 18
    # the region-object distance: measured on one view, and said why not on 2 x 3 views
    from train.validate import distance_text

    assert m1["region_object_distance"]["layer2"] is not None
    assert m1["region_object_distance_note"] is None
    assert distance_text(m1).startswith("region-object distance layer2 0.")
    assert all(v is None for v in m6["region_object_distance"].values())
    assert "2 clips x 3 crops" in m6["region_object_distance_note"]
    assert "--num-clips 1 --num-crops 1" in distance_text(m6)
    # each validation also put the regions of 2 clips into TensorBoard, captioned
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"regions/0", "regions/1"} <= set(events.Tags()["images"])
    shot = events.Images("regions/0")[-1]
    assert shot.step == 4 and shot.height == 2 * 32 * 4 + 14  # frames + heat maps + caption


def test_region_pictures_carry_the_true_and_predicted_class():
    from train.visualize import caption, region_pictures

    t, n = 3, 4
    sample = {"frames": torch.zeros(t, 1, 8, 8, dtype=torch.uint8),
              "regions": torch.full((t, n, 4), 0.25), "kernels": torch.rand(t, n, 8, 8),
              "key": "v7", "meta": {}, "pred": 1, "prob": 0.8342, "label": 0}
    assert caption(sample, ["push", "pull"]) == "v7  true: push  pred: pull (p 0.83) WRONG"
    assert caption({**sample, "label": 1}, None) == "v7  true: 1  pred: 1 (p 0.83) ok"
    unlabelled = caption({**sample, "label": None}, ["push", "pull"])
    assert unlabelled.startswith("v7  true: ?  pred: pull")
    (img,) = region_pictures([sample], ["push", "pull"])
    assert img.size == (t * 8 * 4, 2 * 8 * 4 + 14)
    strip = torch.tensor(list(img.crop((0, 0, img.width, 14)).getdata())).float()
    assert strip.max() > 200  # the caption's white text is drawn in the (black) strip


def test_multiclip_scores_are_the_average_of_views():
    from train.validate import forward_views

    model = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.LazyLinear(5))
    video = torch.randn(2, 6, 3, 1, 4, 4)
    model(video[:, 0])
    manual = torch.stack([model(video[:, v]).softmax(-1) for v in range(6)], 1).mean(1)
    assert torch.allclose(forward_views(model, video).exp(), manual, atol=1e-6)


def test_nan_loss_stops_and_keeps_checkpoint(shards, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(load_config("syncmnist_demo", _overrides(shards, out, steps=2)))
    before = (out / "last.pt").read_bytes()
    cfg = load_config("syncmnist_demo", _overrides(shards, out, steps=4))
    import torch.nn.functional as F

    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy",
                        lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="untouched"):
        fit(cfg, resume="auto")
    assert (out / "last.pt").read_bytes() == before


def test_accumulation_and_offset_distillation(shards, tmp_path):
    teacher = tmp_path / "teacher"
    fit(load_config("syncmnist_demo", _overrides(shards, teacher, steps=2)))
    cfg = load_config("syncmnist_demo", _overrides(shards, tmp_path / "student", steps=2) + [
        "optim.accumulate=2", f"distill.teachers.layer2={teacher / 'last.pt'}",
        "distill.fraction=1.0", "data.val="])
    fit(cfg)
    state = load_checkpoint(tmp_path / "student" / "last.pt")["state"]
    assert state["step"] == 2
    with pytest.raises(ValueError, match="no DyReg block 'layer3'"):
        bad = load_config("syncmnist_demo", _overrides(shards, tmp_path / "s2", steps=1) + [
            f"distill.teachers.layer3={teacher / 'last.pt'}"])
        fit(bad)


def test_resume_auto_with_nothing_starts_fresh(shards, tmp_path, caplog):
    cfg = load_config("syncmnist_demo", _overrides(shards, tmp_path / "r", steps=1))
    with caplog.at_level("INFO"):
        fit(cfg, resume="auto")
    assert "starting fresh" in caplog.text


def _cmd(shards, out, steps):
    sets = []
    for o in _overrides(shards, out, steps):
        sets += ["--set", o]
    return [sys.executable, "-m", "train", "fit", "--config", "syncmnist_demo", *sets]


def test_crash_and_resume_matches_uninterrupted(shards, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = tmp_path / "ref"
    subprocess.run(_cmd(shards, ref, 8), check=True, cwd=ROOT, env=env, capture_output=True)
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(shards, run, 8), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "last.pt").exists()
    step_at_kill = load_checkpoint(run / "last.pt")["state"]["step"]
    subprocess.run([*_cmd(shards, run, 8), "--resume", "auto"], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    a, b = _params(ref / "last.pt"), _params(run / "last.pt")
    assert load_checkpoint(run / "last.pt")["state"]["step"] == 8
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert killed and step_at_kill < 8


def test_checkpoint_from_before_the_split_resumes_a_schedule_exactly(shards, tmp_path,
                                                                      monkeypatch):
    """A cosine + warm-up run resumed mid-epoch from a checkpoint in the format written before
    train/loop.py was split (the optimiser's groups have no ``initial_lr``; ``plateau`` is
    best / bad_epochs / reductions) gives the uninterrupted run's lrs and weights. (The old
    trainer itself resumed such a run with the schedule applied twice.)"""
    import train.loop

    sched = ["optim.schedule=cosine", "optim.warmup_steps=3", "log_every=1"]
    real_save = train.loop.save_checkpoint

    def save_and_keep_old_format(state, path):
        done = real_save(state, path)
        if Path(path).name == "last.pt" and state["state"]["step"] == 6:  # mid-epoch 1
            old = {**state, "optimizer": copy.deepcopy(state["optimizer"])}
            for group in old["optimizer"]["param_groups"]:
                del group["initial_lr"]
            real_save(old, tmp_path / "old.pt")
        return done

    monkeypatch.setattr(train.loop, "save_checkpoint", save_and_keep_old_format)
    ref = tmp_path / "ref"
    fit(load_config("syncmnist_demo", _overrides(shards, ref, 8) + sched))
    monkeypatch.undo()
    old = load_checkpoint(tmp_path / "old.pt")
    # the layout of before the split, plus the manifest's class names and the checkpoint
    # format (both written since then)
    assert set(old) - {"class_names", "format"} == {
        "model", "optimizer", "plateau", "scaler", "state", "rng", "config", "num_classes"}
    assert set(old["plateau"]) == {"best", "bad_epochs", "reductions"}
    assert (old["state"]["step"], old["state"]["epoch"], old["state"]["epoch_step"]) == (6, 1, 2)
    run = tmp_path / "run"
    fit(load_config("syncmnist_demo", _overrides(shards, run, 8) + sched),
        resume=str(tmp_path / "old.pt"))

    def lrs(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["train/lr"] for r in rows if "train/lr" in r]

    assert lrs(run) == lrs(ref)[6:]
    a, b = _params(ref / "last.pt"), _params(run / "last.pt")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


@pytest.mark.slow
def test_torchrun_two_processes_gloo(shards, tmp_path):
    out = tmp_path / "ddp"
    sets = []
    for o in _overrides(shards, out, 3):
        sets += ["--set", o]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "train", "fit", "--config", "syncmnist_demo", *sets,
           "--set", "ckpt_every=100"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "val_metrics.json").read_text())
    assert metrics["samples"] == 18  # split across 2 ranks, each sample counted once
    sums = json.loads((out / "replicas.json").read_text())["checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # parameters identical on both ranks
    assert "rank 0/2 initialised (gloo" in res.stdout + res.stderr
