"""Build MultiSyncMNIST / SyncMNIST WebDataset shards.

Examples::

    python datasets/syncmnist.py --out data/syncmnist --split train --num-videos 600000 \\
        --seed 0 --workers 16
    python datasets/syncmnist.py --out data/syncmnist --split val --num-videos 10000 --seed 1
    python datasets/syncmnist.py --variant single ...          # SyncMNIST (46 classes)
    python datasets/syncmnist.py --mnist-dir ~/mnist ...       # real MNIST IDX files
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
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--digits", type=int, default=5)
    ap.add_argument("--size", type=int, default=64, help="output frame side")
    ap.add_argument("--shard-size", type=int, default=1000, help="videos per shard")
    ap.add_argument("--workers", type=int, default=1, help="parallel processes")
    ap.add_argument("--mnist-dir", default=None,
                    help="folder with MNIST IDX files (default: scikit-learn's bundled digits)")
    ap.add_argument("--sync-sizes", type=int, nargs="+", default=[2, 3],
                    help="possible sizes of the in-sync subset (MultiSyncMNIST)")
    ap.add_argument("--p-no-sync", type=float, default=None,
                    help="probability of 'no sync' (default 1 / number of classes)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = write_syncmnist_shards(
        args.out, args.split, args.num_videos, seed=args.seed, variant=args.variant,
        frames=args.frames, digits=args.digits, size=args.size, shard_size=args.shard_size,
        workers=args.workers, mnist_dir=args.mnist_dir, sync_sizes=tuple(args.sync_sizes),
        p_no_sync=args.p_no_sync)
    print(json.dumps({k: manifest[k] for k in ("dataset", "split", "num_samples",
                                               "num_classes", "pattern", "digit_source")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
