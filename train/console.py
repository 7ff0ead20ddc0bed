"""The ``dyreg-pyg`` console command that ``pip install`` puts on the PATH.

``dyreg-pyg COMMAND ...`` runs every command of ``python -m train`` (fit, evaluate,
visualize, demo, ...: taken from :func:`train.cli.build_parser`, so a command added there
appears here too, with the same arguments and the same one-line errors / ``--debug``) and the
shard builders of the library (``make-syncmnist``, ``make-something``:
:mod:`dyreg_pyg.data.builders`, which ``datasets/*.py`` wrap in a checkout).

``dyreg-pyg --help`` imports neither torch nor the library; a builder imports the library
only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from .cli import build_parser, run

__all__ = ["main", "BUILDERS", "PROG"]

PROG = "dyreg-pyg"

BUILDERS: dict[str, tuple[str, str]] = {
    "make-syncmnist": ("dyreg_pyg.data.builders:syncmnist_main",
                       "build MultiSyncMNIST / SyncMNIST shards (no download)"),
    "make-something": ("dyreg_pyg.data.builders:something_main",
                       "convert Something-Something V1 / V2 into shards"),
}
"""``{command: ("module:function", help)}``: each function takes ``(argv, prog)`` and parses
its own arguments."""


def _builder(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dyreg-pyg`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in BUILDERS:
        return _builder(BUILDERS[argv[0]][0])(argv[1:], prog=f"{PROG} {argv[0]}")
    parser = build_parser(PROG)
    parser.description = ("DyReg-GNN on PyTorch Geometric: build shards, train, evaluate, "
                          "visualize. 'dyreg-pyg COMMAND --help' for a command's arguments.")
    commands = next(a for a in parser._actions if hasattr(a, "add_parser"))
    for name, (_, help_text) in BUILDERS.items():
        # listed in --help; the builder parses its own arguments (dispatched above)
        commands.add_parser(name, help=help_text, add_help=False)
    return run(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
