"""Decoded training clips in memory, CPU bf16 autocast, and what the study script relies on."""

import json
from pathlib import Path

import pytest
import torch

from dyreg_pyg.data import InMemoryClips, SkipCounter, make_clip_loader, write_syncmnist_shards
from dyreg_pyg.data.memory import CACHE_FORMAT
from train.checkpoint import load_checkpoint
from train.config import load_config
from train.data import load_train_in_memory, train_fingerprint
from train.loop import fit
from train.step import autocast

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("msm_mem")
    write_syncmnist_shards(d, "train", 30, seed=3, size=32, shard_size=8)
    write_syncmnist_shards(d, "val", 10, seed=4, size=32, shard_size=5)
    return d


def _clips(n: int) -> InMemoryClips:
    videos = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1, 1).expand(n, 2, 1, 3, 3)
    return InMemoryClips(videos.contiguous(), torch.arange(n), [f"k{i:03d}" for i in range(n)],
                         SkipCounter())


def test_loader_is_a_seeded_permutation_split_over_ranks():
    clips = _clips(23)
    one = [b["label"].tolist() for b in clips.loader(4, seed=5)]
    assert len(one) == 5 and all(len(b) == 4 for b in one)  # 23 // 4 full batches
    assert one == [b["label"].tolist() for b in clips.loader(4, seed=5)]  # deterministic
    assert one != [b["label"].tolist() for b in clips.loader(4, seed=6)]  # reseeded per epoch
    flat = sum(one, [])
    assert len(set(flat)) == 20
    # the video rows travel with their labels and keys
    batch = next(iter(clips.loader(4, seed=5)))
    assert batch["video"][:, 0, 0, 0, 0].tolist() == batch["label"].tolist()
    assert batch["key"] == [f"k{i:03d}" for i in batch["label"].tolist()]
    # two ranks: disjoint, each 23 // 8 = 2 batches, together the first 4 batches of rank-less
    r0 = sum((b["label"].tolist() for b in clips.loader(4, 5, rank=0, world_size=2)), [])
    r1 = sum((b["label"].tolist() for b in clips.loader(4, 5, rank=1, world_size=2)), [])
    assert not set(r0) & set(r1) and len(r0) == len(r1) == 8
    assert sorted(r0 + r1) == sorted(flat[:16])


def test_bad_input_is_rejected_with_the_expected_shape():
    with pytest.raises(ValueError, match=r"uint8 \[N, T, C, H, W\]"):
        InMemoryClips(torch.zeros(3, 2, 1, 3, 3), torch.arange(3), ["a", "b", "c"],
                      SkipCounter())
    with pytest.raises(ValueError, match="expected 3 of each"):
        InMemoryClips(torch.zeros(3, 2, 1, 3, 3, dtype=torch.uint8), torch.arange(2),
                      ["a", "b", "c"], SkipCounter())
    with pytest.raises(ValueError, match="no full batch"):
        _clips(3).loader(4, seed=0)


def test_decoded_clips_equal_the_streamed_ones_and_ignore_worker_count(shards):
    pattern = f"{shards}/train-{{000000..000003}}.tar"
    cfg = load_config("syncmnist_demo", [f"data.train={pattern}", "data.num_frames=10",
                                         "data.num_workers=0", "data.in_memory=true"])
    mem = load_train_in_memory(cfg)
    assert len(mem) == 30 and mem.keys == sorted(mem.keys) and mem.skips.count == 0
    cfg.data.num_workers = 2
    assert torch.equal(load_train_in_memory(cfg).videos, mem.videos)
    streamed = {}
    for b in make_clip_loader(pattern, "val", num_frames=10, batch_size=7):
        for k, v, y in zip(b["key"], b["video"], b["label"]):
            streamed[k] = (v, int(y))
    for i, k in enumerate(mem.keys):
        assert torch.equal(mem.videos[i], streamed[k][0]) and int(mem.labels[i]) == streamed[k][1]


def test_cache_is_reused_only_for_the_same_shards_and_garbage_is_rebuilt(shards, tmp_path,
                                                                         caplog):
    import os
    import shutil

    d = tmp_path / "data"
    shutil.copytree(shards, d)
    pattern = f"{d}/train-{{000000..000003}}.tar"
    cfg = load_config("syncmnist_demo", [f"data.train={pattern}", "data.num_frames=10",
                                         "data.num_workers=0", "data.in_memory=true"])
    cache = tmp_path / "clips.pt"
    fresh = load_train_in_memory(cfg)
    first = load_train_in_memory(cfg, cache)  # decoded, then written
    assert cache.is_file() and torch.equal(first.videos, fresh.videos)
    again = load_train_in_memory(cfg, cache)  # read back, memory-mapped
    assert torch.equal(again.videos, fresh.videos) and torch.equal(again.labels, fresh.labels)
    assert again.keys == fresh.keys and again.skips.count == 0
    assert fresh.boxes is not None and torch.equal(again.boxes, fresh.boxes)
    # read from the file: a changed cache file shows through (so it was not decoded again)
    marked = InMemoryClips(fresh.videos.clone(), fresh.labels, fresh.keys, SkipCounter())
    marked.videos[0] = 7
    marked.save(cache, train_fingerprint(cfg))
    assert int(load_train_in_memory(cfg, cache).videos[0].float().mean()) == 7
    # a shard rewritten (new time) no longer matches: decoded again, with a warning
    shard = d / "train-000000.tar"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    with caplog.at_level("WARNING", logger="train"):
        rebuilt = load_train_in_memory(cfg, cache)
    assert "other data" in caplog.text and torch.equal(rebuilt.videos, fresh.videos)
    assert "shards[0] is" in caplog.text and "train-000000.tar" in caplog.text  # names it
    assert torch.equal(load_train_in_memory(cfg, cache).videos, fresh.videos)
    # a cut or garbage cache file: decoded again and rewritten, never a crash
    cache.write_bytes(cache.read_bytes()[:1000])
    caplog.clear()
    with caplog.at_level("WARNING", logger="train"):
        assert torch.equal(load_train_in_memory(cfg, cache).videos, fresh.videos)
    assert "not a readable" in caplog.text
    assert torch.equal(InMemoryClips.load(cache).videos, fresh.videos)
    with pytest.raises(ValueError, match="other data"):
        InMemoryClips.load(cache, fingerprint="something else")
    # a readable file that is not a whole cache: decoded again, not a crash
    torch.save({"format": CACHE_FORMAT, "fingerprint": train_fingerprint(cfg)}, cache)
    caplog.clear()
    with caplog.at_level("WARNING", logger="train"):
        assert torch.equal(load_train_in_memory(cfg, cache).videos, fresh.videos)
    assert "incomplete" in caplog.text
    # skip counts, reasons and examples survive the round trip
    skips = SkipCounter()
    skips.add("k1", "decode_error", "bad npy")
    skips.add("shard-3", "shard_error", "truncated", n=7)
    InMemoryClips(fresh.videos, fresh.labels, fresh.keys, skips).save(cache, "x")
    assert InMemoryClips.load(cache, "x").skips.as_dict() == skips.as_dict()


def test_temporaries_of_a_killed_cache_writer_are_removed_but_a_live_one_is_kept(
        shards, tmp_path, caplog):
    import os
    import time

    pattern = f"{shards}/train-{{000000..000003}}.tar"
    cfg = load_config("syncmnist_demo", [f"data.train={pattern}", "data.num_frames=10",
                                         "data.num_workers=0", "data.in_memory=true"])
    cache = tmp_path / "clips.pt"
    dead = tmp_path / ".clips.pt.abc123.tmp"  # as write_atomic names them
    dead.write_bytes(b"x" * 1000)
    hour_ago = time.time() - 3600
    os.utime(dead, (hour_ago, hour_ago))
    live = tmp_path / ".clips.pt.def456.tmp"
    live.write_bytes(b"being written")
    other = tmp_path / ".other.pt.abc123.tmp"
    other.write_bytes(b"not ours")
    os.utime(other, (hour_ago, hour_ago))
    with caplog.at_level("WARNING", logger="train"):
        load_train_in_memory(cfg, cache)
    assert cache.is_file() and not dead.exists() and live.exists() and other.exists()
    assert caplog.text.count("stopped mid-write") == 1 and ".clips.pt.abc123.tmp" in caplog.text


def test_a_cache_that_cannot_be_written_does_not_stop_the_run(shards, tmp_path, caplog,
                                                              monkeypatch):
    import errno

    pattern = f"{shards}/train-{{000000..000003}}.tar"
    cfg = load_config("syncmnist_demo", [f"data.train={pattern}", "data.num_frames=10",
                                         "data.num_workers=0", "data.in_memory=true"])

    def disk_full(self, path, fingerprint):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(InMemoryClips, "save", disk_full)
    with caplog.at_level("WARNING", logger="train"):
        clips = load_train_in_memory(cfg, tmp_path / "clips.pt")
    assert len(clips) == 30 and "could not write the cache" in caplog.text
    assert "No space left" in caplog.text and not (tmp_path / "clips.pt").exists()


def _cache_cfg(shards):
    pattern = f"{shards}/train-{{000000..000003}}.tar"
    return load_config("syncmnist_demo", [f"data.train={pattern}", "data.num_frames=10",
                                          "data.num_workers=0", "data.in_memory=true"])


def _videos_offset(cache) -> tuple[int, int]:
    """(file offset, size) of the largest stored member of the cache's zip: the frames."""
    import struct
    import zipfile

    with zipfile.ZipFile(cache) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    with open(cache, "rb") as fh:
        fh.seek(info.header_offset)
        head = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_cache_mismatch_names_the_first_differing_manifest_entry(shards, tmp_path, caplog):
    import shutil

    d = tmp_path / "data"
    shutil.copytree(shards, d)
    cfg = _cache_cfg(d)
    cache = tmp_path / "clips.pt"
    load_train_in_memory(cfg, cache)
    manifest = json.loads((d / "train-manifest.json").read_text())
    old = manifest["class_names"][5]
    manifest["class_names"][5] = "renamed"
    (d / "train-manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="train"):
        load_train_in_memory(cfg, cache)
    line = next(r.getMessage() for r in caplog.records if "other data" in r.getMessage())
    assert f"manifest.class_names[5] is {old!r} in the cache, 'renamed' now" in line
    assert len(line) < 200 + len(str(cache))  # one entry, not two whole manifests


def test_cache_with_flipped_bytes_is_decoded_again_with_a_warning(shards, tmp_path, caplog):
    cfg = _cache_cfg(shards)
    cache = tmp_path / "clips.pt"
    fresh = load_train_in_memory(cfg, cache)
    start, size = _videos_offset(cache)
    assert size == fresh.videos.numel()
    data = bytearray(cache.read_bytes())
    data[start + size // 2] ^= 0xFF  # one frame byte, mid-file: torch's mmap load misses it
    cache.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="train"):
        again = load_train_in_memory(cfg, cache)
    assert "does not match its checksum" in caplog.text and str(cache) in caplog.text
    assert torch.equal(again.videos, fresh.videos)
    caplog.clear()  # and the cache was rewritten whole
    with caplog.at_level("WARNING", logger="train"):
        assert torch.equal(load_train_in_memory(cfg, cache).videos, fresh.videos)
    assert caplog.text == ""


def test_cache_with_a_label_out_of_range_is_decoded_again(shards, tmp_path, caplog):
    cfg = _cache_cfg(shards)
    cache = tmp_path / "clips.pt"
    fresh = load_train_in_memory(cfg, cache)
    labels = fresh.labels.clone()
    labels[3] = 999999  # written with a matching checksum: only the range check catches it
    InMemoryClips(fresh.videos, labels, fresh.keys, SkipCounter(), fresh.boxes).save(
        cache, train_fingerprint(cfg))
    with caplog.at_level("WARNING", logger="train"):
        again = load_train_in_memory(cfg, cache)
    assert "labels out of range [0, 56)" in caplog.text and "999999" in caplog.text
    assert fresh.keys[3] in caplog.text
    assert torch.equal(again.labels, fresh.labels) and int(again.labels.max()) < 56
    with pytest.raises(ValueError, match="out of range >= 0"):
        bad = fresh.labels.clone()
        bad[0] = -1
        InMemoryClips(fresh.videos, bad, fresh.keys, SkipCounter()).save(cache, "x")
        InMemoryClips.load(cache, "x")


def test_cache_writer_goes_on_when_torch_save_reports_a_full_disk(shards, tmp_path, caplog,
                                                                  monkeypatch):
    cfg = _cache_cfg(shards)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 2048 "
                           "vs 1024: No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with caplog.at_level("WARNING", logger="train"):
        clips = load_train_in_memory(cfg, tmp_path / "clips.pt")
    assert len(clips) == 30 and "could not write the cache" in caplog.text
    assert "No space left on device" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no cache, no temporary left behind


def test_in_memory_needs_data_without_augmentation():
    with pytest.raises(ValueError, match="data.in_memory"):
        load_config("ssv2_tsm_r50_dyreg", ["data.in_memory=true"])


def _overrides(shards, out, steps):
    return [
        f"data.train={shards}/train-{{000000..000003}}.tar",
        f"data.val={shards}/val-{{000000..000001}}.tar", f"out_dir={out}",
        "data.num_frames=10", "data.batch_size=4", "data.num_workers=0", "data.in_memory=true",
        "epochs=5", f"max_steps={steps}", "ckpt_every=3", "max_minutes=null",
        "model.preset=syncmnist_r18_dyreg", "model.overrides.input_size=32",
        "optim.name=adam", "optim.lr=0.001", "optim.schedule=none", "threads=1",
        "precision=bf16", "channels_last=true",
    ]


def test_in_memory_fit_shares_decoded_clips_and_resumes_exactly(shards, tmp_path):
    # 30 clips / batch 4 = 7 steps per epoch: 9 steps cross an epoch boundary
    a = load_config("syncmnist_demo", _overrides(shards, tmp_path / "a", 9))
    fit(a)
    b = load_config("syncmnist_demo", _overrides(shards, tmp_path / "b", 9))
    fit(b, train_clips=load_train_in_memory(b))  # decoded by the caller: same run
    # stopped (and validated) after 6 steps, resumed to 9
    c = load_config("syncmnist_demo", _overrides(shards, tmp_path / "c", 6))
    fit(c)
    c = load_config("syncmnist_demo", _overrides(shards, tmp_path / "c", 9))
    fit(c, resume="auto")
    ref = load_checkpoint(tmp_path / "a" / "last.pt")
    assert ref["state"]["step"] == 9 and ref["state"]["epoch"] == 1
    for run in ("b", "c"):
        other = load_checkpoint(tmp_path / run / "last.pt")
        for k in ("step", "epoch", "epoch_step"):
            assert other["state"][k] == ref["state"][k]
        for k, v in ref["model"].items():
            assert torch.allclose(v.float(), other["model"][k].float(), atol=1e-6), (run, k)
    # resuming a finished run trains no further step
    fit(c, resume="auto")
    assert load_checkpoint(tmp_path / "c" / "last.pt")["state"]["step"] == 9
    metrics = json.loads((tmp_path / "a" / "val_metrics.json").read_text())
    assert metrics["samples"] == 10


def test_bf16_autocast_on_cpu_only_when_asked():
    cpu = torch.device("cpu")
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5)
    with autocast(load_config(None, ["precision=bf16"]), cpu):
        assert conv(x).dtype == torch.bfloat16
    for precision in ("fp32", "fp16"):  # fp16 autocast is CUDA-only
        with autocast(load_config(None, [f"precision={precision}"]), cpu):
            assert conv(x).dtype == torch.float32


def test_resume_with_gradient_accumulation_skips_every_consumed_batch(shards, tmp_path):
    # accumulate 2 x batch 4: 30 clips -> 3 optimiser steps per epoch, 2 batches each
    extra = ["optim.accumulate=2", "precision=fp32", "channels_last=false"]
    a = load_config("syncmnist_demo", _overrides(shards, tmp_path / "a", 5) + extra)
    fit(a)
    c = load_config("syncmnist_demo", _overrides(shards, tmp_path / "c", 2) + extra)
    fit(c)
    c = load_config("syncmnist_demo", _overrides(shards, tmp_path / "c", 5) + extra)
    fit(c, resume="auto")
    ref, other = (load_checkpoint(tmp_path / r / "last.pt") for r in ("a", "c"))
    assert ref["state"]["step"] == other["state"]["step"] == 5
    for k, v in ref["model"].items():
        assert torch.allclose(v.float(), other["model"][k].float(), atol=1e-6), k


def _boxes_per_frame(batch):
    """The reference: batch_object_boxes as first written, one frame at a time (kept in the
    benchmark that measures the two against each other)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_memory_decode", ROOT / "benchmarks" / "bench_memory_decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.boxes_per_frame(batch)


def test_object_boxes_equal_the_per_frame_reference_on_ragged_metadata():
    from train.data import batch_object_boxes

    g = torch.Generator().manual_seed(0)

    def rnd(n):
        return torch.randint(0, 100, (n,), generator=g).tolist()

    metas = []
    for b in range(12):
        stored = 8
        counts = rnd(stored)
        # 0-3 objects per frame (some frames empty), x1 > x0 and y1 > y0
        per_frame = [[[*rnd(2), *[v + 5 for v in rnd(2)]] for _ in range(c % 4)]
                     for c in counts]
        meta = {"boxes": per_frame} if b % 5 else {}  # some samples without boxes
        if b % 3 == 0:
            meta["frame_size"] = [96, 80]
        if b % 2 == 0:
            meta["frame_indices"] = sorted(torch.randperm(stored, generator=g)[:6].tolist())
        metas.append(meta)
    batch = {"video": torch.zeros(len(metas), 6, 1, 64, 72), "meta": metas}
    boxes, mask = batch_object_boxes(batch)
    ref_boxes, ref_mask = _boxes_per_frame(batch)
    assert boxes.shape == ref_boxes.shape and mask.any() and not mask.all()
    assert torch.equal(mask, ref_mask) and torch.equal(boxes, ref_boxes)  # bit for bit
    # a frame's boxes given flat or as an array read the same as the nested lists
    import numpy as np

    nested = {"boxes": [[[8, 16, 24, 48], [0, 0, 32, 32]], [[10, 16, 26, 48]]]}
    flat = {"boxes": [[8, 16, 24, 48, 0, 0, 32, 32], [10, 16, 26, 48]]}
    arrays = {"boxes": [np.array(f) for f in nested["boxes"]]}
    video = torch.zeros(1, 2, 1, 64, 64)
    want = batch_object_boxes({"video": video, "meta": [nested]})
    for other in (flat, arrays):
        got = batch_object_boxes({"video": video, "meta": [other]})
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert want[0].shape == (1, 2, 2, 4) and want[1].sum() == 3


def test_boxes_follow_their_clips_through_sorting_and_batching():
    from train.data import batch_object_boxes, batch_object_centres

    meta = {"boxes": [[[8, 16, 24, 48], [0, 0, 32, 32]], [[10, 16, 26, 48], [2, 4, 34, 36]]],
            "frame_size": [64, 64]}
    batch = {"video": torch.zeros(1, 2, 1, 64, 64), "meta": [meta]}
    boxes, mask = batch_object_boxes(batch)
    want = torch.tensor([[[0.25, 0.5, 0.125, 0.25], [0.25, 0.25, 0.25, 0.25]],
                         [[18 / 64, 0.5, 0.125, 0.25], [18 / 64, 20 / 64, 0.25, 0.25]]])
    assert torch.allclose(boxes[0], want) and bool(mask.all())
    # the region's support is the box itself (w, h are half-widths, as in Eq. 6)
    from dyreg_pyg.geometry import regions_to_boxes
    assert torch.allclose(regions_to_boxes(boxes[0, 0]) * 64,
                          torch.tensor([[8.0, 16, 24, 48], [0, 0, 32, 32]]))
    centres, cmask = batch_object_centres(batch)
    assert torch.equal(centres, boxes[..., :2]) and torch.equal(cmask, mask)
    assert batch_object_boxes({"video": batch["video"], "meta": [{}]}) == (None, None)

    # from_batches sorts by key: the boxes move with their clips, and the loader yields them
    videos = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1, 1).expand(4, 2, 1, 2, 2)
    tagged = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 3, 4)  # box value = clip id
    keys = ["d", "b", "c", "a"]
    batches = [{"video": videos[i:i + 2], "label": torch.arange(i, i + 2), "key": keys[i:i + 2],
                "boxes": tagged[i:i + 2]} for i in (0, 2)]
    clips = InMemoryClips.from_batches(batches)
    assert clips.keys == ["a", "b", "c", "d"] and clips.boxes.shape == (4, 2, 3, 4)
    for batch in clips.loader(batch_size=2, seed=0):
        ids = batch["video"][:, 0, 0, 0, 0].float()
        assert torch.equal(batch["boxes"][:, 0, 0, 0], ids)
    no_boxes = [dict(b, boxes=None) for b in batches]
    assert InMemoryClips.from_batches(no_boxes).boxes is None
    with pytest.raises(ValueError, match="boxes"):
        InMemoryClips(videos.contiguous(), torch.arange(4), keys, SkipCounter(), tagged[:3])
