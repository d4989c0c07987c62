#!/usr/bin/env bash
# One-command GPU benchmark (see benchmarks/gpu.py), from the repository root:
#   bash benchmarks/gpu.sh [--out FILE] [--data DIR]
# Uses the installed package, else the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import vdsr" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
timeout 290 python benchmarks/gpu.py "$@"
