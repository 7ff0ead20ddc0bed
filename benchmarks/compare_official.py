"""Equal functions: ``flavor="authors"`` against the authors' released DyReg-GNN code.

    python benchmarks/compare_official.py --official DIR [--dtype float64] [--json out.json]

``DIR`` is an extracted checkout of github bit-ml/DyReg-GNN (nothing of it is in this
repository; their modules import matplotlib and parse ``sys.argv`` at import, so ``sys.argv``
is set to the arguments of their ``train_model.sh`` first). Their network is built without
ImageNet weights. Every parameter of their models is made random, also those that start at
zero or one (LayerNorm scales, the write-back gate, ``offset_alpha``, BatchNorm statistics),
so every branch contributes; the weights are converted with
:func:`dyreg_pyg.compat.load_official` / :func:`~dyreg_pyg.compat.convert_official`.

Rows: their ``DynamicGraphWrapper`` against our :class:`~dyreg_pyg.DyRegBlock` at the three
places of their TSM-R50 (layer2 / layer3 / layer4 shapes), in train and eval mode, and their
whole TSM-R50 + 3 DyReg (``ops/models.py: TSN``) against our preset
``tsm_r50_dyreg_authors`` in eval mode (their training-mode dropout acts on the 7 x 7 map,
ours on the pooled vector: the whole models differ in training mode by construction). For
the output and for the gradient of ``sum(out * R)`` (``R`` fixed random) w.r.t. the input it
prints the largest absolute difference and that difference relative to the reference's scale
(its largest absolute value); ``dyreg``: the DyReg branches' share of the output (largest
change when they are switched off, relative to the output's scale), ``spread``: the standard
deviation of the predicted region centres in cells (the regions move). The last line is
``worst relative diff: <number>`` - the largest relative difference of all rows; the exit
status is 1 if it exceeds 1e-6 (float64) or 1e-4 (float32).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from dyreg_pyg import DyRegBlock, DyRegConfig
from dyreg_pyg.compat import convert_official, load_official
from dyreg_pyg.models import build_preset

TOLERANCE = {"float64": 1e-6, "float32": 1e-4}
PLACES = ("layer2.2", "layer3.4", "layer4.1")


def train_model_args(official: Path) -> list[str]:
    """The arguments of their ``train_model.sh`` (``$1`` and ``$MODEL_DIR`` filled in)."""
    text = (official / "train_model.sh").read_text()
    m = re.search(r'args="(.*?)"', text, re.S)
    if m is None:
        raise ValueError(f"--official: no args=\"...\" in {official / 'train_model.sh'}")
    body = m.group(1).replace("$MODEL_DIR", "/tmp/dyreg_official_unused").replace("$1", "cmp")
    return shlex.split(body)


def import_official(official: Path) -> tuple[object, object]:
    """Their ``ops.models`` and ``ops.dyreg`` modules, imported with their argv."""
    if not (official / "ops" / "dyreg.py").is_file():
        raise ValueError(f"--official: {official} has no ops/dyreg.py")
    sys.argv = ["main_standard.py", *train_model_args(official)]
    sys.path.insert(0, str(official))
    import ops.dyreg as their_dyreg  # noqa: PLC0415
    import ops.models as their_models  # noqa: PLC0415
    import ops.resnet2d as their_resnet  # noqa: PLC0415

    # No network: their TSN asks for ImageNet weights unless --resume is given.
    their_models.resnet50 = lambda pretrained=False, **kw: their_resnet.resnet50(False, **kw)
    return their_models, their_dyreg


@torch.no_grad()
def randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Make every parameter and BatchNorm statistic random, including those initialised to
    constants (norm scales 1 + noise, gates / biases / ``offset_alpha`` noise)."""
    for name, p in module.named_parameters():
        if p.numel() > 1 and p.std() > 0:
            continue  # already random (PyTorch's default init)
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        leaf = name.rpartition(".")[2]
        if leaf in ("scale", "weight"):
            p.copy_(1.0 + 0.3 * noise)
        else:
            p.copy_(0.3 * noise)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


def compare(run_theirs, run_ours, x: Tensor, gen: torch.Generator) -> dict[str, float]:
    """Outputs and input gradients of both on the same ``x``."""
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    t0 = time.perf_counter()
    ref = run_theirs(xs[0])
    r = torch.randn(ref.shape, generator=gen, dtype=ref.dtype)
    (ref * r).sum().backward()
    t1 = time.perf_counter()
    out = run_ours(xs[1]).reshape(ref.shape)
    (out * r).sum().backward()
    t2 = time.perf_counter()
    d_out = (out - ref).abs().max().item()
    d_grad = (xs[1].grad - xs[0].grad).abs().max().item()
    s_out = ref.abs().max().item()
    s_grad = xs[0].grad.abs().max().item()
    return dict(out_abs=d_out, out_scale=s_out, out_rel=d_out / s_out,
                grad_abs=d_grad, grad_scale=s_grad, grad_rel=d_grad / s_grad,
                theirs_s=t1 - t0, ours_s=t2 - t1)


def module_rows(their_dyreg, dtype: torch.dtype, batch: int, frames: int,
                gen: torch.Generator) -> list[dict]:
    """Their DynamicGraphWrapper vs our DyRegBlock at each place, train and eval mode."""
    args = their_dyreg.args
    params = their_dyreg.dyregParams()
    params.set_from_args(args)
    rows = []
    for place in PLACES:
        layer = int(place[5])
        gp = args.graph_params[layer]
        theirs = their_dyreg.DynamicGraphWrapper(
            params, in_channels=gp["in_channels"], H=gp["H"], W=gp["H"], oH=args.out_pool_size,
            oW=args.out_pool_size, iH=gp["iH"], iW=gp["iH"], out_num_ch=args.out_num_ch,
            node_dim=gp["node_dim"], project_i3d=gp["project_i3d"], name=gp["name"])
        randomise(theirs, gen)
        c, h = gp["in_channels"], gp["H"]
        node = gp["node_dim"] if gp["node_dim"] != c else None
        ours = DyRegBlock(c, DyRegConfig(flavor="authors", spatial_size=(h, h),
                                         node_channels=node, init=args.init_regions))
        ours.load_state_dict(convert_official(ours, theirs.state_dict()))
        theirs.to(dtype)
        ours.to(dtype)
        x = torch.randn(batch, frames, c, h, h, generator=gen, dtype=dtype)
        for mode in ("train", "eval"):
            theirs.train(mode == "train")
            ours.train(mode == "train")
            res = compare(theirs, ours, x, gen)
            with torch.no_grad():  # the DyReg branch's share of the output; region spread
                y, det = ours.gnn(x, return_details=True)
                share = (ours(x) - x).abs().max() / ours(x).abs().max()
            spread = (det.regions[..., :2] * h).std(dim=(0, 1, 2)).mean().item()
            rows.append(dict(what=f"module {place}", mode=mode,
                             shape=f"[{batch},{frames},{c},{h},{h}] node {gp['node_dim']}",
                             dyreg_share=share.item(), centre_spread_cells=spread, **res))
    return rows


def model_row(their_models, dtype: torch.dtype, batch: int, gen: torch.Generator) -> dict:
    """Their TSN (TSM-R50 + 3 DyReg) vs our ``tsm_r50_dyreg_authors``, eval mode."""
    args = their_models.args
    theirs = their_models.TSN(
        174, args.num_segments, args.modality, base_model=args.arch,
        consensus_type=args.consensus_type, dropout=args.dropout,
        img_feature_dim=args.img_feature_dim, partial_bn=not args.no_partialbn,
        pretrain=args.pretrain, is_shift=args.shift, shift_div=args.shift_div,
        shift_place=args.shift_place, temporal_pool=args.temporal_pool,
        non_local=args.non_local, print_spec=False)
    randomise(theirs, gen)
    ours = build_preset("tsm_r50_dyreg_authors", num_classes=174,
                        dyreg={"init": args.init_regions})
    load_official(ours, {"state_dict": {"module." + k: v for k, v in theirs.state_dict().items()}})
    theirs.to(dtype).eval()
    ours.to(dtype).eval()
    t = args.num_segments
    x = torch.randn(batch, t, 3, 224, 224, generator=gen, dtype=dtype)
    res = compare(lambda v: theirs(v)[0], ours, x, gen)
    with torch.no_grad():  # the three DyReg branches' share: ours with them switched off
        out = ours(x)
        for blk in ours.dyreg_blocks().values():
            blk.norm.norm.weight.zero_()
            blk.norm.norm.bias.zero_()
        share = ((out - ours(x)).abs().max() / out.abs().max()).item()
    return dict(what="whole model", mode="eval", shape=f"[{batch},{t},3,224,224] -> 174",
                dyreg_share=share, centre_spread_cells=float("nan"), **res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, type=Path,
                    help="extracted checkout of github bit-ml/DyReg-GNN")
    ap.add_argument("--dtype", default="float64", choices=tuple(TOLERANCE))
    ap.add_argument("--batch", type=int, default=2, help="clips per module comparison")
    ap.add_argument("--frames", type=int, default=16, help="T of the module comparisons")
    ap.add_argument("--skip-model", action="store_true", help="modules only (no TSM-R50)")
    ap.add_argument("--init", choices=("center", "grid"), default=None,
                    help="their --init_regions (default: train_model.sh's, center)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    saved_argv = list(sys.argv)
    their_models, their_dyreg = import_official(a.official.resolve())
    sys.argv = saved_argv
    if a.init is not None:  # read by dyregParams.set_from_args when the modules are built
        their_dyreg.args.init_regions = their_models.args.init_regions = a.init
    dtype = getattr(torch, a.dtype)
    gen = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {a.dtype}; their argv: train_model.sh")
    rows = module_rows(their_dyreg, dtype, a.batch, a.frames, gen)
    if not a.skip_model:
        rows.append(model_row(their_models, dtype, 1, gen))
    head = (f"{'compared':<16} {'mode':<5} {'shape':<30} {'out max|d|':>10} {'rel':>9} "
            f"{'grad max|d|':>11} {'rel':>9} {'dyreg':>6} {'spread':>6} {'theirs s':>8} "
            f"{'ours s':>7}")
    print(head)
    for r in rows:
        print(f"{r['what']:<16} {r['mode']:<5} {r['shape']:<30} {r['out_abs']:>10.2e} "
              f"{r['out_rel']:>9.2e} {r['grad_abs']:>11.2e} {r['grad_rel']:>9.2e} "
              f"{r['dyreg_share']:>6.2f} {r['centre_spread_cells']:>6.2f} "
              f"{r['theirs_s']:>8.2f} {r['ours_s']:>7.2f}")
    worst = max(max(r["out_rel"], r["grad_rel"]) for r in rows)
    if a.json is not None:
        a.json.write_text(json.dumps(dict(dtype=a.dtype, torch=torch.__version__, rows=rows,
                                          worst=worst), indent=1))
    print(f"worst relative diff: {worst:.3e}")
    return 0 if worst <= TOLERANCE[a.dtype] else 1


if __name__ == "__main__":
    sys.exit(main())
