"""aten operations (and, on CUDA, kernels) per training forward+backward, per preset.

    python benchmarks/bench_step_ops.py [--json out.json] [--family syncmnist,tsm]
        [--batch 8 --frames 10 --size 64] [--tsm-batch 2 --tsm-frames 16 --tsm-size 112]
        [--device cuda]

One forward, cross-entropy and backward in training mode (no optimiser step) after one
uncounted warm-up step, counted with :func:`dyreg_pyg.profile.count_step_ops` (a
``TorchDispatchMode`` sees every aten operation, the autograd engine's included). View
operations (``select``, ``slice``, ``view``, ``detach``, ...) move no data and launch no
kernel; on a GPU nearly every other operation is one kernel launch, whatever the batch size,
so the non-view count is what a launch-bound step pays. Each row is compared with its family's
model without a graph (``syncmnist_r18_nograph``, ``tsm_r50``); the issue 37 goals are
DyReg <= 4x on ``syncmnist_r18_dyreg`` and <= 1.3x on ``tsm_r50_dyreg``.

The counts depend on batch size and resolution only where code branches on them (they do not
here: the same operations run on bigger tensors), but DyReg's per-frame work scales with the
number of frames, so the TSM rows use the presets' 16 frames at a small 112 x 112.

With ``--device cuda`` the CUDA kernels of the counted step are also counted with
``torch.profiler`` (every device-side event: kernels, memcpy and memset).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dyreg_pyg.models import build_preset
from dyreg_pyg.profile import StepOps, count_step_ops


@dataclass(frozen=True)
class Row:
    """One model to count: a preset, the flavour of its DyReg modules (``"-"`` without
    graph) and the row of its family's model without a graph."""

    preset: str
    flavor: str
    baseline: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.preset}/{self.flavor}"


FAMILIES: dict[str, tuple[Row, ...]] = {
    "syncmnist": (
        Row("syncmnist_r18_nograph", "-", "syncmnist_r18_nograph/-"),
        Row("syncmnist_r18_fixed", "paper", "syncmnist_r18_nograph/-"),
        Row("syncmnist_r18_dyreg", "paper", "syncmnist_r18_nograph/-"),
        Row("syncmnist_r18_dyreg", "authors", "syncmnist_r18_nograph/-",
            {"dyreg": {"flavor": "authors"}}),
    ),
    "tsm": (
        Row("tsm_r50", "-", "tsm_r50/-"),
        Row("tsm_r50_dyreg", "paper", "tsm_r50/-"),
        Row("tsm_r50_dyreg", "authors", "tsm_r50/-", {"dyreg": {"flavor": "authors"}}),
        Row("tsm_r50_dyreg_authors", "authors", "tsm_r50/-"),
    ),
}
"""The rows per family; ``tsm_r50_dyreg_authors`` is the authors' released placement (inside
the bottlenecks), ``tsm_r50_dyreg/authors`` the paper's placement with their module."""


def cuda_kernels(model: torch.nn.Module, clips: torch.Tensor) -> int:
    """CUDA device events (kernels, memcpy, memset) of one counted step (CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        count_step_ops(model, clips)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def count_row(row: Row, batch: int, frames: int, size: int,
              device: str = "cpu", by_source: int = 0) -> dict[str, Any]:
    """Build the row's model at ``frames`` x ``size`` and count one step (after a warm-up);
    ``by_source > 0``: also by module (names cut to that many parts) and autograd node."""
    torch.manual_seed(0)
    model = build_preset(row.preset, num_frames=frames, input_size=size,
                         **copy.deepcopy(row.overrides)).to(device)
    clips = torch.randn(batch, frames, model.in_chans, size, size, device=device)
    count_step_ops(model, clips)  # warm-up: lazily built buffers and caches
    model.zero_grad(set_to_none=True)
    ops: StepOps = count_step_ops(model, clips, by_source=by_source > 0)
    out: dict[str, Any] = {"preset": row.preset, "flavor": row.flavor, "label": row.label,
                           "baseline": row.baseline, "batch": batch, "frames": frames,
                           "size": size, **ops.to_dict(), "top5": ops.top(5)}
    if by_source > 0:
        out["by_source"] = dict(ops.by_source(by_source).most_common())
    if device.startswith("cuda"):
        model.zero_grad(set_to_none=True)
        out["cuda_kernels"] = cuda_kernels(model, clips)
    return out


def add_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``ratio_total`` and ``ratio_non_views`` against each row's baseline row (if counted)."""
    by_label = {r["label"]: r for r in results}
    for r in results:
        base = by_label.get(r["baseline"])
        for key in ("total", "non_views", "cuda_kernels"):
            if base and key in r and base.get(key):
                r[f"ratio_{key}"] = r[key] / base[key]
    return results


def _ratio(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.2f}" if key in r else "-"


def format_table(results: list[dict[str, Any]]) -> str:
    """The results as a text table (one line per row; ratios to the family's no-graph row)."""
    kernels = any("cuda_kernels" in r for r in results)
    head = (f"{'preset':<24}{'flavour':<9}{'input':<16}{'total':>7}{'non-view':>9}"
            f"{'x total':>9}{'x non-view':>11}" + (f"{'kernels':>9}{'x kern':>8}" if kernels
                                                    else "") + "  top-5 operations")
    lines = [head, "-" * len(head)]
    for r in results:
        shape = f"{r['batch']}x{r['frames']}x{r['size']}x{r['size']}"

        line = (f"{r['preset']:<24}{r['flavor']:<9}{shape:<16}{r['total']:>7}"
                f"{r['non_views']:>9}{_ratio(r, 'ratio_total'):>9}"
                f"{_ratio(r, 'ratio_non_views'):>11}")
        if kernels:
            line += f"{r.get('cuda_kernels', '-'):>9}{_ratio(r, 'ratio_cuda_kernels'):>8}"
        line += "  " + ", ".join(f"{name} {n}" for name, n in r["top5"])
        lines.append(line)
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="syncmnist,tsm",
                    help=f"comma-separated, from {sorted(FAMILIES)}")
    ap.add_argument("--batch", type=int, default=8, help="MultiSyncMNIST clips per batch")
    ap.add_argument("--frames", type=int, default=10, help="MultiSyncMNIST frames")
    ap.add_argument("--size", type=int, default=64, help="MultiSyncMNIST frame size")
    ap.add_argument("--tsm-batch", type=int, default=2)
    ap.add_argument("--tsm-frames", type=int, default=16)
    ap.add_argument("--tsm-size", type=int, default=112)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (adds a kernel count)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--by-source", type=int, default=0, metavar="DEPTH",
                    help="also count by module (names cut to DEPTH parts) and autograd node, "
                         "and print each row's 15 largest")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.family.split(",")) - set(FAMILIES))
    if unknown:
        ap.error(f"--family: unknown {unknown}; choose from {sorted(FAMILIES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command line: count every row of the chosen families, print the table (and JSON)."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = {"syncmnist": (args.batch, args.frames, args.size),
              "tsm": (args.tsm_batch, args.tsm_frames, args.tsm_size)}
    results = []
    for family in args.family.split(","):
        for row in FAMILIES[family]:
            results.append(count_row(row, *shapes[family], device=args.device,
                                     by_source=args.by_source))
    add_ratios(results)
    print(f"torch {torch.__version__}, {platform.machine()}, device {args.device}; one "  # noqa: T201
          f"training forward + cross-entropy + backward; 'x': ratio to the family's no-graph row")
    print(format_table(results))  # noqa: T201 - command-line output
    for r in results if args.by_source else ():
        top = list(r["by_source"].items())[:15]
        print(f"\n{r['label']}: operations by source (15 largest of {r['total']})")  # noqa: T201
        print("\n".join(f"{n:7d}  {where}" for where, n in top))  # noqa: T201
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"torch": torch.__version__,
                                               "device": args.device, "rows": results},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
