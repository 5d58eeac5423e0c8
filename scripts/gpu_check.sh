#!/usr/bin/env bash
# The GPU check of issue 18 in one short run (< 8 min on an H200): Triton/CUDA tests, adder conv vs
# cuDNN on ResNet-20 and VGG-small shapes (batch 128), ResNet-20 trained by shiftadd.train with amp off
# and bf16, and training-step throughput (conv / adder / shift-ps / shiftadd). Stages stop starting after
# --budget-s (default 420 s). Results: $OUT/gpu_check.{json,md}, $OUT/tests.log, $OUT/gpu_check.log.
#
#   scripts/gpu_check.sh                 # on the GPU machine (OUT is set there)
#   scripts/gpu_check.sh --cpu-dry-run   # CPU dry run: interpreter tests, tiny benchmarks and trainer runs
#
# Extra arguments go to scripts/gpu_check.py (--batch, --repeats, --steps, --train-epochs, --budget-s,
# --skip-tests, --out).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/shiftadd-gpu-check}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The triton extra: use an installed Triton (the GPU image has one), else install the extra.
if ! "$PY" -c "import triton" 2>/dev/null; then
    "$PY" -m pip install -q -e ".[triton]" || echo "gpu_check: Triton could not be installed; its tests are skipped"
fi
# On a GPU the CPU C++ extension is not needed: do not spend device time compiling it.
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    export SHIFTADD_NO_EXTENSION=1
fi
"$PY" scripts/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
