"""Training throughput (videos/s) of the MultiSyncMNIST models under different CPU settings.

    python benchmarks/bench_train_speed.py [--variants nograph,fixed,dyreg] [--batch 16]
        [--settings eager,channels_last,dense,compile] [--steps 6]

One full optimiser step (forward, cross-entropy, backward, Adam) on in-memory clips
``[B, 10, 1, 64, 64]``, train mode, per variant and setting; settings run in interleaved rounds
so that drifts of the machine hit them alike. Settings:

- ``eager``: the default (PyG message passing, contiguous tensors);
- ``channels_last``: model and input in channels-last memory format;
- ``dense``: DyReg's graph on the dense batched-matmul backend (same parameters and result);
- ``compile``: ``torch.compile`` of the eager model (compile time reported separately);
- ``dense_compile``: both;
- ``bf16``, ``bf16_channels_last``: CPU autocast to bfloat16 (regions and kernels stay float32,
  as under CUDA autocast; the loss is computed in float32).

Every variant and setting runs in the same interleaved rounds. Prints videos/s, the ratio to
the first setting per variant and, when ``nograph`` is among the variants, the ratio to
``nograph`` in the same setting (issue 37: DyReg's cost over the bare backbone), and writes JSON
(``benchmarks/results/bench_train_speed.json`` by default). The study script
(``study/reproduce_syncmnist.py``) uses the fastest faithful setting measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dyreg_pyg.models import build_preset

SETTINGS = ("eager", "channels_last", "dense", "compile", "dense_compile", "bf16",
            "bf16_channels_last")


def _build(variant: str, setting: str) -> torch.nn.Module:
    torch.manual_seed(0)
    dyreg = {"backend": "dense"} if setting.startswith("dense") and variant != "nograph" else {}
    model = build_preset(f"syncmnist_r18_{variant}", dyreg=dyreg)
    if setting.endswith("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    model.train()
    return model


def _stepper(model: torch.nn.Module, setting: str):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    fwd = torch.compile(model, dynamic=False) if setting.endswith("compile") else model

    bf16 = setting.startswith("bf16")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def grad_agreement(variant: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Cosine similarity between the fp32 gradient and the bf16-autocast gradient of the same
    model on the same batch: over all parameters, and over DyReg's region branch alone."""
    grads = []
    for bf16 in (False, True):
        model = _build(variant, "eager")
        model.eval()  # no dropout; BatchNorm with running stats, so both see the same function
        with torch.no_grad():  # gamma starts at 0, which would cut the DyReg branch's gradient
            for n, p in model.named_parameters():
                if n.endswith(".gamma"):
                    p.fill_(0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        grads.append({n: p.grad.flatten().float() for n, p in model.named_parameters()
                      if p.grad is not None})

    def cos(names: list[str]) -> float:
        a = torch.cat([grads[0][n] for n in names])
        b = torch.cat([grads[1][n] for n in names])
        return float(F.cosine_similarity(a, b, dim=0))

    names = sorted(grads[0])
    region = [n for n in names if ".region_generator." in n]
    out = {"all": cos(names)}
    if region:
        out["region_branch"] = cos(region)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="nograph,fixed,dyreg")
    ap.add_argument("--settings", default="eager,channels_last,dense,compile")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", default="benchmarks/results/bench_train_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = args.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} x 10 x 1 x 64 x 64")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 10, 1, 64, 64, generator=gen)
    y = torch.randint(0, 56, (args.batch,), generator=gen)
    variants = args.variants.split(",")
    steppers, warm_s = {}, {}
    for variant in variants:
        for s in settings:
            steppers[variant, s] = _stepper(_build(variant, s), s)
            t0 = time.perf_counter()
            for _ in range(2):  # warm-up (and compilation)
                steppers[variant, s](x, y)
            warm_s[variant, s] = time.perf_counter() - t0
    times = {key: [] for key in steppers}
    for _ in range(args.steps):  # interleaved rounds over every variant and setting
        for key, fn in steppers.items():
            t0 = time.perf_counter()
            fn(x, y)
            times[key].append(time.perf_counter() - t0)
    vps = {key: args.batch / statistics.median(t) for key, t in times.items()}
    rows = []
    for variant in variants:
        base = vps[variant, settings[0]]
        for s in settings:
            v = vps[variant, s]
            row = {"variant": variant, "setting": s, "videos_per_s": v, "ratio": v / base,
                   "warmup_s": warm_s[variant, s], "batch": args.batch,
                   "threads": torch.get_num_threads()}
            if "nograph" in variants:
                row["ratio_to_nograph"] = v / vps["nograph", s]
            rows.append(row)
            vs_nograph = (f"  x{row['ratio_to_nograph']:5.2f} vs nograph"
                          if "ratio_to_nograph" in row else "")
            print(f"{variant:10s} {s:18s} {v:7.1f} videos/s  x{v / base:5.2f} vs "
                  f"{settings[0]}{vs_nograph}  (warm-up {warm_s[variant, s]:.1f} s)", flush=True)
        if any(s.startswith("bf16") for s in settings):
            agree = grad_agreement(variant, x, y)
            rows.append({"variant": variant, "bf16_grad_cosine": agree})
            print(f"{variant:10s} bf16 vs fp32 gradient cosine: " +
                  ", ".join(f"{k} {v:.4f}" for k, v in agree.items()), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
