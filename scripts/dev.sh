#!/usr/bin/env bash
# One entry point for newcomers and CI.
#   bash scripts/dev.sh demo [args]   build the env if needed, run the embedded main job
#   bash scripts/dev.sh test [args]   build the env if needed, run ruff and the test-suite
#   bash scripts/dev.sh python ...    run anything inside the env
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/scripts/env.sh" | tail -n 1)
# the checkout's interpreter first, then the shared venv's tools (ruff, torchrun, ...)
export PATH="$venv/bin:$(cat "$venv/dyreg-shared-venv")/bin:$PATH"
cd "$root"
cmd=${1:-test}
shift || true
case "$cmd" in
    demo) exec python -m train demo "$@" ;;
    test)
        ruff check .
        exec python -m pytest -q "$@"
        ;;
    *) exec "$cmd" "$@" ;;
esac
