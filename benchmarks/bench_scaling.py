"""How the DyReg module's cost grows with N, T and H x W, PyG path vs dense path.

    python benchmarks/bench_scaling.py [--repeats 5] [--out docs/scaling]

For each setting: forward+backward median time, and memory = bytes of the tensors autograd
saves for the backward pass (exact and deterministic on CPU; on CUDA the peak allocated
memory is reported instead). One factor varies at a time around B=2, T=8, N=9, 14x14, C=256,
node_channels=128. Writes ``<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from dyreg_pyg import DyRegGNN

BASE = {"N": 9, "T": 8, "HW": 14}
SWEEPS = {"N": [4, 9, 16, 25, 36], "T": [4, 8, 16, 32], "HW": [7, 14, 28, 56]}


def _measure(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, int]:
    saved = 0

    def pack(t: torch.Tensor):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    model(x).sum().backward()  # warm-up
    if x.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    memory = torch.cuda.max_memory_allocated() if x.is_cuda else saved
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        model(x).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2], memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--node-channels", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="docs/scaling")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, device {dev}; "
          f"B=2 C={args.channels} node={args.node_channels}; base {BASE}")
    print(f"{'factor':>6} {'value':>6} {'pyg ms':>9} {'dense ms':>9} {'pyg/dense':>9} "
          f"{'pyg MB':>8} {'dense MB':>9}")
    rows = []
    for factor, values in SWEEPS.items():
        for v in values:
            s = {**BASE, factor: v}
            torch.manual_seed(0)
            pyg = DyRegGNN(args.channels, args.node_channels, num_nodes=s["N"],
                           spatial_size=(s["HW"], s["HW"])).to(dev)
            dense = copy.deepcopy(pyg)
            dense.config.backend = "dense"
            x = torch.randn(2, s["T"], args.channels, s["HW"], s["HW"], device=dev)
            tp, mp = _measure(pyg, x, args.repeats)
            td, md = _measure(dense, x, args.repeats)
            rows.append({"factor": factor, "value": v, **s, "pyg_ms": tp, "dense_ms": td,
                         "pyg_bytes": mp, "dense_bytes": md})
            print(f"{factor:>6} {v:>6} {tp:>9.1f} {td:>9.1f} {tp / td:>9.3f} "
                  f"{mp / 2**20:>8.1f} {md / 2**20:>9.1f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "base": BASE,
                                                    "rows": rows}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for j, factor in enumerate(SWEEPS):
        sel = [r for r in rows if r["factor"] == factor]
        xs = [r["value"] if factor != "HW" else r["value"] ** 2 for r in sel]
        for key, label in (("pyg", "PyG"), ("dense", "dense")):
            axes[0, j].loglog(xs, [r[f"{key}_ms"] for r in sel], "o-", label=label)
            axes[1, j].loglog(xs, [r[f"{key}_bytes"] / 2**20 for r in sel], "o-", label=label)
        name = "H*W" if factor == "HW" else factor
        axes[0, j].set_title(f"time vs {name}")
        axes[1, j].set_title(f"saved-for-backward MB vs {name}")
        axes[1, j].set_xlabel(name)
        for ax in axes[:, j]:
            ax.legend()
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=80)


if __name__ == "__main__":
    main()
