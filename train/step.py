"""One training step: forward under autocast, loss (+ offset distillation), backward over
accumulated micro-batches, gradient clipping, optimiser step."""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import external_regions, normalise
from .dist import DistEnv
from .model import ddp_of, dyreg_blocks, needs_regions

__all__ = ["NonFiniteLossError", "autocast", "warn_precision", "cpu_has_bf16", "train_step",
           "distill_loss"]


log = logging.getLogger("train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stops without touching the checkpoints."""


def autocast(cfg: TrainConfig, device: torch.device):
    """Mixed precision: fp16/bf16 autocast on CUDA, bf16 on CPU (oneDNN; 1.4-1.7x faster
    training on AVX512-BF16 cores, see benchmarks/bench_train_speed.py). DyReg's regions and
    kernels stay float32 either way. fp16 on the CPU is fp32 (:func:`warn_precision` says
    so once, at the start of ``fit`` and ``evaluate``)."""
    if cfg.precision == "fp32" or (device.type == "cpu" and cfg.precision != "bf16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def warn_precision(cfg: TrainConfig, device: torch.device) -> bool:
    """Log a warning when ``cfg.precision`` cannot be honoured on ``device``: fp16 autocast is
    CUDA-only, so on the CPU the run computes in fp32 (bf16 is the CPU's mixed precision).
    Returns whether it warned."""
    if cfg.precision == "fp16" and device.type != "cuda":
        log.warning(
            "precision=fp16 needs CUDA; on the %s this run computes in fp32 (set "
            "precision=bf16 for mixed precision on the CPU)", device.type)
        return True
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning(
            "precision=bf16 on a CPU without native bf16 (no AVX-512 / AMX): autocast is "
            "emulated, about 17x slower than fp32 on an AVX2 EPYC (measured, study/LOG.md); "
            "set precision=fp32 on this machine")
        return True
    return False


def cpu_has_bf16() -> bool:
    """Whether this CPU runs oneDNN's bf16 kernels natively (AVX-512 BW/VL/DQ, AMX, or Arm's
    bf16); on an AVX2-only x86 CPU bf16 autocast is emulated and far slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def train_step(model, micro, cfg: TrainConfig, env: DistEnv, optimizer, scaler,
               teachers: dict[str, nn.Module], distill: bool) -> tuple[float, int, int]:
    """One optimiser step over ``len(micro)`` accumulated batches: (mean loss, correct,
    samples). A non-finite loss returns at once, before any backward or optimiser step."""
    total_loss, hits, count = 0.0, 0, 0
    blocks = dyreg_blocks(model) if distill else {}
    regions_in = needs_regions(model)
    for i, batch in enumerate(micro):
        video = normalise(batch["video"].to(env.device, non_blocking=True), cfg)
        label = batch["label"].to(env.device, non_blocking=True)
        ddp = ddp_of(model)
        sync = i == len(micro) - 1 or ddp is None
        ctx = contextlib.nullcontext() if sync else ddp.no_sync()
        with ctx:
            for name in teachers:
                blocks[name].record = True
            regions = external_regions(batch).to(env.device) if regions_in else None
            with autocast(cfg, env.device):
                logits = model(video) if regions is None else model(video, regions=regions)
                loss = F.cross_entropy(logits.float(), label)
            if distill and teachers:
                loss = loss + cfg.distill.weight * distill_loss(blocks, teachers, video)
            if not torch.isfinite(loss):
                return float(loss.detach()), 0, label.shape[0]
            (loss / len(micro)).backward() if scaler is None else \
                scaler.scale(loss / len(micro)).backward()
        total_loss += float(loss.detach()) * label.shape[0]
        hits += int((logits.argmax(-1) == label).sum())
        count += label.shape[0]
    _optimizer_step(model, cfg, optimizer, scaler)
    for blk in blocks.values():
        blk.record = False
    return total_loss / count, hits, count


def _optimizer_step(model, cfg: TrainConfig, optimizer, scaler) -> None:
    """Unscale (fp16), clip the gradient norm (``optim.clip_grad``), step, zero the grads."""
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


def distill_loss(blocks: dict[str, nn.Module], teachers: dict[str, nn.Module],
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
