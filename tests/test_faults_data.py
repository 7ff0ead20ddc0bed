"""Data and input faults (issue 19): nothing lost without being counted and named, nothing
hung, nothing silently wrong. Every fault is built here (an empty tar, a garbage shard, a
truncated shard, unlabelled samples, a box outside the crop); every test that could hang is
bounded (SIGALRM in-process, a timeout for subprocesses): a hang fails the test."""

from __future__ import annotations

import contextlib
import io
import signal
import tarfile

import numpy as np
import pytest

from dyreg_pyg.data import (
    MAX_EMPTY_PASSES,
    ClipLoaderConfig,
    EmptyDataError,
    ShardWriter,
    make_clip_loader,
)
from dyreg_pyg.data import loader as loader_mod
from dyreg_pyg.data.shards import write_manifest

BOUND_S = 60  # generous: a hang, not slowness, is what these bounds catch


@contextlib.contextmanager
def bounded(seconds: int = BOUND_S):
    """Raise TimeoutError in the main thread after ``seconds`` (a hang becomes a failure)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: hung")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _npy(frames: int = 4, side: int = 8, value: int = 0) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full((frames, side, side), value, np.uint8), allow_pickle=False)
    return buf.getvalue()


def _write(folder, prefix: str, n: int, *, cls: bool = True, manifest: bool = True) -> str:
    """``n`` tiny samples in one shard ``<prefix>-000000.tar`` (+ a manifest with counts)."""
    with ShardWriter(folder, prefix, maxcount=10_000) as w:
        for i in range(n):
            members = {"frames.npy": _npy(value=i)}
            if cls:
                members["cls"] = str(i % 3).encode()
            w.write(f"{prefix}_{i:04d}", members)
        shards = w.close()
    if manifest:
        write_manifest(folder / f"{prefix}-manifest.json",
                       {"num_classes": 3, "num_samples": n, "shards": shards})
    return str(folder / shards[0]["name"])


def _member_offsets(path: str) -> list[int]:
    """Byte offset of each member's header, in order."""
    with tarfile.open(path) as tar:
        return [m.offset for m in tar.getmembers()]


def _keys(loader) -> list[str]:
    return [k for b in loader for k in b["key"]]


# ------------------------------------------------------------------ item 1: no hang
@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_on_an_empty_tar_raises_naming_it(tmp_path, num_workers):
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()  # a valid tar with zero members
    loader = make_clip_loader(str(empty), "train", ClipLoaderConfig(
        num_frames=4, batch_size=2, epoch_size=4, num_workers=num_workers))
    with bounded(), pytest.raises(EmptyDataError) as err:
        next(iter(loader))
    msg = str(err.value)
    assert str(empty) in msg and f"{MAX_EMPTY_PASSES} passes" in msg
    assert "hold no sample" in msg


def test_training_on_garbage_shards_raises_naming_them(tmp_path):
    bad = [tmp_path / "junk-000000.tar", tmp_path / "junk-000001.tar"]
    bad[0].write_bytes(b"this is not a tar file" * 100)
    bad[1].write_bytes(b"")
    loader = make_clip_loader([str(p) for p in bad], "train", ClipLoaderConfig(
        num_frames=4, batch_size=2, epoch_size=4))
    with bounded(), pytest.raises(EmptyDataError) as err:
        next(iter(loader))
    msg = str(err.value)
    assert all(str(p) in msg for p in bad) and "shard" in msg and "ReadError" in msg


def test_training_on_unlabelled_samples_raises_and_says_so(tmp_path):
    url = _write(tmp_path, "test", 6, cls=False)
    loader = make_clip_loader(url, "train", ClipLoaderConfig(
        num_frames=4, batch_size=2, epoch_size=4, shuffle_buffer=4))
    with bounded(), pytest.raises(EmptyDataError) as err:
        next(iter(loader))
    assert "no .cls label" in str(err.value) and url in str(err.value)


def test_training_with_one_usable_shard_among_empty_ones_keeps_going(tmp_path):
    good = _write(tmp_path, "train", 4, manifest=False)
    empties = []
    for i in range(5):
        p = tmp_path / f"empty-{i}.tar"
        tarfile.open(p, "w").close()
        empties.append(str(p))
    loader = make_clip_loader([*empties, good], "train", ClipLoaderConfig(
        num_frames=4, batch_size=2, epoch_size=40, shuffle_buffer=1))
    with bounded():
        assert len(_keys(loader)) == 40  # 20 batches: the empty shards only cost reads


@pytest.mark.parametrize("exc", [TimeoutError, KeyboardInterrupt])
def test_stop_signals_are_not_swallowed_as_shard_errors(tmp_path, monkeypatch, exc):
    url = _write(tmp_path, "train", 4)

    def stop(_url, *_timeout):
        raise exc("stop reading")

    monkeypatch.setattr(loader_mod, "_open_shard", stop)
    loader = make_clip_loader(url, "train", ClipLoaderConfig(
        num_frames=4, batch_size=2, epoch_size=4))
    with bounded(), pytest.raises(exc, match="stop reading"):
        next(iter(loader))


# ------------------------------------------------------------------ item 2: truncation
@pytest.mark.parametrize("cut", ["at_member", "inside_member"])
@pytest.mark.parametrize("manifest", [True, False])
def test_truncated_shard_is_a_named_shard_error_with_the_loss(tmp_path, cut, manifest):
    url = _write(tmp_path, "val", 64, manifest=manifest)
    offsets = _member_offsets(url)  # 2 members per sample: frames.npy, cls
    at = offsets[2 * 32]  # the header of sample 32's first member
    data = open(url, "rb").read()
    open(url, "wb").write(data[:at] if cut == "at_member" else data[:at + 700])
    loader = make_clip_loader(url, "val", ClipLoaderConfig(num_frames=4, batch_size=8))
    with bounded():
        keys = _keys(loader)
    # cut between two samples, the last one read cannot be told complete: it is not used
    read = 31 if cut == "at_member" else 32
    assert keys == [f"val_{i:04d}" for i in range(read)]
    sk = loader.skips
    assert set(sk.reasons) == {"shard_error"}, sk.reasons
    key, reason, detail = sk.examples[0]
    assert key == f"<shard {url}>" and f"read {read} samples" in detail
    assert f"val_{read:04d}" in detail  # the incomplete sample is named
    if manifest:  # the manifest says how many were lost
        assert sk.count == 64 - read and "of the 64 the manifest lists" in detail
    else:
        assert sk.count == 1


def test_shard_with_fewer_samples_than_its_manifest_is_reported(tmp_path):
    url = _write(tmp_path, "val", 10)
    write_manifest(tmp_path / "val-manifest.json",
                   {"num_classes": 3, "shards": [{"name": "val-000000.tar", "count": 12}]})
    loader = make_clip_loader(url, "val", ClipLoaderConfig(num_frames=4, batch_size=4))
    assert len(_keys(loader)) == 10
    assert dict(loader.skips.reasons) == {"shard_short": 2}
    assert loader.skips.examples[0][0] == f"<shard {url}>"


def test_intact_shard_reports_nothing(tmp_path):
    url = _write(tmp_path, "val", 10)
    loader = make_clip_loader(url, "val", ClipLoaderConfig(
        num_frames=4, batch_size=4, num_workers=1))
    assert len(_keys(loader)) == 10 and loader.skips.count == 0


def test_garbage_shard_in_evaluation_is_counted_with_its_name(tmp_path):
    good = _write(tmp_path, "val", 6)
    junk = tmp_path / "val-000001.tar"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    loader = make_clip_loader([good, str(junk)], "val", ClipLoaderConfig(
        num_frames=4, batch_size=4))
    assert len(_keys(loader)) == 6
    assert dict(loader.skips.reasons) == {"shard_error": 1}
    assert loader.skips.examples[0][0] == f"<shard {junk}>"


# ------------------------------------------------------------------ items 3, 4: evaluate
def _write_model_shards(folder, prefix: str, good: int, unlabelled: int = 0) -> str:
    """Samples the tiny test model can run on (4 frames of 32 x 32, 1 channel)."""
    with ShardWriter(folder, prefix, maxcount=10_000) as w:
        for i in range(unlabelled):  # first: a short training run reads them
            w.write(f"{prefix}_nolabel_{i:04d}", {"frames.npy": _npy(4, 32, i)})
        for i in range(good):
            w.write(f"{prefix}_{i:04d}", {"frames.npy": _npy(4, 32, i), "cls": str(i % 3).encode()})
        shards = w.close()
    return str(folder / shards[0]["name"])


def _tiny_cfg(tmp_path, train: str, val: str, *extra: str):
    from train.config import load_config

    return load_config("syncmnist_demo", [
        f"data.train={train}", f"data.val={val}", f"out_dir={tmp_path / 'run'}",
        "data.num_frames=4", "data.batch_size=2", "data.num_workers=0", "data.epoch_size=4",
        "data.num_classes=3", "data.shuffle=1", "epochs=1", "max_steps=2", "threads=1",
        "model.preset=syncmnist_r18_dyreg", "model.overrides.input_size=32",
        "optim.name=adam", "optim.schedule=none", *extra])


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint of the tiny model (untrained weights are enough to evaluate)."""
    import torch

    from train.checkpoint import save_checkpoint
    from train.config import config_to_dict
    from train.loop import build_model

    cfg = _tiny_cfg(tmp_path, "unused.tar", "unused.tar")
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 3}, path)
    return str(path)


@pytest.mark.parametrize("fault", ["unlabelled", "empty", "garbage"])
def test_evaluate_on_no_usable_sample_fails_and_says_why(tmp_path, checkpoint, fault):
    from train.loop import evaluate

    data = tmp_path / "d"
    data.mkdir()
    if fault == "unlabelled":  # e.g. the Something-Something test split
        url, why = _write_model_shards(data, "test", 0, unlabelled=3), "no .cls label"
    elif fault == "empty":
        url, why = str(data / "empty.tar"), "hold no sample"
        tarfile.open(url, "w").close()
    else:
        url, why = str(data / "junk.tar"), "could not be read"
        open(url, "wb").write(b"\x00garbage" * 200)
    out = tmp_path / "metrics.json"
    with bounded(), pytest.raises(EmptyDataError) as err:
        evaluate(checkpoint, url, out=str(out))
    assert "no labelled sample was read" in str(err.value) and why in str(err.value)
    # no labels at all: the message says what to run instead; any other cause: it does not
    hint = "the split has no labels: use `python -m train predict`"
    assert (hint in str(err.value)) == (fault == "unlabelled")
    assert not out.exists()


def test_evaluate_writes_skip_counts_into_metrics_json(tmp_path, checkpoint):
    import json

    from train.loop import evaluate

    data = tmp_path / "d"
    data.mkdir()
    url = _write_model_shards(data, "val", 3, unlabelled=2)
    out = tmp_path / "metrics.json"
    metrics = evaluate(checkpoint, url, out=str(out))
    written = json.loads(out.read_text())
    assert metrics["samples"] == written["samples"] == 3
    assert written["skipped"]["count"] == 2
    assert written["skipped"]["reasons"] == {"missing_cls": 2}


def test_cli_evaluate_on_unlabelled_shards_exits_nonzero_with_one_line(tmp_path, checkpoint,
                                                                      capsys):
    from train.cli import main

    data = tmp_path / "d"
    data.mkdir()
    url = _write_model_shards(data, "test", 0, unlabelled=2)
    with bounded():
        rc = main(["evaluate", "--checkpoint", checkpoint, "--data", url,
                   "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "\n" not in err and "Traceback" not in err
    assert "no labelled sample was read" in err and "no .cls label" in err
    assert "use `python -m train predict`" in err


# ------------------------------------------------------------------ item 3: training
def test_fit_reports_skips_in_summary_and_scalars(tmp_path, caplog):
    import json

    from train.loop import fit

    data = tmp_path / "d"
    data.mkdir()
    train = _write_model_shards(data, "train", 6, unlabelled=2)
    val = _write_model_shards(data, "val", 3, unlabelled=1)
    cfg = _tiny_cfg(tmp_path, train, val)
    with bounded(), caplog.at_level("INFO"):
        metrics = fit(cfg)
    out = tmp_path / "run"
    summary = json.loads((out / "val_metrics.json").read_text())
    assert summary["skipped"]["reasons"] == {"missing_cls": 1} == metrics["skipped"]["reasons"]
    assert summary["train_skipped"]["count"] >= 1
    assert set(summary["train_skipped"]["reasons"]) == {"missing_cls"}
    assert "training samples skipped over this run" in caplog.text
    tags = {row.split(",")[1] for row in (out / "scalars.csv").read_text().splitlines()[1:]}
    assert {"train/skipped", "train/skipped/missing_cls", "val/skipped",
            "val/skipped/missing_cls"} <= tags


# ------------------------------------------------------------------ item 1 end to end
def test_cli_fit_on_an_empty_tar_fails_fast_naming_it(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "train", "fit", "--config", "syncmnist_demo",
           "--set", f"data.train={empty}", "--set", "data.val=", "--set", "max_steps=2",
           "--set", "data.num_classes=3", "--set", "data.epoch_size=4",
           "--set", "data.num_workers=0", "--set", f"out_dir={tmp_path / 'run'}",
           "--set", "model.overrides.input_size=32", "--set", "threads=1"]
    try:
        res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=180,
                             env={**os.environ, "PYTHONPATH": str(root)})
    except subprocess.TimeoutExpired:
        pytest.fail("fit on an empty tar hung")
    assert res.returncode != 0
    err = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert any(str(empty) in line and "no usable training sample" in line for line in err)


# ------------------------------------------------------------------ items 7, 8: config, CLI
@pytest.mark.parametrize("bad, match", [
    (["epochs=0", "max_steps=1"], "epochs: >= 1"),
    (["max_steps=0"], "max_steps"),
    (["max_minutes=0"], "max_minutes"),
    (["eval_every=0"], "eval_every"),
    (["epochs=abc"], r"epochs: expected an integer, got 'abc'"),
    (["optim.lr=fast"], r"optim.lr: expected a number, got 'fast'"),
    (["data.crop_size=big"], r"data.crop_size: expected an integer or null"),
    (["data.in_memory=maybe"], r"data.in_memory: expected true or false"),
    (["data.mean=[0.5, x]"], r"data.mean\[1\]: expected a number"),
    (["data.num_frames=8", "model.overrides.num_frames=16"], "model.overrides.num_frames"),
])
def test_config_rejects_contradictions_and_wrong_types(bad, match):
    from train.config import load_config

    with pytest.raises(ValueError, match=match):
        load_config("syncmnist_demo", bad)


def test_config_converts_values_of_a_compatible_type():
    from train.config import load_config

    cfg = load_config("syncmnist_demo", ["optim.lr=1e-3", "max_minutes=15", "epochs=3.0",
                                         "data.mean=[1]", "data.std=[1]"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.max_minutes, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int) and cfg.data.mean == [1.0]


def test_ssv2_model_frames_follow_data_num_frames():
    from train.config import load_config
    from train.loop import build_model

    cfg = load_config("ssv2_tsm_r50_dyreg", ["data.num_frames=8", "model.pretrained_file=null",
                                             "model.overrides.input_size=64"])
    assert build_model(cfg, 174).num_frames == 8


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(capsys):
    from train.cli import main

    rc = main(["fit", "--config", "syncmnist_demo", "--set", "epochs=abc"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "\n" not in err and "Traceback" not in err
    assert "epochs: expected an integer, got 'abc'" in err and "--debug" in err
    with pytest.raises(ValueError, match="epochs"):
        main(["fit", "--config", "syncmnist_demo", "--set", "epochs=abc", "--debug"])


# ------------------------------------------------------------------ item 6: visualize
def test_visualize_draws_a_box_outside_the_centre_crop(tmp_path):
    import json

    import torch

    from dyreg_pyg.viz import draw_regions, save_regions_gif

    # frames 60 x 40; object 0 lies left of the 32 x 32 centre crop, object 1 straddles it
    boxes = [[[0, 0, 5, 40], [10, 5, 30, 30]] for _ in range(4)]
    with ShardWriter(tmp_path, "val") as w:
        members = {"cls": b"1", "json": json.dumps({"boxes": boxes,
                                                    "frame_size": [60, 40]}).encode()}
        members["frames.npy"] = _npy_rgb(4, 40, 60)
        w.write("something_else", members)
    loader = make_clip_loader(str(tmp_path / "val-000000.tar"), "val", ClipLoaderConfig(
        num_frames=4, batch_size=1, crop_size=32, dataset="something", num_classes=3))
    batch = next(iter(loader))
    meta = batch["meta"][0]
    x0, _, x1, _ = meta["boxes"][0][0]
    assert x1 - x0 == 0  # the loader clipped object 0 to zero width
    regions = torch.tensor([[[0.5, 0.5, 0.25, 0.25], [0.0, 0.0, 0.0, 0.0]]] * 4)
    img = draw_regions(batch["video"][0], regions, None, meta["boxes"],
                       tuple(meta["frame_size"]))
    assert img.size == (4 * 32 * 4, 32 * 4)
    save_regions_gif(tmp_path / "r.gif", batch["video"][0], regions, meta["boxes"],
                     tuple(meta["frame_size"]))


def _npy_rgb(frames: int, h: int, w: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full((frames, h, w, 3), 128, np.uint8), allow_pickle=False)
    return buf.getvalue()


def test_visualize_on_no_usable_sample_fails_and_says_why(tmp_path, checkpoint):
    from train.visualize import visualize

    url = tmp_path / "empty.tar"
    tarfile.open(url, "w").close()
    with bounded(), pytest.raises(EmptyDataError, match="no usable sample.*hold no sample"):
        visualize(checkpoint, str(url), str(tmp_path / "viz"))


def test_in_memory_decoding_of_unlabelled_shards_says_why(tmp_path):
    from train.data import load_train_in_memory

    url = _write_model_shards(tmp_path, "train", 0, unlabelled=2)
    cfg = _tiny_cfg(tmp_path, url, "", "data.in_memory=true", "data.epoch_size=null")
    with bounded(), pytest.raises(ValueError, match="no sample.*no .cls label"):
        load_train_in_memory(cfg)
