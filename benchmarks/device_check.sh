#!/usr/bin/env bash
# bnnsearch's GPU checks as one prepared run for a lent GPU machine (this workplace's `device`
# tool: `run` with the command `bash benchmarks/device_check.sh` and timeout_s 590, from the
# repository root). Nothing to install: it uses the machine's python3 and torch; the engine needs
# only torch, numpy, pyyaml and scikit-learn (Ray, MLflow and Optuna are not used here).
#
#   1. tests/test_gpu.py (no host sync per training step; bf16, compile and a channels_last
#      ResNet-20 pack against float32 eager) and the CUDA cases of tests/test_pack.py (a packed
#      member equals its configuration alone for all six methods, local_binary through its stacked
#      step; a pack resumes exactly);
#   2. benchmarks/packed.py --gpu-only (vgg_small and resnet20, CIFAR-shaped, bf16 and
#      channels_last, K in {1, 8, 16, 32} against the same configurations one after another; then
#      local_binary's stacked pack, K in {1, 8, 32});
#   3. benchmarks/train_speed.py --gpu-only (the engine against a plain DataLoader loop with a
#      host sync per step, fp32 and bf16 + channels_last).
#
# Everything it prints is also written to $OUT (the tool brings that folder back), default
# /tmp/device_check. TEST_S, BENCH_S and SPEED_S bound the parts in seconds (580 in all).
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "(no CUDA device)")'
  git log -1 --format='bnnsearch %h %s' 2>/dev/null || true
} 2>&1 | tee "$OUT/device.txt"

rc=0
timeout "${TEST_S:-240}" "$PY" -m pytest -q -p no:cacheprovider --durations=0 tests/test_pack.py tests/test_gpu.py -k "cuda or test_gpu" \
  2>&1 | tee "$OUT/gpu_tests.log" || rc=1
timeout "${BENCH_S:-220}" "$PY" benchmarks/packed.py --gpu-only 2>&1 | tee "$OUT/packed_gpu.log" || rc=1
timeout "${SPEED_S:-120}" "$PY" benchmarks/train_speed.py --gpu-only 2>&1 | tee "$OUT/train_speed_gpu.log" || rc=1
exit $rc
