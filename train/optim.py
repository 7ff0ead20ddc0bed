"""The optimiser and its learning-rate schedules.

Two schedules act on one optimiser, both from :mod:`torch.optim.lr_scheduler`:

- per epoch, :class:`PlateauSchedule` (``optim.schedule=plateau``): torch's
  ``ReduceLROnPlateau`` on validation top-1, plus the cap ``optim.max_reductions``;
- per optimiser step, a ``LambdaLR`` whose multiplier is :func:`lr_factor` (warm-up, cosine,
  step, one-cycle). Torch's ``CosineAnnealingLR``, ``MultiStepLR`` and ``OneCycleLR`` are not
  these curves: here warm-up multiplies any schedule, the step milestones are epochs, the
  one-cycle is linear up then cosine down to a 1e-3 floor without momentum cycling, and every
  per-step schedule lags one step (the first step runs at the base lr, step ``s + 1`` at the
  schedule's value for step ``s``), so they would change the learning rates of existing runs.

The per-step schedule is a function of the step count, so a checkpoint needs no state for it:
resuming sets the count (old checkpoints resume the same way). The plateau's state is the
three numbers checkpoints have always held (``best``, ``bad_epochs``, ``reductions``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from .config import OptimConfig, TrainConfig

__all__ = ["make_optimizer", "PlateauSchedule", "lr_factor", "Schedules"]

log = logging.getLogger("train")


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
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


class PlateauSchedule(ReduceLROnPlateau):
    """lr / 10 when validation top-1 stops improving (by more than 1e-9) for more than
    ``patience`` epochs, at most ``max_reductions`` times; ``reductions`` counts them."""

    def __init__(self, optimizer: torch.optim.Optimizer, patience: int, max_reductions: int):
        super().__init__(optimizer, mode="max", factor=0.1, patience=patience, threshold=1e-9,
                         threshold_mode="abs", eps=0.0)
        self.max_reductions = max_reductions
        self.reductions = 0

    def step_epoch(self, metric: float | None) -> None:
        """One whole epoch's top-1; ``None`` (not a plateau run, or a partial epoch) is no
        epoch. After the last reduction nothing changes any more."""
        if metric is None or self.reductions >= self.max_reductions:
            return
        before = self.optimizer.param_groups[0]["lr"]
        self.step(metric)
        if self.optimizer.param_groups[0]["lr"] != before:
            self.reductions += 1
            log.info("plateau: lr / 10 (reduction %d of %d)", self.reductions,
                     self.max_reductions)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``plateau`` entry (the same three numbers as ever)."""
        return {"best": self.best, "bad_epochs": self.num_bad_epochs,
                "reductions": self.reductions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.num_bad_epochs = state["best"], state["bad_epochs"]
        self.reductions = state["reductions"]


def lr_factor(o: OptimConfig, step: int, total: int, epoch: int) -> float:
    """Multiplier of the base lr after optimiser step ``step`` (0-based) of ``total``, taken in
    epoch ``epoch``: linear warm-up (``warmup_steps``) times cosine / step / nothing; one-cycle
    (no warm-up): 0.04 -> 1 linearly over 30% of the steps, then cosine down to 1e-3."""
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


class Schedules:
    """The learning-rate schedules of one run of ``total_steps`` optimiser steps.

    Call :meth:`step` after every optimiser step and :meth:`epoch_end` after every
    validation; :meth:`resume` after loading the optimiser's state from a checkpoint."""

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                 steps_per_epoch: int) -> None:
        o = cfg.optim
        self.optim, self.total, self.steps_per_epoch = o, total_steps, steps_per_epoch
        self.plateau = PlateauSchedule(optimizer, o.plateau_patience, o.max_reductions)
        # a plateau-only run changes the lr only at epoch ends
        per_step = o.schedule not in ("plateau", "none") or o.warmup_steps
        self.per_step = LambdaLR(optimizer, self.multiplier) if per_step else None

    def multiplier(self, done: int) -> float:
        """The base lr's multiplier for the step after ``done`` optimiser steps (the schedule
        lags one step: the first step runs at the base lr), with the plateau's reductions."""
        if done == 0:
            return 1.0
        s = done - 1
        return lr_factor(self.optim, s, self.total, s // self.steps_per_epoch) * \
            0.1 ** self.plateau.reductions

    def step(self) -> None:
        if self.per_step is not None:
            self.per_step.step()

    def epoch_end(self, top1: float | None) -> None:
        """A validation's top-1 after a whole epoch (``None`` after a partial one)."""
        self.plateau.step_epoch(top1 if self.optim.schedule == "plateau" else None)

    def resume(self, steps_done: int, plateau_state: dict[str, Any]) -> None:
        """Continue after ``steps_done`` steps; the optimiser already holds the lr of the
        next step (loaded from the checkpoint), the base lrs come from the config."""
        self.plateau.load_state_dict(plateau_state)
        if self.per_step is not None:
            self.per_step.last_epoch = steps_done
