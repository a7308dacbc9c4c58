#!/usr/bin/env bash
# K local CPU processes joined into one JAX job through a loopback coordinator: a multi-host run
# on one machine, for testing the multi-host path (per-host data shards, global batches, Orbax
# from every process, logging from process 0) without a cluster.
#
#   launch/local_cpu_processes.sh K [sener_jax.main flags...]
#   launch/local_cpu_processes.sh 2 --config=configs/demo.py:tiny --workdir=/tmp/sener_2proc
#
# Environment: SENER_CPU_DEVICES  fake CPU devices per process (default 1; the mesh spans K times that)
#              SENER_PORT         coordinator port on 127.0.0.1 (default: a free one)
#              SENER_LOG_DIR      where processes 1..K-1 write their logs (default: /tmp/sener_processes)
# train.batch_size must be a multiple of K * SENER_CPU_DEVICES. Process 0 logs to this terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:?usage: launch/local_cpu_processes.sh K [sener_jax.main flags...]}
shift
DEVICES=${SENER_CPU_DEVICES:-1}
PORT=${SENER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG_DIR=${SENER_LOG_DIR:-/tmp/sener_processes}
mkdir -p "$LOG_DIR"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup INT TERM
for ((i = 0; i < K; i++)); do
  env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES" \
      SENER_COORDINATOR="127.0.0.1:$PORT" SENER_NUM_PROCESSES="$K" SENER_PROCESS_ID="$i" \
      python -m sener_jax.main "$@" \
      > >(if [ "$i" -eq 0 ]; then cat; else cat > "$LOG_DIR/process_$i.log"; fi) 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
[ "$status" -eq 0 ] || echo "a process failed (exit $status); logs of processes 1..$((K - 1)) in $LOG_DIR" >&2
exit "$status"
