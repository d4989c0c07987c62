#!/usr/bin/env bash
# One-command GPU benchmark (see benchmarks/gpu.py). Run from the repository root.
set -euo pipefail
python -m pip install -q -e . >/dev/null 2>&1 || true
timeout 290 python benchmarks/gpu.py "$@"
