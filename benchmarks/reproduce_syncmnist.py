"""MultiSyncMNIST ablations of the paper (Tables 5 and 6) at a chosen CPU/GPU budget.

Every variant trains with the same data, budget (training videos seen), optimiser, schedule
and seeds; each (variant, seed) run lives in ``<out>/<variant>/seed<k>`` and checkpoints
every ``--ckpt-every`` steps, so an interrupted study resumes exactly with ``--resume``.
A finished run writes ``result.json``; the table (``<out>/table.md``, ``table.json``) is
rewritten after every run.

    python benchmarks/reproduce_syncmnist.py --out /data/study --budget 200000 \\
        --variants nograph,fixed,dyreg --seeds 0,1 --resume
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from dyreg_pyg.data import write_syncmnist_shards
from dyreg_pyg.models import build_preset
from train.config import load_config
from train.loop import fit

PAPER = {"nograph": 52.29, "fixed": 78.85, "static": 81.48, "constant_time": 86.77,
         "pos_only": 93.41, "dyreg": 95.09, "semantic": 82.41, "dyreg_lite": 91.43}


def _pattern(folder: Path, split: str) -> str:
    shards = sorted(folder.glob(f"{split}-*.tar"))
    first, last = shards[0].stem.split("-")[-1], shards[-1].stem.split("-")[-1]
    return str(folder / f"{split}-{{{first}..{last}}}.tar")


def _table(out: Path, variants: list[str]) -> None:
    rows = []
    for v in variants:
        res = [json.loads(p.read_text()) for p in sorted((out / v).glob("seed*/result.json"))]
        if not res:
            continue
        accs = [100 * r["top1"] for r in res]
        dists = [r["distance"] for r in res if r["distance"] is not None]
        rows.append({"variant": v, "seeds": len(res), "acc_mean": statistics.mean(accs),
                     "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "params_m": res[0]["params_m"], "paper_acc": PAPER[v],
                     "distance": statistics.mean(dists) if dists else None,
                     "videos_per_s": statistics.mean(r["videos_per_s"] for r in res),
                     "budget": res[0]["budget"]})
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    lines = ["| variant | seeds | val top-1 % (mean +- std) | paper | params M | dist | videos/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = "-" if r["distance"] is None else f"{r['distance']:.3f}"
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['acc_mean']:.2f} +- "
                     f"{r['acc_std']:.2f} | {r['paper_acc']} | {r['params_m']:.2f} | {d} | "
                     f"{r['videos_per_s']:.1f} |")
    budget = rows[0]["budget"] if rows else "?"
    (out / "table.md").write_text(f"Budget: {budget} training videos per run\n\n" +
                                  "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="study folder (keep it outside the repo)")
    ap.add_argument("--budget", type=int, default=100_000, help="training videos per run")
    ap.add_argument("--variants", default=",".join(PAPER))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--train-videos", type=int, default=20_000)
    ap.add_argument("--val-videos", type=int, default=2_000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optim", default="adam")
    ap.add_argument("--schedule", default="onecycle")
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="continue unfinished runs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(PAPER))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {sorted(PAPER)}")
    data = out / "data"
    for split, n, seed in (("train", args.train_videos, 0), ("val", args.val_videos, 7919)):
        if not (data / f"{split}-manifest.json").exists():
            write_syncmnist_shards(data, split, n, seed=seed, workers=2)
    steps = args.budget // args.batch_size
    for seed in [int(s) for s in args.seeds.split(",")]:
        for v in variants:
            run = out / v / f"seed{seed}"
            if (run / "result.json").exists():
                continue
            if run.exists() and not args.resume:
                raise SystemExit(f"{run} exists: pass --resume to continue it")
            cfg = load_config("syncmnist_demo", [
                f"data.train={_pattern(data, 'train')}", f"data.val={_pattern(data, 'val')}",
                f"out_dir={run}", f"seed={seed}", f"max_steps={steps}", "max_minutes=null",
                "epochs=100000", f"data.batch_size={args.batch_size}",
                f"data.num_workers={args.workers}", f"optim.name={args.optim}",
                f"optim.lr={args.lr}", f"optim.schedule={args.schedule}",
                f"ckpt_every={args.ckpt_every}", "eval_every=100000",
                f"model.preset=syncmnist_r18_{v}"])
            t0 = time.time()
            metrics = fit(cfg, resume="auto")
            dist = metrics["region_object_distance"].get("layer2")
            params = sum(p.numel() for p in build_preset(f"syncmnist_r18_{v}").parameters())
            (run / "result.json").write_text(json.dumps({
                "variant": v, "seed": seed, "budget": steps * args.batch_size,
                "top1": metrics["top1"], "top5": metrics["top5"], "distance": dist,
                "params_m": params / 1e6, "schedule": args.schedule, "optim": args.optim,
                "lr": args.lr, "videos_per_s": steps * args.batch_size / (time.time() - t0),
            }, indent=1))
            _table(out, variants)


if __name__ == "__main__":
    main()
