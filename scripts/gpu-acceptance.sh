#!/usr/bin/env bash
# The GPU acceptance run (docs/gpu.md): doctor, the gpu tests, engine builds, verify, the worker's
# thread model, benches; each step pass, fail or skipped with the reason. Reports go to --out
# (default runs/gpu-acceptance/): report.json and report.md. Exit 0 when nothing failed.
#
#   scripts/gpu-acceptance.sh [PACKAGE] [--out DIR] [--data DIR] [--quick]
#
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$root/scripts/gpu_acceptance.py" "$@"
