#!/usr/bin/env bash
# GPU encoder benchmark (arrow attention, xla vs pallas) on a lent H100/H200; see gpu_encoder.py.
# Run from anywhere: bash benchmarks/gpu_encoder.sh [flags of gpu_encoder.py, e.g. --layers 4]
# Writes $OUT/gpu_encoder.md and $OUT/gpu_kernel_check.log (kernel check, line by line) when $OUT is set.
# --check-only: versions, compile-only, bf16 correctness, then kernel timings (16k first).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -u -c "import jax; print('jax', jax.__version__, jax.devices(), flush=True)" 2>&1
exec python benchmarks/gpu_encoder.py "$@"
