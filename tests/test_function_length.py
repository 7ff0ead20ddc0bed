"""The trainer stays in short functions: no function in train/*.py over ``LIMIT`` lines.

Static (``ast``, nothing is imported); a function's length runs from its ``def`` to its last
line, docstring and nested functions included (a nested function also counts on its own).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60


def function_lengths(folder: Path) -> dict[str, int]:
    """``{"file.py:function": lines}`` for every function (methods too) of ``folder/*.py``."""
    lengths = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key, n = f"{path.name}:{node.name}", node.end_lineno - node.lineno + 1
                lengths[key] = max(n, lengths.get(key, 0))  # same-named methods: the longest
    return lengths


def test_no_function_in_train_is_longer_than_the_limit():
    lengths = function_lengths(ROOT / "train")
    assert "loop.py:fit" in lengths  # the walk sees the trainer
    long = {name: n for name, n in lengths.items() if n > LIMIT}
    assert not long, f"functions over {LIMIT} lines in train/: {long}"


def test_the_counter_counts_lines(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    x = 1\n\n    return x\n\n\nclass A:\n"
                                   "    def g(self):\n        pass\n")
    assert function_lengths(tmp_path) == {"m.py:f": 4, "m.py:g": 2}
