#!/usr/bin/env bash
# Issue 15's GPU check (under 5 minutes on one GPU): analyze ratios on VGG16-224
# batch 32, the fit ratio and peak device memory against an Adam step, and a
# MirroredStrategy fit over every visible GPU equal to a one-device fit.
# Writes benchmarks/results/gpu_check.json.  `--smoke` runs it anywhere (CPU too)
# on a tiny CNN, writing to $TMPDIR.  Exits non-zero if the mirrored fit differs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout "${GPU_CHECK_TIMEOUT:-290}" "$PY" benchmarks/gpu_check.py "$@"
