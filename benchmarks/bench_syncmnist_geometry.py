"""MultiSyncMNIST geometries side by side: digit overlap per frame, the appearance-only ceiling
and cross-entropy floor of each sync-subset rule, and CPU training throughput at 64 vs 128.

    python benchmarks/bench_syncmnist_geometry.py [--videos 400] [--batch 16] [--steps 3]
        [--threads 2] [--skip-speed] [--json benchmarks/results/bench_syncmnist_geometry.json]

1. **Overlap** (``--videos`` videos per geometry, training digits, seed 0): per frame, from the
   ground-truth ink boxes of the 5 digits: digit pairs whose boxes intersect, the share of
   frames with at least one such pair, the share of digits that touch another one, and the
   intersection area as a share of the boxes' area; plus the digit side, the largest jump and
   the mean in-sync distance in output pixels. ``demo``: 100-pixel canvas -> 64 x 64 (our data
   so far); ``authors``: 256 -> 128 with in-sync digits at most 160 canvas pixels apart.
2. **Ceilings** (exact, no sampling): for each sync-subset rule (``sync_sizes``) and class rule,
   the top-1 accuracy of the best motion-blind classifier (it knows every digit's class) and
   its expected cross-entropy, ``H(label | classes)``; ``ln 56`` = 4.025 nats is chance.
   The geometry changes neither.
3. **Throughput**: one optimiser step (forward, cross-entropy, backward, Adam) on in-memory
   clips ``[B, 10, 1, S, S]``, bf16 autocast + channels-last (the CPU demo's setting), for the
   ``syncmnist_r18_{nograph,dyreg}`` presets at S = 64 and ``syncmnist_r18_128_*`` at
   S = 128, in interleaved rounds; median videos/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dyreg_pyg.data.syncmnist import (
    DATA_RULES,
    SyncMNISTConfig,
    generate_video,
    load_digit_pool,
)
from dyreg_pyg.metrics.syncmnist_bounds import appearance_only_accuracy, appearance_only_loss
from dyreg_pyg.models import build_preset

RULES = {"exactly 2": (2,), "2 or 3": (2, 3), "2 to 5": (2, 3, 4, 5)}


def overlap_stats(cfg: SyncMNISTConfig, videos: int, seed: int = 0) -> dict[str, float]:
    """Per-frame overlap statistics of ``videos`` videos of ``cfg`` (see the module doc)."""
    pool = load_digit_pool("train")
    pairs, any_pair, touching, area_share, sync_dist = [], [], [], [], []
    for i in range(videos):
        _, _, meta = generate_video(cfg, pool, np.random.default_rng([seed, i]))
        boxes = np.asarray(meta["boxes"])  # [T, D, 4] ink boxes, output pixels
        for frame in boxes:
            hit = np.zeros(len(frame), bool)
            n_pairs, inter = 0, 0.0
            for a, b in itertools.combinations(range(len(frame)), 2):
                w = min(frame[a, 2], frame[b, 2]) - max(frame[a, 0], frame[b, 0])
                h = min(frame[a, 3], frame[b, 3]) - max(frame[a, 1], frame[b, 1])
                if w > 0 and h > 0:
                    n_pairs += 1
                    inter += w * h
                    hit[a] = hit[b] = True
            area = float(((frame[:, 2] - frame[:, 0]) * (frame[:, 3] - frame[:, 1])).sum())
            pairs.append(n_pairs)
            any_pair.append(n_pairs > 0)
            touching.append(hit.mean())
            area_share.append(inter / area)
        pos = np.asarray(meta["positions"])[0]
        sync = np.flatnonzero(meta["in_sync"])
        for a, b in itertools.combinations(sync, 2):
            sync_dist.append(float(np.linalg.norm(pos[a] - pos[b])) * cfg.size / cfg.canvas)
    scale = cfg.size / cfg.canvas
    return {
        "frame": cfg.size, "canvas": cfg.canvas, "digit_px": cfg.digit_size * scale,
        "max_jump_px": cfg.max_jump * scale,
        "overlapping_pairs_per_frame": float(np.mean(pairs)),
        "frames_with_overlap": float(np.mean(any_pair)),
        "digits_overlapping": float(np.mean(touching)),
        "overlap_area_share": float(np.mean(area_share)),
        "sync_distance_px": float(np.mean(sync_dist)) if sync_dist else None,
        "videos": videos,
    }


def ceiling_rows() -> list[dict[str, object]]:
    rows = []
    for class_rule in ("label_first", "iid"):
        for name, sizes in RULES.items():
            cfg = SyncMNISTConfig(sync_sizes=sizes, class_rule=class_rule)
            rows.append({"rule": name, "sync_sizes": list(sizes), "class_rule": class_rule,
                         "ceiling": appearance_only_accuracy(cfg),
                         "ce_floor_nats": appearance_only_loss(cfg)})
    single = SyncMNISTConfig(variant="single")
    rows.append({"rule": "SyncMNIST (distinct, exactly 2)", "sync_sizes": [2],
                 "class_rule": "label_first", "ceiling": appearance_only_accuracy(single),
                 "ce_floor_nats": appearance_only_loss(single)})
    return rows


def _stepper(name: str, batch: int, size: int):
    torch.manual_seed(0)
    model = build_preset(name).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 10, 1, size, size, generator=gen)
    y = torch.randint(0, 56, (batch,), generator=gen)

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def speed_rows(batch: int, steps: int) -> list[dict[str, object]]:
    runs = {(v, s): f"syncmnist_r18_{'128_' if s == 128 else ''}{v}"
            for v in ("nograph", "dyreg") for s in (64, 128)}
    steppers = {k: _stepper(name, batch, k[1]) for k, name in runs.items()}
    for fn in steppers.values():
        fn()  # warm-up
    times: dict[tuple[str, int], list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for k, fn in steppers.items():
            times[k].append(fn())
    rows = []
    for (variant, size), name in runs.items():
        vps = batch / statistics.median(times[(variant, size)])
        base = batch / statistics.median(times[(variant, 64)])
        rows.append({"preset": name, "variant": variant, "size": size, "videos_per_s": vps,
                     "ratio_to_64": vps / base, "batch": batch, "steps": steps})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=400, help="videos per geometry (overlap)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--json", default="benchmarks/results/bench_syncmnist_geometry.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"load average {load:.1f}, digits from {load_digit_pool('train').source}")
    out: dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "load_average": load}

    print("\n| geometry | frame / canvas | digit px | max jump px | overlapping pairs / frame "
          "| frames with overlap | digits overlapping | overlap area share | in-sync distance px "
          "|\n|---|---|---|---|---|---|---|---|---|")
    overlap = {}
    for geometry in ("demo", "authors"):
        # the 2or3 rule of the committed numbers on both geometries (since issue 38 the
        # authors' geometry defaults to 2to5, whose in-sync subsets are larger)
        r = overlap[geometry] = overlap_stats(
            SyncMNISTConfig.from_geometry(geometry, **DATA_RULES["2or3"]), args.videos)
        print(f"| {geometry} | {r['frame']} / {r['canvas']} | {r['digit_px']:.1f} | "
              f"{r['max_jump_px']:.1f} | {r['overlapping_pairs_per_frame']:.2f} | "
              f"{100 * r['frames_with_overlap']:.1f} % | {100 * r['digits_overlapping']:.1f} % | "
              f"{100 * r['overlap_area_share']:.1f} % | {r['sync_distance_px']:.1f} |",
              flush=True)
    out["overlap"] = overlap

    print(f"\n| sync-subset rule | class rule | appearance-only top-1 | cross-entropy floor "
          f"(nats; chance {math.log(56):.3f}) |\n|---|---|---|---|")
    out["ceilings"] = ceiling_rows()
    for r in out["ceilings"]:
        print(f"| {r['rule']} | {r['class_rule']} | {100 * r['ceiling']:.2f} % | "
              f"{r['ce_floor_nats']:.3f} |")

    if not args.skip_speed:
        print(f"\n| preset | frames | videos/s (bf16 + channels-last, batch {args.batch}) | "
              f"x vs 64 |\n|---|---|---|---|")
        out["speed"] = speed_rows(args.batch, args.steps)
        out["load_average_after_speed"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        for r in out["speed"]:
            print(f"| {r['preset']} | {r['size']} x {r['size']} | {r['videos_per_s']:.1f} | "
                  f"{r['ratio_to_64']:.2f} |")
        print(f"(load average after the timing: {out['load_average_after_speed']:.1f}; on a "
              "shared machine compare the ratios, not the absolute rates)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
