"""PyG message-passing path vs dense batched-matmul path of DyRegGNN, side by side.

Both paths share parameters (a deep copy with ``backend`` switched) and give the same output;
the PyG path is timed with torch-scatter enabled and disabled (``torch_geometric.typing``
switch, same process). Prints a table of forward+backward milliseconds and ratios and writes
JSON next to it.

    python benchmarks/bench_module.py [--repeats 10] [--out benchmarks/results/bench_module.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
import torch_geometric
import torch_geometric.typing as pyg_typing

from dyreg_pyg import DyRegGNN


def _time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[len(times) // 2]  # median, ms


def _fwd_bwd(model: torch.nn.Module, x: torch.Tensor):
    def run():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=9)
    ap.add_argument("--node-channels", type=int, default=256)
    ap.add_argument("--shapes", default="256x14,256x28,1024x14,1024x28",
                    help="comma list of CxS (channels x square map size)")
    ap.add_argument("--out", default="benchmarks/results/bench_module.json")
    args = ap.parse_args()

    print(f"# torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, "
          f"torch-scatter installed: {pyg_typing.WITH_TORCH_SCATTER}, "
          f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"# B={args.batch} T={args.frames} N={args.nodes} node_channels={args.node_channels},"
          f" forward+backward, median of {args.repeats} (ms)")
    has_scatter = pyg_typing.WITH_TORCH_SCATTER
    rows = []
    header = f"{'C':>5} {'HxW':>6} {'dense':>9} {'pyg':>9} {'pyg/dense':>10}"
    if has_scatter:
        header += f" {'pyg-noscatter':>14} {'ratio':>6}"
    print(header)
    for spec in args.shapes.split(","):
        c, s = (int(v) for v in spec.split("x"))
        torch.manual_seed(0)
        pyg = DyRegGNN(c, args.node_channels, num_nodes=args.nodes, spatial_size=(s, s))
        dense = copy.deepcopy(pyg)
        dense.config.backend = "dense"
        x = torch.randn(args.batch, args.frames, c, s, s)
        with torch.no_grad():
            assert torch.allclose(pyg(x), dense(x), atol=1e-4)
        t_dense = _time(_fwd_bwd(dense, x), args.repeats)
        t_pyg = _time(_fwd_bwd(pyg, x), args.repeats)
        row = {"C": c, "HW": s, "dense_ms": t_dense, "pyg_ms": t_pyg, "ratio": t_pyg / t_dense}
        line = f"{c:>5} {s:>3}x{s:<2} {t_dense:>9.1f} {t_pyg:>9.1f} {t_pyg / t_dense:>10.3f}"
        if has_scatter:
            pyg_typing.WITH_TORCH_SCATTER = False
            try:
                t_ns = _time(_fwd_bwd(pyg, x), args.repeats)
            finally:
                pyg_typing.WITH_TORCH_SCATTER = True
            row.update(pyg_noscatter_ms=t_ns, ratio_noscatter=t_ns / t_dense)
            line += f" {t_ns:>14.1f} {t_ns / t_dense:>6.3f}"
        rows.append(row)
        print(line, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
