"""Command line of ``python -m train``: fit, evaluate, visualize, demo, export-graphs, predict,
export-model."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .logs import PROGRESS_SETTINGS

__all__ = ["main", "build_parser", "run"]

log = logging.getLogger("train")

_APP = __name__.split(".")[0]
"""This package's import name: ``train`` in a checkout, ``dyreg_pyg_train`` when installed."""


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
        stream=sys.stdout,
    )


def _cmd_fit(args: argparse.Namespace) -> int:
    from .config import load_config
    from .dist import cleanup_distributed, peer_errors
    from .loop import fit

    cfg = load_config(args.config, args.set)
    try:
        with peer_errors(cfg.dist_timeout):
            fit(cfg, resume=args.resume)
    finally:
        cleanup_distributed()
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .dist import cleanup_distributed
    from .loop import evaluate

    try:
        evaluate(args.checkpoint, args.data, args.num_clips, args.num_crops, args.out,
                 args.batch_size, args.device, args.set, official=args.official,
                 class_map=args.class_map)
    finally:
        cleanup_distributed()
    return 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    from .visualize import visualize

    paths = visualize(args.checkpoint, args.data, args.out, args.num, args.block, args.export,
                      args.gif, args.tensorboard)
    for p in paths:
        print(p)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, args.minutes, args.train_videos, args.val_videos, args.seed,
             args.epochs, args.task)
    return 0


def _cmd_export_graphs(args: argparse.Namespace) -> int:
    from .export_graphs import export_graphs

    s = export_graphs(args.checkpoint, args.data, args.out, args.block, args.batch_size,
                      args.num_workers, args.device, args.chunk, args.set,
                      progress="off" if args.no_progress else args.progress)
    print(f"{s['videos']} graphs in {s['out']} (block {s['block']}, {s['written']} new), "
          f"{s['skipped']} videos skipped" + (f" {s['skip_reasons']}" if s["skipped"] else ""))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    logging.getLogger("dyreg_pyg.data.loader").setLevel(logging.WARNING)  # no per-epoch line
    r = predict(args.checkpoint, args.videos, args.top_k, args.num_clips, args.num_crops,
                args.regions, args.block, args.classes, args.device,
                max_side=args.max_side or None)
    fmt = "json" if args.json else args.format
    if fmt == "text":
        for p in r["predictions"]:
            print(f"{p['video']}:")
            for rank, (_, name, prob) in enumerate(p["top"], 1):
                print(f"  {rank}. {prob:6.4f}  {name}")
            if p.get("regions_gif"):
                print(f"  regions: {p['regions_gif']}")
    else:
        from .predict import write_predictions

        write_predictions(r, fmt, sys.stdout)
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} of {len(args.videos)} videos: " + "; ".join(
            f"{s['video']} ({s['reason']})" for s in r["skipped"]), file=sys.stderr)
        return 2
    return 0


def _cmd_export_model(args: argparse.Namespace) -> int:
    from .predict import export_model

    report = export_model(args.checkpoint, args.out, program=not args.weights_only)
    for key in ("weights", "program", "info"):
        if key in report:
            print(report[key])
    if "program_error" in report:
        print(f"no model.pt2: {report['program_error']}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m train``: parse ``argv`` (default ``sys.argv[1:]``) and run the command."""
    return run(build_parser(), argv)


def build_parser(prog: str = "python -m train") -> argparse.ArgumentParser:
    """The parser of every command (each sets ``func``); the ``dyreg-pyg`` console command
    (train/console.py) reuses it, so a command added here is a ``dyreg-pyg`` command too."""
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Train and evaluate DyReg-GNN video models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in _COMMANDS:
        add_command(sub)
    for sp in sub.choices.values():
        sp.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback (default: one line)")
    return parser


def _add_set(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _add_fit(sub) -> None:
    p = sub.add_parser("fit", help="train from WebDataset shards (also under torchrun)")
    p.add_argument("--config", required=True, help="YAML file or preset name in train/configs")
    _add_set(p, "override a config key, e.g. --set optim.lr=0.01 (repeatable)")
    p.add_argument("--resume", default=None,
                   help="'auto' (continue from <out_dir>/last.pt if present) or a checkpoint")
    p.set_defaults(func=_cmd_fit)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5, per-class, confusion, region distance")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="validation/test shard pattern")
    p.add_argument("--num-clips", type=int, default=1)
    p.add_argument("--num-crops", type=int, default=1, choices=(1, 3))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="metrics.json path (default: next to ckpt)")
    _add_set(p)
    p.add_argument("--official", default=None, metavar="CONFIG",
                   help="the checkpoint is the authors' (github bit-ml/DyReg-GNN .pth.tar); "
                        "CONFIG (e.g. tsm_r50_dyreg_authors) builds the model it loads into")
    p.add_argument("--class-map", default=None, metavar="FILE",
                   help="JSON: the data's class names (a list, looked up among the "
                        "checkpoint's) or {\"<data label>\": <checkpoint class>}; without it "
                        "the shards' manifest must have the checkpoint's classes")
    p.set_defaults(func=_cmd_evaluate)


def _add_visualize(sub) -> None:
    p = sub.add_parser("visualize", help="PNG/GIF of the predicted regions and kernels")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, default=4, help="number of clips")
    p.add_argument("--block", default=None, help="DyReg block name (default: first)")
    p.add_argument("--export", default=None, help="also write per-frame boxes to this JSON")
    p.add_argument("--gif", action="store_true", help="also write one GIF per clip")
    p.add_argument("--tensorboard", default=None, metavar="LOGDIR",
                   help="also write the pictures as TensorBoard images into LOGDIR")
    p.set_defaults(func=_cmd_visualize)


def _add_demo(sub) -> None:
    from .demo import DEMO_TASKS

    p = sub.add_parser("demo", help="the embedded default main job (no downloads)")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--epochs", type=int, default=None,
                   help="length of the one-cycle schedule (preset syncmnist_cpu: 2)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-time cap of training (preset syncmnist_cpu: 15)")
    p.add_argument("--train-videos", type=int, default=6000)
    p.add_argument("--val-videos", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", default=DEMO_TASKS[0], choices=DEMO_TASKS,
                   help="multisync (default): the paper's 56-way MultiSyncMNIST; "
                        "direction2: one of 2 digits drifts right or left, the label its "
                        "direction (a reduced task a CPU learns in minutes; chance 50 %%); "
                        "binding2: 2 digits drift opposite ways, the label which way the "
                        "lower class goes (reduced; chance 50 %%)")
    p.set_defaults(func=_cmd_demo)


def _add_export_graphs(sub) -> None:
    p = sub.add_parser("export-graphs", help="the region graphs of every video as a PyG dataset")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="labelled shard pattern")
    p.add_argument("--out", required=True, help="dataset folder (an interrupted run continues)")
    p.add_argument("--block", default=None, help="DyReg block name (default: first)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--chunk", type=int, default=256, help="graphs per committed chunk")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", choices=PROGRESS_SETTINGS, default="auto",
                   help="progress bar: auto (only on a terminal; else log lines), on, off")
    p.add_argument("--no-progress", action="store_true", help="= --progress off")
    _add_set(p)
    p.set_defaults(func=_cmd_export_graphs)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-5 classes of video files (exit 2: some skipped)")
    p.add_argument("--checkpoint", required=True,
                   help="a run's .pt, or model.safetensors from export-model")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="webm/mp4/... file or frame folder")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--num-clips", type=int, default=1)
    p.add_argument("--num-crops", type=int, default=1, choices=(1, 3))
    p.add_argument("--regions", default=None, metavar="OUT.gif",
                   help="draw the predicted regions on the video")
    p.add_argument("--block", default=None, help="DyReg block for --regions (default: first)")
    p.add_argument("--classes", default=None,
                   help="class names: a manifest JSON or one name per line")
    p.add_argument("--device", default="auto")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text",
                   help="stdout: text, one JSON document, or CSV rows "
                        "(video,rank,class,name,probability); skipped videos stay on stderr")
    p.add_argument("--json", action="store_true", help="= --format json")
    p.add_argument("--max-side", type=int, default=1024, metavar="PX",
                   help="frames of a frame folder larger than PX on their longer side are "
                        "decoded at reduced size and shrunk to it, so huge pictures keep "
                        "memory bounded (0: no limit; default 1024)")
    p.set_defaults(func=_cmd_predict)


def _add_export_model(sub) -> None:
    p = sub.add_parser("export-model",
                       help="model.safetensors (+ torch.export model.pt2) for inference")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights-only", action="store_true", help="skip torch.export")
    p.set_defaults(func=_cmd_export_model)


_COMMANDS = (_add_fit, _add_evaluate, _add_visualize, _add_demo, _add_export_graphs,
             _add_predict, _add_export_model)
"""The commands in the order ``--help`` lists them; each adds its subparser to ``sub``."""


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` (from :func:`build_parser`) and run the command; an error
    prints one line (``--debug``: the traceback) and returns 1."""
    args = parser.parse_args(argv)
    _setup_logging()
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except Exception as exn:  # KeyboardInterrupt and SystemExit pass through
        print(f"{parser.prog} {args.command}: error: {_one_line(exn)} (--debug shows the "
              "traceback)", file=sys.stderr)
        return 1


def _one_line(exn: BaseException) -> str:
    """The message of ``exn`` on one line. An error re-raised from a DataLoader worker carries
    the worker's traceback in its message: its last line holds the original message. The
    type is named unless it is ``ValueError`` or one of the project's own errors, whose
    messages say what is wrong."""
    cls = type(exn)
    text = str(exn).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        for name in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
            text = text.removeprefix(name)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    own = cls is ValueError or cls.__module__.split(".")[0] in ("dyreg_pyg", _APP)
    if own and text:
        return text
    return f"{cls.__name__}: {text}" if text else cls.__name__
