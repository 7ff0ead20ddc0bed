"""scripts/env.sh: two checkouts sharing one cached environment each import their own code.

The shared venv (dependencies only) is the one this suite runs in when it was built by
scripts/env.sh; the test copies the script and pyproject.toml into two fresh "clones", each with
its own marker package named ``dyreg_pyg``, runs the script in both (DYREG_ENV_NO_BUILD=1: it
never builds; without a cached venv for this pyproject.toml the test is skipped), and asks each
clone's interpreter - from outside either clone, the way a subprocess or an installed script
would - where ``dyreg_pyg`` comes from. Before the two layers, the second run re-pointed the
shared editable install and the first clone imported the second one's code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _clone(base: Path, name: str) -> Path:
    clone = base / name
    (clone / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "env.sh", clone / "scripts" / "env.sh")
    shutil.copy2(ROOT / "pyproject.toml", clone / "pyproject.toml")
    (clone / "dyreg_pyg").mkdir()
    (clone / "dyreg_pyg" / "__init__.py").write_text(f"WHERE = {name!r}\n")
    return clone


def _env_sh(clone: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["DYREG_ENV_NO_BUILD"] = "1"
    return subprocess.run(["bash", str(clone / "scripts" / "env.sh")], env=env,
                          capture_output=True, text=True, timeout=120)


def test_two_clones_each_import_their_own_code(tmp_path):
    a, b = _clone(tmp_path, "clone_a"), _clone(tmp_path, "clone_b")
    first = _env_sh(a)
    if first.returncode == 3:
        pytest.skip("no environment cached by scripts/env.sh for this pyproject.toml")
    assert first.returncode == 0, first.stderr
    second = _env_sh(b)
    assert second.returncode == 0, second.stderr
    assert first.stdout.strip().splitlines()[-1] == str(a / ".venv")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    for clone in (a, b):   # a is asked AFTER b ran the script: nothing of b may leak into a
        python = clone / ".venv" / "bin" / "python"
        out = subprocess.run([str(python), "-c",
                              "import dyreg_pyg, torch, torch_geometric; "
                              "print(dyreg_pyg.WHERE, dyreg_pyg.__file__)"],
                             cwd=outside, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        where, path = out.stdout.split()
        assert where == clone.name and Path(path).is_relative_to(clone)
    # Run again: the layer is kept (same link), not remade.
    marker = a / ".venv" / "dyreg-shared-venv"
    before = marker.stat().st_mtime_ns
    assert _env_sh(a).returncode == 0
    assert marker.stat().st_mtime_ns == before
