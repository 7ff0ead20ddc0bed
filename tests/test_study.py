"""The ablation-study script (study/reproduce_syncmnist.py) on a tiny budget."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "study" / "reproduce_syncmnist.py"


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--train-videos", "24",
           "--val-videos", "8", "--budget", "16", "--batch-size", "8", "--threads", "1",
           "--workers", "0", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_study_tables_resume_and_investigation_rows(tmp_path):
    out = tmp_path / "study"
    done = _run(out, "--variants", "nograph,fixed", "--seeds", "0,1")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads((out / "table.json").read_text())}
    assert list(rows) == ["nograph", "fixed"]
    assert rows["fixed"]["seeds"] == [0, 1] and rows["fixed"]["acc_std"] is not None
    assert rows["nograph"]["paper_acc"] == 52.29 and rows["fixed"]["distance"] is not None
    result = json.loads((out / "fixed" / "seed0" / "result.json").read_text())
    assert result["budget"] == 16 and result["val_samples"] == 8
    assert result["settings"]["precision"] == "bf16" and result["settings"]["in_memory"]
    assert "Budget: 16 training videos per run" in (out / "table.md").read_text()
    # the validation curve: the one validation, after 2 steps of 8 videos, for both seeds
    assert rows["fixed"]["val_curve"] == {"16": rows["fixed"]["acc_mean"]}

    # finished runs are not trained again
    before = (out / "fixed" / "seed0" / "result.json").read_text()
    again = _run(out, "--variants", "fixed", "--seeds", "0")
    assert again.returncode == 0 and "finished earlier, skipped" in again.stderr
    assert (out / "fixed" / "seed0" / "result.json").read_text() == before

    # an unfinished run folder needs --resume
    (out / "dyreg" / "seed0").mkdir(parents=True)
    refused = _run(out, "--variants", "dyreg", "--seeds", "0")
    assert refused.returncode != 0 and "--resume" in refused.stderr

    # an investigation gets its own row, with the override recorded
    inv = _run(out, "--variants", "fixed", "--seeds", "0", "--dyreg", "node_channels=32",
               "--tag", "narrow")
    assert inv.returncode == 0, inv.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads((out / "table.json").read_text())}
    assert rows["fixed-narrow"]["dyreg_overrides"] == {"node_channels": 32}
    assert rows["fixed-narrow"]["params_m"] < rows["fixed"]["params_m"]
    assert _run(out, "--dyreg", "init=grid").returncode != 0  # --dyreg needs --tag

    # a training-config investigation: the region branch at 10x the learning rate
    lr = _run(out, "--variants", "dyreg_lite", "--seeds", "0", "--set",
              "optim.lr_mult.region_generator=10", "--tag", "rlr")
    assert lr.returncode == 0, lr.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads((out / "table.json").read_text())}
    assert rows["dyreg_lite-rlr"]["train_overrides"] == {"optim.lr_mult.region_generator": 10}
    cfg = (out / "dyreg_lite-rlr" / "seed0" / "config.yaml").read_text()
    assert "region_generator: 10" in cfg

    # the oracle diagnostic: the ground-truth digit boxes are the regions, in training (clips
    # in memory) and in validation (streamed), so its region-object distance is 0
    oracle = _run(out, "--variants", "oracle", "--seeds", "0")
    assert oracle.returncode == 0, oracle.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads((out / "table.json").read_text())}
    assert rows["oracle"]["distance"] == 0.0 and rows["oracle"]["paper_acc"] is None
    assert rows["oracle"]["params_m"] < rows["fixed"]["params_m"] + 1e-6

    # the graph ablation of a trained run: switching the graph off = a model whose gamma is 0
    ablation = _load(ROOT / "study" / "graph_ablation.py")
    ck = out / "fixed" / "seed0" / "last.pt"
    val = str(out / "data" / "val-000000.tar")
    on = ablation.ablate(ck, val)
    assert on["samples"] == 8 and on["write_back_ratio"] > 0
    state = load_checkpoint(ck)
    gammas = [k for k in state["model"] if k.endswith(".gamma")]
    assert gammas
    for k in gammas:
        state["model"][k] = torch.zeros_like(state["model"][k])
    torch.save(state, tmp_path / "gamma0.pt")
    closed = ablation.ablate(tmp_path / "gamma0.pt", val)
    assert closed["write_back_ratio"] == 0.0 and closed["drop"] == 0.0
    assert closed["top1_graph_on"] == closed["top1_graph_off"] == on["top1_graph_off"]

    # the study's validation shards as one pattern; the oracle run against the
    # appearance-only guess (its regions come from the clips' boxes)
    from train.data import split_pattern

    assert split_pattern(out / "data", "val") == val
    with pytest.raises(ValueError, match="no test-"):
        split_pattern(out / "data", "test")
    ceiling = _load(ROOT / "study" / "appearance_ceiling.py")
    r = ceiling.compare_with_guess(out / "oracle" / "seed0" / "last.pt", val)
    assert r["samples"] == 8 and 0 <= r["agreement"] <= 1
    parts = [(x, w) for x, w in ((r["top1_guess_right"], r["guess_top1"]),
                                 (r["top1_guess_wrong"], 1 - r["guess_top1"])) if x is not None]
    assert sum(x * w for x, w in parts) == pytest.approx(r["top1"])
    assert r["guess_loss"] > 0 and r["loss"] > 0


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parallel_study_generates_data_once_and_matches_sequential_runs(tmp_path):
    """study/parallel_study.sh: shards first (--data-only), then one process per run;
    each run equals the same run trained by the sequential script (same data and seeds)."""
    small = ["--train-videos", "24", "--val-videos", "8", "--budget", "16", "--batch-size", "8",
             "--workers", "0"]
    only = tmp_path / "only"
    data = subprocess.run([sys.executable, str(SCRIPT), "--out", str(only), "--data-only",
                           *small], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert data.returncode == 0, data.stderr[-2000:]
    assert (only / "data" / "train-manifest.json").exists()
    assert not list(only.glob("*/seed*"))  # no run started

    par = tmp_path / "par"
    env = {**os.environ, "THREADS": "1", "DATA_WORKERS": "1",
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "study" / "parallel_study.sh"), str(par),
                           "nograph,fixed,nograph", "0,0", *small], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads((par / "table.json").read_text())}
    assert list(rows) == ["nograph", "fixed"]
    assert sorted(p.name for p in (par / "logs").iterdir()) == [  # each run once
        "data.log", "fixed-seed0.log", "nograph-seed0.log"]
    seq = _run(tmp_path / "seq", "--variants", "fixed", "--seeds", "0")
    assert seq.returncode == 0, seq.stderr[-2000:]
    a = json.loads((par / "fixed" / "seed0" / "result.json").read_text())
    b = json.loads((tmp_path / "seq" / "fixed" / "seed0" / "result.json").read_text())
    assert (a["top1"], a["val_loss"]) == (b["top1"], b["val_loss"])

    misplaced = subprocess.run(["bash", str(ROOT / "study" / "parallel_study.sh"), str(par),
                                "fixed", "0", "--seeds", "1"], capture_output=True, text=True)
    assert misplaced.returncode == 2 and "--seeds" in misplaced.stderr

    # a failing run makes the launcher fail and names it
    bad = subprocess.run(["bash", str(ROOT / "study" / "parallel_study.sh"), str(par),
                          "fixed", "0", *small, "--dyreg", "no_such_field=1", "--tag", "bad"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert bad.returncode != 0 and "failed: fixed seed 0" in bad.stderr


def test_sync_probe_control_cannot_see_other_nodes_and_the_graph_can():
    probe = _load(ROOT / "study" / "gnn_sync_probe.py")
    pos, flags, classes, labels = probe.make_positions(4, seed=0)
    assert pos.shape == (4, 10, 5, 2) and flags.shape == (4, 5)
    assert classes.shape == (4, 5) and labels.shape == (4,)
    assert 0 <= float(pos.min()) and float(pos.max()) <= 1
    # in-sync digits share every jump; the others do not share all of theirs with them
    for p, f in zip(pos, flags):
        sync = f.bool()
        if sync.sum() >= 2:
            moves = p[1:] - p[:-1]  # [T-1, 5, 2]
            first = moves[:, sync][:, :1]
            assert torch.allclose(moves[:, sync], first.expand_as(moves[:, sync]))
    torch.manual_seed(0)
    moved = pos.clone()
    moved[:, :, 1:] = torch.rand_like(moved[:, :, 1:])  # every node but node 0 moves elsewhere
    for messages in (False, True):
        model = probe.GraphProbe(channels=16, iterations=2, messages=messages).eval()
        with torch.no_grad():
            same = torch.allclose(model(pos)[:, 0], model(moved)[:, 0])
        assert same == (not messages)  # only message passing lets node 0 see the others
    # the label task reads the mean of the nodes: logits [B, 56], blind to the node order
    perm = torch.tensor([3, 0, 4, 1, 2])
    for messages in (False, True):
        model = probe.GraphProbe(channels=16, iterations=2, messages=messages,
                                 num_classes=56).eval()
        with torch.no_grad():
            out = model(pos, classes)
            assert out.shape == (4, 56)
            assert torch.allclose(out, model(pos[:, :, perm], classes[:, perm]), atol=1e-5)
            assert not torch.allclose(out, model(pos, (classes + 1) % 10), atol=1e-5)
        with pytest.raises(ValueError, match="classes"):
            model(pos)


def test_sync_probe_authors_flavour_runs_and_its_control_has_no_messages(tmp_path):
    probe = _load(ROOT / "study" / "gnn_sync_probe.py")
    from dyreg_pyg.nn.authors import AuthorsRSTGConv

    pos, _, classes, _ = probe.make_positions(3, seed=1)
    torch.manual_seed(0)
    moved = pos.clone()
    moved[:, :, 1:] = torch.rand_like(moved[:, :, 1:])  # every node but node 0 moves elsewhere
    sizes = {}
    for messages in (False, True):
        model = probe.GraphProbe(channels=16, iterations=2, messages=messages,
                                 flavor="authors").eval()
        assert any(isinstance(m, AuthorsRSTGConv) for m in model.modules())
        sizes[messages] = sum(p.numel() for p in model.parameters())
        x = pos.clone().requires_grad_(True)
        model(x)[:, 0].sum().backward()  # node 0's logit
        others = x.grad[:, :, 1:].abs().max()
        assert (others == 0) == (not messages)  # the control: no path from the other nodes
        assert x.grad[:, :, 0].abs().max() > 0
        with torch.no_grad():
            same = torch.allclose(model(pos)[:, 0], model(moved)[:, 0])
        assert same == (not messages)
        # label task: logits [B, 56], blind to the node order
        model = probe.GraphProbe(channels=16, iterations=2, messages=messages, num_classes=56,
                                 flavor="authors").eval()
        perm = torch.tensor([3, 0, 4, 1, 2])
        with torch.no_grad():
            out = model(pos, classes)
            assert out.shape == (3, 56)
            assert torch.allclose(out, model(pos[:, :, perm], classes[:, perm]), atol=1e-5)
    assert sizes[False] == sizes[True]  # the control removes the messages, not the layers
    with pytest.raises(ValueError, match="flavor"):
        probe.GraphProbe(flavor="theirs")
    out = tmp_path / "probe.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "study" / "gnn_sync_probe.py"), "--flavor", "authors",
         "--train", "16", "--val", "8", "--steps", "3", "--batch-size", "4", "--threads", "1",
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    saved = json.loads(out.read_text())
    assert saved["args"]["flavor"] == "authors"
    assert set(saved["results"]) == {"graph", "no_messages"}
    assert "| graph |" in res.stdout and "| no_messages |" in res.stdout


def test_pixel_sync_probe_nodes_follow_their_boxes():
    probe = _load(ROOT / "study" / "pixel_sync_probe.py")
    video, boxes, flags = probe.make_clips(2, seed=0)
    assert video.shape == (2, 10, 1, 64, 64) and video.dtype == torch.uint8
    assert boxes.shape == (2, 10, 5, 4) and flags.shape == (2, 5)
    assert ((boxes[..., :2] > 0) & (boxes[..., :2] < 1)).all()
    torch.manual_seed(0)
    model = probe.PixelSyncProbe().eval()
    x = probe._normalise(video)
    perm = torch.tensor([2, 0, 4, 1, 3])
    with torch.no_grad():
        out = model(x, boxes)
        assert out.shape == (2, 5)
        # node k is digit k: re-ordering the boxes re-orders the answers, nothing else
        assert torch.allclose(model(x, boxes[:, :, perm]), out[:, perm], atol=1e-5)
        assert not torch.allclose(model(x, boxes.flip(1)), out, atol=1e-5)
