"""Clips per second: WebDataset shards (``--store frames`` and ``--store video``) versus a
folder of JPEG frames per video (the layout the original TSM / DyReg-GNN code reads).

Same synthetic Something-Something-like videos (V2 release format, converted with
``dyreg_pyg.data.convert_something``), same TSN sampling, TSM multi-scale crop + flip, same
batch size and number of DataLoader workers. The folder reader opens only the sampled frame
files (as TSM does, with the frame count known from a list file); the shard readers stream
whole samples. The folder JPEGs are byte-identical to the ``frames`` shard members.

    python benchmarks/bench_data.py                 # prints a table, writes JSON
    python benchmarks/bench_data.py --videos 64 --batches 30 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dyreg_pyg.data import ClipLoaderConfig, convert_something, make_clip_loader  # noqa: E402
from dyreg_pyg.data.loader import ClipDataset, collate_clips  # noqa: E402

CLASSES = ["Pushing something from left to right", "Pushing something from right to left",
           "Putting something on something", "Taking something out of something"]


def _make_videos(root: Path, n: int, frames: int, w: int, h: int, seed: int) -> None:
    """V2 release layout: ``videos/<id>.webm`` (VP9) and the label / split JSON files."""
    import av

    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    entries = []
    for k in range(n):
        vid = str(10_000 + k)
        path = vids / f"{vid}.webm"
        c = k % len(CLASSES)
        entries.append({"id": vid, "label": CLASSES[c], "placeholders": ["a thing"],
                        "template": CLASSES[c].replace("something", "[something]")})
        if path.exists():
            continue
        nf = int(frames + rng.integers(-frames // 4, frames // 4 + 1))
        base = rng.integers(0, 255, 3)
        with av.open(str(path), "w") as cont:
            st = cont.add_stream("libvpx-vp9", rate=12)
            st.width, st.height, st.pix_fmt = w, h, "yuv420p"
            st.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}
            for i in range(nf):
                cx, cy = (20 + 7 * i) % w, h // 2 + int(40 * np.sin(i / 3))
                img = np.empty((h, w, 3), np.uint8)
                for ch in range(3):
                    img[..., ch] = (base[ch] + xx * 0.3 + yy * 0.2 * (ch + 1) + i * 3) % 255
                blob = (xx - cx) ** 2 + (yy - cy) ** 2 < 900
                img[blob] = 255 - img[blob]
                img = np.clip(img + rng.integers(0, 12, img.shape), 0, 255).astype(np.uint8)
                for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    cont.mux(pkt)
            for pkt in st.encode():
                cont.mux(pkt)
    labels = {name: str(i) for i, name in enumerate(CLASSES)}
    (root / "something-something-v2-labels.json").write_text(json.dumps(labels))
    (root / "something-something-v2-train.json").write_text(json.dumps(entries))


def _folder_from_shards(shard_dir: Path, out: Path) -> list[tuple[str, int, int]]:
    """``<out>/<id>/00001.jpg ...`` with the frames-shard JPEG bytes; returns the list file."""
    records: dict[str, dict[str, Any]] = {}
    for p in sorted(shard_dir.glob("train-*.tar")):
        with tarfile.open(p) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                data = t.extractfile(m).read()
                r = records.setdefault(key, {"n": 0})
                if ext.endswith(".jpg"):
                    (out / key).mkdir(parents=True, exist_ok=True)
                    idx = int(ext.split(".")[0])
                    (out / key / f"{idx + 1:05d}.jpg").write_bytes(data)
                    r["n"] += 1
                elif ext == "cls":
                    r["label"] = int(data)
    return [(k, r["n"], r["label"]) for k, r in sorted(records.items())]


class _LazyFrames(dict):
    """A sample whose frame members are read from disk only when accessed (TSM-style)."""

    def __init__(self, folder: Path, key: str, n: int, label: int) -> None:
        super().__init__({"__key__": key, "cls": str(label).encode()})
        self.folder = folder
        for i in range(n):
            super().__setitem__(f"{i:05d}.jpg", None)

    def __getitem__(self, name: str) -> Any:
        value = super().__getitem__(name)
        if value is None and name.endswith(".jpg"):
            return (self.folder / f"{int(name.split('.')[0]) + 1:05d}.jpg").read_bytes()
        return value


class FolderClips(torch.utils.data.Dataset):
    """Map-style reader of JPEG frame folders with the loader's own clip code."""

    def __init__(self, root: Path, records: list[tuple[str, int, int]], clip: ClipDataset,
                 seed: int) -> None:
        self.root, self.records, self.clip, self.seed = root, records, clip, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        key, n, label = self.records[i]
        rng = np.random.default_rng([self.seed, i])
        return self.clip.make_clip(_LazyFrames(self.root / key, key, n, label), rng)


def _evict(paths: list[Path]) -> None:
    """Drop these files from the page cache (``posix_fadvise(DONTNEED)``): a cold read."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _time(it, batches: int, warmup: int) -> tuple[float, int]:
    it = iter(it)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    clips = 0
    for _ in range(batches):
        clips += next(it)["video"].shape[0]
    return clips / (time.perf_counter() - t0), clips


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="outputs/bench_data")
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--frames", type=int, default=40, help="mean frames per video")
    ap.add_argument("--width", type=int, default=427)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--num-frames", type=int, default=8, help="T of each clip")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold", action="store_true",
                    help="evict the reader's files from the page cache before each run")
    ap.add_argument("--out", default="benchmarks/results/bench_data.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # workers decode; one thread each avoids oversubscription
    work = Path(args.workdir)
    t0 = time.time()
    _make_videos(work / "ssv2", args.videos, args.frames, args.width, args.height, args.seed)
    t_make = time.time() - t0
    shard = {}
    for store in ("frames", "video"):
        out = work / f"shards_{store}"
        t0 = time.time()
        m = convert_something(2, work / "ssv2", out, "train", videos=work / "ssv2" / "videos",
                              store=store, maxcount=16, workers=args.workers)
        shard[store] = (m["pattern"], time.time() - t0,
                        sum((out / s["name"]).stat().st_size for s in m["shards"]))
    folder = work / "folder"
    records = _folder_from_shards(work / "shards_frames", folder)
    base = ClipLoaderConfig(num_frames=args.num_frames, batch_size=args.batch_size,
                            crop_size=args.crop, dataset="something", shuffle_buffer=64,
                            seed=args.seed)
    rates: dict[str, list[float]] = {"folder": [], "shards_frames": [], "shards_video": []}
    files = {"folder": sorted(folder.rglob("*.jpg")),
             "shards_frames": sorted((work / "shards_frames").glob("*.tar")),
             "shards_video": sorted((work / "shards_video").glob("*.tar"))}
    for rep in range(args.repeats):
        for name in rates:
            if args.cold:
                _evict(files[name])
            if name == "folder":
                proto = make_clip_loader(shard["frames"][0], "train", base)
                ds = FolderClips(folder, records, proto.dataset, args.seed + rep)
                gen = torch.Generator().manual_seed(args.seed + rep)
                sampler = torch.utils.data.RandomSampler(ds, replacement=True,
                                                         num_samples=10**9, generator=gen)
                it = torch.utils.data.DataLoader(ds, batch_size=args.batch_size,
                                                 sampler=sampler, num_workers=args.workers,
                                                 collate_fn=collate_clips, drop_last=True)
            else:
                it = make_clip_loader(shard[name.split("_")[1]][0], "train", replace(
                    base, num_workers=args.workers, seed=args.seed + rep))
            rate, _ = _time(it, args.batches, args.warmup)
            rates[name].append(rate)
            del it
    best = {k: max(v) for k, v in rates.items()}
    folder_bytes = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
    result = {
        "machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "threads_per_worker": 1, "workers": args.workers, "page_cache": "cold" if args.cold
        else "warm",
        "config": vars(args), "data_generation_s": round(t_make, 1),
        "conversion_s": {k: round(v[1], 1) for k, v in shard.items()},
        "bytes": {"shards_frames": shard["frames"][2], "shards_video": shard["video"][2],
                  "folder": folder_bytes},
        "clips_per_s": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "best_clips_per_s": {k: round(v, 2) for k, v in best.items()},
        "ratio_vs_folder": {k: round(best[k] / best["folder"], 2)
                            for k in ("shards_frames", "shards_video")},
    }
    print(f"machine: {result['machine']}  cpus: {result['cpus']}  torch {torch.__version__}  "
          f"workers: {args.workers} (1 thread each)  page cache: {result['page_cache']}")
    print(f"{args.videos} videos {args.width}x{args.height} ~{args.frames} frames; clips "
          f"T={args.num_frames} crop {args.crop}, batch {args.batch_size}")
    print(f"{'reader':<16}{'clips/s (best)':>16}{'runs':>22}{'x folder':>10}{'MB':>8}")
    for k in rates:
        ratio = best[k] / best["folder"]
        mb = result["bytes"][k] / 2**20
        runs = ", ".join(f"{x:.1f}" for x in rates[k])
        print(f"{k:<16}{best[k]:>16.1f}{runs:>22}{ratio:>10.2f}{mb:>8.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
