#!/usr/bin/env bash
# On a machine with a CUDA GPU: show the GPU, run the GPU tests, a command-line run on one GPU (and on
# every GPU through torchrun when there are several), then every benchmark on the GPU.
# Usage: bash scripts/gpu-check.sh [extra run_all options, e.g. --quick]
# Exits non-zero when the GPU is missing, a GPU test, a command-line run or a benchmark fails.
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
"$PYTHON" -m pytest -m gpu -q -n 0  # every test marked gpu, wherever it lives, in one process (one CUDA context)
tests=$?

# The command line on one GPU, then data parallel on every GPU of the machine (when it has several).
cli_run() {  # cli_run LABEL COMMAND...: train into a scratch store, print the result and images/s
    local label=$1; shift
    local out
    out=$("$@" train --data demo:source --per-class 60 --backbone efficientnet_lite0 --strategy last_stage \
          --config "$scratch/CONFIG.json" --data-dir "$scratch/data" | tail -n 1)
    local status=$?
    echo "$label: $out"
    "$PYTHON" - "$scratch/data" "$out" <<'PY' 2>/dev/null
import json, sys
from core.runs import RunStore
r = RunStore(sys.argv[1]).get(json.loads(sys.argv[2])["run_id"])
print(f"  {r.config.get('images_per_second', 0):.0f} images/s on {r.info.get('device')}, "
      f"world size {r.info.get('world_size')}")
PY
    [ "$status" -eq 0 ] && echo "$out" | grep -q '"status": "finished"'
}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo '{"epochs": 3, "image_size": 128, "batch_size": 32, "warmup_epochs": 1, "early_stopping": 0}' > "$scratch/CONFIG.json"
echo
echo "== command line, one GPU =="
cli_run "1 GPU" "$PYTHON" -m core.cli
cli=$?
gpus=$(nvidia-smi -L | grep -c '^GPU')
echo
echo "== command line, torchrun on $gpus GPU(s) (DDP, NCCL) =="
cli_run "$gpus GPU(s), DDP" "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$gpus" -m core.cli
cli=$(( cli || $? ))

echo
echo "== benchmarks on cuda =="
"$PYTHON" bench/run_all.py --device cuda "$@"
bench=$?

echo
if [ "$tests" -ne 0 ]; then
    echo "gpu-check: FAILED: GPU tests (pytest exit status $tests)"
    exit 1
fi
if [ "$cli" -ne 0 ]; then
    echo "gpu-check: FAILED: a command-line training run"
    exit 1
fi
if [ "$bench" -ne 0 ]; then
    echo "gpu-check: FAILED: a benchmark (run_all exit status $bench)"
    exit 1
fi
echo "gpu-check: ok"
