"""The embedded default main job: build a small MultiSyncMNIST, train, evaluate, draw.

No downloads: digits come from scikit-learn's bundled handwritten digits. Everything goes
under ``--out`` (default ``outputs/demo``, git-ignored).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .config import load_config

__all__ = ["run_demo"]

log = logging.getLogger("train")


def run_demo(out: str = "outputs/demo", minutes: float | None = None, train_videos: int = 6000,
             val_videos: int = 500, seed: int = 0, epochs: int | None = None) -> dict:
    """Build data (if missing), fit ``syncmnist_r18_dyreg``, evaluate, draw.

    Training follows the ``syncmnist_cpu`` preset (2 epochs, one-cycle, bf16, clips in RAM);
    ``epochs`` changes the schedule's length and ``minutes`` caps the wall time.
    """
    from dyreg_pyg.data import write_syncmnist_shards

    from .checkpoint import load_checkpoint
    from .loop import evaluate, fit
    from .visualize import visualize

    t0 = time.time()
    root = Path(out)
    data_dir = root / "data"
    for split, count in (("train", train_videos), ("val", val_videos)):
        manifest = data_dir / f"{split}-manifest.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("num_samples") == count:
            log.info("reusing %s", manifest)
            continue
        log.info("generating %d MultiSyncMNIST %s videos ...", count, split)
        write_syncmnist_shards(data_dir, split, count, seed=seed + (split == "val") * 7919,
                               workers=2)
    t_data = time.time() - t0
    train_pat = str(_pattern(data_dir, "train"))
    val_pat = str(_pattern(data_dir, "val"))
    run_dir = root / "run"
    overrides = [f"data.train={train_pat}", f"data.val={val_pat}", f"out_dir={run_dir}",
                 f"seed={seed}"]
    if minutes is not None:
        overrides.append(f"max_minutes={minutes}")
    if epochs is not None:
        overrides.append(f"epochs={epochs}")
    cfg = load_config("syncmnist_cpu", overrides)
    fit(cfg)
    ckpt = run_dir / "last.pt"
    trained = load_checkpoint(ckpt)["state"]
    metrics = evaluate(str(ckpt), val_pat, out=str(root / "metrics.json"))
    pics = visualize(str(ckpt), val_pat, str(root / "regions"), num=3,
                     export=str(root / "regions.json"))
    dist = metrics["region_object_distance"]
    summary = {
        "minutes_total": round((time.time() - t0) / 60, 2),
        "minutes_data": round(t_data / 60, 2),
        "train_steps": trained["step"],
        "train_videos_seen": trained["step"] * cfg.data.batch_size,
        "val_top1": metrics["top1"], "val_top5": metrics["top5"],
        "val_samples": metrics["samples"], "chance": 1 / 56,
        "region_object_distance": dist,
        "checkpoint": str(ckpt), "metrics": str(root / "metrics.json"),
        "pictures": [str(p) for p in pics],
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


def _pattern(folder: Path, split: str) -> str:
    shards = sorted(folder.glob(f"{split}-*.tar"))
    if not shards:
        raise FileNotFoundError(f"no {split} shards in {folder}")
    if len(shards) == 1:
        return str(shards[0])
    first, last = shards[0].stem.split("-")[-1], shards[-1].stem.split("-")[-1]
    return str(folder / f"{split}-{{{first}..{last}}}.tar")
