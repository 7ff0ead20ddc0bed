"""Validation (during ``fit``) and ``evaluate`` (a checkpoint on shards): accuracy, confusion
matrix, the region-object distance, and the samples the loaders skipped."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dyreg_pyg._checks import NonFiniteError, check_finite_logits
from dyreg_pyg.data import EmptyDataError, explain_skips
from dyreg_pyg.metrics import DistanceMeter, confusion_matrix, topk_correct
from dyreg_pyg.nn.regions import reference_points

from .config import TrainConfig
from .data import batch_object_centres, external_regions, make_loader, normalise
from .dist import DistEnv, all_reduce_sum, gather_objects, setup_distributed
from .model import dyreg_blocks, load_trained, needs_regions
from .step import autocast, warn_precision

__all__ = ["validate", "evaluate", "forward_views", "skip_counts", "skip_scalars", "skip_text",
           "distance_text", "distance_note"]

log = logging.getLogger("train")


def forward_views(model: nn.Module, video: torch.Tensor,
                  regions: torch.Tensor | None = None,
                  keys: list[str] | None = None) -> torch.Tensor:
    """Logits averaged over views for ``[B, V, T, C, H, W]`` (softmax scores averaged),
    plain logits for ``[B, T, C, H, W]``. ``regions`` (external-region models) are single-view.

    Raises:
        NonFiniteError: the model's logits hold NaN or inf (``keys``: the batch's sample
            keys, the first bad ones are named), before they become a loss or a top-5.
    """
    if video.dim() == 5:
        logits = model(video) if regions is None else model(video, regions=regions)
        check_finite_logits(logits, "validation", keys)
        return logits
    if regions is not None:
        raise ValueError("regions='external': multi-view evaluation is not supported")
    b, v = video.shape[:2]
    logits = model(video.flatten(0, 1))
    check_finite_logits(logits.view(b, -1), "validation", keys)
    return logits.float().softmax(-1).view(b, v, -1).mean(1).log()


def skip_counts(loader: Any) -> dict[str, Any]:
    """The samples ``loader`` skipped in its current (or last) epoch, over ranks, each lost
    sample once (:class:`~dyreg_pyg.data.loader.EpochLosses`):
    ``{"count", "reasons": {reason: n}, "shards": [names of shards with errors]}`` (zeros for
    loaders that skip nothing, e.g. clips held in memory). Every rank must call it."""
    from dyreg_pyg.data.loader import EpochLosses

    skips = getattr(loader, "epoch_skips", None)
    losses = getattr(loader, "epoch_losses", None)
    local = {"reasons": dict(skips.reasons) if skips is not None else {},
             "shards": [k for k, r, _ in (skips.examples if skips is not None else [])
                        if r in ("shard_error", "shard_short")],
             "losses": losses.state() if isinstance(losses, EpochLosses) else None}
    reasons: Counter = Counter()
    shards: list[str] = []
    parts = gather_objects(local)
    for part in parts:
        reasons.update(part["reasons"])
        shards += [s for s in part["shards"] if s not in shards]
    if len(parts) > 1 and all(part["losses"] is not None for part in parts):
        # a shard (or sample) lost on several ranks in this epoch is one loss
        reasons = Counter(EpochLosses.union([part["losses"] for part in parts]))
    return {"count": sum(reasons.values()), "reasons": dict(sorted(reasons.items())),
            "shards": shards[:20]}


def skip_scalars(prefix: str, skipped: dict[str, Any]) -> dict[str, float]:
    """``skip_counts`` as logged scalars: ``<prefix>/skipped[/<reason>]``."""
    return {f"{prefix}/skipped": skipped["count"],
            **{f"{prefix}/skipped/{r}": n for r, n in skipped["reasons"].items()}}


def skip_text(skipped: dict[str, Any]) -> str:
    """``"no sample skipped"`` or ``"5 skipped (missing_cls: 5)"``."""
    if not skipped["count"]:
        return "no sample skipped"
    parts = ", ".join(f"{r}: {n}" for r, n in sorted(skipped["reasons"].items()))
    return f"{skipped['count']} skipped ({parts})"


@torch.no_grad()
def validate(model: nn.Module, loader, cfg: TrainConfig, env: DistEnv,
             num_classes: int, record_regions: bool = True) -> dict[str, Any]:
    """Top-1/top-5, per-class accuracy, confusion matrix and the region-object distance,
    gathered over ranks, with the samples skipped (``"skipped"``: count and reasons). Every
    sample is counted once (checked by key). Torch's CPU random state is left as it was (the
    loader draws from it), so that stopping, validating and resuming continues the same run.

    Raises:
        EmptyDataError: no labelled sample was read (on every rank); the message says why
            (empty or unreadable shards, no labels, labels outside the class map, ...).
        NonFiniteError: the model's logits held NaN or inf (on any rank: every rank stops
            reading and raises); no metric is returned.
    """
    with torch.random.fork_rng(devices=[]):
        model.eval()
        blocks = dyreg_blocks(model)
        for blk in blocks.values():
            blk.record = record_regions
        tally = _Tally(meters={name: DistanceMeter() for name in blocks})
        regions_in = needs_regions(model)
        for batch in loader:
            _add_batch(tally, model, batch, cfg, env, regions_in)
            if tally.nonfinite:
                break  # raised in _summarise, on every rank at once
            if blocks and record_regions:
                _add_region_distances(tally, batch, blocks)
        for blk in blocks.values():
            blk.record = False
            blk.last = None
        return _summarise(tally, loader, cfg, env, num_classes)


@dataclass
class _Tally:
    """One rank's validation so far."""

    meters: dict[str, DistanceMeter]                 # region-object distance per block
    grid: DistanceMeter = field(default_factory=DistanceMeter)  # the fixed 3x3 grid's
    keys: list[str] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    top5: int = 0
    loss_sum: float = 0.0
    single_view: bool = True
    nonfinite: str = ""  # why the last batch's logits were refused (NaN / inf)
    boxes_seen: bool = False  # a single-view batch carried object boxes


def _add_batch(tally: _Tally, model: nn.Module, batch: dict, cfg: TrainConfig, env: DistEnv,
               regions_in: bool) -> None:
    video = normalise(batch["video"].to(env.device, non_blocking=True), cfg)
    label = batch["label"].to(env.device)
    regions = external_regions(batch).to(env.device) if regions_in else None
    try:
        with autocast(cfg, env.device):
            logits = forward_views(model, video, regions, list(batch["key"])).float()
    except NonFiniteError as exn:
        tally.nonfinite = str(exn)
        return
    tally.loss_sum += float(F.nll_loss(logits.log_softmax(-1), label, reduction="sum"))
    tally.top5 += topk_correct(logits, label, (1, 5))[5]
    tally.keys += list(batch["key"])
    tally.preds += logits.argmax(-1).tolist()
    tally.labels += label.tolist()
    tally.single_view = video.dim() == 5


def _add_region_distances(tally: _Tally, batch: dict, blocks: dict[str, nn.Module]) -> None:
    """Distances of the last batch's regions to the objects' centres (single-view clips with
    object boxes only), and of the fixed grid for reference when N is a square."""
    if not tally.single_view:
        return
    centres, mask = batch_object_centres(batch)
    if centres is None:
        return
    tally.boxes_seen = True
    for name, blk in blocks.items():
        reg = blk.last.regions[..., :2].cpu()  # [B, T, N, 2]
        tally.meters[name].update(reg.flatten(0, 1), centres.flatten(0, 1), mask.flatten(0, 1))
    n = next(iter(blocks.values())).last.regions.shape[2]
    side = math.isqrt(n)
    if side * side == n:
        grid = reference_points(n, "grid").expand(centres.shape[0] * centres.shape[1], n, 2)
        tally.grid.update(grid, centres.flatten(0, 1), mask.flatten(0, 1))


def distance_note(tally: _Tally, cfg: TrainConfig) -> str:
    """Why no region-object distance was measured (it was ``None`` without a word)."""
    if not tally.meters:
        return "not measured: the model has no DyReg block"
    if not tally.single_view:
        return (f"not measured: {cfg.data.num_clips} clips x {cfg.data.num_crops} crops per "
                "video - the regions of several views have no single ground-truth frame; "
                "evaluate with --num-clips 1 --num-crops 1 to measure it")
    if not tally.boxes_seen:
        return "not measured: the shards hold no object boxes (e.g. Something-Else annotations)"
    return "not measured: no box was visible in the sampled frames"


def distance_text(metrics: dict[str, Any]) -> str:
    """The region-object distance of each block (and the fixed grid's), or why there is none."""
    d = metrics["region_object_distance"]
    if all(v is None for v in d.values()):
        return "region-object distance " + (metrics.get("region_object_distance_note")
                                            or "not measured")
    return "region-object distance " + ", ".join(
        f"{k} {v:.4f}" for k, v in d.items() if v is not None)


def _predict_hint(reasons: dict[str, int]) -> str:
    """What to run instead when a split yielded no labelled sample because its samples have no
    label (e.g. the Something-Something test split): ``""`` for any other cause."""
    if not reasons.get("missing_cls"):
        return ""
    return "; the split has no labels: use `python -m train predict` to classify its videos"


def _summarise(tally: _Tally, loader, cfg: TrainConfig, env: DistEnv,
               num_classes: int) -> dict[str, Any]:
    """The metrics over every rank (collectives: every rank calls this)."""
    parts = gather_objects({"keys": tally.keys, "preds": tally.preds, "labels": tally.labels,
                            "nonfinite": tally.nonfinite})
    refused = [p["nonfinite"] for p in parts if p["nonfinite"]]
    if refused:
        raise NonFiniteError(refused[0])
    all_keys = [k for p in parts for k in p["keys"]]
    all_preds = torch.tensor([x for p in parts for x in p["preds"]], dtype=torch.long)
    all_labels = torch.tensor([x for p in parts for x in p["labels"]], dtype=torch.long)
    if len(set(all_keys)) != len(all_keys):
        raise RuntimeError(
            f"validation saw {len(all_keys) - len(set(all_keys))} duplicated samples across "
            "ranks; the validation shards must be split by node"
        )
    meters = [*tally.meters.values(), tally.grid]
    dist_vals = [v for m in meters for v in (m.total, m.count)]
    sums = all_reduce_sum([tally.loss_sum, tally.top5, *dist_vals], env.device)
    n = len(all_keys)
    skipped = skip_counts(loader)
    if n == 0:
        raise EmptyDataError(
            f"validation: no labelled sample was read from {cfg.data.val!r}: "
            f"{explain_skips(skipped['reasons'], skipped['shards'])}"
            f"{_predict_hint(skipped['reasons'])}")
    conf = confusion_matrix(all_preds, all_labels, num_classes)
    support = conf.sum(1)
    per_class = [float(conf[c, c] / support[c]) if support[c] else None
                 for c in range(num_classes)]
    names = [*tally.meters.keys(), "fixed_grid"]
    distances = {name: sums[2 + 2 * i] / sums[3 + 2 * i] if sums[3 + 2 * i] else None
                 for i, name in enumerate(names)}
    return {
        "samples": n,
        "top1": float((all_preds == all_labels).float().mean()),
        "region_object_distance_note": (None if any(v is not None for v in distances.values())
                                        else distance_note(tally, cfg)),
        "top5": sums[1] / n,
        "loss": sums[0] / n,
        "per_class_accuracy": per_class,
        "confusion_matrix": conf.tolist(),
        "region_object_distance": distances,
        "skipped": skipped,
    }


def evaluate(checkpoint: str, data: str, num_clips: int = 1, num_crops: int = 1,
             out: str | None = None, batch_size: int | None = None,
             device: str = "auto", overrides: list[str] | None = None,
             official: str | None = None, class_map: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on shards; writes ``metrics.json`` (rank 0). ``official``: the
    checkpoint is the authors' (``.pth.tar``) and this config names the model. The
    checkpoint's classes must be the shards' (:mod:`train.classmap`: a ``ClassMapError``
    says what differs), unless ``class_map`` (a ``--class-map`` JSON file) maps them."""
    from .classmap import ModelClasses, RemappedLoader, checkpoint_classes, class_map_for

    env = setup_distributed(device)
    if official:
        from .official import load_official_run

        model, cfg, num_classes = load_official_run(checkpoint, official, data, num_clips,
                                                    num_crops, overrides)
        classes = ModelClasses(num_classes, None, cfg.data.dataset)
    else:
        model, cfg, num_classes = load_trained(checkpoint, data, num_clips, num_crops,
                                               overrides)
        classes = checkpoint_classes(checkpoint)
    mapping = class_map_for(classes, data, class_map, cfg.data.read_timeout)
    if batch_size:
        cfg.data.eval_batch_size = batch_size
    warn_precision(cfg, env.device)
    model.to(env.device)
    loader = RemappedLoader(make_loader(cfg, "val", epoch=0), num_classes, mapping)
    metrics = validate(model, loader, cfg, env, num_classes)
    metrics.update(checkpoint=str(checkpoint), data=data, num_clips=num_clips,
                   num_crops=num_crops,
                   **({"class_map": {str(k): v for k, v in mapping.items()}} if mapping else {}))
    if env.is_main:
        path = Path(out) if out else Path(checkpoint).parent / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=1))
        log.info("top1 %.4f top5 %.4f on %d samples (%s), %s -> %s", metrics["top1"],
                 metrics["top5"], metrics["samples"], skip_text(metrics["skipped"]),
                 distance_text(metrics), path)
    return metrics
