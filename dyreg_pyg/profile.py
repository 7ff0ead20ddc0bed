"""Parameters and FLOPs of a video model, split into backbone and DyReg modules (Table 1).

    python -m dyreg_pyg.profile --preset tsm_r50_dyreg --frames 16 --size 224

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts one
multiply-add as 2 FLOPs and only matrix products and convolutions (no element-wise ops). The
paper's "FLOPS" column follows TSM's convention of counting multiply-adds (TSM-R50 at
16 x 224 x 224: 65.8 G), so both are printed.

:func:`count_step_ops` counts the aten operations of one training forward+backward (a
:class:`~torch.utils._python_dispatch.TorchDispatchMode`): on a GPU nearly every non-view
operation is a kernel launch, so this count, not the FLOPs, bounds a small model's step time
there (``benchmarks/bench_step_ops.py`` tabulates it per preset).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ModelProfile", "profile_model", "format_profile", "PAPER_TABLE1_GMACS", "StepOps",
           "count_step_ops", "main"]

log = logging.getLogger(__name__)

PAPER_TABLE1_GMACS: dict[str, float] = {"backbone": 65.8, "dyreg": 1.6, "dyreg_regions": 0.2}
"""Paper (Table 1 and Section 4.1), TSM-R50 with three DyReg modules at 16 x 224 x 224:
backbone, the three modules, and the region prediction inside them, in G multiply-adds."""

_ATTACHMENT_SUFFIX = ".dyreg_after"


@dataclass
class ModelProfile:
    """Counts for one clip ``[batch, frames, channels, size, size]`` (FLOPs: 2 per
    multiply-add); the DyReg share is everything inside the model's DyReg blocks."""

    frames: int
    size: int
    params_total: int
    params_dyreg: int
    flops_total: int
    flops_dyreg: int
    flops_regions: int
    batch: int = 1

    @property
    def params_backbone(self) -> int:
        """Parameters outside the DyReg blocks (backbone and classifier)."""
        return self.params_total - self.params_dyreg

    @property
    def flops_backbone(self) -> int:
        """FLOPs outside the DyReg blocks (backbone and classifier)."""
        return self.flops_total - self.flops_dyreg

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "params_backbone": self.params_backbone,
                "flops_backbone": self.flops_backbone}


@torch.no_grad()
def profile_model(model: nn.Module, frames: int | None = None, size: int | None = None,
                  channels: int | None = None, batch: int = 1) -> ModelProfile:
    """Count parameters and FLOPs of ``model`` on one zero clip (eval mode).

    Args:
        model: a :class:`~dyreg_pyg.models.VideoModel` (any module taking ``[B, T, C, H, W]``
            works; without ``dyreg_blocks()`` everything counts as backbone).
        frames, size, channels: clip shape; default the model's ``num_frames``,
            ``input_size`` and ``in_chans``.
        batch: clips in the batch.
    """
    frames = frames or getattr(model, "num_frames", None)
    size = size or getattr(model, "input_size", (None,))[0]
    channels = channels or getattr(model, "in_chans", 3)
    if not frames or not size or frames < 1 or size < 1 or batch < 1:
        raise ValueError(f"profile_model: frames, size and batch must be positive, got "
                         f"frames={frames}, size={size}, batch={batch}")
    blocks = model.dyreg_blocks() if hasattr(model, "dyreg_blocks") else {}
    p_total = sum(p.numel() for p in model.parameters())
    p_dyreg = sum(p.numel() for b in blocks.values() for p in b.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with counter:
            model(torch.zeros(batch, frames, channels, size, size))
    finally:
        model.train(was_training)
    per_module = counter.get_flop_counts()

    def total(keys_end: str) -> int:
        return int(sum(sum(counts.values()) for key, counts in per_module.items()
                       if key.endswith(keys_end)))

    return ModelProfile(
        frames=frames, size=size, params_total=p_total, params_dyreg=p_dyreg,
        flops_total=int(sum(per_module.get("Global", {}).values())),
        flops_dyreg=total(_ATTACHMENT_SUFFIX),
        flops_regions=total(_ATTACHMENT_SUFFIX + ".dyreg.gnn.region_generator"),
        batch=batch,
    )


def format_profile(prof: ModelProfile, name: str = "model", paper: bool = False) -> str:
    """A text table of ``prof``; with ``paper=True`` the paper's Table 1 figures beside it."""
    g = 1e9
    rows = [
        ("parameters (M)", prof.params_backbone / 1e6, prof.params_dyreg / 1e6, None, None),
        ("GMACs (paper 'FLOPS')", prof.flops_backbone / 2 / g, prof.flops_dyreg / 2 / g,
         PAPER_TABLE1_GMACS["backbone"], PAPER_TABLE1_GMACS["dyreg"]),
        ("  region prediction", None, prof.flops_regions / 2 / g,
         None, PAPER_TABLE1_GMACS["dyreg_regions"]),
        ("GFLOPs (2 per MAC)", prof.flops_backbone / g, prof.flops_dyreg / g, None, None),
    ]

    def cell(v: float | None, fmt: str = ">11.3f") -> str:
        return f"{'':>11}" if v is None else f"{v:{fmt}}"

    head = f"{'':<24}{'backbone':>11}{'DyReg':>11}{'DyReg/bb':>10}"
    if paper:
        head += f"{'paper bb':>11}{'paper DyReg':>12}{'paper %':>9}"
    out = [f"{name}: {prof.batch} x {prof.frames} x {prof.size} x {prof.size}", head]
    for label, a, b, pa, pb in rows:
        line = f"{label:<24}{cell(a)}{cell(b)}"
        line += f"{b / a:>10.2%}" if a and b is not None else f"{'':>10}"
        if paper:
            line += cell(pa) + (f"{pb:>12.3f}" if pb is not None else f"{'':>12}")
            line += f"{pb / pa:>9.2%}" if pa and pb is not None else ""
        out.append(line)
    return "\n".join(out)


@dataclass
class StepOps:
    """aten operations dispatched by one step, by name (``mul``, ``select``, ...), split into
    view operations (``select``, ``slice``, ``view``, ...: no data moved, no kernel on a GPU)
    and the others."""

    views: Counter[str] = field(default_factory=Counter)
    compute: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    """With ``count_step_ops(..., by_source=True)``: operations by where they ran -
    ``forward:<module name>`` (the innermost module whose ``forward`` dispatched them,
    ``forward:`` for the loss) and ``backward:<autograd node>`` (e.g.
    ``backward:MulBackward0``, ``backward:AccumulateGrad``); views included."""

    @property
    def total(self) -> int:
        """All operations, views included."""
        return self.num_views + self.num_compute

    @property
    def num_views(self) -> int:
        """View operations."""
        return sum(self.views.values())

    @property
    def num_compute(self) -> int:
        """Non-view operations (roughly one kernel launch each on a GPU)."""
        return sum(self.compute.values())

    def top(self, n: int = 5) -> list[tuple[str, int]]:
        """The ``n`` most frequent operations, views and others together."""
        return (self.views + self.compute).most_common(n)

    def to_dict(self) -> dict[str, Any]:
        out = {"total": self.total, "views": self.num_views, "non_views": self.num_compute,
               "by_name": dict((self.views + self.compute).most_common())}
        if self.sources:
            out["by_source"] = dict(self.sources.most_common())
        return out

    def by_source(self, depth: int = 3) -> Counter[str]:
        """:attr:`sources` with module names cut to their first ``depth`` parts (a module's
        operations counted with its ancestor's at that depth)."""
        out: Counter[str] = Counter()
        for key, n in self.sources.items():
            phase, _, where = key.partition(":")
            if phase == "forward":
                where = ".".join(where.split(".")[:depth])
            out[f"{phase}:{where}"] += n
        return out


class _OpCounter(TorchDispatchMode):
    """Counts every aten operation that reaches the dispatcher while active."""

    def __init__(self, ops: StepOps, modules: list[str] | None = None) -> None:
        super().__init__()
        self.ops = ops
        self.modules = modules  # the stack of running forwards, when counting by source

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func.overloadpacket.__name__
        (self.ops.views if func.is_view else self.ops.compute)[name] += 1
        if self.modules is not None:
            self.ops.sources[self._source()] += 1
        return func(*args, **(kwargs or {}))

    def _source(self) -> str:
        current = getattr(torch._C, "_current_autograd_node", None)
        node = current() if current is not None else None
        if node is not None:
            return f"backward:{node.name().rsplit('::', 1)[-1]}"
        return f"forward:{self.modules[-1] if self.modules else ''}"


def _track_forwards(model: nn.Module, stack: list[str]) -> list[Any]:
    """Hooks that keep ``stack`` = the names of the modules whose ``forward`` is running."""
    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()  # returns None: the output is kept

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda _m, _a, n=name: stack.append(n)))
        handles.append(module.register_forward_hook(leave))
    return handles


def count_step_ops(model: nn.Module, clips: torch.Tensor,
                   labels: torch.Tensor | None = None, by_source: bool = False) -> StepOps:
    """Count the aten operations of one training forward, cross-entropy and backward.

    The model runs in training mode (restored afterwards); its gradients are accumulated into
    ``.grad`` as in a training step (no optimiser step). ``labels`` default to class 0.
    Forward and backward run inside the counter (the autograd engine's operations included).
    ``by_source``: also count them by module and autograd node (:attr:`StepOps.sources`).
    """
    if clips.dim() != 5:
        raise ValueError(f"count_step_ops: expected clips [B, T, C, H, W], got shape "
                         f"{tuple(clips.shape)}")
    if labels is None:
        labels = torch.zeros(clips.shape[0], dtype=torch.long, device=clips.device)
    was_training = model.training
    model.train()
    ops = StepOps()
    stack: list[str] | None = [] if by_source else None
    handles = _track_forwards(model, stack) if stack is not None else []
    try:
        with _OpCounter(ops, stack):
            loss = F.cross_entropy(model(clips).float(), labels)
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return ops


def main(argv: list[str] | None = None) -> int:
    """Command line: profile one preset and print the table (optionally write JSON)."""
    from .models import build_preset, list_presets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tsm_r50_dyreg", choices=list_presets())
    ap.add_argument("--frames", type=int, default=None, help="default: the preset's")
    ap.add_argument("--size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--json", default=None, help="also write the counts to this file")
    args = ap.parse_args(argv)
    overrides = {}
    if args.frames:
        overrides["num_frames"] = args.frames
    if args.size:
        overrides["input_size"] = args.size
    model = build_preset(args.preset, **overrides)
    prof = profile_model(model)
    paper = args.preset == "tsm_r50_dyreg" and (prof.frames, prof.size) == (16, 224)
    print(format_profile(prof, args.preset, paper=paper))  # noqa: T201 - command-line output
    if args.preset == "tsm_r50_dyreg" and not paper:
        print("(the paper's figures are for 16 x 224 x 224)")  # noqa: T201
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"preset": args.preset, **prof.to_dict()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
