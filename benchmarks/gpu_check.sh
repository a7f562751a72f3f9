#!/usr/bin/env bash
# The GPU check of issue 40, in one call on a GPU machine (about 8 minutes on an H100):
#   1. the throughput table on CUDA: our U-Net beside diffusers' UNet2DModel (CIFAR-10 and MNIST sizes), fp32 eager,
#      channels-last, bf16, compiled and all three together, batches 32 and 128, with peak memory;
#   2. a short CIFAR-10-sized training (300 steps, random pixels in CIFAR-10's format: no network there) in fp32
#      eager and in bf16 + compile + channels-last, the second evaluating bits/dim every 100 steps.
# Results go to $OUT (the device tool's output folder) or benchmarks/results: throughput-cuda.*, gpu_training.*.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'; print(torch.cuda.get_device_name())"
"$PY" benchmarks/throughput.py --device cuda --threads 8 --nets cifar10,mnist --batches 32,128 \
    --settings fp32,channels_last,bf16,compile,bf16+compile+channels_last --reps 5 --tag cuda --out "$DEST"
"$PY" benchmarks/gpu_training.py --device cuda --steps 300 --eval-every 100 --out "$DEST"
