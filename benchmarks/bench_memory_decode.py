"""The in-memory training split (``data.in_memory``): decoding the shards, with the object boxes
read per frame (the first implementation) or in one pass (now), and reading the decoded clips
back from the cache file that ``study/reproduce_syncmnist.py --cache`` keeps.

    python benchmarks/bench_memory_decode.py [--videos 4000] [--workers 2] [--rounds 2]
        [--json benchmarks/results/bench_memory_decode.json]

MultiSyncMNIST shards of the demo geometry (``--videos`` clips of 10 frames of 64 x 64, 1000
per shard, seed 0) are written to a temporary folder. In interleaved rounds, on the same shards:

1. **boxes only**: ``batch_object_boxes`` (now) and the per-frame reference on every decoded
   batch of 256 clips (the boxes are checked equal bit for bit);
2. **decoding pass**: ``load_train_in_memory`` without a cache, as first written (per-frame
   boxes, and the DataLoader's default ``collate_fn``, ``default_convert``, walking every
   clip's metadata), with the boxes read in one pass, and as it is now (the batches also pass
   through the DataLoader unchanged); ``--workers`` loader processes. The box reading runs in
   the main process, so it is what workers cannot spread;
3. **cache**: ``InMemoryClips.load`` of the file ``load_train_in_memory`` writes (memory-mapped;
   the pages of a file just written are in the page cache, as they are for parallel runs).

Prints the medians and the ratios, and writes them to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data._utils.collate import default_convert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dyreg_pyg.data.loader as loader_mod  # noqa: E402
import train.data as train_data  # noqa: E402
from dyreg_pyg.data import ClipLoaderConfig, InMemoryClips, make_clip_loader, write_syncmnist_shards  # noqa: E402
from train.config import load_config  # noqa: E402


def boxes_per_frame(batch):
    """The first implementation of ``batch_object_boxes``: a tensor and six indexed writes per
    frame (the reference, kept here to measure against)."""
    metas, video = batch.get("meta") or [], batch["video"]
    h, w = video.shape[-2:]
    t = video.shape[-4]
    if not metas or not any(isinstance(m, dict) and m.get("boxes") for m in metas):
        return None, None
    m_max = max(len(f) for m in metas for f in (m.get("boxes") or [[]]))
    boxes = torch.zeros(len(metas), t, max(m_max, 1), 4)
    mask = torch.zeros(len(metas), t, max(m_max, 1), dtype=torch.bool)
    for b, meta in enumerate(metas):
        per_frame = meta.get("boxes") if isinstance(meta, dict) else None
        if not per_frame:
            continue
        size = meta.get("frame_size") or (w, h)
        frames = meta.get("frame_indices") or list(range(min(t, len(per_frame))))
        for j, fi in enumerate(frames[:t]):
            xyxy = torch.tensor(per_frame[fi], dtype=torch.float32).view(-1, 4)
            k = xyxy.shape[0]
            boxes[b, j, :k, 0] = (xyxy[:, 0] + xyxy[:, 2]) / 2 / size[0]
            boxes[b, j, :k, 1] = (xyxy[:, 1] + xyxy[:, 3]) / 2 / size[1]
            boxes[b, j, :k, 2] = (xyxy[:, 2] - xyxy[:, 0]) / 2 / size[0]
            boxes[b, j, :k, 3] = (xyxy[:, 3] - xyxy[:, 1]) / 2 / size[1]
            mask[b, j, :k] = True
    return boxes, mask


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/bench_memory_decode.json")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_syncmnist_shards(data, "train", args.videos, seed=0, shard_size=1000,
                               workers=args.workers)
        pattern = train_data.split_pattern(data, "train")
        cfg = load_config("syncmnist_demo", [f"data.train={pattern}", "data.in_memory=true",
                                             f"data.num_workers={args.workers}"])
        batches = list(make_clip_loader(pattern, "val", ClipLoaderConfig(
            num_frames=10, batch_size=256, num_workers=args.workers)))
        for batch in batches:  # equal before timing anything
            new, ref = train_data.batch_object_boxes(batch), boxes_per_frame(batch)
            assert torch.equal(new[0], ref[0]) and torch.equal(new[1], ref[1])
        current = train_data.batch_object_boxes
        as_built = loader_mod._as_built
        cache = data / "train-inmemory.pt"
        times: dict[str, list[float]] = {k: [] for k in (
            "boxes_per_frame", "boxes_one_pass", "decode_first", "decode_boxes_one_pass",
            "decode_now", "cache_load")}

        def decode(boxes_fn, collate_fn) -> float:
            train_data.batch_object_boxes, loader_mod._as_built = boxes_fn, collate_fn
            try:
                return _timed(lambda: train_data.load_train_in_memory(cfg))[0]
            finally:
                train_data.batch_object_boxes, loader_mod._as_built = current, as_built

        for _ in range(args.rounds):
            times["boxes_per_frame"].append(_timed(lambda: [boxes_per_frame(b)
                                                            for b in batches])[0])
            times["boxes_one_pass"].append(_timed(lambda: [current(b) for b in batches])[0])
            times["decode_first"].append(decode(boxes_per_frame, default_convert))
            times["decode_boxes_one_pass"].append(decode(current, default_convert))
            times["decode_now"].append(decode(current, as_built))
            cache.unlink(missing_ok=True)
            dt, clips = _timed(lambda: train_data.load_train_in_memory(cfg, cache))
            dt, again = _timed(lambda: InMemoryClips.load(cache))
            assert torch.equal(again.videos, clips.videos)
            times["cache_load"].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = args.videos
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.workers} loader workers; {n} clips of 10 x 64 x 64, {args.rounds} rounds "
          "(medians)\n")
    print(f"object boxes of every batch of 256: per frame {med['boxes_per_frame']:.2f} s, one "
          f"pass {med['boxes_one_pass']:.2f} s (ratio "
          f"{med['boxes_one_pass'] / med['boxes_per_frame']:.2f})\n")
    print("| decoding pass (load_train_in_memory, no cache) | s | clips/s | ratio to the first |")
    print("|---|---|---|---|")
    for key, name in (("decode_first", "first: boxes per frame, default_convert collate"),
                      ("decode_boxes_one_pass", "boxes in one pass, default_convert collate"),
                      ("decode_now", "now: boxes in one pass, batches passed as built")):
        print(f"| {name} | {med[key]:.2f} | {n / med[key]:.0f} | "
              f"{med[key] / med['decode_first']:.2f} |")
    print(f"\nreading the cache back (memory-mapped): {med['cache_load']:.3f} s, "
          f"{med['cache_load'] / med['decode_now']:.4f} x the decoding pass")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "torch": torch.__version__, "machine": platform.machine(), "cores": os.cpu_count(),
        "workers": args.workers, "videos": n, "rounds": args.rounds, "times_s": times,
        "median_s": med,
        "ratio_boxes": med["boxes_one_pass"] / med["boxes_per_frame"],
        "ratio_decode_now_to_first": med["decode_now"] / med["decode_first"],
    }, indent=1))


if __name__ == "__main__":
    main()
