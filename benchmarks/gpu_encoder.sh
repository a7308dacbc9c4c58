#!/usr/bin/env bash
# GPU encoder benchmark (arrow attention, xla vs pallas) on a lent H100/H200; see gpu_encoder.py.
# Run from anywhere: bash benchmarks/gpu_encoder.sh [flags of gpu_encoder.py, e.g. --layers 4]
# Writes $OUT/gpu_encoder.md and $OUT/gpu_kernel_check.log (kernel check, line by line) when $OUT is set.
# --check-only: versions, compile-only, bf16 correctness, then kernel timings (16k first).
# --train-step [flags of gpu_train_step.py]: the full SeNER train step instead (gpu_train_step.py),
#   writes $OUT/gpu_train_step.md. The GPU image lacks ml_collections: wheels in .whl/ are installed
#   first when present (see the docstring of gpu_train_step.py for the download and the `run` call).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--train-step" ]]; then
  shift
  PY=$(command -v python3 || command -v python)
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -u -c "import jax, flax, optax, ml_collections; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices(), flush=True)"
  exec "$PY" benchmarks/gpu_train_step.py "$@"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -u -c "import jax; print('jax', jax.__version__, jax.devices(), flush=True)" 2>&1
exec python benchmarks/gpu_encoder.py "$@"
