"""Convert Something-Something V1 / V2 (official release layout) into WebDataset shards.

Examples::

    # V2: videos/<id>.webm + something-something-v2-{labels,train,validation,test}.json
    python datasets/something_something.py --version 2 --annotations ssv2/labels \\
        --videos ssv2/20bn-something-something-v2 --out data/ssv2 --split train \\
        --store video --maxcount 200 --workers 8
    # V1: frames/<id>/00001.jpg + something-something-v1-{labels,train,validation}.csv
    python datasets/something_something.py --version 1 --annotations ssv1 \\
        --videos ssv1/20bn-something-something-v1 --out data/ssv1 --split validation \\
        --store frames
    # optional Something-Else boxes for the region-object metric
    ... --boxes bounding_box_annotations.json

Writes <out>/<split>-%06d.tar and <out>/<split>-manifest.json (shards, counts, classes,
left/right flip pairs, and a summary of every skipped video and why).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().rstrip("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    from dyreg_pyg.data import convert_something

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    ap.add_argument("--maxsize", type=_size, default=1 << 30,
                    help="bytes per shard at most (e.g. 500M, 1G)")
    ap.add_argument("--boxes", nargs="*", default=None,
                    help="Something-Else bounding_box_annotations*.json file(s)")
    ap.add_argument("--fps", type=float, default=12.0, help="V1 frame rate to record")
    ap.add_argument("--limit", type=int, default=None, help="only the first N videos")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    store = args.store or ("video" if args.version == 2 else "frames")
    manifest = convert_something(
        args.version, args.annotations, args.out, args.split, videos=args.videos, store=store,
        maxcount=args.maxcount, maxsize=args.maxsize, short_side=args.short_side or None,
        quality=args.quality, boxes=args.boxes, fps=args.fps, limit=args.limit,
        workers=args.workers)
    print(json.dumps({k: manifest[k] for k in ("dataset", "split", "store", "num_samples",
                                               "num_classes", "pattern", "flip_pairs",
                                               "skipped")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
