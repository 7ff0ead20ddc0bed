"""TSM-R50 with and without DyReg modules: forward+backward time and FLOPs, side by side.

    python benchmarks/bench_model.py [--frames 8] [--sizes 112 224] [--repeats 5]

Models: ``tsm_r50`` (bare), ``tsm_r50_dyreg_r4`` (one module, after ``layer3.4``) and
``tsm_r50_dyreg`` (three, ``r3-4-5``), each built for the benchmarked frame size. For every
size the three models run in interleaved rounds (so drifts of the machine hit them alike);
the table gives the median time and the FLOPs as ratios to the bare backbone, and the rows
are written to JSON. Goal (issue 3): three modules add at most 5 % time and 3 % FLOPs
(paper: +2.4 % FLOPs at 16 x 224 x 224).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from dyreg_pyg.models import build_preset
from dyreg_pyg.profile import profile_model

MODELS = ("tsm_r50", "tsm_r50_dyreg_r4", "tsm_r50_dyreg")


def _step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()


def bench_size(frames: int, size: int, batch: int, repeats: int) -> list[dict]:
    """Time (fwd+bwd, train mode) and FLOPs of :data:`MODELS` at one input size."""
    models = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = build_preset(name, num_frames=frames, input_size=size)
        models[name] = (model, profile_model(model, frames, size))
        model.train()
    x = torch.randn(batch, frames, 3, size, size)
    times: dict[str, list[float]] = {name: [] for name in models}
    for model, _ in models.values():  # warm-up
        _step(model, x)
    for _ in range(repeats):
        for name, (model, _) in models.items():
            t0 = time.perf_counter()
            _step(model, x)
            times[name].append(1000 * (time.perf_counter() - t0))
    rows: list[dict] = []
    base_ms, base_flops = None, None
    for name, (_, prof) in models.items():
        ms = sorted(times[name])[len(times[name]) // 2]
        base_ms, base_flops = base_ms or ms, base_flops or prof.flops_total
        rows.append({"model": name, "frames": frames, "size": size, "batch": batch,
                     "ms": ms, "time_ratio": ms / base_ms,
                     "gmacs": prof.flops_total / 2e9, "flops_ratio": prof.flops_total / base_flops,
                     "dyreg_gmacs": prof.flops_dyreg / 2e9,
                     "params_m": prof.params_total / 1e6})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/bench_model.json")
    args = ap.parse_args()
    machine = {"platform": platform.platform(), "processor": platform.processor(),
               "cpus": os.cpu_count(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "device": "cpu"}
    print(f"# {machine['platform']} ({machine['processor'] or 'cpu'}, {machine['cpus']} cpus), "
          f"torch {machine['torch']}, {machine['threads']} threads; clips {args.batch} x "
          f"{args.frames} x 3 x S x S, fwd+bwd median of {args.repeats}")
    print(f"{'model':<18}{'S':>5}{'ms':>9}{'x time':>8}{'GMACs':>9}{'x FLOPs':>9}"
          f"{'DyReg GMACs':>13}{'params M':>10}")
    rows: list[dict] = []
    for size in args.sizes:
        for row in bench_size(args.frames, size, args.batch, args.repeats):
            rows.append(row)
            print(f"{row['model']:<18}{size:>5}{row['ms']:>9.1f}{row['time_ratio']:>8.3f}"
                  f"{row['gmacs']:>9.2f}{row['flops_ratio']:>9.3f}{row['dyreg_gmacs']:>13.3f}"
                  f"{row['params_m']:>10.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
