"""Installed, not only cloned: ``pip install .`` gives the ``dyreg-pyg`` command.

The slow test builds the wheel from a copy of the source (the checkout stays clean), installs
it into a fresh virtual environment and runs the command from a folder outside the checkout.
The fresh environment reuses the dependencies already installed for the running interpreter
(torch, PyG, ...: no download) through a ``.pth`` file that lists their site-packages folders.
A plain path line in a ``.pth`` file adds the folder to ``sys.path`` without running the
``.pth`` files inside it, so the editable install of the checkout (setuptools' ``__editable__``
finder in the project's venv) is not activated; and the fresh environment's own
site-packages comes first on ``sys.path`` anyway. The test asserts where the modules come from.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from train.cli import build_parser
from train.console import BUILDERS, PROG, main

ROOT = Path(__file__).resolve().parents[1]
APP = "dyreg_pyg_train"
"""The import name of the application (train/ in the checkout) inside the wheel."""
DEPENDENCIES = ("torch", "torchvision", "torch_geometric", "timm", "webdataset", "numpy", "PIL",
                "yaml", "sklearn", "pip", "setuptools")


def _train_commands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if hasattr(a, "add_parser"))
    return list(action.choices)


def test_the_console_lists_every_train_command_and_the_builders(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {PROG} ")
    commands = _train_commands()
    assert {"fit", "evaluate", "visualize", "demo"} <= set(commands)
    for name in [*commands, *BUILDERS]:
        assert f"    {name} " in out, name


def test_the_console_runs_a_builder_with_its_own_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["make-something", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {PROG} make-something ") and "--annotations" in out
    with pytest.raises(SystemExit) as exc:
        main(["make-something", "--version", "2", "--annotations", "a", "--videos", "v",
              "--out", str(tmp_path), "--split", "train", "--maxsize", "lots"])
    assert exc.value.code == 2
    assert "--maxsize: expected a byte count such as 500M or 1G, got 'lots'" in \
        capsys.readouterr().err
    assert main(["make-syncmnist", "--out", str(tmp_path / "s"), "--split", "val",
                 "--num-videos", "2", "--digit-source", "sklearn"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_samples"] == 2 and summary["split"] == "val"


def test_a_train_command_keeps_its_one_line_errors_under_the_console_name(capsys):
    assert main(["fit", "--config", "no_such_preset"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{PROG} fit: error: --config: no_such_preset")


# ----------------------------------------------------------------------------- the wheel


_FIND_ORIGINS = (
    "import importlib.util, json, sys\n"
    "specs = [importlib.util.find_spec(n) for n in sys.argv[1:]]\n"
    "print(json.dumps([s.origin if s is not None else None for s in specs]))\n"
)


def _origins(names: tuple[str, ...]) -> list[str | None]:
    """Where each module would be imported from, asked of a child interpreter."""
    out = subprocess.run([sys.executable, "-c", _FIND_ORIGINS, *names],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


def _dependency_dirs() -> list[str]:
    """The site-packages folders of the running interpreter that hold the dependencies.

    The modules are looked up in a child interpreter: asking this process's import system for
    ``pip`` makes setuptools' distutils shim stand down for the rest of the session (its
    ``spec_for_pip``), which later breaks ``torch.compile`` in other tests."""
    dirs = [p for p in site.getsitepackages() if os.path.isdir(p)]
    for origin in _origins(DEPENDENCIES):
        if origin:
            folder = str(Path(origin).resolve().parents[1])
            if folder not in dirs:
                dirs.append(folder)
    return dirs


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               OMP_NUM_THREADS="1")
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_the_wheel_installs_the_command_and_runs_outside_the_checkout(tmp_path):
    if _origins(("setuptools",)) == [None]:  # the build backend, used without isolation
        pytest.skip("setuptools is not installed")
    # 1. the wheel, built from a copy of the source
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("dyreg_pyg", "train"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--quiet", "-w", str(wheels), str(src)], cwd=tmp_path,
         env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, timeout=240)
    (wheel,) = wheels.glob("dyreg_pyg-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    presets = sorted(p.name for p in (ROOT / "train" / "configs").glob("*.yaml"))
    assert presets and {f"{APP}/configs/{p}" for p in presets} <= names
    assert {"dyreg_pyg/data/builders.py", f"{APP}/console.py", f"{APP}/cli.py",
            "dyreg_pyg/__init__.py"} <= names
    # nothing at top level but the library and the namespaced app: no `train` to shadow a
    # user's train.py, no datasets/ (Hugging Face's name), tests, benchmarks or study
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"dyreg_pyg", APP}, top
    assert "[console_scripts]" in entry_points
    assert f"dyreg-pyg = {APP}.console:main" in entry_points
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "Requires-Dist: av>=12" in metadata
    assert 'Requires-Dist: scikit-learn>=1.3; extra == "digits"' in metadata

    # 2. a fresh venv that reuses the installed dependencies, and the wheel installed into it
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, timeout=120)
    python = venv / "bin" / "python"
    env = _env(venv)
    purelib = Path(_run([str(python), "-c", "import sysconfig; "
                         "print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path, env=env).stdout.strip())
    (purelib / "_dyreg_pyg_test_deps.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "--quiet", str(wheel)], cwd=tmp_path, env=env, timeout=180)
    exe = shutil.which(PROG, path=env["PATH"])
    assert exe == str(venv / "bin" / PROG)

    # 3. the command, run outside the checkout
    work = tmp_path / "work"
    work.mkdir()
    proc = _run([PROG, "--help"], cwd=work, env=env)
    for name in [*_train_commands(), *BUILDERS]:
        assert f"    {name} " in proc.stdout, name
    out = work / "shards"
    proc = _run([PROG, "make-syncmnist", "--out", "shards", "--split", "val", "--num-videos",
                 "4", "--shard-size", "2", "--seed", "3"], cwd=work, env=env)
    summary = json.loads(proc.stdout)
    assert summary["num_samples"] == 4 and summary["split"] == "val"
    assert sorted(p.name for p in out.glob("*.tar")) == ["val-000000.tar", "val-000001.tar"]
    manifest = json.loads((out / "val-manifest.json").read_text())
    assert manifest["num_samples"] == 4

    # 4. the modules are the wheel's, not the checkout's; the presets are packaged
    probe = (f"import importlib.util, json, dyreg_pyg, {APP} as app, {APP}.console\n"
             "import dyreg_pyg.data.builders as b\n"
             f"from {APP}.config import CONFIG_DIR, load_config\n"
             "cfg = load_config('syncmnist_demo', [])\n"
             "print(json.dumps({'files': [dyreg_pyg.__file__, app.__file__, "
             "app.console.__file__, b.__file__], 'configs': str(CONFIG_DIR), "
             "'presets': sorted(p.name for p in CONFIG_DIR.glob('*.yaml')), "
             "'loaded': type(cfg).__name__, "
             "'train': importlib.util.find_spec('train') is not None}))\n")
    found = json.loads(_run([str(python), "-c", probe], cwd=work, env=env).stdout)
    for f in [*found["files"], found["configs"]]:
        assert Path(f).resolve().is_relative_to(purelib.resolve()), f
        assert not Path(f).resolve().is_relative_to(ROOT), f
    assert found["presets"] == presets
    assert found["train"] is False   # the wheel installs nothing importable as `train`


def test_every_package_folder_is_listed_for_the_wheel():
    """pyproject.toml lists the packages by hand (the app is renamed in the wheel, which
    setuptools' package finder cannot do): a new sub-package must be added there."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "dyreg_pyg").rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {found - listed}"
    assert listed - found == {APP}
