#!/usr/bin/env bash
# Experiment runs on a lent accelerator, in a fixed time budget, packed into one archive.
#
#   bash experiments/gpu_sweep.sh EXPERIMENT PATTERN [PATTERN ...]
#   DEADLINE_S=540 OUT=/some/dir bash experiments/gpu_sweep.sh main_table 'fashion_mnist/simplecnn/*'
#
# Runs `python -m experiments.run EXPERIMENT --only PATTERN` for each pattern in turn (each run's
# seeds train together) until DEADLINE_S seconds (default 540) have passed; the run in progress
# then gets SIGTERM and checkpoints where it is (inside its epoch), and stays in results/ (resumed
# from there by the next call on the same machine, or redone on a fresh one). Finished runs are skipped, so calling it
# again with the same arguments continues. At the end the results of EXPERIMENT, without
# checkpoints, are packed into $OUT/results_EXPERIMENT.tar.gz (OUT defaults to results/); unpack
# it at the repository's root, commit, and regenerate RESULTS.md with python -m experiments.report.
# Fashion-MNIST comes from data/fashion-mnist/ (the four original IDX files) where it exists.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash experiments/gpu_sweep.sh EXPERIMENT PATTERN [PATTERN ...]" >&2; exit 2; }
PY=${PYTHON:-python3}
EXPERIMENT=$1; shift
DEADLINE=$((SECONDS + ${DEADLINE_S:-540}))
OUT=${OUT:-results}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${SIDJAX_FASHION_MNIST_DIR:-}" ] && [ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  export SIDJAX_FASHION_MNIST_DIR=$PWD/data/fashion-mnist
fi
status=0
for pattern in "$@"; do
  left=$((DEADLINE - SECONDS))
  if [ $left -le 30 ]; then echo "== out of time before '$pattern'"; status=1; break; fi
  echo "== $EXPERIMENT --only '$pattern' (${left}s left)"
  timeout --signal=TERM --kill-after=30 "$left" $PY -m experiments.run "$EXPERIMENT" --only "$pattern" || status=1
done
archive="$OUT/results_$EXPERIMENT.tar.gz"
tar --exclude=checkpoints -czf "$archive" "results/$EXPERIMENT" 2>/dev/null && echo "packed $archive"
$PY -c "
import json, pathlib
runs = sorted(pathlib.Path('results/$EXPERIMENT').glob('**/seed*'))
done = [r for r in runs if (r / 'summary.json').exists()]
print(f'{len(done)} of {len(runs)} started seed runs finished')
for r in done:
    s = json.loads((r / 'summary.json').read_text())
    print(f\"  {r}: final {s['final_test_accuracy']:.4f} (best {s['best_test_accuracy']:.4f}), {s['time_per_epoch_s']:.2f} s/epoch\")
"
exit $status
