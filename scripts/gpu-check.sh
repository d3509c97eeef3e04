#!/usr/bin/env bash
# On a machine with a CUDA GPU: show the GPU, run the GPU tests, then every benchmark on the GPU.
# Usage: bash scripts/gpu-check.sh [extra run_all options, e.g. --quick]
# Exits non-zero when the GPU is missing, a GPU test fails, or a benchmark fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: nvidia-smi not found; this script is for a machine with an NVIDIA GPU." >&2
    exit 2
fi
nvidia-smi || { echo "gpu-check: nvidia-smi failed (driver not loaded?)" >&2; exit 2; }

# Without this, every GPU test would be skipped and the run would look green.
if ! "$PYTHON" -c 'import sys, torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}"); sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu-check: torch in $PYTHON cannot see a CUDA GPU (a CPU-only torch build, or a driver too old for it)." >&2
    exit 2
fi

echo
echo "== GPU tests =="
"$PYTHON" -m pytest -m gpu tests/test_gpu.py -q
tests=$?

echo
echo "== benchmarks on cuda =="
"$PYTHON" bench/run_all.py --device cuda "$@"
bench=$?

echo
if [ "$tests" -ne 0 ]; then
    echo "gpu-check: FAILED: GPU tests (pytest exit status $tests)"
    exit 1
fi
if [ "$bench" -ne 0 ]; then
    echo "gpu-check: FAILED: a benchmark (run_all exit status $bench)"
    exit 1
fi
echo "gpu-check: ok"
