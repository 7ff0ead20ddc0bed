"""TSM-R50 with and without DyReg modules: forward+backward time and FLOPs, side by side.

    python benchmarks/bench_model.py [--frames 8] [--size 112] [--repeats 5]

Models: ``tsm_r50`` (bare), ``tsm_r50_dyreg_r4`` (one module), ``tsm_r50_dyreg`` (three).
Prints ratios against the bare backbone and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dyreg_pyg.models import build_preset
from dyreg_pyg.profile import profile_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/bench_model.json")
    args = ap.parse_args()
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, clip "
          f"{args.batch} x {args.frames} x 3 x {args.size} x {args.size}, fwd+bwd median of "
          f"{args.repeats}")
    models = {}
    for name in ("tsm_r50", "tsm_r50_dyreg_r4", "tsm_r50_dyreg"):
        torch.manual_seed(0)
        model = build_preset(name, num_frames=args.frames, input_size=args.size)
        models[name] = (model, profile_model(model, args.frames, args.size))
    x = torch.randn(args.batch, args.frames, 3, args.size, args.size)

    def step(model):
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    times: dict[str, list[float]] = {name: [] for name in models}
    for model, _ in models.values():  # warm-up
        step(model)
    for _ in range(args.repeats):  # interleaved rounds, so drifts hit every model alike
        for name, (model, _) in models.items():
            t0 = time.perf_counter()
            step(model)
            times[name].append(1000 * (time.perf_counter() - t0))
    rows = []
    base = None
    print(f"{'model':<20}{'ms':>9}{'x time':>8}{'GMACs':>9}{'x FLOPs':>9}{'params M':>10}")
    for name, (_, prof) in models.items():
        ms = sorted(times[name])[len(times[name]) // 2]
        base = base or (ms, prof.flops_total)
        row = {"model": name, "ms": ms, "time_ratio": ms / base[0],
               "gmacs": prof.flops_total / 2e9, "flops_ratio": prof.flops_total / base[1],
               "params_m": prof.params_total / 1e6}
        rows.append(row)
        print(f"{name:<20}{ms:>9.1f}{row['time_ratio']:>8.3f}{row['gmacs']:>9.2f}"
              f"{row['flops_ratio']:>9.3f}{row['params_m']:>10.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
