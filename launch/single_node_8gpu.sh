#!/usr/bin/env bash
# One machine with 8 GPUs: ONE process that drives all 8 (no jax.distributed needed); the mesh
# spans the 8 GPUs and train.batch_size (global) is split across them (16 = 2 per GPU, the paper's
# SciREX setting).
#
#   launch/single_node_8gpu.sh --config=configs/scirex.py --workdir=/data/runs/scirex [--config.x=y ...]
#
# Check first that the setting fits: python -m sener_jax.main --mode=plan --config=... --plan_batch=2
# Environment: CUDA_VISIBLE_DEVICES (default 0-7); XLA_PYTHON_CLIENT_MEM_FRACTION (JAX preallocates
# 75% of each GPU by default; 0.95 here so that long inputs can use the card).
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
unset SENER_COORDINATOR SENER_NUM_PROCESSES SENER_PROCESS_ID
n=$(python -c 'import jax; print(jax.device_count())')
if [ "$n" -ne 8 ]; then
  echo "warning: JAX sees $n devices ($(python -c 'import jax; print(jax.devices()[0].platform)')), not 8 GPUs" >&2
fi
exec python -m sener_jax.main "$@"
