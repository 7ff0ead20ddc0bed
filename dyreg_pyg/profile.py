"""Parameters and FLOPs of a video model, split into backbone and DyReg modules.

    python -m dyreg_pyg.profile --preset tsm_r50_dyreg --frames 16 --size 224

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (one multiply-add
= 2 FLOPs); the paper's "FLOPS" column counts multiply-adds, so both are printed.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ModelProfile", "profile_model", "main"]

log = logging.getLogger(__name__)


@dataclass
class ModelProfile:
    """Counts for one clip of ``frames x size x size``."""

    params_total: int
    params_dyreg: int
    flops_total: int
    flops_dyreg: int

    @property
    def params_backbone(self) -> int:
        return self.params_total - self.params_dyreg

    @property
    def flops_backbone(self) -> int:
        return self.flops_total - self.flops_dyreg


@torch.no_grad()
def profile_model(model: torch.nn.Module, frames: int, size: int, channels: int = 3
                  ) -> ModelProfile:
    """Count parameters and FLOPs of ``model`` on one clip ``[1, frames, channels, size, size]``;
    the DyReg share is everything inside the model's DyReg blocks."""
    blocks = model.dyreg_blocks() if hasattr(model, "dyreg_blocks") else {}
    p_total = sum(p.numel() for p in model.parameters())
    p_dyreg = sum(p.numel() for b in blocks.values() for p in b.parameters())
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        model(torch.zeros(1, frames, channels, size, size))
    per_module = counter.get_flop_counts()
    total = sum(per_module.get("Global", {}).values())
    dyreg = sum(sum(counts.values()) for key, counts in per_module.items()
                if key.endswith(".dyreg_after"))
    return ModelProfile(p_total, p_dyreg, int(total), int(dyreg))


def main(argv: list[str] | None = None) -> int:
    from .models import build_preset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tsm_r50_dyreg")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    model = build_preset(args.preset, num_frames=args.frames, input_size=args.size)
    chans = model.backbone.conv1.in_channels if hasattr(model.backbone, "conv1") else 3
    prof = profile_model(model, args.frames, args.size, chans)
    g = 1e9
    rows = [
        ("parameters (M)", prof.params_backbone / 1e6, prof.params_dyreg / 1e6),
        ("GMACs (paper 'FLOPS')", prof.flops_backbone / 2 / g, prof.flops_dyreg / 2 / g),
        ("GFLOPs (2 per MAC)", prof.flops_backbone / g, prof.flops_dyreg / g),
    ]
    out = [f"{args.preset} at {args.frames} x {args.size} x {args.size}",
           f"{'':<24}{'backbone':>12}{'DyReg':>12}{'DyReg/backbone':>16}"]
    for name, a, b in rows:
        out.append(f"{name:<24}{a:>12.3f}{b:>12.3f}{b / max(a, 1e-12):>16.3%}")
    if args.preset == "tsm_r50_dyreg" and args.frames == 16 and args.size == 224:
        out.append("paper (Table 1): TSM-R50 65.8 G, + 1.6 G for three DyReg modules (+2.4 %)")
    print("\n".join(out))  # noqa: T201 - command-line output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
