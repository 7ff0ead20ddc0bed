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

The command-line logic lives in :mod:`dyreg_pyg.data.builders`; installed (``pip install .``),
the same command is ``dyreg-pyg make-something ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def main(argv: Sequence[str] | None = None) -> int:
    from dyreg_pyg.data.builders import something_main

    return something_main(argv)


if __name__ == "__main__":
    sys.exit(main())
