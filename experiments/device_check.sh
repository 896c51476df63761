#!/usr/bin/env bash
# The accelerator check, one prepared script: < 8 min on one GPU, at most 8 files in $OUT.
#
#   bash experiments/device_check.sh                     # on a machine whose jax sees a GPU or TPU
#   OUT=/some/dir PYTHON=python3 bash experiments/device_check.sh
#   SMOKE=1 bash experiments/device_check.sh             # tiny settings on a CPU: checks the script itself
#
# Needs sidjax's dependencies and a jax that sees the accelerator; no network, no TensorFlow.
# Fashion-MNIST is read from its four original IDX files: $SIDJAX_FASHION_MNIST_DIR (default
# data/fashion-mnist/ in this checkout, then Debian's /usr/share/datasets/fashion-mnist).
# Measures, each step with its own time limit:
#   1. epoch.json: epoch throughput against the isolated step's, and epoch time against BP's:
#      trunk SimpleCNN L=10 (SID, BP); blockwise SimpleCNN and ResNet-18, K=4 (SID, DGL, BP);
#      epochs of 30 720 examples (240 steps of 128), the second one timed;
#   2. memory_vit_k4.json, memory_vit_k8.json: compiled memory and step time of BP, BP+remat
#      and blockwise SID (one program, vmap, fused, one program per block), ViT-Tiny, batch 64;
#   3. tests.log: the tests that compare computations (they run at 'highest' matmul precision);
#   4. environment.txt: the device, the software, and every step's exit status.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-results/device_check}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${SIDJAX_FASHION_MNIST_DIR:-}" ] && [ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  export SIDJAX_FASHION_MNIST_DIR=$PWD/data/fashion-mnist
fi
if ! $PY -c "import jax, sidjax" 2>/dev/null; then
  echo "error: $PY cannot import jax and sidjax; install them or set PYTHON" >&2
  exit 1
fi
backend=$($PY -c "import jax; print(jax.default_backend())")
if [ "$backend" = cpu ] && [ -z "${SMOKE:-}" ]; then
  echo "error: jax sees no accelerator here (SMOKE=1 runs tiny settings on a CPU)" >&2
  exit 1
fi
if [ -n "${SMOKE:-}" ]; then  # tiny settings: the script's logic, in a minute on a CPU
  EPOCH_ARGS=(--runs trunk:mlp:sid,trunk:mlp:bp --limit-train 2560 --steps 5)
  MEMORY_ARGS=(--tiny --input-shape 8,8,3 --batch-size 8 --steps 2)
  TESTS=(tests/test_method.py)
else
  EPOCH_ARGS=(--limit-train 30720)  # 240 steps of 128: a steady epoch, half the time
  MEMORY_ARGS=(--input-shape 32,32,3 --batch-size 64 --steps 10)
  TESTS=(tests/test_method.py tests/test_blockwise.py -k "not architectures_in_all_three_uses and not cuts_cover")
fi
{
  $PY -c "import jax, sys; print('devices:', jax.devices()); print('jax', jax.__version__, 'python', sys.version.split()[0])"
  $PY -c "import flax, optax, orbax.checkpoint as o; print('flax', flax.__version__, 'optax', optax.__version__)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} > "$OUT/environment.txt" 2>&1

status=0
step() {  # step NAME SECONDS COMMAND...: a failing or timed-out step is reported; the others go on
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local begin=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - begin)) s" | tee -a "$OUT/environment.txt"
  tail -15 "$OUT/$name.log"
  [ $rc = 0 ] || status=1
}
step epoch 240 $PY -m experiments.bench_epoch "${EPOCH_ARGS[@]}" --json "$OUT/epoch.json"
step memory_vit_k4 60 $PY -m experiments.bench_memory --model vit_tiny --ks 4 "${MEMORY_ARGS[@]}" --json "$OUT/memory_vit_k4.json"
step memory_vit_k8 60 $PY -m experiments.bench_memory --model vit_tiny --ks 8 "${MEMORY_ARGS[@]}" --json "$OUT/memory_vit_k8.json"
step tests 100 $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"
rm -f "$OUT/epoch.log" "$OUT/memory_vit_k4.log" "$OUT/memory_vit_k8.log"  # their tables are in the JSON files
echo "results in $OUT (exit status $status): $(ls "$OUT" | tr '\n' ' ')"
exit $status
