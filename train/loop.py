"""``fit`` and ``evaluate``: the training loop, validation, checkpoints and logging."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dyreg_pyg.data import EmptyDataError, InMemoryClips, explain_skips
from dyreg_pyg.metrics import DistanceMeter, confusion_matrix, topk_correct
from dyreg_pyg.regions import reference_points

from .checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_model_state,
    restore_rng,
    save_checkpoint,
)
from .config import TrainConfig, config_from_dict, config_to_dict
from .data import (
    batch_object_centres,
    external_regions,
    load_train_in_memory,
    make_loader,
    normalise,
    read_num_classes,
)
from .dist import DistEnv, all_reduce_sum, barrier, gather_objects, setup_distributed

__all__ = ["fit", "evaluate", "build_model", "load_trained", "skip_counts",
           "NonFiniteLossError"]

log = logging.getLogger("train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stops without touching the checkpoints."""


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The video model of ``cfg.model`` (a :mod:`dyreg_pyg.models` preset + overrides), built
    for clips of ``cfg.data.num_frames`` frames (``model.overrides.num_frames``, when given,
    must agree: :func:`~train.config.validate`)."""
    from dyreg_pyg.models import build_preset

    kwargs = dict(cfg.model.overrides)
    kwargs.setdefault("num_frames", cfg.data.num_frames)
    kwargs["num_classes"] = num_classes
    if cfg.model.pretrained_file:
        kwargs["pretrained_file"] = cfg.model.pretrained_file
    return build_preset(cfg.model.preset, **kwargs)


def load_trained(checkpoint: str | Path, val: str, num_clips: int = 1, num_crops: int = 1,
                 overrides: list[str] | None = None) -> tuple[nn.Module, TrainConfig, int]:
    """A trained run's model (weights loaded, on the CPU), its config pointed at the
    validation shards ``val`` with the given views, and its number of classes."""
    from .config import apply_overrides

    ck = load_checkpoint(checkpoint)
    cfg = config_from_dict(apply_overrides(ck["config"], list(overrides or [])))
    cfg.data.val, cfg.data.num_clips, cfg.data.num_crops = val, num_clips, num_crops
    model = build_model(cfg, ck["num_classes"])
    load_model_state(model, ck["model"], str(checkpoint))
    return model, cfg, ck["num_classes"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any ``torch.compile`` and DDP wrappers (fit builds
    ``torch.compile(DDP(model))``)."""
    while True:
        if isinstance(model, DDP):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _ddp(model: nn.Module) -> DDP | None:
    """The DDP wrapper of ``model`` (also inside ``torch.compile``), or ``None``."""
    while not isinstance(model, DDP):
        if not hasattr(model, "_orig_mod"):
            return None
        model = model._orig_mod
    return model


def _dyreg_blocks(model: nn.Module) -> dict[str, nn.Module]:
    m = _unwrap(model)
    return m.dyreg_blocks() if hasattr(m, "dyreg_blocks") else {}


def _needs_regions(model: nn.Module) -> bool:
    """Whether the model's DyReg blocks take external regions (the oracle)."""
    m = _unwrap(model)
    return bool(getattr(m, "needs_regions", lambda: False)())


def _is_dyreg_module(m: nn.Module) -> bool:
    """A module of the DyReg library itself (a block, its graph module, region branch,
    layers), as opposed to the backbone it is inserted in (``dyreg_pyg.models`` wraps
    backbones and holds no DyReg norms of its own)."""
    name = type(m).__module__
    return name.startswith("dyreg_pyg.") and not name.startswith("dyreg_pyg.models")


def freeze_partial_bn(model: nn.Module) -> int:
    """TSM's partial BatchNorm, on the backbone only: every backbone BatchNorm but the first
    goes to eval mode with frozen affine parameters (call after ``model.train()``). The norms
    of the DyReg blocks (write-back, region branch) are new layers: they keep training.
    Returns how many were frozen."""
    frozen = 0
    first = True

    def visit(m: nn.Module) -> None:
        nonlocal frozen, first
        if _is_dyreg_module(m):
            return  # the whole DyReg subtree keeps its norms training
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if first:
                first = False
            else:
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)
                frozen += 1
        for child in m.children():
            visit(child)

    visit(_unwrap(model))
    return frozen


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Groups by (weight decay, ``optim.lr_mult``); 1-d tensors and ``gamma`` get no decay."""
    o = cfg.optim
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    matched: set[str] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.dim() <= 1 or name.endswith(".gamma"))
        key = next((k for k in o.lr_mult if k in name), None)
        if key is not None:
            matched.add(key)
        groups.setdefault((decay, float(o.lr_mult.get(key, 1.0))), []).append(p)
    unused = sorted(set(o.lr_mult) - matched)
    if unused:
        raise ValueError(f"optim.lr_mult: {unused} match no trainable parameter name")
    params = [{"params": ps, "weight_decay": o.weight_decay if decay else 0.0, "lr": o.lr * mult}
              for (decay, mult), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0],
                                                                                kv[0][1]))]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr)


class PlateauSchedule:
    """lr / 10 when validation top-1 stops improving, at most ``max_reductions`` times."""

    def __init__(self, optimizer: torch.optim.Optimizer, patience: int, max_reductions: int):
        self.optimizer, self.patience, self.max_reductions = optimizer, patience, max_reductions
        self.best = -math.inf
        self.bad_epochs = 0
        self.reductions = 0

    def step_epoch(self, metric: float | None) -> None:
        if metric is None:
            return
        if metric > self.best + 1e-9:
            self.best, self.bad_epochs = metric, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience and self.reductions < self.max_reductions:
            for g in self.optimizer.param_groups:
                g["lr"] *= 0.1
            self.reductions += 1
            self.bad_epochs = 0
            log.info("plateau: lr / 10 (reduction %d of %d)", self.reductions,
                     self.max_reductions)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "reductions": self.reductions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.reductions = state["reductions"]


def _lr_factor(cfg: TrainConfig, step: int, total: int, epoch: int) -> float:
    """Multiplier of the base lr for the per-step schedules (warm-up, cosine, step, one-cycle)."""
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    if o.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    if o.schedule == "step":
        return warm * 0.1 ** sum(epoch >= e for e in o.step_epochs)
    if o.schedule == "onecycle":
        pct = step / max(total, 1)
        if pct < 0.3:
            return 0.04 + 0.96 * pct / 0.3
        return 0.5 * (1 + math.cos(math.pi * (pct - 0.3) / 0.7)) + 1e-3
    return warm


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    epoch_step: int = 0       # batches already consumed in the current epoch
    best_top1: float = -1.0


class _Logger:
    """Rank-0 scalars to TensorBoard (when installed) and to a CSV/JSONL file."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.jsonl = open(out_dir / "metrics.jsonl", "a")  # noqa: SIM115
        self.csv_path = out_dir / "scalars.csv"
        new = not self.csv_path.exists()
        self.csv = open(self.csv_path, "a", newline="")  # noqa: SIM115
        self.writer = csv.writer(self.csv)
        if new:
            self.writer.writerow(["step", "tag", "value"])
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception as err:  # tensorboard not installed
            log.info("TensorBoard disabled (%s)", err)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if not self.enabled:
            return
        clean = {k: v for k, v in values.items() if v is not None}
        self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self.jsonl.flush()
        for k, v in clean.items():
            self.writer.writerow([step, k, v])
            if self.tb is not None:
                self.tb.add_scalar(k, v, step)
        self.csv.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.csv.close()
            if self.tb is not None:
                self.tb.close()


def _autocast(cfg: TrainConfig, device: torch.device):
    """Mixed precision: fp16/bf16 autocast on CUDA, bf16 on CPU (oneDNN; 1.4-1.7x faster
    training on AVX512-BF16 cores, see benchmarks/bench_train_speed.py). DyReg's regions and
    kernels stay float32 either way."""
    if cfg.precision == "fp32" or (device.type == "cpu" and cfg.precision != "bf16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _forward_views(model: nn.Module, video: torch.Tensor,
                   regions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits averaged over views for ``[B, V, T, C, H, W]`` (softmax scores averaged),
    plain logits for ``[B, T, C, H, W]``. ``regions`` (external-region models) are single-view."""
    if video.dim() == 5:
        return model(video) if regions is None else model(video, regions=regions)
    if regions is not None:
        raise ValueError("regions='external': multi-view evaluation is not supported")
    b, v = video.shape[:2]
    logits = model(video.flatten(0, 1))
    return logits.float().softmax(-1).view(b, v, -1).mean(1).log()


def skip_counts(loader: Any) -> dict[str, Any]:
    """The samples ``loader`` skipped in its current (or last) epoch, summed over ranks:
    ``{"count", "reasons": {reason: n}, "shards": [names of shards with errors]}`` (zeros for
    loaders that skip nothing, e.g. clips held in memory). Every rank must call it."""
    skips = getattr(loader, "epoch_skips", None)
    local = {"reasons": dict(skips.reasons) if skips is not None else {},
             "shards": [k for k, r, _ in (skips.examples if skips is not None else [])
                        if r in ("shard_error", "shard_short")]}
    reasons: Counter = Counter()
    shards: list[str] = []
    for part in gather_objects(local):
        reasons.update(part["reasons"])
        shards += [s for s in part["shards"] if s not in shards]
    return {"count": sum(reasons.values()), "reasons": dict(sorted(reasons.items())),
            "shards": shards[:20]}


def _skip_scalars(prefix: str, skipped: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}/skipped": skipped["count"],
            **{f"{prefix}/skipped/{r}": n for r, n in skipped["reasons"].items()}}


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
    """
    with torch.random.fork_rng(devices=[]):
        return _validate(model, loader, cfg, env, num_classes, record_regions)


def _validate(model: nn.Module, loader, cfg: TrainConfig, env: DistEnv, num_classes: int,
              record_regions: bool) -> dict[str, Any]:
    model.eval()
    blocks = _dyreg_blocks(model)
    for blk in blocks.values():
        blk.record = record_regions
    needs_regions = _needs_regions(model)
    meters = {name: DistanceMeter() for name in blocks}
    grid_meter = DistanceMeter()
    keys, preds, labels, scores_top5 = [], [], [], [0, 0]
    loss_sum = 0.0
    for batch in loader:
        video = normalise(batch["video"].to(env.device, non_blocking=True), cfg)
        label = batch["label"].to(env.device)
        regions = external_regions(batch).to(env.device) if needs_regions else None
        with _autocast(cfg, env.device):
            logits = _forward_views(model, video, regions).float()
        loss_sum += float(F.nll_loss(logits.log_softmax(-1), label, reduction="sum"))
        hits = topk_correct(logits, label, (1, 5))
        scores_top5[0] += hits[5]
        keys += list(batch["key"])
        preds += logits.argmax(-1).tolist()
        labels += label.tolist()
        if video.dim() == 5 and blocks and record_regions:
            centres, mask = batch_object_centres(batch)
            if centres is not None:
                for name, blk in blocks.items():
                    reg = blk.last.regions[..., :2].cpu()  # [B, T, N, 2]
                    meters[name].update(reg.flatten(0, 1), centres.flatten(0, 1),
                                        mask.flatten(0, 1))
                n = next(iter(blocks.values())).last.regions.shape[2]
                side = math.isqrt(n)
                if side * side == n:
                    grid = reference_points(n, "grid").expand(centres.shape[0] *
                                                              centres.shape[1], n, 2)
                    grid_meter.update(grid, centres.flatten(0, 1), mask.flatten(0, 1))
    for blk in blocks.values():
        blk.record = False
        blk.last = None

    parts = gather_objects({"keys": keys, "preds": preds, "labels": labels})
    all_keys = [k for p in parts for k in p["keys"]]
    all_preds = torch.tensor([x for p in parts for x in p["preds"]], dtype=torch.long)
    all_labels = torch.tensor([x for p in parts for x in p["labels"]], dtype=torch.long)
    if len(set(all_keys)) != len(all_keys):
        raise RuntimeError(
            f"validation saw {len(all_keys) - len(set(all_keys))} duplicated samples across "
            "ranks; the validation shards must be split by node"
        )
    dist_vals = []
    for m in [*meters.values(), grid_meter]:
        dist_vals += [m.total, m.count]
    sums = all_reduce_sum([loss_sum, scores_top5[0], *dist_vals], env.device)
    n = len(all_keys)
    skipped = skip_counts(loader)
    if n == 0:
        raise EmptyDataError(
            f"validation: no labelled sample was read from {cfg.data.val!r}: "
            f"{explain_skips(skipped['reasons'], skipped['shards'])}")
    conf = confusion_matrix(all_preds, all_labels, num_classes) if n else None
    per_class = None
    if conf is not None:
        support = conf.sum(1)
        per_class = [float(conf[c, c] / support[c]) if support[c] else None
                     for c in range(num_classes)]
    distances = {}
    for i, name in enumerate([*meters.keys(), "fixed_grid"]):
        tot, cnt = sums[2 + 2 * i], sums[3 + 2 * i]
        distances[name] = tot / cnt if cnt else None
    return {
        "samples": n,
        "top1": float((all_preds == all_labels).float().mean()) if n else 0.0,
        "top5": sums[1] / n if n else 0.0,
        "loss": sums[0] / n if n else None,
        "per_class_accuracy": per_class,
        "confusion_matrix": conf.tolist() if conf is not None else None,
        "region_object_distance": distances,
        "skipped": skipped,
    }


def _save(path: Path, model, optimizer, plateau, scaler, state: _State, cfg: TrainConfig,
          num_classes: int) -> None:
    save_checkpoint({
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "plateau": plateau.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": {"step": state.step, "epoch": state.epoch, "epoch_step": state.epoch_step,
                  "best_top1": state.best_top1},
        "rng": capture_rng(),
        "config": config_to_dict(cfg),
        "num_classes": num_classes,
    }, path)


def fit(cfg: TrainConfig, resume: str | None = None,
        train_clips: InMemoryClips | None = None) -> dict[str, Any]:
    """Train ``cfg``; returns the last validation metrics (rank 0) and writes checkpoints.

    ``resume="auto"`` continues from ``<out_dir>/last.pt`` when it exists (and says so when it
    does not); a path resumes from that checkpoint. With ``cfg.data.in_memory`` the training
    split is decoded once (or ``train_clips``, already decoded, is used: a study that trains
    several models on the same data decodes it once).
    """
    env = setup_distributed(cfg.device, timeout=cfg.dist_timeout)
    if cfg.threads and env.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    barrier()
    num_classes = cfg.data.num_classes or read_num_classes(cfg.data.train)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise ValueError(
            f"data: the shards have {num_classes} classes but the model has {model.num_classes}"
        )
    model.to(env.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and env.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = _make_optimizer(cfg, model)
    plateau = PlateauSchedule(optimizer, cfg.optim.plateau_patience, cfg.optim.max_reductions)
    scaler = torch.amp.GradScaler("cuda") if (cfg.precision == "fp16" and
                                               env.device.type == "cuda") else None
    state = _State()

    ckpt_path = None
    if resume == "auto":
        if (out / "last.pt").exists():
            ckpt_path = out / "last.pt"
        elif env.is_main:
            log.info("--resume auto: no checkpoint in %s, starting fresh", out)
    elif resume:
        ckpt_path = Path(resume)
    rng_state = None
    if ckpt_path is not None:
        ck = load_checkpoint(ckpt_path)
        load_model_state(model, ck["model"], str(ckpt_path))
        optimizer.load_state_dict(ck["optimizer"])
        plateau.load_state_dict(ck["plateau"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        state = _State(**ck["state"])
        rng_state = ck["rng"]
        if env.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt_path, state.step,
                     state.epoch, state.epoch_step)

    teachers = _load_teachers(cfg, env) if cfg.distill.teachers else {}
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    ddp_model: nn.Module = model
    if env.distributed:
        ddp_model = DDP(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                        find_unused_parameters=bool(cfg.model.overrides.get(
                            "find_unused_parameters", False)))
    if cfg.compile:
        # static shapes: with automatic dynamic shapes, inductor fails on the DyReg hook's
        # fold/unfold of [B*T, C, H, W] (symbolic stride comparison); a last, smaller batch
        # just compiles once more
        ddp_model = torch.compile(ddp_model, dynamic=False)

    if cfg.data.in_memory and train_clips is None:
        train_clips = load_train_in_memory(cfg)
    memory = train_clips if cfg.data.in_memory else None
    world_batch = cfg.data.batch_size * env.world_size
    train_count = len(memory) if memory is not None else (
        cfg.data.epoch_size or _split_size(cfg.data.train))
    # the loader yields train_count // world_batch batches per rank and epoch; an optimiser
    # step consumes `accumulate` of them
    steps_per_epoch = max(1, train_count // world_batch // cfg.optim.accumulate)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    distill_steps = int(cfg.distill.fraction * total_steps) if teachers else 0
    logger = _Logger(out, env.is_main)
    val_loader = make_loader(cfg, "val", epoch=0) if cfg.data.val else None
    metrics: dict[str, Any] = {}
    # samples skipped over this run (by reason); clips held in memory: those of the decoding
    train_skips: Counter = Counter(memory.skips.reasons if memory is not None else {})
    start_time = time.time()
    stop = False
    try:
        while state.epoch < cfg.epochs and not stop:
            ddp_model.train()
            if cfg.partial_bn:
                freeze_partial_bn(ddp_model)
            loader = make_loader(cfg, "train", epoch=state.epoch, memory=memory)
            it = iter(loader)
            for _ in range(state.epoch_step * cfg.optim.accumulate):  # resumed epoch: skip
                next(it)
            if rng_state is not None:
                restore_rng(rng_state)
                rng_state = None
            seen = correct = 0
            loss_acc = 0.0
            t0 = time.time()
            progress = _progress(env, steps_per_epoch, state)
            while state.epoch_step < steps_per_epoch:
                if cfg.max_steps and state.step >= cfg.max_steps:  # resumed a finished run
                    stop = True
                    break
                micro = []
                for _ in range(cfg.optim.accumulate):
                    micro.append(next(it))
                state.epoch_step += 1
                loss_val, hits, n = _train_step(ddp_model, micro, cfg, env, optimizer, scaler,
                                                teachers, state.step < distill_steps)
                if not math.isfinite(loss_val):
                    raise NonFiniteLossError(
                        f"loss is {loss_val} at step {state.step} (epoch {state.epoch}); "
                        f"stopping - checkpoints in {out} are left untouched. The cause was "
                        "not diagnosed (inputs, model outputs and optimiser were not checked)."
                    )
                factor = _lr_factor(cfg, state.step, total_steps, state.epoch)
                if cfg.optim.schedule != "plateau" or cfg.optim.warmup_steps:
                    for g, base in zip(optimizer.param_groups, base_lrs):
                        g["lr"] = base * factor * (0.1 ** plateau.reductions)
                state.step += 1
                seen += n
                correct += hits
                loss_acc += loss_val * n
                if progress is not None:
                    dt = time.time() - t0
                    progress.set_postfix(loss=f"{loss_acc / seen:.3f}",
                                         acc=f"{correct / seen:.3f}",
                                         vps=f"{seen * env.world_size / max(dt, 1e-9):.1f}")
                    progress.update(1)
                if env.is_main and state.step % cfg.log_every == 0:
                    logger.scalars(state.step, {
                        "train/loss": loss_acc / seen, "train/top1": correct / seen,
                        "train/lr": optimizer.param_groups[0]["lr"],
                        "train/videos_per_s": seen * env.world_size / (time.time() - t0)})
                if state.step % cfg.ckpt_every == 0 and env.is_main:
                    _save(out / "last.pt", model, optimizer, plateau, scaler, state, cfg,
                          num_classes)
                over_time = cfg.max_minutes is not None and (
                    time.time() - start_time > 60 * cfg.max_minutes)
                if (cfg.max_steps and state.step >= cfg.max_steps) or _agree(over_time, env):
                    stop = True
                    break
            if progress is not None:
                progress.close()
            epoch_done = state.epoch_step >= steps_per_epoch
            if epoch_done:
                state.epoch += 1
                state.epoch_step = 0
            skipped = skip_counts(loader)  # every rank: a collective
            train_skips.update(skipped["reasons"])
            if env.is_main:
                log.info("epoch %d: %d steps, train loss %.4f top1 %.4f, %.1f videos/s, %s",
                         state.epoch, state.step, loss_acc / max(seen, 1),
                         correct / max(seen, 1), seen * env.world_size / (time.time() - t0),
                         _skip_text(skipped))
                logger.scalars(state.step, _skip_scalars("train", skipped))
            if val_loader is not None and (stop or state.epoch % cfg.eval_every == 0):
                try:
                    metrics = validate(ddp_model, val_loader, cfg, env, num_classes)
                except EmptyDataError:
                    if env.is_main:  # keep the training done so far, then fail loudly
                        _save(out / "last.pt", model, optimizer, plateau, scaler, state, cfg,
                              num_classes)
                    raise
                # only whole epochs count towards a plateau (a time/step stop validates a
                # partial one, and the run may be resumed)
                plateau.step_epoch(metrics["top1"] if cfg.optim.schedule == "plateau" and
                                   epoch_done else None)
                if env.is_main:
                    d = metrics["region_object_distance"]
                    log.info("val: top1 %.4f top5 %.4f (%d samples, %s) region-object distance "
                             "%s", metrics["top1"], metrics["top5"], metrics["samples"],
                             _skip_text(metrics["skipped"]),
                             {k: None if v is None else round(v, 4) for k, v in d.items()})
                    logger.scalars(state.step, {
                        "val/top1": metrics["top1"], "val/top5": metrics["top5"],
                        "val/loss": metrics["loss"],
                        **{f"val/dist/{k}": v for k, v in d.items()},
                        **_skip_scalars("val", metrics["skipped"])})
                    if metrics["top1"] > state.best_top1:
                        state.best_top1 = metrics["top1"]
                        _save(out / "best.pt", model, optimizer, plateau, scaler, state, cfg,
                              num_classes)
            if env.is_main:
                _save(out / "last.pt", model, optimizer, plateau, scaler, state, cfg,
                      num_classes)
            barrier()
    finally:
        logger.close()
    if env.distributed:  # DDP must keep the replicas identical; record the evidence
        flat = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
        sums = gather_objects([float(flat.sum()), float(flat.abs().sum())])
        if env.is_main:
            (out / "replicas.json").write_text(json.dumps({"checksums": sums}))
    train_skipped = {"count": sum(train_skips.values()),
                     "reasons": dict(sorted(train_skips.items()))}
    if env.is_main:
        log.info("training done: %d steps, %d epochs; training samples skipped over this "
                 "run: %s", state.step, state.epoch, _skip_text(train_skipped))
    if metrics:
        metrics["train_skipped"] = train_skipped
    if env.is_main and metrics:
        (out / "val_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _skip_text(skipped: dict[str, Any]) -> str:
    """``"no sample skipped"`` or ``"5 skipped (missing_cls: 5)"``."""
    if not skipped["count"]:
        return "no sample skipped"
    parts = ", ".join(f"{r}: {n}" for r, n in sorted(skipped["reasons"].items()))
    return f"{skipped['count']} skipped ({parts})"


def _agree(flag: bool, env: DistEnv) -> bool:
    """All ranks stop together when any rank hits the time limit."""
    if not env.distributed:
        return flag
    return all_reduce_sum([float(flag)], env.device)[0] > 0


def _progress(env: DistEnv, total: int, state: _State):
    if not env.is_main:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=state.epoch_step, desc=f"epoch {state.epoch}",
                dynamic_ncols=True, mininterval=2.0)


def _split_size(pattern: str) -> int:
    from .data import read_split_size

    return read_split_size(pattern)


def _train_step(model, micro, cfg: TrainConfig, env: DistEnv, optimizer, scaler,
                teachers: dict[str, nn.Module], distill: bool) -> tuple[float, int, int]:
    """One optimiser step over ``len(micro)`` accumulated batches."""
    total_loss, hits, count = 0.0, 0, 0
    blocks = _dyreg_blocks(model) if distill else {}
    needs_regions = _needs_regions(model)
    for i, batch in enumerate(micro):
        video = normalise(batch["video"].to(env.device, non_blocking=True), cfg)
        label = batch["label"].to(env.device, non_blocking=True)
        ddp = _ddp(model)
        sync = i == len(micro) - 1 or ddp is None
        ctx = contextlib.nullcontext() if sync else ddp.no_sync()
        with ctx:
            for name in teachers:
                blocks[name].record = True
            regions = external_regions(batch).to(env.device) if needs_regions else None
            with _autocast(cfg, env.device):
                logits = model(video) if regions is None else model(video, regions=regions)
                loss = F.cross_entropy(logits.float(), label)
            if distill and teachers:
                loss = loss + cfg.distill.weight * _distill_loss(blocks, teachers, video)
            if not torch.isfinite(loss):
                return float(loss.detach()), 0, label.shape[0]
            (loss / len(micro)).backward() if scaler is None else \
                scaler.scale(loss / len(micro)).backward()
        total_loss += float(loss.detach()) * label.shape[0]
        hits += int((logits.argmax(-1) == label).sum())
        count += label.shape[0]
    if scaler is not None:
        scaler.unscale_(optimizer)
    if cfg.optim.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for blk in blocks.values():
        blk.record = False
    return total_loss / count, hits, count


def _load_teachers(cfg: TrainConfig, env: DistEnv) -> dict[str, nn.Module]:
    """Single-module teacher models, by the name of the student block they supervise."""
    teachers = {}
    for block_name, path in cfg.distill.teachers.items():
        ck = load_checkpoint(path)
        tcfg = config_from_dict(ck["config"])
        teacher = build_model(tcfg, ck["num_classes"])
        load_model_state(teacher, ck["model"], f"teacher {path}")
        teacher.to(env.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if block_name not in teacher.dyreg_blocks():
            raise CheckpointError(
                f"distill.teachers: teacher {path} has no DyReg block {block_name!r}; it has "
                f"{sorted(teacher.dyreg_blocks())}"
            )
        teachers[block_name] = teacher
    return teachers


def _distill_loss(blocks: dict[str, nn.Module], teachers: dict[str, nn.Module],
                  video: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the student's regions and each teacher's, per block."""
    losses = []
    for name, teacher in teachers.items():
        tblock = teacher.dyreg_blocks()[name]
        tblock.record = True
        with torch.no_grad():
            teacher(video)
        target = tblock.last.regions
        tblock.record = False
        student = blocks[name].last.live_regions  # still attached to the autograd graph
        losses.append(F.mse_loss(student.float(), target.float()))
    return torch.stack(losses).mean()


def evaluate(checkpoint: str, data: str, num_clips: int = 1, num_crops: int = 1,
             out: str | None = None, batch_size: int | None = None,
             device: str = "auto", overrides: list[str] | None = None,
             official: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on shards; writes ``metrics.json`` (rank 0). ``official``: the
    checkpoint is the authors' (``.pth.tar``) and this config names the model."""
    env = setup_distributed(device)
    if official:
        from .official import load_official_run

        model, cfg, num_classes = load_official_run(checkpoint, official, data, num_clips,
                                                    num_crops, overrides)
    else:
        model, cfg, num_classes = load_trained(checkpoint, data, num_clips, num_crops,
                                               overrides)
    if batch_size:
        cfg.data.eval_batch_size = batch_size
    model.to(env.device)
    loader = make_loader(cfg, "val", epoch=0)
    metrics = validate(model, loader, cfg, env, num_classes)
    metrics.update(checkpoint=str(checkpoint), data=data, num_clips=num_clips,
                   num_crops=num_crops)
    if env.is_main:
        path = Path(out) if out else Path(checkpoint).parent / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=1))
        log.info("top1 %.4f top5 %.4f on %d samples (%s) -> %s", metrics["top1"],
                 metrics["top5"], metrics["samples"], _skip_text(metrics["skipped"]), path)
    return metrics
