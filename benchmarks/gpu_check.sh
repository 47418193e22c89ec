#!/usr/bin/env bash
# The device checks of issue 16, in one command on a lent GPU machine (prepared here by benchmarks/gpu_prepare.sh,
# run there with `carry: [".gpu"]`):
#   1. python -m benchmarks.run --device cuda: the paper trial's analysis against its training (this code and main's),
#      lambda_max and the trace against PyHessian 0.1;
#   2. the 20-seed paper sweep as one batch of 20 models (--batch-trials 20), timed end to end.
# Everything it writes lands in $OUT (the device tool brings it back), or in ./gpu-out elsewhere.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LANDSCAPE_DATA_DIR=$PWD/.gpu/data
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || { echo "wheels did not install: run benchmarks/gpu_prepare.sh first"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m benchmarks.run --device cuda \
  --only paper_trial_analysis_vs_training,lambda_max_vs_peers,trace_vs_peers,eval_throughput \
  --json "$OUT/bench-cuda.json" 2>&1 | tee "$OUT/bench-cuda.txt"
start=$(date +%s)
python3 -m sweeps.seeds --n 20 --preset paper --device cuda --batch-trials 20 --root /tmp/mlruns 2>&1 \
  | tail -n 60 | tee "$OUT/sweep-paper20.txt"
echo "paper 20-seed sweep, --batch-trials 20: $(( $(date +%s) - start )) s end to end" | tee -a "$OUT/sweep-paper20.txt"
