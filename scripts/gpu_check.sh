#!/usr/bin/env bash
# GPU check for the training pipeline (not part of the CPU test suite).
# 1-GPU NCCL training with AMP of the default chain (ResNet-50 frame encoder → causal MS-TCN)
# and of R3D-18 on synthetic videos, via the Dask launcher; writes samples/s and GPU
# utilisation to $OUT/gpu_check.json (or ./gpu-check-out) plus one PNG per run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python
OUT_DIR="${OUT:-./gpu-check-out}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/nvidia-smi.csv"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" scripts/gpu_check.py "$OUT_DIR" "$@" \
  2>&1 | tee "$OUT_DIR/gpu_check.log"
