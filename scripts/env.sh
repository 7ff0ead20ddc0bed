#!/usr/bin/env bash
# Build (or reuse) the project's environment and print the checkout's interpreter folder on the
# last line.
#
# Two layers, so that several checkouts share the heavy part but each imports its own code:
#   shared   ${DYREG_CACHE:-$HOME/.cache/dyreg-pyg}/venv-<key>: the DEPENDENCIES only (torch,
#            PyG, timm, ...; torch-scatter compiled from source in ~4 minutes on 2 cores), keyed
#            by a hash of pyproject.toml's dependency part and ENV_REV. The project itself is
#            never installed there: an editable install in a shared venv points at whichever
#            checkout ran this script last, and a second clone would import the first one's code.
#   local    <checkout>/.venv: a tiny venv (no pip, no copies) whose site-packages holds two
#            .pth files - the checkout's root first, then the shared venv's site-packages
#            (added with site.addsitedir, so its own .pth files run too). Made in well under a
#            second; remade when it points at another shared venv or another checkout.
# DYREG_ENV_NO_BUILD=1 makes the script exit 3 instead of building a missing shared venv.
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
    if [ "${DYREG_ENV_NO_BUILD:-0}" = 1 ]; then
        echo "[env] no cached environment at $venv (DYREG_ENV_NO_BUILD=1)" >&2
        exit 3
    fi
    echo "[env] building $venv (first run only)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    "$py" -m venv "$venv"
    pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
    "${pip[@]}" --upgrade pip setuptools wheel >&2
    # torchvision pins torch; this pair is the newest the local cache holds.
    "${pip[@]}" "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}" >&2
    # The project's dependencies (with the dev extra), then the project itself out again.
    "${pip[@]}" -e "$root[dev]" >&2
    if [ "${DYREG_NO_SCATTER:-0}" != 1 ]; then
        # No wheel for this torch on PyPI: compile against the installed torch.
        "${pip[@]}" --no-build-isolation torch-scatter >&2 \
            || echo "[env] torch-scatter failed to build; PyG falls back to torch ops" >&2
    fi
    touch "$venv/.complete"
fi
# A shared venv built before the two layers existed holds an editable install: remove it (cheap
# when absent: only the dist-info folder is looked for).
if compgen -G "$venv/lib/python*/site-packages/dyreg_pyg-*.dist-info" >/dev/null; then
    "$venv/bin/python" -m pip uninstall --disable-pip-version-check -q -y dyreg-pyg >&2
fi

# The checkout's own layer.
local_venv="$root/.venv"
shared_site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
want="$root
import site; site.addsitedir('$shared_site')"
have=""
if [ -f "$local_venv/dyreg-shared-venv" ]; then
    have="$(cat "$local_venv"/lib/python*/site-packages/00-dyreg-checkout.pth 2>/dev/null || true)
$(cat "$local_venv"/lib/python*/site-packages/10-dyreg-shared.pth 2>/dev/null || true)"
fi
if [ -L "$local_venv" ] || [ "$have" != "$want" ]; then
    rm -rf "$local_venv"
    "$venv/bin/python" -m venv --without-pip "$local_venv" >&2
    local_site=$("$local_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$root" > "$local_site/00-dyreg-checkout.pth"
    echo "import site; site.addsitedir('$shared_site')" > "$local_site/10-dyreg-shared.pth"
    echo "$venv" > "$local_venv/dyreg-shared-venv"
fi
echo "$local_venv"
