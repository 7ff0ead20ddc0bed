"""``python -m train`` for the multi-node tests (tests/test_multinode.py), run by torchrun:
records the keys of every training sample this rank reads in ``$KEYS_DIR/rank<RANK>.txt``
(one ``<loader seed> <key>`` line each) and otherwise runs the command unchanged."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dyreg_pyg.data import ClipLoader  # noqa: E402
from train.cli import main  # noqa: E402

_iter = ClipLoader.__iter__


def _recording_iter(self):
    path = Path(os.environ["KEYS_DIR"]) / f"rank{os.environ.get('RANK', '0')}.txt"
    for batch in _iter(self):
        if self.dataset.p.train:
            with path.open("a") as f:
                f.writelines(f"{self.dataset.p.seed} {k}\n" for k in batch["key"])
        yield batch


ClipLoader.__iter__ = _recording_iter

if __name__ == "__main__":
    raise SystemExit(main())
