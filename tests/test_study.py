"""The ablation-study script (study/reproduce_syncmnist.py) on a tiny budget."""

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "study" / "reproduce_syncmnist.py"


@dataclass
class _Ran:
    """What a script run left, as the fields of ``subprocess.CompletedProcess`` the tests read."""

    returncode: int
    stdout: str
    stderr: str


_SCRIPTS: dict[Path, ModuleType] = {}  # each script loaded once: its imports are this process's


def _run_script(path: Path, *argv: str) -> _Ran:
    """``python <path> <argv...>`` (from the repository root) in this process: the script's
    ``main()`` reads ``sys.argv`` as under ``if __name__ == "__main__"``, without the
    ~10 s of CPU a fresh interpreter spends importing torch, torch_geometric, timm (and more
    in fit: tensorboard, ...).

    As in a fresh process, the root logger starts with no handler at WARNING, so the script's
    ``logging.basicConfig(level=INFO)`` sends its log to ``stderr``; ``print`` and argparse
    go to ``stdout`` / ``stderr``. A return is exit status 0, ``SystemExit`` its code (a
    message: printed to ``stderr``, status 1, as the interpreter does), another exception 1
    with its traceback in ``stderr``. Everything of the process the scripts and
    ``train.loop.fit`` change is put back afterwards (:func:`_process_state_kept`)."""
    module = _SCRIPTS.get(path)
    if module is None:
        module = _SCRIPTS[path] = _load(path)
    out, err = io.StringIO(), io.StringIO()
    with _process_state_kept(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.chdir(ROOT)  # put back by _process_state_kept (contextlib.chdir needs Python 3.11)
        sys.argv = [str(path), *argv]
        root = logging.getLogger()
        root.handlers = []
        root.setLevel(logging.WARNING)
        try:
            module.main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            if not isinstance(stop.code, int | None):
                print(stop.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            code = 1
    return _Ran(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Put back what a script run changes in this process: torch's CPU threads (the scripts and
    ``fit`` call ``torch.set_num_threads``), the RNGs (``fit`` and the probes seed torch's;
    a resumed ``fit`` restores torch's and Python's from the checkpoint), the logging set-up
    (``basicConfig`` installs a handler and sets the root level), ``sys.argv``, ``sys.path``,
    ``os.environ``, the working directory, the warning filters, the signal handlers and
    torch's global flags."""
    threads = torch.get_num_threads()
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    grad, dtype, matmul = (torch.is_grad_enabled(), torch.get_default_dtype(),
                           torch.get_float32_matmul_precision())
    determinism = (torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled())
    anomaly = torch.is_anomaly_enabled()
    backends = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                torch.backends.mkldnn.enabled)
    loggers = [logging.getLogger(), *(g for g in logging.Logger.manager.loggerDict.values()
                                      if isinstance(g, logging.Logger))]
    logs = [(g, g.level, list(g.handlers), g.disabled, g.propagate) for g in loggers]
    logging_off = logging.root.manager.disable
    argv, argv_items, path, path_items = sys.argv, list(sys.argv), sys.path, list(sys.path)
    environ, cwd = dict(os.environ), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in signal.valid_signals()}
    try:
        with warnings.catch_warnings():
            yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        torch.set_grad_enabled(grad)
        torch.set_default_dtype(dtype)
        torch.set_float32_matmul_precision(matmul)
        torch.use_deterministic_algorithms(determinism[0], warn_only=determinism[1])
        torch.autograd.set_detect_anomaly(anomaly)
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
         torch.backends.mkldnn.enabled) = backends
        for g, level, kept, off, propagate in logs:
            g.setLevel(level)
            g.handlers = kept
            g.disabled, g.propagate = off, propagate
        logging.disable(logging_off)
        sys.argv, sys.path = argv, path
        argv[:], path[:] = argv_items, path_items
        os.chdir(cwd)
        if dict(os.environ) != environ:
            os.environ.clear()
            os.environ.update(environ)
        for s, h in handlers.items():
            if h is not None and signal.getsignal(s) != h:
                signal.signal(s, h)


def _run(out: Path, *args: str) -> _Ran:
    """A tiny study run. fp32 unless ``args`` name a precision: bf16 autocast is emulated on
    CPUs without native bf16 (~17x slower here), and these runs test the study's bookkeeping,
    not the arithmetic (one run below keeps the bf16 default)."""
    precision = () if "--precision" in args else ("--precision", "fp32")
    return _run_script(SCRIPT, "--out", str(out), "--train-videos", "24", "--val-videos", "8",
                       "--budget", "16", "--batch-size", "8", "--threads", "1", "--workers", "0",
                       "--geometry", "demo", *precision, *args)


def test_study_tables_resume_and_investigation_rows(tmp_path):
    out = tmp_path / "study"
    threads = torch.get_num_threads()
    done = _run(out, "--variants", "nograph,fixed", "--seeds", "0,1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.get_num_threads() == threads  # the run's --threads 1 did not stay
    rows = {r["variant"]: r for r in json.loads((out / "table.json").read_text())}
    assert list(rows) == ["nograph", "fixed"]
    assert rows["fixed"]["seeds"] == [0, 1] and rows["fixed"]["acc_std"] is not None
    assert rows["nograph"]["paper_acc"] == 52.29 and rows["fixed"]["distance"] is not None
    result = json.loads((out / "fixed" / "seed0" / "result.json").read_text())
    assert result["budget"] == 16 and result["val_samples"] == 8
    assert result["settings"]["precision"] == "fp32" and result["settings"]["in_memory"]
    assert "Budget: 16 training videos per run" in (out / "table.md").read_text()
    # the validation curve: the one validation, after 2 steps of 8 videos, for both seeds
    assert rows["fixed"]["val_curve"] == {"16": rows["fixed"]["acc_mean"]}
    # the region-object distance along the run: only for a model with regions
    assert rows["fixed"]["distance_curve"] == {"16": pytest.approx(rows["fixed"]["distance"])}
    assert rows["nograph"]["distance_curve"] == {}

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
    # (in the study's default precision, bf16 autocast: the one bf16 run of these tests)
    oracle = _run(out, "--variants", "oracle", "--seeds", "0", "--precision", "bf16")
    assert oracle.returncode == 0, oracle.stderr[-2000:]
    result = json.loads((out / "oracle" / "seed0" / "result.json").read_text())
    assert result["settings"]["precision"] == "bf16"
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
    # node_scale on the study's own clips: the oracle's regions are their digit boxes
    node_tool = _load(ROOT / "study" / "node_scale.py")
    model, clips, boxes = node_tool.shard_clips(out / "oracle" / "seed0" / "last.pt", val, 3)
    assert clips.shape == (3, 10, 1, 64, 64) and boxes.shape == (3, 10, 5, 4)
    (row,) = node_tool.node_scales(model, clips, 10, boxes).values()
    assert row["position_change"] > 0 and row["appearance"] > 0
    # garbage and empty shards: skipped (and counted by the loader), then a loud error
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "val-000000.tar").write_bytes(os.urandom(3000))
    (bad / "val-000001.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="no validation clips"):
        node_tool.shard_clips(out / "oracle" / "seed0" / "last.pt",
                              str(bad / "val-{000000..000001}.tar"), 3)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parallel_study_generates_data_once_and_matches_sequential_runs(tmp_path):
    """study/parallel_study.sh: shards first (--data-only), then one process per run;
    each run equals the same run trained by the sequential script (same data and seeds)."""
    small = ["--train-videos", "24", "--val-videos", "8", "--budget", "16", "--batch-size", "8",
             "--workers", "0", "--geometry", "demo", "--precision", "fp32"]
    only = tmp_path / "only"
    data = _run_script(SCRIPT, "--out", str(only), "--data-only", *small)
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


def _ns(**given):
    import argparse

    study = _load(SCRIPT)
    keys = ("optim", "lr", "schedule", "batch_size", "weight_decay", "momentum", "clip_grad")
    return study, argparse.Namespace(**{**{k: None for k in keys}, **given})


def test_study_protocols_resolve_and_explicit_flags_win():
    study, args = _ns(protocol="paper")
    assert study.resolve_protocol(args) == dict(
        optim="sgd", lr=1e-3, schedule="none", batch_size=10, weight_decay=5e-4,
        momentum=0.9, clip_grad=None)
    assert args.optim == "sgd" and args.batch_size == 10 and args.clip_grad is None
    study, args = _ns(protocol="onecycle")
    assert study.resolve_protocol(args) == dict(
        optim="adam", lr=2e-3, schedule="onecycle", batch_size=32, weight_decay=0.0,
        momentum=0.9, clip_grad=5.0)
    study, args = _ns(protocol="paper", lr=0.01, batch_size=32, schedule="plateau",
                      weight_decay=0.0, clip_grad=20.0)
    got = study.resolve_protocol(args)
    assert (got["lr"], got["batch_size"], got["schedule"], got["weight_decay"],
            got["clip_grad"]) == (0.01, 32, "plateau", 0.0, 20.0)
    assert (got["optim"], got["momentum"]) == ("sgd", 0.9)  # the rest stays the protocol's
    study, args = _ns(protocol="onecycle", optim="sgd", weight_decay=0.0)
    assert study.resolve_protocol(args)["optim"] == "sgd"  # 0.0 is a value, not "unset"


def test_study_geometry_presets_run_names_and_data_refusal(tmp_path):
    study = _load(SCRIPT)
    assert study.preset_name("dyreg", "authors") == "syncmnist_r18_128_dyreg"
    assert study.preset_name("dyreg", "demo") == "syncmnist_r18_dyreg"
    for v in [*study.PAPER, *study.EXTRA]:  # every variant has both presets
        assert study.preset_name(v, "authors") == f"syncmnist_r18_128_{v}"
    with pytest.raises(SystemExit, match="no preset"):
        study.preset_name("nonesuch", "authors")
    assert study.run_name("dyreg", "onecycle") == "dyreg"  # the earlier studies' folders
    assert study.run_name("dyreg", "paper") == "dyreg-paper"
    assert study.run_name("dyreg", "paper", "size42") == "dyreg-paper-size42"

    data = tmp_path / "data"
    data.mkdir()
    (data / "train-manifest.json").write_text(json.dumps({"num_samples": 8}))  # before geometries
    with pytest.raises(SystemExit, match="demo geometry, not authors.*--geometry demo"):
        study.make_data(data, 8, 8, geometry="authors")
    (data / "train-manifest.json").write_text(
        json.dumps({"num_samples": 8, "geometry": "authors"}))
    with pytest.raises(SystemExit, match="authors geometry, not demo"):
        study.make_data(data, 8, 8, geometry="demo")
    with pytest.raises(SystemExit, match="holds 8 train videos, not 16"):
        study.make_data(data, 16, 8, geometry="authors")
    for bad in ("", '{"num_samples": 8', "[8]"):  # empty, truncated, not an object
        (data / "train-manifest.json").write_text(bad)
        with pytest.raises(ValueError, match="train-manifest.json"):
            study.make_data(data, 8, 8, geometry="authors")
    (data / "train-manifest.json").write_text(
        json.dumps({"num_samples": 8, "geometry": "authors"}))
    refused = _run_script(SCRIPT, "--out", str(tmp_path), "--data-only", "--train-videos", "8",
                          "--geometry", "demo")
    assert refused.returncode != 0 and "authors geometry, not demo" in refused.stderr


def test_study_paper_protocol_on_the_authors_geometry_tiny_run(tmp_path):
    out = tmp_path / "study"
    tiny = ["--out", str(out), "--train-videos", "8", "--val-videos", "8", "--budget", "8",
            "--threads", "1", "--workers", "0", "--variants", "nograph", "--seeds", "0"]
    done = _run_script(SCRIPT, *tiny, "--protocol", "paper", "--batch-size", "8")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "data" / "train-manifest.json").read_text())
    assert manifest["geometry"] == "authors" and manifest["config"]["size"] == 128
    run = out / "nograph-paper" / "seed0"
    result = json.loads((run / "result.json").read_text())
    assert (result["protocol"], result["geometry"]) == ("paper", "authors")
    assert result["preset"] == "syncmnist_r18_128_nograph" and result["budget"] == 8
    s = result["settings"]
    assert (s["optim"], s["lr"], s["momentum"], s["schedule"], s["weight_decay"],
            s["clip_grad"], s["batch_size"]) == ("sgd", 1e-3, 0.9, "none", 5e-4, None, 8)
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["optim"]["name"] == "sgd" and cfg["optim"]["clip_grad"] is None
    assert cfg["model"]["preset"] == "syncmnist_r18_128_nograph"
    rows = json.loads((out / "table.json").read_text())
    assert [(r["variant"], r["protocol"], r["geometry"]) for r in rows] == [
        ("nograph-paper", "paper", "authors")]
    assert "| nograph-paper | paper | authors |" in (out / "table.md").read_text()
    # the authors' geometry's data rule (issue 38), named in the result and the table
    assert manifest["config"]["sync_sizes"] == [2, 3, 4, 5] and result["rule"] == "2to5"
    head = (out / "table.md").read_text().splitlines()[0]
    assert "Data rule: 2to5" in head and "appearance-only ceiling: 50.75 %" in head
    assert "Geometry: authors" in head and "of a paper run's 60-72M" in head

    # a run folder resumes only under the settings it was started with
    other = out / "fixed-paper" / "seed0"
    other.mkdir(parents=True)
    (other / "study-settings.json").write_text(json.dumps(
        {**json.loads((run / "study-settings.json").read_text()), "lr": 0.5}))
    refused = _run_script(SCRIPT, *tiny, "--variants", "fixed", "--protocol", "paper",
                          "--batch-size", "8", "--resume")
    assert refused.returncode != 0 and "started with other settings" in refused.stderr


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


def test_sync_probe_kernel_input_is_the_oracles_kernel_map():
    probe = _load(ROOT / "study" / "gnn_sync_probe.py")
    pixel = _load(ROOT / "study" / "pixel_sync_probe.py")
    from dyreg_pyg.data.syncmnist import SyncMNISTConfig

    cfg = SyncMNISTConfig.from_geometry("demo", variant="single", digits=2, p_no_sync=0.5)
    pos, flags, _, _, regions = probe.make_positions(3, seed=0, cfg=cfg, regions=True)
    # the same regions the oracle reads from the frames' boxes (pixel probe, same videos)
    video, boxes, pixel_flags = pixel.make_clips(3, seed=0, cfg=cfg)
    assert torch.equal(regions, boxes) and torch.equal(flags, pixel_flags)
    # each region lies inside its digit's 28-pixel square and moves with it
    left = pos[..., 0] * (cfg.canvas - cfg.digit_size) / cfg.canvas
    assert ((regions[..., 0] > left) & (regions[..., 0] < left + cfg.digit_size / cfg.canvas)).all()
    step = (pos[:, 1:, :, 0] - pos[:, :-1, :, 0]) * (cfg.canvas - cfg.digit_size) / cfg.canvas
    assert torch.allclose(regions[:, 1:, :, 0] - regions[:, :-1, :, 0], step, atol=0.02)
    kernels = probe.regions_to_kernel_inputs(regions, 8)
    assert kernels.shape == (3, 10, 2, 64)
    assert torch.allclose(kernels.sum(-1), torch.ones(3, 10, 2)) and (kernels >= 0).all()
    # a frame's pixels that the oracle pools are the ink under the kernel
    frames = video[:, :, 0].float()
    pooled = (torch.nn.functional.avg_pool2d(frames.flatten(0, 1)[:, None], 8)
              .view(3, 10, 1, 64) * kernels).sum(-1)
    assert (pooled > 0).all()
    torch.manual_seed(0)
    model = probe.GraphProbe(channels=16, iterations=2, num_classes=2, classes_at=None,
                             pos_features=64).eval()
    with torch.no_grad():
        assert model(kernels).shape == (3, 2)


def test_pixel_sync_probe_video_head_reads_all_nodes():
    probe = _load(ROOT / "study" / "pixel_sync_probe.py")
    from dyreg_pyg.data.syncmnist import SyncMNISTConfig

    cfg = SyncMNISTConfig.from_geometry("demo", variant="single", digits=2, p_no_sync=0.5)
    video, boxes, flags = probe.make_clips(2, seed=0, cfg=cfg)
    assert boxes.shape == (2, 10, 2, 4) and flags.shape == (2, 2)
    torch.manual_seed(0)
    model = probe.PixelSyncProbe(num_nodes=2, position_scale=10.0, video_head=True,
                                 position_input="region").eval()
    assert model.gnn.pos_embed.scale == 10.0 and model.gnn.config.position_input == "region"
    x = probe._normalise(video)
    with torch.no_grad():
        out = model(x, boxes)
        assert out.shape == (2, 1)  # one answer per video
        assert torch.allclose(model(x, boxes.flip(2)), out, atol=1e-5)  # blind to node order
    # a position option on the variant without a position embedding is refused, not dropped
    res = _run_script(ROOT / "study" / "pixel_sync_probe.py", "--variants", "pooled",
                      "--pos-scale", "10")
    assert res.returncode != 0 and "--pos-scale/--pos-input" in res.stderr


def test_sync_probe_authors_flavour_runs_and_its_control_has_no_messages(tmp_path):
    probe = _load(ROOT / "study" / "gnn_sync_probe.py")
    from dyreg_pyg.nn.conv import AuthorsRSTGConv

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
    res = _run_script(ROOT / "study" / "gnn_sync_probe.py", "--flavor", "authors",
                      "--train", "16", "--val", "8", "--steps", "3", "--batch-size", "4",
                      "--threads", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    saved = json.loads(out.read_text())
    assert saved["args"]["flavor"] == "authors"
    assert set(saved["results"]) == {"graph", "no_messages"}
    assert "| graph |" in res.stdout and "| no_messages |" in res.stdout


def test_sync_probe_reduced_tasks_and_layer_swap(tmp_path):
    probe = _load(ROOT / "study" / "gnn_sync_probe.py")
    from torch_geometric.nn import GATv2Conv

    from dyreg_pyg.data.syncmnist import SyncMNISTConfig

    cfg = SyncMNISTConfig.from_geometry("demo", variant="single", digits=2, p_no_sync=0.5,
                                        frames=6)
    pos, flags, classes, labels = probe.make_positions(40, seed=0, cfg=cfg)
    assert pos.shape == (40, 6, 2, 2) and flags.shape == (40, 2)
    assert 0 <= float(pos.min()) and float(pos.max()) <= 1
    assert (classes[:, 0] != classes[:, 1]).all()  # SyncMNIST: distinct classes
    no_sync = cfg.num_classes - 1
    assert ((labels == no_sync) == (flags.sum(1) == 0)).all()  # both in sync, or neither
    assert 8 <= int((labels == no_sync).sum()) <= 32  # p_no_sync 0.5 of 40
    model = probe.GraphProbe(channels=16, iterations=2, layer="GATv2Conv", num_classes=46)
    assert isinstance(model.spatial, GATv2Conv)
    assert model(pos, classes).shape == (40, 46)
    # classes at the head only: the graph's input is the positions alone
    torch.manual_seed(0)
    late = probe.GraphProbe(channels=16, iterations=2, num_classes=46, classes_at="head").eval()
    assert late.embed[0].in_features == 2 and late.head.in_features == 16 + 10
    with torch.no_grad():
        assert not torch.allclose(late(pos, classes), late(pos, (classes + 1) % 10))
    with pytest.raises(ValueError, match="classes_at"):
        probe.GraphProbe(num_classes=46, classes_at="frames")
    out = tmp_path / "probe.json"
    script = ROOT / "study" / "gnn_sync_probe.py"
    cmd = ["--task", "label", "--variant", "single", "--digits", "2", "--p-no-sync", "0.5",
           "--layer", "GINConv", "--variants", "graph", "--train", "16", "--val", "8",
           "--steps", "2", "--batch-size", "4", "--threads", "1", "--out", str(out)]
    res = _run_script(script, *cmd)
    assert res.returncode == 0, res.stderr
    saved = json.loads(out.read_text())
    assert saved["config"]["digits"] == 2 and saved["config"]["variant"] == "single"
    assert saved["appearance_only_ceiling"] == pytest.approx(0.5)
    assert "| appearance-only ceiling | 50.00 |" in res.stdout
    any_cmd = [c if c != "label" else "anysync" for c in cmd]
    res = _run_script(script, *any_cmd)
    assert res.returncode == 0, res.stderr
    saved = json.loads(out.read_text())
    assert saved["args"]["task"] == "anysync" and saved["appearance_only_ceiling"] == 0.5
    assert 0 <= saved["results"]["graph"]["top1"] <= 1
    res = _run_script(script, "--task", "sync", "--classes-at", "nodes")  # default data size
    assert res.returncode != 0 and "--classes-at" in res.stderr
    assert "positions of" not in res.stderr  # refused before making any data
    res = _run_script(script, "--flavor", "authors", "--layer", "GINConv")
    assert res.returncode != 0 and "--layer" in res.stderr


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


def test_node_scale_measures_both_parts_of_the_nodes():
    tool = _load(ROOT / "study" / "node_scale.py")
    from dyreg_pyg.models import build_preset

    torch.manual_seed(0)
    clips = tool.syncmnist_clips(2)
    assert clips.shape == (2, 10, 1, 64, 64)
    scales = tool.node_scales(build_preset("syncmnist_r18_dyreg", num_frames=10), clips, 10)
    (row,) = scales.values()
    assert set(row) == {"appearance", "appearance_change", "position", "position_change"}
    assert row["appearance"] > 0 and row["position"] > 0 and row["appearance_change"] > 0
    assert all(math.isfinite(v) and v >= 0 for v in row.values())
    with pytest.raises(ValueError, match="DyRegGNN"):
        tool.node_scales(build_preset("syncmnist_r18_nograph", num_frames=10), clips, 10)


def test_study_reduced_task_sync2_data_tables_and_refusals(tmp_path):
    study = _load(SCRIPT)
    assert study.task_of({}) == "multisync"  # manifests written before tasks existed
    assert study.task_of({"config": {"variant": "single", "digits": 2, "label": "sync"}}) \
        == "sync2"
    assert study.task_of({"config": {"variant": "single", "digits": 3}}) is None
    out = tmp_path / "study"
    done = _run(out, "--task", "sync2", "--variants", "nograph", "--seeds", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "data" / "train-manifest.json").read_text())
    assert manifest["num_classes"] == 2 and manifest["class_names"] == ["sync", "no sync"]
    assert (manifest["config"]["digits"], manifest["config"]["label"]) == (2, "sync")
    result = json.loads((out / "nograph" / "seed0" / "result.json").read_text())
    assert result["task"] == "sync2" and result["settings"]["task"] == "sync2"
    rows = json.loads((out / "table.json").read_text())
    assert rows[0]["task"] == "sync2" and rows[0]["paper_acc"] is None  # no paper number
    head = (out / "table.md").read_text().splitlines()[0]
    assert head.startswith("Task: sync2.")
    assert "Chance: 50.0 %; appearance-only ceiling: 50.00 %" in head
    assert study.levels("multisync", "demo") == pytest.approx((100 / 56, 31.98), abs=5e-3)
    # the appearance-only guess of the study's own data: one bit, classes say nothing
    ceiling = _load(ROOT / "study" / "appearance_ceiling.py")
    val = (out / "data" / "val-manifest.json")
    r = ceiling.compare_with_guess(out / "nograph" / "seed0" / "last.pt",
                                   json.loads(val.read_text())["pattern"])
    assert r["samples"] == 8 and 0 <= r["guess_top1"] <= 1
    assert r["guess_loss"] == pytest.approx(math.log(2), abs=1e-9)  # P(sync | classes) = 1/2
    # a folder holds one task's data
    with pytest.raises(SystemExit, match="task sync2, not multisync.*--task sync2"):
        study.make_data(out / "data", 24, 8, geometry="demo", task="multisync")
    # the tables read the task from the results, so they survive the data's removal
    import shutil

    shutil.rmtree(out / "data")
    assert study.write_tables(out)[0]["task"] == "sync2"
    assert (out / "table.md").read_text().startswith("Task: sync2.")
    # a run folder of one task does not resume under another, whichever is the default
    marker = out / "nograph" / "seed0" / "study-settings.json"
    assert json.loads(marker.read_text())["task"] == "sync2"
    (out / "nograph" / "seed0" / "result.json").unlink()
    refused = _run(out, "--variants", "nograph", "--seeds", "0", "--resume")
    assert refused.returncode != 0 and "'task': ('sync2', 'multisync')" in refused.stderr
    # refused before any data: the authors' distance cap gives the bit away; the oracle's
    # regions must be the 2 digits
    for extra, match in ((["--geometry", "authors"], "caps the distance"),
                         (["--variants", "oracle"], "num_nodes=2")):
        bad = _run(tmp_path / "other", "--task", "sync2", *extra)
        assert bad.returncode != 0 and match in bad.stderr, bad.stderr[-500:]
    assert not (tmp_path / "other").exists()


def test_study_reduced_task_direction2_levels_and_manifest():
    study = _load(SCRIPT)
    conf = {"variant": "single", "digits": 2, "label": "direction"}
    assert study.task_of({"config": conf}) == "direction2"
    assert study.task_of({"config": {**conf, "label": "sync"}}) == "sync2"
    assert study.levels("direction2", "demo") == pytest.approx((50.0, 50.0))
    cfg = study.task_config("direction2", "demo")
    assert (cfg.label, cfg.digits, cfg.num_classes) == ("direction", 2, 2)
    study.check_task("direction2", "authors")  # no in-sync digits: the distance cap is moot
    assert study.task_of({"config": {**conf, "label": "binding"}}) == "binding2"
    assert study.levels("binding2", "demo") == pytest.approx((50.0, 50.0))
    study.check_task("binding2", "authors")
    with pytest.raises(SystemExit, match="caps the distance"):
        study.check_task("sync2", "authors")


def test_study_train_windows_weight_each_log_by_its_steps(tmp_path, caplog):
    study = _load(SCRIPT)
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"step": 10, "train/top1_recent": 0.5}, {"step": 20, "train/top1_recent": 1.0},
            {"step": 20, "val/top1": 0.9},  # a validation record: no training accuracy
            {"step": 25, "train/top1_recent": 0.0}, {"step": 40, "train/top1_recent": 0.2},
            {"step": 45, "train/top1_recent": 1.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    # batch 10, windows of >= 200 videos: steps 0-20, 20-40, and the rest (40-45)
    curve = study._train_windows(run, 10, window=200)
    assert list(curve) == [200, 400, 450]
    assert curve[200] == pytest.approx(75.0)
    assert curve[400] == pytest.approx(100 * (0.0 * 5 + 0.2 * 15) / 20)
    assert curve[450] == pytest.approx(100.0)
    assert study._train_windows(tmp_path / "missing", 10) == {}
    # a resumed run logs step 40 again: its last record counts, once; a killed run's cut
    # last line and a garbage line are skipped and counted, not fatal
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 40, "train/top1_recent": 0.6}) + "\n")
        f.write("[1, 2]\n" + '{"step": 50, "train/top1_re')
    with caplog.at_level("WARNING"):
        curve = study._train_windows(run, 10, window=200)
    assert curve[400] == pytest.approx(100 * (0.0 * 5 + 0.6 * 15) / 20)
    assert list(curve) == [200, 400, 450]
    assert "skipped 2 unreadable line(s) of 9" in caplog.text
    assert study._val_curve(run, 10) == {200: pytest.approx(90.0)}


def test_study_data_rules_levels_and_refusal(tmp_path):
    # issue 38: the authors' geometry defaults to the 2to5 rule, the demo keeps 2or3; a data
    # folder of one rule refuses another; results written before rules hold 2or3
    study = _load(SCRIPT)
    assert study.levels("multisync", "authors") == pytest.approx((100 / 56, 50.75), abs=5e-3)
    assert study.levels("multisync", "authors", "2or3") == pytest.approx((100 / 56, 31.98),
                                                                         abs=5e-3)
    assert study.levels("multisync", "demo", "2to5") == pytest.approx((100 / 56, 50.75),
                                                                      abs=5e-3)
    assert study.levels("binding2", "authors") == pytest.approx((50.0, 50.0))
    data = tmp_path / "data"
    study.make_data(data, 4, 4, workers=1, geometry="demo", rule="2to5")
    from dyreg_pyg.data.syncmnist import SyncMNISTConfig, data_rule_of

    manifest = json.loads((data / "val-manifest.json").read_text())
    assert data_rule_of(SyncMNISTConfig.from_manifest(manifest)) == "2to5"
    study.make_data(data, 4, 4, workers=1, geometry="demo", rule="2to5")  # the same: kept
    with pytest.raises(SystemExit, match="data rule 2to5, not 2or3: .*--rule 2to5"):
        study.make_data(data, 4, 4, workers=1, geometry="demo")
    assert study.rule_of_result({"task": "multisync"}) == "2or3"
    assert study.rule_of_result({}) == "2or3" and study.rule_of_result({"rule": "2to5"}) == "2to5"
    assert study.rule_of_result({"task": "sync2"}) is None
    assert study.budget_fraction(259_200) == "1/231-1/278"
    refused = _run_script(SCRIPT, "--out", str(tmp_path / "x"), "--task", "binding2",
                          "--geometry", "demo", "--rule", "2to5", "--data-only")
    assert refused.returncode != 0 and "--rule: the data rules are multisync's" in refused.stderr


def test_study_constant_lr_run_continues_to_a_larger_budget(tmp_path):
    # issue 38: a finished run under a constant learning rate is continued, from its last
    # checkpoint, when the budget grows (with --resume); without --resume it is skipped
    out = tmp_path / "study"
    base = ("--variants", "nograph", "--seeds", "0", "--schedule", "none", "--lr", "1e-3",
            "--precision", "fp32")
    first = _run(out, *base)
    assert first.returncode == 0, first.stderr[-2000:]
    result = out / "nograph" / "seed0" / "result.json"
    assert json.loads(result.read_text())["budget"] == 16
    skipped = _run(out, *base, "--budget", "24")
    assert skipped.returncode == 0 and "needs --resume" in skipped.stderr
    assert json.loads(result.read_text())["budget"] == 16
    more = _run(out, *base, "--budget", "24", "--resume")
    assert more.returncode == 0, more.stderr[-2000:]
    assert "finished at 16 videos, continued to 24" in more.stderr
    assert json.loads(result.read_text())["budget"] == 24
    ckpt = load_checkpoint(out / "nograph" / "seed0" / "last.pt")
    assert ckpt["state"]["step"] == 3  # 2 steps of 8, then one more


def test_appearance_ceiling_rule_table():
    # issue 38: every candidate data rule's exact ceiling and its distance to the paper's 52.29
    ceiling = _load(ROOT / "study" / "appearance_ceiling.py")
    rows = {r["rule"]: r for r in ceiling.rule_ceilings()}
    assert len(rows) == len(ceiling.RULES) == 13
    named = {r["rule"].split("(")[-1].rstrip(")"): r for r in rows.values() if "(" in r["rule"]}
    assert named["2to5"]["ceiling"] == pytest.approx(50.75, abs=5e-3)
    assert named["2to5"]["minus_paper"] == pytest.approx(50.75 - 52.29, abs=5e-3)
    assert named["2or3"]["ceiling"] == pytest.approx(31.98, abs=5e-3)
    assert named["2to5iid"]["ceiling"] == pytest.approx(55.85, abs=5e-3)
    # the default of the authors' geometry is the candidate nearest the paper's first row
    nearest = min(rows.values(), key=lambda r: abs(r["minus_paper"]))
    assert nearest is named["2to5"]
    assert all(0.0 < r["p_no_sync"] < 0.2 for r in rows.values())


def test_sync_probe_edge_attr_offsets_and_motion_reach_the_layer(tmp_path):
    probe = _load(ROOT / "study" / "gnn_sync_probe.py")
    from torch_geometric.nn import TransformerConv

    from dyreg_pyg.graph import frame_edge_index

    # 3 frames, 3 nodes: 0 and 1 move together by (0.1, 0), node 2 alone by (0, 0.2)
    t = torch.arange(3.0).view(3, 1, 1)
    start = torch.tensor([[0.1, 0.1], [0.5, 0.5], [0.9, 0.1]])
    step = torch.tensor([[0.1, 0.0], [0.1, 0.0], [0.0, 0.2]])
    coords = (start + t * step)[None]  # [1, 3, 3, 2]
    attr = probe.probe_edge_attr(coords, "motion")
    src, dst = frame_edge_index(3, 3)
    assert attr.shape == (27, 6) and len(probe.EDGE_ATTR_COLUMNS["motion"]) == 6
    frame = dst // 3
    j, i = src % 3, dst % 3
    one_to_zero = (j == 1) & (i == 0)
    assert torch.allclose(attr[one_to_zero, :3],
                          torch.tensor([0.4, 0.4, 0.32 ** 0.5]).expand(3, 3))
    assert (attr[i == j] == 0).all()  # self-loops: no offset, no change
    pair = ((j == 0) & (i == 1)) | one_to_zero
    assert (attr[pair, 3:].abs() < 1e-6).all()  # in sync: the offset never changes
    two_to_zero = (j == 2) & (i == 0)
    assert (attr[two_to_zero & (frame == 0), 3:] == 0).all()  # nothing before frame 0
    assert torch.allclose(attr[two_to_zero & (frame > 0), 3:],
                          torch.tensor([-0.1, 0.2, 0.05 ** 0.5]).expand(2, 3))
    assert torch.equal(probe.probe_edge_attr(coords, "offsets"), attr[:, :3])
    # the layer reads them: zeroing the edge attributes on their way in changes the output
    pos, _, classes, _ = probe.make_positions(3, seed=0)
    torch.manual_seed(0)
    model = probe.GraphProbe(channels=16, iterations=2, num_classes=56,
                             layer="TransformerConv", edge_attr="motion").eval()
    assert isinstance(model.spatial, TransformerConv) and model.spatial.lin_edge is not None
    seen = []

    def zero_attr(module, args):
        seen.append(args[2].shape)
        return args[0], args[1], torch.zeros_like(args[2])

    with torch.no_grad():
        out = model(pos, classes)
        handle = model.spatial.register_forward_pre_hook(zero_attr)
        zeroed = model(pos, classes)
        handle.remove()
    assert seen == [(3 * 10 * 25, 6)] * 2  # B*T frames x 25 edges (self-loops), K = 2 calls
    assert not torch.allclose(out, zeroed)
    with pytest.raises(ValueError, match="edge attributes need"):
        probe.GraphProbe(num_classes=56, edge_attr="motion")  # rstg takes no edge_attr
    with pytest.raises(ValueError, match="edge_attr"):
        probe.GraphProbe(num_classes=56, layer="TransformerConv", edge_attr="iou")
    out_json = tmp_path / "probe.json"
    res = _run_script(
        ROOT / "study" / "gnn_sync_probe.py", "--task", "label", "--variant", "single",
        "--digits", "2", "--p-no-sync", "0.5", "--layer", "GINEConv", "--edge-attr", "offsets",
        "--variants", "graph", "--train", "16", "--val", "8", "--steps", "2", "--batch-size",
        "4", "--threads", "1", "--out", str(out_json))
    assert res.returncode == 0, res.stderr
    saved = json.loads(out_json.read_text())
    assert saved["args"]["edge_attr"] == "offsets" and saved["args"]["layer"] == "GINEConv"
    assert 0 <= saved["results"]["graph"]["top1"] <= 1
