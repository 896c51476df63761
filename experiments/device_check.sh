#!/usr/bin/env bash
# The accelerator check, in one prepared script (< 8 min on one GPU; every step has a timeout).
#
#   bash experiments/device_check.sh            # JSON files in results/device_check/
#   OUT=/some/dir bash experiments/device_check.sh
#
# Needs a Python whose jax sees the accelerator and has sidjax's dependencies, e.g.
#   pip install -e . "jax[cuda12]"     (NVIDIA)   or   pip install -e . "jax[tpu]"   (TPU)
# Runs, on as many devices as the machine has (1, 2, 4, 8):
#   1. bench_parallel.py: BP (data-parallel), synchronous and pipelined blockwise SID,
#      ViT-Tiny cut into K = 8 blocks, 32x32x3, batch 128 (goal: pipelined >= 0.8*K x 1 device);
#   2. bench_step.py: SID vs BP step time, SimpleCNN shared trunk, L = 10, batch 128;
#   3. bench_memory.py: compiled temp memory and step time per blockwise execution, ViT-Tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-results/device_check}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2

if ! $PY -c "import jax, sidjax" 2>/dev/null; then
  echo "error: $PY cannot import jax and sidjax; install them (see the header of this script) or set PYTHON" >&2
  exit 1
fi
read -r backend count kind < <($PY -c "import jax; print(jax.default_backend(), jax.device_count(), jax.devices()[0].device_kind.replace(' ', '_'))")
echo "backend $backend, $count device(s) of kind $kind"
if [ "$backend" = cpu ]; then
  echo "error: jax sees no accelerator here; install jax for it (see the header of this script)" >&2
  exit 1
fi
counts=$(for d in 1 2 4 8; do [ "$d" -le "$count" ] && printf '%s,' "$d"; done)
counts=${counts%,}

status=0
run() {  # run NAME SECONDS COMMAND...: a step that fails or times out is reported, the rest go on
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || { echo "   failed or timed out: see $OUT/$name.log"; status=1; }
  tail -12 "$OUT/$name.log"
}
run bench_parallel 240 $PY experiments/bench_parallel.py --devices "$counts" --steps 20 --json "$OUT/bench_parallel.json"
run bench_step 90 $PY experiments/bench_step.py --steps 50 --json "$OUT/bench_step_simplecnn.json"
run bench_memory 120 $PY experiments/bench_memory.py --model vit_tiny --input-shape 32,32,3 --batch-size 64 \
  --ks 1,2,4,8 --steps 5 --json "$OUT/bench_memory_vit_tiny.json"
echo "results in $OUT (exit status $status)"
exit $status
