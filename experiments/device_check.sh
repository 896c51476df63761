#!/usr/bin/env bash
# The accelerator check: one prepared script, <= 9 minutes on one H200, 6 files in $OUT.
#
# Carry Fashion-MNIST (the four IDX .gz files, ~31 MB) in data/fashion-mnist/ of this checkout
# (git-ignored; the GPU machine has no network, no TensorFlow and no TFDS):
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz data/fashion-mnist/
# then run it there as one command (the device tool: carry ["data"], timeout_s 600):
#   bash experiments/device_check.sh
# $OUT (set by the device tool; default results/device_check) receives: environment.txt (the device,
# the software, every step's exit status and time), steps.log (every step's output), epoch.json,
# memory_vit_k8.json, memory_vit_k4.json (written as each result exists) and tests.log (every test
# by name, and pytest's summary even when the step is cut short). PYTHON names the interpreter
# (default python3). On a CPU, to check the script itself (same steps, tiny settings, K=8 included):
#   SMOKE=1 bash experiments/device_check.sh      # 7.5 min measured on 2 cores with a sweep running beside it
#
# Step limits on an H200, from this machine's compile times (a 2-core CPU, loaded: SimpleCNN
# programs 2.2-3.0 s, ResNet-18 K=4 5.1-6.8 s, ViT-Tiny's memory variants 58 s at K=4 and 68 s at
# K=8, the selected tests 176 s) and the earlier H200 run (GPU compile times about the CPU's: 27
# method tests in 66 s; steps at batch 128: SimpleCNN trunk 1.4 ms, SimpleCNN blockwise K=4 11 ms,
# ResNet-18 K=4 SID 20 ms, BP 6.5 ms; ViT-Tiny b64 steps 7-49 ms):
#   environment      ~10 s                                                       limit  20 s
#   epoch            7 runs x (2 compiles + 3 epochs of 120 steps + 103 steps):  ~130 s   limit 200 s
#   memory_vit_k8    compiles ~70 s + 5 variants x 12 steps x <50 ms:            ~75 s    limit 110 s
#   memory_vit_k4    compiles ~60 s + 5 variants x 12 steps x <20 ms:            ~62 s    limit 100 s
#   tests            24 equivalence tests, compile-bound: ~100 s (CPU, unloaded)          limit 110 s
#   total            ~380 s expected                                                      limits 540 s
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-results/device_check}
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if ! command -v "$PY" >/dev/null; then
  echo "error: no $PY here; set PYTHON to the interpreter that has jax (PYTHON=/path/to/python bash $0)" >&2
  exit 1
fi
for module in jax flax optax chex orbax.checkpoint numpy tqdm pytest; do
  if ! why=$("$PY" -c "import $module" 2>&1); then
    echo "error: $PY cannot import $module ($(echo "$why" | tail -n 1)); install it, or set PYTHON" >&2
    exit 1
  fi
done
if ! why=$("$PY" -c "import sidjax" 2>&1); then
  echo "error: $PY cannot import sidjax from $PWD ($(echo "$why" | tail -n 1))" >&2
  exit 1
fi
if [ -z "${SIDJAX_FASHION_MNIST_DIR:-}" ]; then  # the carried folder, else Debian's package
  for dir in "$PWD/data/fashion-mnist" /usr/share/datasets/fashion-mnist; do
    if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then export SIDJAX_FASHION_MNIST_DIR=$dir; break; fi
  done
fi
if [ ! -f "${SIDJAX_FASHION_MNIST_DIR:-/nowhere}/train-images-idx3-ubyte.gz" ]; then
  echo "error: Fashion-MNIST not found: copy its four IDX .gz files into data/fashion-mnist/ (and carry" \
       "that folder), or set SIDJAX_FASHION_MNIST_DIR" >&2
  exit 1
fi
backend=$("$PY" -c "import jax; print(jax.default_backend())")
if [ "$backend" = cpu ] && [ -z "${SMOKE:-}" ]; then
  echo "error: jax sees no accelerator here (install jax's CUDA or TPU wheel; SMOKE=1 runs tiny settings on a CPU)" >&2
  exit 1
fi
mkdir -p "$OUT"
RUNS=trunk:simplecnn:sid,trunk:simplecnn:bp,blockwise:simplecnn:sid,blockwise:simplecnn:dgl,blockwise:simplecnn:bp
RUNS=$RUNS,blockwise:resnet18:sid,blockwise:resnet18:bp
VARIANTS=bp,bp_remat,sid_sequential,sid_vmap,sid_stages
TESTS=(tests/test_method.py tests/test_blockwise.py::test_fused_and_sequential_execution_agree
       tests/test_blockwise.py::test_vmap_execution_agrees_on_identical_blocks
       tests/test_blockwise.py::test_dgl_is_sid_with_alpha_one_and_no_belief_input
       tests/test_your_model.py::test_executions_agree_on_params_and_statistics)
if [ -n "${SMOKE:-}" ]; then  # the same steps and code paths, tiny: what a CPU can run in minutes
  EPOCH_ARGS=(--tiny --limit-train 1280 --epochs 1 --rounds 3 --round-steps 2)
  K8_ARGS=(--input-shape 8,8,3 --batch-size 4 --steps 1)  # the full ViT-Tiny: its tiny variant has 4 blocks
  K4_ARGS=(--tiny --input-shape 8,8,3 --batch-size 8 --steps 2)
  LIMITS=(60 300 200 120 360)
else
  EPOCH_ARGS=(--limit-train 15360 --epochs 2 --rounds 20 --round-steps 5)  # 120 steps per epoch
  K8_ARGS=(--input-shape 32,32,3 --batch-size 64 --steps 10)
  K4_ARGS=(--input-shape 32,32,3 --batch-size 64 --steps 10)
  LIMITS=(20 200 110 100 110)
fi

status=0
step() {  # step NAME SECONDS COMMAND...: a failing or cut-short step is reported; the next ones still run
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)" | tee -a "$OUT/steps.log"
  local begin=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" >> "$OUT/steps.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - begin)) s$([ $rc = 124 ] && echo ' (cut short at its limit)')" \
    | tee -a "$OUT/environment.txt"
  [ $rc = 0 ] || status=1
}
{
  echo "smoke: ${SMOKE:-no}, backend $backend, data $SIDJAX_FASHION_MNIST_DIR"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} > "$OUT/environment.txt" 2>&1
step environment "${LIMITS[0]}" "$PY" -c "
import sys, jax, flax, optax, sidjax
print('devices:', jax.devices()); print('python', sys.version.split()[0], 'jax', jax.__version__,
      'flax', flax.__version__, 'optax', optax.__version__, 'sidjax', sidjax.__version__)"
cat "$OUT/steps.log" >> "$OUT/environment.txt"
step epoch "${LIMITS[1]}" "$PY" -m experiments.bench_epoch --runs "$RUNS" "${EPOCH_ARGS[@]}" --json "$OUT/epoch.json"
step memory_vit_k8 "${LIMITS[2]}" "$PY" -m experiments.bench_memory --model vit_tiny --ks 8 \
  --variants "$VARIANTS" "${K8_ARGS[@]}" --json "$OUT/memory_vit_k8.json"
step memory_vit_k4 "${LIMITS[3]}" "$PY" -m experiments.bench_memory --model vit_tiny --ks 4 \
  --variants "$VARIANTS" "${K4_ARGS[@]}" --json "$OUT/memory_vit_k4.json"
echo "== tests (limit ${LIMITS[4]}s): $OUT/tests.log" | tee -a "$OUT/steps.log"
begin=$SECONDS
timeout --signal=INT --kill-after=15 "${LIMITS[4]}" "$PY" -m pytest -v -rfE -p no:xdist "${TESTS[@]}" \
  > "$OUT/tests.log" 2>&1
rc=$?
echo "tests: exit $rc after $((SECONDS - begin)) s$([ $rc = 124 ] && echo ' (cut short at its limit)')" \
  | tee -a "$OUT/environment.txt"
[ $rc = 0 ] || status=1
tail -n 3 "$OUT/tests.log"
echo "results in $OUT (exit status $status): $(ls "$OUT" | tr '\n' ' ')"
exit $status
