"""``fit``: the training loop - set-up, resume, epochs of steps, validation, checkpoints.

The rooms around it: :mod:`train.optim` (optimiser, learning-rate schedules),
:mod:`train.step` (one training step), :mod:`train.validate` (validation and ``evaluate``),
:mod:`train.model` (building, loading and unwrapping the model), :mod:`train.logs` (scalars),
:mod:`train.checkpoint` (atomic files). The names that scripts import from here
(``evaluate``, ``validate``, ``build_model``, ``load_trained``, ...) are re-exported.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from dyreg_pyg.data import EmptyDataError, InMemoryClips

from .checkpoint import capture_rng, load_checkpoint, load_model_state, restore_rng, save_checkpoint
from .config import TrainConfig, config_to_dict
from .data import (
    load_train_in_memory,
    make_loader,
    read_class_names,
    read_num_classes,
    read_split_size,
)
from .dist import DistEnv, all_reduce_sum, barrier, gather_objects, setup_distributed
from .logs import ScalarLog, progress_bar_wanted
from .model import build_model, freeze_partial_bn, load_teachers, load_trained
from .optim import PlateauSchedule, Schedules, make_optimizer
from .step import NonFiniteLossError, train_step, warn_precision
from .validate import distance_text, evaluate, skip_counts, skip_scalars, skip_text, validate

__all__ = ["fit", "evaluate", "validate", "build_model", "load_trained", "skip_counts",
           "freeze_partial_bn", "PlateauSchedule", "NonFiniteLossError"]

log = logging.getLogger("train")


@dataclass
class _State:
    """The counters a checkpoint holds (its ``state`` entry)."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0       # batches already consumed in the current epoch
    best_top1: float = -1.0


@dataclass
class _EpochMeter:
    """Training loss, accuracy and speed over the current epoch (this rank), and the
    accuracy since the last scalar log (``recent_*``: reset by each log)."""

    t0: float
    seen: int = 0
    correct: int = 0
    loss_sum: float = 0.0
    recent_seen: int = 0
    recent_correct: int = 0

    def videos_per_s(self, world_size: int) -> float:
        return self.seen * world_size / max(time.time() - self.t0, 1e-9)


@dataclass
class _Run:
    """What the parts of one ``fit`` share."""

    cfg: TrainConfig
    env: DistEnv
    out: Path
    model: nn.Module                  # the user's model: checkpoints hold its state
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    num_classes: int
    memory: InMemoryClips | None      # training clips held in memory (data.in_memory)
    steps_per_epoch: int
    total_steps: int
    schedules: Schedules
    train_skips: Counter              # training samples skipped over this run, by reason
    net: nn.Module | None = None      # what trains: the model inside DDP / torch.compile
    state: _State = field(default_factory=_State)
    rng_state: dict[str, Any] | None = None  # a resumed run's RNG, restored at its epoch start
    teachers: dict[str, nn.Module] = field(default_factory=dict)
    distill_steps: int = 0
    logger: ScalarLog | None = None
    val_loader: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)  # the last validation's
    start_time: float = 0.0
    stop: bool = False
    class_names: list[str] | None = None  # the training manifest's, saved with the weights

    def save(self, name: str) -> None:
        """``<out_dir>/<name>``: everything a resumed run needs (written atomically)."""
        save_checkpoint({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "plateau": self.schedules.plateau.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "state": asdict(self.state),
            "rng": capture_rng(),
            "config": config_to_dict(self.cfg),
            "num_classes": self.num_classes,
            # a list of str: loadable with weights_only=True; predict names classes with it
            **({"class_names": self.class_names} if self.class_names else {}),
        }, self.out / name)


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
    if env.is_main:
        warn_precision(cfg, env.device)
    run = _build(cfg, env, train_clips)
    _resume(run, resume)
    _wrap(run)
    run.start_time = time.time()
    try:
        while run.state.epoch < cfg.epochs and not run.stop:
            loader, meter = _train_epoch(run)
            _end_epoch(run, loader, meter)
    finally:
        run.logger.close()
    return _finish(run)


def _build(cfg: TrainConfig, env: DistEnv, train_clips: InMemoryClips | None) -> _Run:
    """The run's folder, model, optimiser, training data and schedules (nothing resumed)."""
    out = Path(cfg.out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    barrier()
    d = cfg.data  # a manifest read over HTTP(S) waits data.read_timeout at most
    num_classes = d.num_classes or read_num_classes(d.train, d.read_timeout)
    torch.manual_seed(cfg.seed)
    model = _model_on_device(cfg, env, num_classes)
    optimizer = make_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda") if (cfg.precision == "fp16" and
                                               env.device.type == "cuda") else None
    if cfg.data.in_memory and train_clips is None:
        train_clips = load_train_in_memory(cfg)  # leaves the RNG as it was
    memory = train_clips if cfg.data.in_memory else None
    world_batch = cfg.data.batch_size * env.world_size
    train_count = len(memory) if memory is not None else (
        d.epoch_size or read_split_size(d.train, d.read_timeout))
    # the loader yields train_count // world_batch batches per rank and epoch; an optimiser
    # step consumes `accumulate` of them
    steps_per_epoch = max(1, train_count // world_batch // cfg.optim.accumulate)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    return _Run(cfg=cfg, env=env, out=out, model=model, optimizer=optimizer, scaler=scaler,
                num_classes=num_classes, memory=memory, steps_per_epoch=steps_per_epoch,
                total_steps=total_steps,
                schedules=Schedules(cfg, optimizer, total_steps, steps_per_epoch),
                # clips held in memory: the samples skipped while decoding them
                train_skips=Counter(memory.skips.reasons if memory is not None else {}),
                class_names=read_class_names(d.train, num_classes, d.read_timeout, fetch=not (
                    d.num_classes and d.epoch_size)) if env.is_main else None)


def _model_on_device(cfg: TrainConfig, env: DistEnv, num_classes: int) -> nn.Module:
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
    return model


def _resume(run: _Run, resume: str | None) -> None:
    """Load ``resume`` (a path, or ``"auto"``: ``<out_dir>/last.pt`` when there is one)."""
    path = None
    if resume == "auto":
        if (run.out / "last.pt").exists():
            path = run.out / "last.pt"
        elif run.env.is_main:
            log.info("--resume auto: no checkpoint in %s, starting fresh", run.out)
    elif resume:
        path = Path(resume)
    if path is None:
        return
    ck = load_checkpoint(path)
    load_model_state(run.model, ck["model"], str(path))
    run.optimizer.load_state_dict(ck["optimizer"])  # holds the lr of the next step
    run.state = _State(**ck["state"])
    run.schedules.resume(run.state.step, ck["plateau"])
    if run.scaler is not None and ck.get("scaler"):
        run.scaler.load_state_dict(ck["scaler"])
    run.rng_state = ck["rng"]
    if run.class_names is None and ck.get("class_names") and run.env.is_main:
        run.class_names = [str(n) for n in ck["class_names"]]  # the manifest has gone since
    if run.env.is_main:
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, run.state.step,
                 run.state.epoch, run.state.epoch_step)


def _wrap(run: _Run) -> None:
    """Teachers, the DDP / ``torch.compile`` wrappers, the scalar log, the validation data."""
    cfg, env = run.cfg, run.env
    run.teachers = load_teachers(cfg, env) if cfg.distill.teachers else {}
    run.distill_steps = int(cfg.distill.fraction * run.total_steps) if run.teachers else 0
    net: nn.Module = run.model
    if env.distributed:
        net = DDP(net, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                  find_unused_parameters=bool(cfg.model.overrides.get(
                      "find_unused_parameters", False)))
    if cfg.compile:
        # static shapes: with automatic dynamic shapes, inductor fails on the DyReg hook's
        # fold/unfold of [B*T, C, H, W] (symbolic stride comparison); a last, smaller batch
        # just compiles once more. One graph (no break: tests/test_compile.py) but under
        # DDP, whose optimizer splits the graph at its gradient buckets.
        net = torch.compile(net, dynamic=False, fullgraph=not env.distributed)
    run.net = net
    run.logger = ScalarLog(run.out, env.is_main)
    run.val_loader = make_loader(cfg, "val", epoch=0) if cfg.data.val else None


def _train_epoch(run: _Run) -> tuple[Any, _EpochMeter]:
    """The optimiser steps left in the current epoch, or up to a stop (``max_steps``,
    ``max_minutes``); returns the epoch's loader (for its skip counts) and meter."""
    cfg, state = run.cfg, run.state
    run.net.train()
    if cfg.partial_bn:
        freeze_partial_bn(run.net)
    loader = make_loader(cfg, "train", epoch=state.epoch, memory=run.memory)
    it = iter(loader)
    for _ in range(state.epoch_step * cfg.optim.accumulate):  # resumed epoch: skip
        next(it)
    if run.rng_state is not None:
        restore_rng(run.rng_state)
        run.rng_state = None
    meter = _EpochMeter(t0=time.time())
    progress = _progress(run.env, run.steps_per_epoch, state, run.cfg.progress)
    while state.epoch_step < run.steps_per_epoch:
        if cfg.max_steps and state.step >= cfg.max_steps:  # resumed a finished run
            run.stop = True
            break
        micro = [next(it) for _ in range(cfg.optim.accumulate)]
        state.epoch_step += 1
        _optimiser_step(run, micro, meter)
        _report_step(run, meter, progress)
        if _should_stop(run):
            run.stop = True
            break
    if progress is not None:
        progress.close()
    return loader, meter


def _optimiser_step(run: _Run, micro: list[dict], meter: _EpochMeter) -> None:
    state = run.state
    loss_val, hits, n = train_step(run.net, micro, run.cfg, run.env, run.optimizer, run.scaler,
                                   run.teachers, state.step < run.distill_steps)
    if not math.isfinite(loss_val):
        raise NonFiniteLossError(
            f"loss is {loss_val} at step {state.step} (epoch {state.epoch}); "
            f"stopping - checkpoints in {run.out} are left untouched. The cause was "
            "not diagnosed (inputs, model outputs and optimiser were not checked)."
        )
    run.schedules.step()
    state.step += 1
    meter.seen += n
    meter.correct += hits
    meter.loss_sum += loss_val * n
    meter.recent_seen += n
    meter.recent_correct += hits


def _report_step(run: _Run, meter: _EpochMeter, progress) -> None:
    """Progress bar, scalars every ``log_every`` steps, ``last.pt`` every ``ckpt_every``."""
    cfg, env, state = run.cfg, run.env, run.state
    if progress is not None:
        progress.set_postfix(loss=f"{meter.loss_sum / meter.seen:.3f}",
                             acc=f"{meter.correct / meter.seen:.3f}",
                             vps=f"{meter.videos_per_s(env.world_size):.1f}")
        progress.update(1)
    if state.step % cfg.log_every == 0:
        # train/top1 is over the epoch so far; train/top1_recent over the steps since the
        # last log - on a first epoch, an accuracy on clips the model had not trained on
        if env.is_main:
            run.logger.scalars(state.step, {
                "train/loss": meter.loss_sum / meter.seen,
                "train/top1": meter.correct / meter.seen,
                "train/top1_recent": meter.recent_correct / max(meter.recent_seen, 1),
                "train/lr": run.optimizer.param_groups[0]["lr"],
                "train/videos_per_s": meter.videos_per_s(env.world_size)})
        meter.recent_seen = meter.recent_correct = 0
    if state.step % cfg.ckpt_every == 0 and env.is_main:
        run.save("last.pt")


def _should_stop(run: _Run) -> bool:
    """``max_steps`` reached, or any rank past ``max_minutes`` (then all ranks stop)."""
    cfg = run.cfg
    over_time = cfg.max_minutes is not None and (
        time.time() - run.start_time > 60 * cfg.max_minutes)
    return bool(cfg.max_steps and run.state.step >= cfg.max_steps) or _agree(over_time, run.env)


def _end_epoch(run: _Run, loader, meter: _EpochMeter) -> None:
    """Count the epoch (when whole), report its skips, validate, save ``last.pt``."""
    cfg, env, state = run.cfg, run.env, run.state
    epoch_done = state.epoch_step >= run.steps_per_epoch
    if epoch_done:
        state.epoch += 1
        state.epoch_step = 0
    skipped = skip_counts(loader)  # every rank: a collective
    run.train_skips.update(skipped["reasons"])
    if env.is_main:
        log.info("epoch %d: %d steps, train loss %.4f top1 %.4f, %.1f videos/s, %s",
                 state.epoch, state.step, meter.loss_sum / max(meter.seen, 1),
                 meter.correct / max(meter.seen, 1), meter.videos_per_s(env.world_size),
                 skip_text(skipped))
        run.logger.scalars(state.step, skip_scalars("train", skipped))
    if run.val_loader is not None and (run.stop or state.epoch % cfg.eval_every == 0):
        _validate_epoch(run, epoch_done)
    if env.is_main:
        run.save("last.pt")
    barrier()


def _validate_epoch(run: _Run, epoch_done: bool) -> None:
    env, state = run.env, run.state
    try:
        metrics = validate(run.net, run.val_loader, run.cfg, env, run.num_classes)
    except EmptyDataError:
        if env.is_main:  # keep the training done so far, then fail loudly
            run.save("last.pt")
        raise
    # only whole epochs count towards a plateau (a time/step stop validates a partial one,
    # and the run may be resumed)
    run.schedules.epoch_end(metrics["top1"] if epoch_done else None)
    run.metrics = metrics
    if not env.is_main:
        return
    log.info("val: top1 %.4f top5 %.4f (%d samples, %s) %s", metrics["top1"], metrics["top5"],
             metrics["samples"], skip_text(metrics["skipped"]), distance_text(metrics))
    run.logger.scalars(state.step, {
        "val/top1": metrics["top1"], "val/top5": metrics["top5"], "val/loss": metrics["loss"],
        **{f"val/dist/{k}": v for k, v in metrics["region_object_distance"].items()},
        **skip_scalars("val", metrics["skipped"])})
    _log_region_pictures(run)
    if metrics["top1"] > state.best_top1:
        state.best_top1 = metrics["top1"]
        run.save("best.pt")


def _log_region_pictures(run: _Run) -> None:
    """The regions of the first ``cfg.tb_regions`` validation clips, with their true and
    predicted classes, as TensorBoard images ``regions/<i>`` (rank 0, TensorBoard installed,
    a model with DyReg blocks). One clip x one crop each; the RNG is left as it was."""
    tb = run.logger.tb if run.logger is not None else None
    blocks = getattr(run.model, "dyreg_blocks", dict)()
    if tb is None or run.cfg.tb_regions <= 0 or not blocks:
        return
    from .visualize import add_to_tensorboard, collect_regions, region_pictures

    data = replace(run.cfg.data, num_clips=1, num_crops=1, num_workers=0)
    cfg = replace(run.cfg, data=data)
    with torch.random.fork_rng(devices=[]):
        _, samples = collect_regions(run.model, make_loader(cfg, "val"), cfg, cfg.tb_regions)
    add_to_tensorboard(tb, region_pictures(samples, run.class_names), run.state.step)


def _finish(run: _Run) -> dict[str, Any]:
    """Replica checksums (DDP), the run's skip summary, ``val_metrics.json``."""
    env, out, metrics = run.env, run.out, run.metrics
    if env.distributed:  # DDP must keep the replicas identical; record the evidence
        flat = torch.cat([p.detach().float().flatten().cpu() for p in run.model.parameters()])
        sums = gather_objects([float(flat.sum()), float(flat.abs().sum())])
        if env.is_main:
            (out / "replicas.json").write_text(json.dumps({"checksums": sums}))
    train_skipped = {"count": sum(run.train_skips.values()),
                     "reasons": dict(sorted(run.train_skips.items()))}
    if env.is_main:
        log.info("training done: %d steps, %d epochs; training samples skipped over this "
                 "run: %s", run.state.step, run.state.epoch, skip_text(train_skipped))
    if metrics:
        metrics["train_skipped"] = train_skipped
    if env.is_main and metrics:
        (out / "val_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _agree(flag: bool, env: DistEnv) -> bool:
    """All ranks stop together when any rank hits the time limit."""
    if not env.distributed:
        return flag
    return all_reduce_sum([float(flag)], env.device)[0] > 0


def _progress(env: DistEnv, total: int, state: _State, setting: str):
    if not env.is_main or not progress_bar_wanted(setting):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=state.epoch_step, desc=f"epoch {state.epoch}",
                dynamic_ncols=True, mininterval=2.0)
