#!/usr/bin/env bash
# GPU encoder benchmark (arrow attention, xla vs pallas) on a lent H100/H200; see gpu_encoder.py.
# Run from anywhere: bash benchmarks/gpu_encoder.sh [flags of gpu_encoder.py, e.g. --layers 4]
# Writes $OUT/gpu_encoder.md when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import jax; print('jax', jax.__version__, jax.devices())"
exec python benchmarks/gpu_encoder.py "$@"
