"""DyReg module speed and memory: both flavours of ours, side by side (and against the authors').

    python benchmarks/bench_module.py [--vs-official DIR] [--repeats 7] [--shapes all]
        [--threads 2] [--clock wall|thread]
    python benchmarks/bench_module.py --pyg-vs-dense [--repeats 10]

Default table: ``DyRegBlock`` in the paper flavour and in the authors' flavour (each with the
``pyg`` and the ``dense`` backend) and, with ``--vs-official DIR`` (an extracted checkout of
github bit-ml/DyReg-GNN; nothing of it is in this repository), the authors' own
``DynamicGraphWrapper`` built from their code as ``benchmarks/compare_official.py`` builds it
(their ``train_model.sh`` arguments; every parameter made random and converted into our
authors' flavour, whose output is checked equal to theirs before timing). All modules run in
training mode, float32, on the same input (which requires a gradient, as a backbone's map
does); forward + backward of ``sum(out)``, interleaved (one
call of each variant per round), median of ``--repeats`` rounds after two warm-up rounds.

``saved MiB``: the activations autograd keeps for backward - the bytes of the unique storages
handed to ``torch.autograd.graph.saved_tensors_hooks`` during one forward, leaving out the
parameters and the input (they exist anyway). Ratios are against the authors' module
(``/theirs``) or, without it, against our paper flavour on the pyg backend.

Shapes (``--shapes``, comma list of names or ``all``): the issue's ``b2t8c256s14``,
``b2t8c512s14``, ``b1t16c256s28``; TSM-R50 layer 3 / 4 where the authors place the module, in
the bottleneck after ``conv2``, which sees a quarter of the block's channels (their
``ch_div=4``): ``l3`` = C 256 at 14 x 14 and ``l4`` = C 512 at 7 x 7 with nodes projected to
256 (their ``project_i3d``), T = 16, B = 1; and the block outputs themselves, ``l3full`` = C 1024
at 14 x 14 and ``l4full`` = C 2048 at 7 x 7, nodes projected to 256.

``--pyg-vs-dense``: the older table, the paper flavour's PyG message-passing path against its
dense batched-matmul path, with torch-scatter enabled and disabled (``torch_geometric.typing``
switch, same process).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch_geometric
import torch_geometric.typing as pyg_typing
from torch import nn

from dyreg_pyg import DyRegBlock, DyRegConfig, DyRegGNN

# name: (B, T, C, S, node channels)
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "b2t8c256s14": (2, 8, 256, 14, 256),
    "b2t8c512s14": (2, 8, 512, 14, 512),
    "b1t16c256s28": (1, 16, 256, 28, 256),
    "l3": (1, 16, 256, 14, 256),
    "l4": (1, 16, 512, 7, 256),
    "l3full": (1, 16, 1024, 14, 256),
    "l4full": (1, 16, 2048, 7, 256),
}


def _fwd_bwd(model: nn.Module, x: torch.Tensor):
    def run():
        model.zero_grad(set_to_none=True)
        x.grad = None
        model(x).sum().backward()

    return run


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


def time_interleaved(fns: dict[str, object], repeats: int, warmup: int = 2,
                     clock=time.perf_counter) -> dict[str, float]:
    """Median ms of each function, one call of each per round (same load for all)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            times[k].append(clock() - t0)
    return {k: 1000 * sorted(v)[len(v) // 2] for k, v in times.items()}


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique storages autograd saves for backward in one forward of ``model``,
    without the parameters' and the input's storages."""
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    skip |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    skip.add(x.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.sum().backward()
    return sum(seen.values())


def build_theirs(official: Path, b: int, t: int, c: int, s: int, node: int,
                 gen: torch.Generator) -> tuple[nn.Module, nn.Module]:
    """Their DynamicGraphWrapper at this shape (random parameters) and our authors' flavour
    with their weights converted."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare_official import import_official, randomise  # noqa: PLC0415

    from dyreg_pyg.compat import convert_official  # noqa: PLC0415

    if "ops.dyreg" in sys.modules:
        their_dyreg = sys.modules["ops.dyreg"]
    else:
        saved = list(sys.argv)
        _, their_dyreg = import_official(official.resolve())
        sys.argv = saved
    args = their_dyreg.args
    params = their_dyreg.dyregParams()
    params.set_from_args(args)
    theirs = their_dyreg.DynamicGraphWrapper(
        params, in_channels=c, H=s, W=s, oH=args.out_pool_size, oW=args.out_pool_size,
        iH=s, iW=s, out_num_ch=args.out_num_ch, node_dim=node, project_i3d=node != c,
        name="bench")
    randomise(theirs, gen)
    ours = DyRegBlock(c, DyRegConfig(flavor="authors", spatial_size=(s, s),
                                     node_channels=node if node != c else None,
                                     init=args.init_regions))
    ours.load_state_dict(convert_official(ours, theirs.state_dict()))
    return theirs, ours


def flavour_table(args: argparse.Namespace) -> dict:
    names = list(SHAPES) if args.shapes == "all" else args.shapes.split(",")
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise SystemExit(f"--shapes: unknown {unknown}; expected names from {list(SHAPES)}")
    official = Path(args.vs_official) if args.vs_official else None
    ref = "theirs" if official else "paper-pyg"
    variants = ["paper-pyg", "paper-dense", "authors-pyg", "authors-dense"]
    if official:
        variants.append("theirs")
    print(f"# B T C HxW node: forward+backward ms ({args.clock} clock, median of "
          f"{args.repeats}, interleaved) and saved activations MiB; ratios against {ref}")
    head = f"{'shape':<13} {'B':>2} {'T':>3} {'C':>5} {'HxW':>6} {'node':>5}"
    for v in variants:
        head += f" {v + ' ms':>17}"
    for v in variants:
        if v != ref:
            head += f" {v + '/' + ref + ' t':>22}"
    for v in variants:
        if v != ref:
            head += f" {'mem':>5}"
    print(head)
    rows = []
    gen = torch.Generator().manual_seed(args.seed)
    for name in names:
        b, t, c, s, node = SHAPES[name]
        torch.manual_seed(args.seed)
        mods: dict[str, nn.Module] = {}
        nc = node if node != c else None
        mods["paper-pyg"] = DyRegBlock(c, DyRegConfig(spatial_size=(s, s), node_channels=nc))
        mods["paper-dense"] = copy.deepcopy(mods["paper-pyg"])
        mods["paper-dense"].gnn.config.backend = "dense"
        x = torch.randn(b, t, c, s, s, generator=gen).requires_grad_()  # a backbone's map
        if official:
            theirs, ours = build_theirs(official, b, t, c, s, node, gen)
            mods["authors-pyg"] = ours
        else:
            mods["authors-pyg"] = DyRegBlock(c, DyRegConfig(flavor="authors", spatial_size=(s, s),
                                                            node_channels=nc))
        mods["authors-dense"] = copy.deepcopy(mods["authors-pyg"])
        mods["authors-dense"].gnn.config.backend = "dense"
        if official:
            mods["theirs"] = theirs
        for m in mods.values():
            m.train()
        with torch.no_grad():  # same function: the dense paths, and ours against theirs
            diffs = {"paper dense-pyg": (mods["paper-dense"](x) - mods["paper-pyg"](x)).abs().max(),
                     "authors dense-pyg": (mods["authors-dense"](x) - mods["authors-pyg"](x)
                                           ).abs().max()}
            if official:
                yt = mods["theirs"](x).reshape(x.shape)
                diffs["authors-theirs"] = (mods["authors-pyg"](x) - yt).abs().max() / yt.abs().max()
        for k, d in diffs.items():
            if not d < 1e-3:
                raise SystemExit(f"{name}: {k} differ by {float(d):.3e}")
        clock = time.thread_time if args.clock == "thread" else time.perf_counter
        ms = time_interleaved({k: _fwd_bwd(m, x) for k, m in mods.items()}, args.repeats,
                              clock=clock)
        mem = {k: saved_activation_bytes(m, x) / 2**20 for k, m in mods.items()}
        row = {"shape": name, "B": b, "T": t, "C": c, "HW": s, "node": node, "ms": ms,
               "saved_mib": mem, "time_ratio": {k: ms[k] / ms[ref] for k in ms if k != ref},
               "mem_ratio": {k: mem[k] / mem[ref] for k in mem if k != ref},
               "max_diff": {k: float(d) for k, d in diffs.items()}}
        rows.append(row)
        line = f"{name:<13} {b:>2} {t:>3} {c:>5} {s:>3}x{s:<2} {node:>5}"
        for v in variants:
            line += f" {ms[v]:>8.1f} {mem[v]:>6.1f}MiB"
        for v in variants:
            if v != ref:
                line += f" {row['time_ratio'][v]:>22.3f}"
        for v in variants:
            if v != ref:
                line += f" {row['mem_ratio'][v]:>5.2f}"
        print(line, flush=True)
    return {"reference": ref, "variants": variants, "rows": rows}


def pyg_vs_dense(args: argparse.Namespace) -> dict:
    print(f"# B={args.batch} T={args.frames} N={args.nodes} node_channels={args.node_channels},"
          f" forward+backward, median of {args.repeats} (ms)")
    has_scatter = pyg_typing.WITH_TORCH_SCATTER
    rows = []
    header = f"{'C':>5} {'HxW':>6} {'dense':>9} {'pyg':>9} {'pyg/dense':>10}"
    if has_scatter:
        header += f" {'pyg-noscatter':>14} {'ratio':>6}"
    print(header)
    for spec in args.pyg_shapes.split(","):
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
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vs-official", default=None, metavar="DIR",
                    help="extracted checkout of github bit-ml/DyReg-GNN: time their module too")
    ap.add_argument("--shapes", default="all", help=f"comma list of {list(SHAPES)} or 'all'")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="wall: elapsed time; thread: CPU time of this thread (with --threads 1 "
                         "all the work runs on it: robust to other jobs on the cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None,
                    help="JSON output (default benchmarks/results/bench_module[_official].json)")
    ap.add_argument("--pyg-vs-dense", action="store_true",
                    help="the older table: paper flavour, PyG path vs dense path")
    ap.add_argument("--batch", type=int, default=2, help="--pyg-vs-dense: B")
    ap.add_argument("--frames", type=int, default=8, help="--pyg-vs-dense: T")
    ap.add_argument("--nodes", type=int, default=9, help="--pyg-vs-dense: N")
    ap.add_argument("--node-channels", type=int, default=256, help="--pyg-vs-dense: nodes")
    ap.add_argument("--pyg-shapes", default="256x14,256x28,1024x14,1024x28",
                    help="--pyg-vs-dense: comma list of CxS (channels x square map size)")
    args = ap.parse_args()
    if args.clock == "thread" and args.threads != 1:
        ap.error("--clock thread measures one thread: use it with --threads 1")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, "
          f"torch-scatter installed: {pyg_typing.WITH_TORCH_SCATTER}, "
          f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average at start {load:.2f}")
    if args.pyg_vs_dense:
        result = pyg_vs_dense(args)
        default_out = "benchmarks/results/bench_module.json"
    else:
        result = flavour_table(args)
        default_out = ("benchmarks/results/bench_module_official.json" if args.vs_official
                       else "benchmarks/results/bench_module_flavours.json")
    out = Path(args.out or default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    opts = {k: v for k, v in vars(args).items()}
    out.write_text(json.dumps({"args": opts, "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "load_average_start": load,
                               "load_average_end": os.getloadavg()[0], **result}, indent=2))
    print(f"# wrote {out}; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
