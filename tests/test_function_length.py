"""Short functions: none over ``LIMIT`` lines in train/*.py, none over ``LIMIT`` code lines
anywhere in dyreg_pyg/ (no exemptions).

Static (``ast`` and ``tokenize``, nothing is imported). Two counts:

* train/ (:func:`function_lengths`): a function's length runs from its ``def`` to its last
  line, everything included - docstring, comments, blank lines.
* dyreg_pyg/ (:func:`code_lengths`): the *code lines* from its ``def`` to its last line: lines
  that hold a token of code. Docstrings (of the function and of anything nested in it), lines
  holding only a comment, and blank lines do not count; a statement over several lines counts
  each line.

Either way, nested functions count in their parent and on their own too, and same-named
functions of one file (methods of several classes) are reported by the longest.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}


def function_lengths(folder: Path) -> dict[str, int]:
    """``{"file.py:function": lines}`` for every function (methods too) of ``folder/*.py``."""
    lengths = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, _FUNCTIONS):
                key, n = f"{path.name}:{node.name}", node.end_lineno - node.lineno + 1
                lengths[key] = max(n, lengths.get(key, 0))  # same-named methods: the longest
    return lengths


def _code_lines(source: str, tree: ast.Module) -> set[int]:
    """The line numbers of ``source`` that hold code: a token other than a comment, outside
    every docstring (module, class, function)."""
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in _SKIPPED:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, *_FUNCTIONS)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            lines.difference_update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def code_lengths(folder: Path) -> dict[str, int]:
    """``{"relative/path.py:function": code lines}`` for every function (methods too) of
    every ``*.py`` under ``folder``."""
    lengths = {}
    for path in sorted(folder.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source, str(path))
        code = _code_lines(source, tree)
        for node in ast.walk(tree):
            if isinstance(node, _FUNCTIONS):
                n = len(code.intersection(range(node.lineno, node.end_lineno + 1)))
                key = f"{path.relative_to(folder).as_posix()}:{node.name}"
                lengths[key] = max(n, lengths.get(key, 0))
    return lengths


def test_no_function_in_train_is_longer_than_the_limit():
    lengths = function_lengths(ROOT / "train")
    assert "loop.py:fit" in lengths  # the walk sees the trainer
    long = {name: n for name, n in lengths.items() if n > LIMIT}
    assert not long, f"functions over {LIMIT} lines in train/: {long}"


def test_no_function_in_the_library_has_more_code_lines_than_the_limit():
    lengths = code_lengths(ROOT / "dyreg_pyg")
    assert "data/loader.py:make_clip_loader" in lengths  # the walk sees subpackages
    long = {name: n for name, n in lengths.items() if n > LIMIT}
    assert not long, f"functions over {LIMIT} code lines in dyreg_pyg/: {long}"


def test_the_counter_counts_lines(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    x = 1\n\n    return x\n\n\nclass A:\n"
                                   "    def g(self):\n        pass\n")
    assert function_lengths(tmp_path) == {"m.py:f": 4, "m.py:g": 2}


def test_the_code_counter_skips_docstrings_comments_and_blank_lines(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text(
        '"""Module."""\n'
        "def f(a,\n"            # 1: a signature over 2 lines counts 2
        "      b):\n"           # 2
        '    """Doc\n'
        '    string."""\n'
        "    # a comment\n"
        "\n"
        "    def g():\n"        # 3 (f), 1 (g)
        "        '''Nested doc.'''\n"
        "        return '''not\n"   # 4, 2: a string that is no docstring counts
        "        a doc'''\n"        # 5, 3
        "    x = {'k':  # why\n"    # 6
        "         1}\n"             # 7
        "    return x\n")           # 8
    assert code_lengths(tmp_path) == {"sub/m.py:f": 8, "sub/m.py:g": 3}
