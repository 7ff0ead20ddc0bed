"""MultiSyncMNIST ablations of the paper (Tables 5 and 6) at a chosen CPU/GPU budget.

Every variant trains with the same data, budget (training videos seen), optimiser, schedule,
precision and seeds; only the model preset changes: ``syncmnist_r18_128_<variant>`` on the
authors' geometry (``--geometry authors``, the default: 28-pixel MNIST digits on a 256-pixel
canvas halved to 128 x 128, the graph on layer2's 16 x 16 map) or ``syncmnist_r18_<variant>``
on the demo's 64-pixel frames (``--geometry demo``, the study's data before issue 15). A study
folder holds one geometry's data (``<out>/data``; its manifests record it) and refuses the
other. ``--protocol`` picks the optimisation: ``onecycle`` (the default: Adam, one-cycle, peak
lr 2e-3, batch 32) or ``paper`` (the paper's SGD lr 1e-3 momentum 0.9, with the batch size,
weight decay, schedule and clipping of the authors' code, see :data:`PROTOCOLS`); explicit
``--optim``/``--lr``/``--schedule``/``--batch-size``/``--weight-decay``/``--momentum``/
``--clip-grad`` override the protocol's values. Each (variant, seed) run lives in
``<out>/<variant>/seed<k>`` (``<out>/<variant>-paper/seed<k>`` under ``--protocol paper``, so the
two protocols never resume from each other's checkpoints) and checkpoints every
``--ckpt-every`` steps (atomically, with RNG state), so an interrupted study continues exactly
with ``--resume``. A finished run writes ``result.json``; the tables ``<out>/table.md`` and
``<out>/table.json`` are rewritten after every finished run, so partial results are never lost.

    python study/reproduce_syncmnist.py --out /data/study --budget 24000 \\
        --variants nograph,fixed,dyreg --seeds 0,1 --resume
    python study/reproduce_syncmnist.py --out /data/study --budget 24000 \\
        --variants nograph,fixed,dyreg --seeds 0,1 --protocol paper --resume

Defaults are the fastest faithful CPU settings measured by ``benchmarks/bench_train_speed.py``
(bf16 autocast + channels-last; the regions stay float32) and a one-cycle schedule that every
variant shares. ``--table-only`` rebuilds the tables from the finished runs. To run the
(variant, seed) runs of a study side by side (one GPU fits several), generate the shards once
with ``--data-only`` and start one process per run: ``study/parallel_study.sh`` does both.

Investigations change the DyReg module of the chosen variants and tag the runs, which then
live in ``<out>/<variant>[-paper]-<tag>/seed<k>`` and get their own table rows:

    python study/reproduce_syncmnist.py --out /data/study --variants dyreg \
        --dyreg init_size=0.42 --tag size42 --resume

``--set`` changes a training-config field the same way, e.g. a 10x learning rate for the
region branch: ``--set optim.lr_mult.region_generator=10 --tag regionlr10``.

``--task`` picks the data's label (:data:`TASKS`): ``multisync`` (the default, the paper's
5-digit MultiSyncMNIST with its 56-way label) or a reduced task for CPU budgets (issue 15):
``sync2``, two digits, in sync half the time, and a one-bit label "sync" / "no sync" that their
appearance says nothing of (appearance-only ceiling 50 %); ``direction2``, two digits, one
drifting right or left while the other stands still, the label its direction (50 % for
appearance and for any model blind to the frames' order, such as ``nograph``); ``binding2``,
two digits drifting opposite ways, the label which way the lower class goes (50 % for
appearance, for motion without the classes and for ``nograph``: a model must bind each
digit's class to its own motion). A study folder
holds one task's data; the tables give the task's chance level and appearance-only ceiling, and
paper numbers only for ``multisync``.

    python study/reproduce_syncmnist.py --out /data/sync2 --task sync2 --geometry demo \
        --budget 96000 --variants nograph,fixed,dyreg --seeds 0,1 --resume
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from dyreg_pyg.data import (
    SYNCMNIST_TASKS,
    SyncMNISTConfig,
    load_manifest,
    syncmnist_task_of,
    write_syncmnist_shards,
)
from dyreg_pyg.data.syncmnist import DATA_RULES, data_rule_of
from dyreg_pyg.metrics.syncmnist_bounds import appearance_only_accuracy
from dyreg_pyg.models import build_preset
from dyreg_pyg.models.presets import PRESETS
from train.config import load_config
from train.data import load_train_in_memory, read_num_classes, split_pattern
from train.loop import fit

log = logging.getLogger("reproduce")

PAPER = {"nograph": 52.29, "fixed": 78.85, "static": 81.48, "constant_time": 86.77,
         "pos_only": 93.41, "dyreg": 95.09, "semantic": 82.41, "dyreg_lite": 91.43}
"""Validation accuracy (%) of the paper's Tables 5-6 (``nograph`` = the plain ResNet-18)."""

EXTRA = {"oracle": "the ground-truth digit boxes as the 5 regions (a diagnostic, not in the paper)"}
"""Variants beside the paper's: they get a table row without a paper number."""

VAL_SEED = 7919

GEOMETRIES = {"authors": "syncmnist_r18_128_", "demo": "syncmnist_r18_"}
"""``--geometry`` -> the prefix of the model presets (``<prefix><variant>``)."""

PROTOCOLS: dict[str, dict[str, Any]] = {
    # our choice (issue 13): the fastest schedule that separates the variants at a CPU budget
    "onecycle": dict(optim="adam", lr=2e-3, schedule="onecycle", batch_size=32,
                     weight_decay=0.0, momentum=0.9, clip_grad=5.0),
    # the paper's MultiSyncMNIST setting (section 4.2, "Implementation details": SGD, lr 0.001,
    # momentum 0.9, one GPU) with what the paper leaves out from the authors' code
    # (bit-ml/DyReg-GNN; also lr opts.py:50, momentum opts.py:56, SGD main_standard.py:159):
    # batch 10 (opts.py:48, ``-b`` default; no syncMNIST script is released), weight decay
    # 5e-4 (opts.py:58, on every parameter for syncMNIST: ops/models.py:390-394), no gradient
    # clipping (opts.py:60 ``--clip-gradient`` default None, and main_standard.py never reads
    # it), their step schedule (opts.py:52-55: lr / 10 at epochs 50 and 100 of 600k videos;
    # main_standard.py:357 + 665-669), which no budget of this study reaches: a constant lr
    "paper": dict(optim="sgd", lr=1e-3, schedule="none", batch_size=10,
                  weight_decay=5e-4, momentum=0.9, clip_grad=None),
}
"""``--protocol`` -> its optimiser settings; an explicit flag of the same name wins."""

TASKS: dict[str, dict[str, Any]] = SYNCMNIST_TASKS
"""``--task`` -> the :class:`~dyreg_pyg.data.SyncMNISTConfig` fields of its data."""

GEOMETRY_RULES = {"authors": "2to5", "demo": "2or3"}
"""``--geometry`` -> its default ``--rule`` (:data:`dyreg_pyg.data.syncmnist.DATA_RULES`):
the authors' geometry takes issue 38's guess of the authors' rule, the demo keeps the rule of
the study's earlier runs."""

PAPER_RUN_VIDEOS = (60_000_000, 72_000_000)
"""Training videos one paper run saw: 600k videos x 100 epochs (RSTG's MNIST setting) to x 120
(the authors' ``opts.py`` default) - what our budgets are fractions of."""


def budget_fraction(budget: int) -> str:
    """``budget`` as a fraction of a paper run, e.g. ``"1/250-1/278"`` for 259,200."""
    lo, hi = (v / budget for v in PAPER_RUN_VIDEOS)
    return f"1/{lo:,.0f}-1/{hi:,.0f}"


def rule_of_result(result: dict[str, Any]) -> str | None:
    """The data rule of a run's ``result.json``: recorded since issue 38; a multisync run
    written before holds the rule of that time, ``"2or3"``; a reduced task has none."""
    if result.get("task", "multisync") != "multisync":
        return None
    return result.get("rule") or "2or3"


task_of = syncmnist_task_of
"""The task of a data manifest (:func:`dyreg_pyg.data.syncmnist_task_of`)."""


def resolve_protocol(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol's values, each replaced by its flag where that was given (not None);
    also sets them on ``args``."""
    values = {k: (v if getattr(args, k) is None else getattr(args, k))
              for k, v in PROTOCOLS[args.protocol].items()}
    for k, v in values.items():
        setattr(args, k, v)
    return values


def preset_name(variant: str, geometry: str) -> str:
    """The model preset of ``variant`` on ``geometry``."""
    name = GEOMETRIES[geometry] + variant
    if name not in PRESETS:
        raise SystemExit(f"--variants: {variant!r} has no preset {name!r} for --geometry "
                         f"{geometry}")
    return name


def run_name(variant: str, protocol: str, tag: str = "") -> str:
    """The run folder of ``variant``: ``-paper`` marks the paper protocol, then the tag."""
    return "-".join([variant, *([protocol] if protocol != "onecycle" else []),
                     *([tag] if tag else [])])


def make_data(folder: Path, train_videos: int, val_videos: int, workers: int = 2,
              geometry: str = "authors", task: str = "multisync", rule: str | None = None
              ) -> None:
    """Generate the study's shards once; refuse a folder holding a different amount, another
    geometry (manifests written before geometries existed hold the demo's), another task or
    (``multisync``) another data rule (``None``: the geometry's, :data:`GEOMETRY_RULES`)."""
    rule = rule or GEOMETRY_RULES[geometry]
    for split, n, seed in (("train", train_videos, 0), ("val", val_videos, VAL_SEED)):
        manifest = folder / f"{split}-manifest.json"
        if manifest.exists():  # read as the loaders read it: a corrupt one is a named error
            saved = load_manifest(folder / f"{split}-000000.tar")
            have = saved.get("geometry", "demo")
            if have != geometry:
                raise SystemExit(f"{folder} holds {split} videos of the {have} geometry, not "
                                 f"{geometry}: use another --out or --geometry {have}")
            have = task_of(saved)
            if have != task:
                what = f"task {have}" if have else "no named task"
                raise SystemExit(f"{folder} holds {split} videos of {what}, not {task}: use "
                                 f"another --out" + (f" or --task {have}" if have else ""))
            # manifests without a config predate the authors' geometry: the 2or3 rule's
            have = data_rule_of(SyncMNISTConfig.from_manifest(saved)) \
                if "config" in saved else "2or3"
            if task == "multisync" and have != rule and "config" in saved:
                raise SystemExit(f"{folder} holds {split} videos of data rule {have}, not "
                                 f"{rule}: use another --out" +
                                 (f" or --rule {have}" if have else ""))
            have = saved["num_samples"]
            if have != n:
                raise SystemExit(f"{folder} holds {have} {split} videos, not {n}: use another "
                                 f"--out or --{split}-videos {have}")
            continue
        t0 = time.time()
        write_syncmnist_shards(folder, split, n, seed=seed, workers=workers, geometry=geometry,
                               **TASKS[task], **_rule_fields(task, rule))
        log.info("generated %d %s videos in %.0f s", n, split, time.time() - t0)


def _write(path: Path, text: str) -> None:
    """Write atomically: runs started in parallel (``study/parallel_study.sh``) rebuild
    the shared tables and read each other's ``result.json``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _metrics(run: Path) -> list[dict[str, Any]]:
    """The records of the run's metrics.jsonl (none if it is missing). A line that does not
    parse - the last one of a killed run, or garbage - is skipped and counted in a warning."""
    path = run / "metrics.jsonl"
    recs, bad = [], 0
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and "step" in rec:
            recs.append(rec)
        else:
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s) of %d", path, bad, bad + len(recs))
    return recs


def _train_log(run: Path) -> dict[str, float | None]:
    """Median training throughput and the last running train loss/top-1 from metrics.jsonl."""
    vps, last = [], {}
    for rec in _metrics(run):
        if "train/videos_per_s" in rec:
            vps.append(rec["train/videos_per_s"])
            last = rec
    return {"videos_per_s": statistics.median(vps) if vps else None,
            "train_loss": last.get("train/loss"), "train_top1": last.get("train/top1")}


def _val_curve(run: Path, batch_size: int, key: str = "val/top1", scale: float = 100.0
               ) -> dict[int, float]:
    """A validation metric (``key``, times ``scale``: top-1 in %) by training videos seen,
    from the run's metrics.jsonl; validations without it (or with ``None``) are left out."""
    curve = {}
    for rec in _metrics(run):
        if rec.get(key) is not None:
            curve[rec["step"] * batch_size] = scale * rec[key]
    return curve


def _train_windows(run: Path, batch_size: int, window: int = 10_000) -> dict[int, float]:
    """Training top-1 (%) per window of at least ``window`` training videos, by the videos
    seen at each window's end, from the ``train/top1_recent`` scalars of metrics.jsonl
    (each the accuracy since the log before; weighted by the steps it covers). While the
    first epoch lasts, this is an accuracy on clips the model had not trained on. A step
    logged again after a resume keeps its last record."""
    by_step = {r["step"]: r["train/top1_recent"] for r in _metrics(run)
               if r.get("train/top1_recent") is not None}
    recs = [{"step": k, "train/top1_recent": by_step[k]} for k in sorted(by_step)]
    curve: dict[int, float] = {}
    start = prev = 0
    hits = 0.0
    for i, rec in enumerate(recs):
        hits += rec["train/top1_recent"] * (rec["step"] - prev)
        prev = rec["step"]
        if (prev - start) * batch_size >= window or i == len(recs) - 1:
            curve[prev * batch_size] = 100 * hits / max(prev - start, 1)
            start, hits = prev, 0.0
    return curve


def _mean_curve(curves: list[dict[int, float]]) -> dict[int, float]:
    """Seed mean at the points every seed has."""
    common = set.intersection(*(set(c) for c in curves)) if curves else set()
    return {k: statistics.mean(c[k] for c in curves) for k in sorted(common)}


def _run_names(out: Path) -> list[str]:
    """Finished run folders: the paper's variants in table order, then tagged ones."""
    found = {p.parent.parent.name for p in out.glob("*/seed*/result.json")}
    return [v for v in PAPER if v in found] + sorted(found - set(PAPER))


def _rule_fields(task: str, rule: str | None) -> dict[str, Any]:
    """The :class:`~dyreg_pyg.data.SyncMNISTConfig` fields of data rule ``rule`` (the
    ``multisync`` task's; the reduced tasks have their own rules)."""
    return dict(DATA_RULES[rule]) if task == "multisync" and rule else {}


def task_config(task: str, geometry: str, rule: str | None = None) -> SyncMNISTConfig:
    """The generator config of the study data of ``task`` on ``geometry`` under data rule
    ``rule`` (``None``: the geometry's; as :func:`make_data` writes it)."""
    return SyncMNISTConfig.from_geometry(
        geometry, **TASKS[task], **_rule_fields(task, rule or GEOMETRY_RULES[geometry]))


def levels(task: str, geometry: str, rule: str | None = None) -> tuple[float, float]:
    """Chance top-1 (%) and appearance-only ceiling (%) of ``task`` on ``geometry`` under
    data rule ``rule`` (``None``: the geometry's)."""
    cfg = task_config(task, geometry, rule)
    return 100 / cfg.num_classes, 100 * appearance_only_accuracy(cfg)


def check_task(task: str, geometry: str) -> None:
    """Refuse a reduced task on a geometry that gives its label away without motion: a cap
    on the in-sync digits' distance (the authors' 160 pixels) makes a far-apart pair "no
    sync" from one frame."""
    cfg = task_config(task, geometry)
    if task != "multisync" and cfg.label == "sync" and cfg.max_sync_dist is not None:
        raise SystemExit(f"--task {task}: the {geometry} geometry caps the distance of in-sync "
                         f"digits, so one frame's digit distance alone tells 'no sync' in many "
                         f"videos (its 50 % ceiling would not hold); use --geometry demo")


def write_tables(out: Path) -> list[dict[str, Any]]:
    """Aggregate ``<out>/<name>/seed*/result.json`` into ``table.json`` and ``table.md``."""
    rows = []
    for v in _run_names(out):
        paths = sorted((out / v).glob("seed*/result.json"))
        res = [json.loads(p.read_text()) for p in paths]
        if not res:
            continue
        curve = _mean_curve([_val_curve(p.parent, r["settings"]["batch_size"])
                             for p, r in zip(paths, res)])
        dist_curve = _mean_curve([_val_curve(p.parent, r["settings"]["batch_size"],
                                             "val/dist/layer2", 1.0)
                                  for p, r in zip(paths, res)])
        windows = _mean_curve([_train_windows(p.parent, r["settings"]["batch_size"])
                               for p, r in zip(paths, res)])
        accs = [100 * r["top1"] for r in res]
        task = res[0].get("task", "multisync")  # results written before tasks existed
        dists = [r["distance"] for r in res if r["distance"] is not None]
        vps = [r["videos_per_s"] for r in res if r.get("videos_per_s")]
        rows.append({
            "variant": v, "seeds": [r["seed"] for r in res], "acc": accs,
            "acc_mean": statistics.mean(accs),
            "acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "top5_mean": 100 * statistics.mean(r["top5"] for r in res),
            "train_top1_mean": 100 * statistics.mean(
                r["train_top1"] for r in res if r["train_top1"] is not None)
            if any(r["train_top1"] is not None for r in res) else None,
            "params_m": res[0]["params_m"], "task": task,
            "paper_acc": PAPER.get(v.split("-")[0]) if task == "multisync" else None,
            "protocol": res[0].get("protocol", "onecycle"),
            "geometry": res[0].get("geometry", "demo"), "rule": rule_of_result(res[0]),
            "dyreg_overrides": res[0].get("dyreg_overrides") or {},
            "train_overrides": res[0].get("train_overrides") or {},
            "distance": statistics.mean(dists) if dists else None,
            "grid_distance": res[0].get("grid_distance"),
            "videos_per_s": statistics.mean(vps) if vps else None,
            "budget": res[0]["budget"], "settings": res[0]["settings"],
            "val_curve": curve, "distance_curve": dist_curve, "train_windows": windows,
        })
    _write(out / "table.json", json.dumps(rows, indent=1))
    lines = ["| variant | protocol | geometry | seeds | val top-1 % | +- std | val top-5 % | "
             "train top-1 % (last epoch) | paper top-1 % | params M | region-object dist | "
             "videos/s | val top-1 % along the run (k videos: %) | region-object dist along "
             "the run (k videos: dist) | train top-1 % per 10k-video window (k videos: %; "
             "unseen clips while the first epoch lasts) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = "-" if r["distance"] is None else f"{r['distance']:.3f}"
        std = "-" if r["acc_std"] is None else f"{r['acc_std']:.2f}"
        vps = "-" if r["videos_per_s"] is None else f"{r['videos_per_s']:.1f}"
        tr = "-" if r["train_top1_mean"] is None else f"{r['train_top1_mean']:.2f}"
        cur = ", ".join(f"{k / 1000:g}: {a:.1f}" for k, a in r["val_curve"].items()) or "-"
        dcur = ", ".join(f"{k / 1000:g}: {a:.3f}" for k, a in r["distance_curve"].items()) or "-"
        win = ", ".join(f"{k / 1000:g}: {a:.1f}" for k, a in r["train_windows"].items()) or "-"
        lines.append(f"| {r['variant']} | {r['protocol']} | {r['geometry']} | "
                     f"{len(r['seeds'])} | {r['acc_mean']:.2f} | {std} | "
                     f"{r['top5_mean']:.2f} | {tr} | {r['paper_acc'] or '-'} | "
                     f"{r['params_m']:.2f} | {d} | {vps} | {cur} | {dcur} | {win} |")
    head = "no finished run yet"
    if rows:
        s = rows[0]["settings"]
        task = rows[0]["task"]
        rule = rows[0]["rule"]
        chance, ceiling = levels(task, rows[0]["geometry"], rule)
        grid = next((r["grid_distance"] for r in rows if r["grid_distance"] is not None), None)
        optim = (f"{s['optim']} lr {s['lr']} ({s['schedule']} schedule), batch "
                 f"{s['batch_size']}, weight decay {s['weight_decay']}")
        said = f" Data rule: {rule} (our guess: the paper does not give it)." if rule else ""
        protocol = rows[0]["protocol"]
        changed = any(s.get(k) != v for k, v in PROTOCOLS.get(protocol, {}).items())
        head = (f"Task: {task}.{said} Geometry: {rows[0]['geometry']}. Optimiser: {optim} "
                f"(--protocol {protocol}{' with overrides' if changed else ''}; the paper: SGD "
                f"lr 1e-3, momentum 0.9). "
                f"Budget: {rows[0]['budget']} training videos per run, "
                f"{budget_fraction(rows[0]['budget'])} of a paper run's 60-72M. Settings of "
                f"the first row (see table.json for each row's): {s}. Chance: "
                f"{chance:.1f} %; appearance-only ceiling: {ceiling:.2f} %. Region-object "
                f"distance of a fixed 3x3 grid on the same clips: "
                f"{'-' if grid is None else f'{grid:.3f}'}.")
    _write(out / "table.md", head + "\n\n" + "\n".join(lines) + "\n")
    return rows


def _parse_items(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items of ``--dyreg``/``--set`` -> a dict (values parsed as YAML)."""
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--dyreg/--set: expected KEY=VALUE, got {item!r}")
        values[key.strip()] = yaml.safe_load(text)
    return values


def _memory_cache(data: Path, args: argparse.Namespace) -> Path | None:
    """The file holding the decoded training split beside the shards (``--cache``): written
    by the first run (or ``--data-only``), memory-mapped by the others, so that runs side by
    side decode the shards once and share one copy of the clips."""
    return data / "train-inmemory.pt" if args.cache else None


def run_one(out: Path, variant: str, seed: int, args: argparse.Namespace,
            memory: dict[str, Any]) -> dict[str, Any]:
    """Train and validate one (variant, seed); writes and returns ``result.json``."""
    name = run_name(variant, args.protocol, args.tag)
    run = out / name / f"seed{seed}"
    data = out / "data"
    steps = args.budget // args.batch_size
    preset = preset_name(variant, args.geometry)
    clip = "null" if args.clip_grad is None else args.clip_grad
    settings = {"protocol": args.protocol, "geometry": args.geometry, "task": args.task,
                "preset": preset, "rule": args.rule,
                "optim": args.optim, "lr": args.lr, "momentum": args.momentum,
                "schedule": args.schedule,
                "warmup_steps": args.warmup, "batch_size": args.batch_size,
                "precision": args.precision, "channels_last": args.channels_last,
                "clip_grad": args.clip_grad, "weight_decay": args.weight_decay,
                "eval_every": args.eval_every, "train_videos": args.train_videos,
                "val_videos": args.val_videos,
                "in_memory": args.in_memory}
    # a run folder resumes only under the optimisation and data it was started with
    pinned = {k: settings[k] for k in (*PROTOCOLS["paper"], "protocol", "geometry", "preset")}
    if args.task != "multisync":  # run folders of earlier studies pin no task
        pinned["task"] = args.task
    marker = run / "study-settings.json"
    if marker.exists():
        before = json.loads(marker.read_text())
        diff = {k: (before.get(k), v) for k, v in pinned.items() if before.get(k) != v}
        if before.get("task", "multisync") != args.task:
            diff["task"] = (before.get("task", "multisync"), args.task)
        if diff:
            raise SystemExit(f"{run} was started with other settings (then, now): {diff}; "
                             f"use another --tag or --out")
    else:
        run.mkdir(parents=True, exist_ok=True)
        _write(marker, json.dumps(pinned, indent=1))
    overrides = [
        f"data.train={split_pattern(data, 'train')}", f"data.val={split_pattern(data, 'val')}",
        f"out_dir={run}", f"seed={seed}", f"max_steps={steps}", "max_minutes=null",
        "epochs=100000", f"eval_every={args.eval_every}",
        f"data.batch_size={args.batch_size}",
        f"data.eval_batch_size={2 * args.batch_size}", f"data.num_workers={args.workers}",
        f"optim.name={args.optim}", f"optim.lr={args.lr}", f"optim.schedule={args.schedule}",
        f"optim.warmup_steps={args.warmup}", f"optim.clip_grad={clip}",
        f"optim.momentum={args.momentum}",
        f"optim.weight_decay={args.weight_decay}", f"ckpt_every={args.ckpt_every}",
        f"precision={args.precision}", f"channels_last={str(args.channels_last).lower()}",
        f"threads={args.threads}", "log_every=20", f"model.preset={preset}",
    ] + [f"model.overrides.dyreg.{item}" for item in args.dyreg] + args.set
    if args.in_memory:
        overrides.append("data.in_memory=true")
    cfg = load_config("syncmnist_demo", overrides)
    if args.in_memory and "train" not in memory:  # decode the training split once
        memory["train"] = load_train_in_memory(cfg, _memory_cache(data, args))
    t0 = time.time()
    metrics = fit(cfg, resume="auto", train_clips=memory.get("train"))
    dists = metrics["region_object_distance"]
    dyreg = _parse_items(args.dyreg)
    model = build_preset(preset, num_classes=read_num_classes(cfg.data.train),
                         **({"dyreg": dyreg} if dyreg else {}))
    params = sum(p.numel() for p in model.parameters())
    result = {"variant": name, "seed": seed, "protocol": args.protocol,
              "geometry": args.geometry, "task": args.task, "preset": preset,
              "rule": args.rule, "dyreg_overrides": dyreg,
              "train_overrides": _parse_items(args.set),
              "budget": steps * args.batch_size,
              "top1": metrics["top1"], "top5": metrics["top5"], "val_loss": metrics["loss"],
              "val_samples": metrics["samples"], "distance": dists.get("layer2"),
              "grid_distance": dists.get("fixed_grid"), "params_m": params / 1e6,
              "settings": settings, "last_session_wall_s": time.time() - t0,
              **_train_log(run)}
    _write(run / "result.json", json.dumps(result, indent=1))
    log.info("%s seed %d: val top-1 %.2f %%", name, seed, 100 * result["top1"])
    return result


def _extends(run: Path, variant: str, seed: int, args: argparse.Namespace) -> bool:
    """Whether the finished ``run`` is to be continued to ``--budget``: only with
    ``--resume``, a budget above the one it finished at, and a constant learning rate
    (``--schedule none``), under which a longer run is the same run continued; a schedule
    shaped by the budget (one-cycle, cosine) would jump. Otherwise it is skipped (logged)."""
    done = json.loads((run / "result.json").read_text())["budget"]
    if args.budget <= done:
        log.info("%s seed %d: finished earlier, skipped", variant, seed)
        return False
    if args.schedule != "none" or not args.resume:
        log.warning("%s seed %d: finished earlier at %d videos, skipped: continuing it to %d "
                    "needs --resume and a constant learning rate (--schedule none); use "
                    "another --out", variant, seed, done, args.budget)
        return False
    log.info("%s seed %d: finished at %d videos, continued to %d", variant, seed, done,
             args.budget)
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="study folder (keep it outside the repo)")
    ap.add_argument("--budget", type=int, default=24_000, help="training videos per run")
    ap.add_argument("--variants", default=",".join(PAPER),
                    help=f"comma-separated, run in this order; from {sorted(PAPER)}, or "
                         f"{sorted(EXTRA)}")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--train-videos", type=int, default=20_000)
    ap.add_argument("--val-videos", type=int, default=2_000)
    ap.add_argument("--geometry", default="authors", choices=sorted(GEOMETRIES),
                    help="the data and presets: authors (128 x 128 frames, presets "
                         "syncmnist_r18_128_*) or demo (64 x 64, syncmnist_r18_*)")
    ap.add_argument("--task", default="multisync", choices=sorted(TASKS),
                    help="multisync: the paper's 56-way MultiSyncMNIST; sync2: 2 digits, the "
                         "label one bit 'sync' / 'no sync'; direction2: one of 2 digits drifts, "
                         "the label 'right' / 'left'; binding2: 2 digits drift opposite ways, "
                         "the label which way the lower class goes (reduced tasks, "
                         "appearance-only ceiling 50 %%)")
    ap.add_argument("--rule", default=None, choices=sorted(DATA_RULES),
                    help="the multisync data rule (how many digits move in sync; not given by "
                         "the paper): 2to5 (our guess of the authors', appearance-only ceiling "
                         "50.75 %%; the authors' geometry's default), 2or3 (the study's runs "
                         "before issue 38, 31.98 %%; the demo's default), 2to5iid (55.85 %%)")
    ap.add_argument("--protocol", default="onecycle", choices=sorted(PROTOCOLS),
                    help="onecycle: Adam one-cycle, peak lr 2e-3, batch 32, clip 5; paper: SGD "
                         "lr 1e-3 momentum 0.9, constant lr, batch 10, weight decay 5e-4, no "
                         "clipping (the authors' code); the flags below override it")
    ap.add_argument("--batch-size", type=int, default=None, help="(default: the protocol's)")
    ap.add_argument("--optim", default=None, choices=["adam", "adamw", "sgd"],
                    help="(default: the protocol's)")
    ap.add_argument("--lr", type=float, default=None,
                    help="peak lr of the schedule (default: the protocol's)")
    ap.add_argument("--momentum", type=float, default=None,
                    help="SGD momentum (default: the protocol's)")
    ap.add_argument("--schedule", default=None, help="(default: the protocol's)")
    ap.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    ap.add_argument("--eval-every", type=int, default=100_000,
                    help="validate every N epochs (default: only at the end of the budget; "
                         "--schedule plateau needs 1)")
    ap.add_argument("--clip-grad", type=float, default=None,
                    help="gradient-norm clipping, 0 = off (default: the protocol's)")
    ap.add_argument("--weight-decay", type=float, default=None,
                    help="(default: the protocol's)")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-every", type=int, default=150, help="steps between checkpoints")
    ap.add_argument("--workers", type=int, default=1, help="data-loading processes")
    ap.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=True,
                    help="decode the training split once and train from RAM")
    ap.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                    help="with --in-memory: keep the decoded split in DIR/data/"
                         "train-inmemory.pt (about the size of the shards), memory-mapped by "
                         "every run, so parallel runs decode once and share one copy")
    ap.add_argument("--data-workers", type=int, default=2,
                    help="processes generating the shards and decoding them for --cache "
                         "(the videos do not depend on it)")
    ap.add_argument("--data-only", action="store_true",
                    help="only generate the shards, and with --in-memory --cache decode them "
                         "(before starting runs in parallel)")
    ap.add_argument("--resume", action="store_true", help="continue unfinished runs")
    ap.add_argument("--table-only", action="store_true", help="only rebuild the tables")
    ap.add_argument("--dyreg", action="append", default=[], metavar="KEY=VALUE",
                    help="investigation: a DyRegConfig field for every run (repeatable; needs "
                         "--tag)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="investigation: a training-config field (as train --set) for every "
                         "run (repeatable; needs --tag)")
    ap.add_argument("--tag", default="", help="name suffix of investigation runs")
    args = ap.parse_args(argv)
    resolve_protocol(args)
    if args.task != "multisync" and args.rule:
        raise SystemExit(f"--rule: the data rules are multisync's; --task {args.task} has its own")
    if args.task == "multisync":
        args.rule = args.rule or GEOMETRY_RULES[args.geometry]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(PAPER) - set(EXTRA))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {sorted(PAPER)} or "
                         f"{sorted(EXTRA)}")
    if args.budget < args.batch_size:
        raise SystemExit(f"--budget: expected at least one batch ({args.batch_size}), got "
                         f"{args.budget}")
    if bool(args.dyreg or args.set) != bool(args.tag) or "-" in args.tag:
        raise SystemExit("--dyreg/--set and --tag go together; the tag may not contain '-'")
    if args.tag in PROTOCOLS:
        raise SystemExit(f"--tag: {args.tag!r} names a protocol; choose another tag")
    for v in variants:
        preset_name(v, args.geometry)
    _parse_items(args.dyreg + args.set)  # fail early on a malformed item
    check_task(args.task, args.geometry)
    digits = TASKS[args.task]["digits"]
    if "oracle" in variants and digits != 5 and \
            _parse_items(args.dyreg).get("num_nodes") != digits:
        raise SystemExit(f"--variants oracle: its regions are the digits' boxes, {digits} under "
                         f"--task {args.task}: add --dyreg num_nodes={digits} (and a --tag)")
    if args.table_only:
        write_tables(out)
        return
    make_data(out / "data", args.train_videos, args.val_videos, args.data_workers,
              args.geometry, args.task, args.rule)
    if args.data_only:
        if args.in_memory and args.cache:  # decode once, for the runs started next
            data = out / "data"
            load_train_in_memory(load_config("syncmnist_demo", [
                f"data.train={split_pattern(data, 'train')}",
                f"data.val={split_pattern(data, 'val')}", "data.in_memory=true",
                f"data.num_workers={args.data_workers}",
            ] + [s for s in args.set if s.startswith("data.")]), _memory_cache(data, args))
        return
    memory: dict[str, Any] = {}  # the decoded training split, shared by the runs
    for seed in [int(s) for s in args.seeds.split(",")]:
        for v in variants:
            run = out / run_name(v, args.protocol, args.tag) / f"seed{seed}"
            if (run / "result.json").exists() and not _extends(run, v, seed, args):
                continue
            if run.exists() and not args.resume:
                raise SystemExit(f"{run} exists: pass --resume to continue it")
            log.info("%s seed %d: %d steps of %d videos (%.1f epochs of the training set)",
                     v, seed, args.budget // args.batch_size, args.batch_size,
                     args.budget / args.train_videos)
            result = run_one(out, v, seed, args, memory)
            if not math.isfinite(result["val_loss"] or 0.0):
                log.warning("%s seed %d: non-finite validation loss", v, seed)
            write_tables(out)


if __name__ == "__main__":
    main()
