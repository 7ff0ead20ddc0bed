"""The README's Layout section matches the tree: every file it names exists, and every module
of the model's rooms (``dyreg_pyg/nn/``) is named there (issue 34: rooms that say what they
hold)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ENTRY = re.compile(r"^( {0,2})([\w./]+?(?:\.py|/))(?:\s|$)")


def layout_paths(readme: str) -> list[str]:
    """The paths under ``dyreg_pyg/`` named in the code block of ``## Layout``: a line
    starting with a file or folder name (``x.py``, ``nn/``) at indent 0, or at indent 2 for a
    file inside the folder named last; deeper indents are continuation lines."""
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    paths, folder = [], ""
    for line in block.splitlines():
        m = _ENTRY.match(line)
        if not m:
            continue
        indent, name = len(m.group(1)), m.group(2)
        if indent == 0:
            folder = name if name.endswith("/") else ""
            paths.append(name)
        elif indent == 2 and folder:
            paths.append(folder + name)
    return paths


def test_the_layout_parser_reads_folders_and_nested_files():
    text = ("intro\n## Layout\n\n```\na.py        what a holds,\n"
            "                  continued: b.py\nnn/         rooms\n  c.py      c\n"
            "  sub/      d\n```\n## Next\n")
    assert layout_paths(text) == ["a.py", "nn/", "nn/c.py", "nn/sub/"]


def test_every_path_in_the_readme_layout_exists():
    paths = layout_paths((ROOT / "README.md").read_text())
    assert len(paths) > 10 and "nn/conv/" in paths
    missing = [p for p in paths if not (ROOT / "dyreg_pyg" / p).exists()]
    assert not missing, f"README's Layout names what dyreg_pyg/ lacks: {missing}"


def test_every_model_module_is_in_the_readme_layout():
    paths = set(layout_paths((ROOT / "README.md").read_text()))
    nn = ROOT / "dyreg_pyg" / "nn"
    modules = {str(p.relative_to(ROOT / "dyreg_pyg")) for p in nn.rglob("*.py")
               if p.name != "__init__.py" and "__pycache__" not in p.parts}
    assert len(modules) > 5
    unnamed = sorted(modules - paths)
    assert not unnamed, f"add to README's Layout (one line: what it holds, which Eq.): {unnamed}"
