#!/usr/bin/env bash
# Build (or reuse) the project's virtual environment and print its path on the last line.
#
# The venv is cached under ${DYREG_CACHE:-$HOME/.cache/dyreg-pyg}, keyed by a hash of
# pyproject.toml and this script, so a dependency change builds a fresh one; with no cache it
# is built from nothing (torch-scatter compiles from source in ~4 minutes on 2 cores).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${DYREG_CACHE:-$HOME/.cache/dyreg-pyg}
# Key: the dependency part of pyproject.toml (everything before [tool.*]) and ENV_REV, which is
# bumped whenever the build steps below change.
ENV_REV=1
key=$( { echo "$ENV_REV"; sed '/^\[tool\./,$d' "$root/pyproject.toml"; } | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
py=${PYTHON:-python3}

if [ ! -f "$venv/.complete" ]; then
    echo "[env] building $venv (first run only)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    "$py" -m venv "$venv"
    pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
    "${pip[@]}" --upgrade pip setuptools wheel >&2
    # torchvision pins torch; this pair is the newest the local cache holds.
    "${pip[@]}" "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}" >&2
    "${pip[@]}" -e "$root[dev]" >&2
    if [ "${DYREG_NO_SCATTER:-0}" != 1 ]; then
        # No wheel for this torch on PyPI: compile against the installed torch.
        "${pip[@]}" --no-build-isolation torch-scatter >&2 \
            || echo "[env] torch-scatter failed to build; PyG falls back to torch ops" >&2
    fi
    touch "$venv/.complete"
else
    # The cached venv may point at another checkout: re-link the editable install cheaply.
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e "$root" >&2
fi
ln -sfn "$venv" "$root/.venv"
echo "$venv"
