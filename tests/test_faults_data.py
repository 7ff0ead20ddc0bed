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
    loader = make_clip_loader(str(empty), "train", num_frames=4, batch_size=2, epoch_size=4,
                              num_workers=num_workers)
    with bounded(), pytest.raises(EmptyDataError) as err:
        next(iter(loader))
    msg = str(err.value)
    assert str(empty) in msg and f"{MAX_EMPTY_PASSES} passes" in msg
    assert "hold no sample" in msg


def test_training_on_garbage_shards_raises_naming_them(tmp_path):
    bad = [tmp_path / "junk-000000.tar", tmp_path / "junk-000001.tar"]
    bad[0].write_bytes(b"this is not a tar file" * 100)
    bad[1].write_bytes(b"")
    loader = make_clip_loader([str(p) for p in bad], "train", num_frames=4, batch_size=2,
                              epoch_size=4)
    with bounded(), pytest.raises(EmptyDataError) as err:
        next(iter(loader))
    msg = str(err.value)
    assert all(str(p) in msg for p in bad) and "shard" in msg and "ReadError" in msg


def test_training_on_unlabelled_samples_raises_and_says_so(tmp_path):
    url = _write(tmp_path, "test", 6, cls=False)
    loader = make_clip_loader(url, "train", num_frames=4, batch_size=2, epoch_size=4,
                              shuffle_buffer=4)
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
    loader = make_clip_loader([*empties, good], "train", num_frames=4, batch_size=2,
                              epoch_size=40, shuffle_buffer=1)
    with bounded():
        assert len(_keys(loader)) == 40  # 20 batches: the empty shards only cost reads


@pytest.mark.parametrize("exc", [TimeoutError, KeyboardInterrupt])
def test_stop_signals_are_not_swallowed_as_shard_errors(tmp_path, monkeypatch, exc):
    url = _write(tmp_path, "train", 4)

    def stop(_url):
        raise exc("stop reading")

    monkeypatch.setattr(loader_mod, "_open_shard", stop)
    loader = make_clip_loader(url, "train", num_frames=4, batch_size=2, epoch_size=4)
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
    loader = make_clip_loader(url, "val", num_frames=4, batch_size=8)
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
    loader = make_clip_loader(url, "val", num_frames=4, batch_size=4)
    assert len(_keys(loader)) == 10
    assert dict(loader.skips.reasons) == {"shard_short": 2}
    assert loader.skips.examples[0][0] == f"<shard {url}>"


def test_intact_shard_reports_nothing(tmp_path):
    url = _write(tmp_path, "val", 10)
    loader = make_clip_loader(url, "val", num_frames=4, batch_size=4, num_workers=1)
    assert len(_keys(loader)) == 10 and loader.skips.count == 0


def test_garbage_shard_in_evaluation_is_counted_with_its_name(tmp_path):
    good = _write(tmp_path, "val", 6)
    junk = tmp_path / "val-000001.tar"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    loader = make_clip_loader([good, str(junk)], "val", num_frames=4, batch_size=4)
    assert len(_keys(loader)) == 6
    assert dict(loader.skips.reasons) == {"shard_error": 1}
    assert loader.skips.examples[0][0] == f"<shard {junk}>"
