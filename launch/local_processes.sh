#!/usr/bin/env bash
# A multi-process job on one machine: NUM_PROCESSES processes of hold_jax.main, each with DEVICES_PER_PROCESS
# CPU devices, joined by jax.distributed with an explicit coordinator. It exercises the multi-host path
# (each process reads its own share of the data, collective checkpoints, logs from process 0) without a
# cluster, and is the template for clusters that are neither TPU, SLURM nor Open MPI.
#
#   NUM_PROCESSES=2 launch/local_processes.sh configs/toy2d.py:local /tmp/multi [extra flags]
set -euo pipefail
CONFIG="${1:?usage: launch/local_processes.sh CONFIG WORKDIR [flags]}"
WORKDIR="${2:?usage: launch/local_processes.sh CONFIG WORKDIR [flags]}"
shift 2
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-2}"
PORT="${PORT:-$((20000 + RANDOM % 20000))}"
PYTHON="${PYTHON:-.venv/bin/python}"
mkdir -p "$WORKDIR"

pids=()
for ((id = 0; id < NUM_PROCESSES; id++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS" \
    "$PYTHON" -m hold_jax.main --config "$CONFIG" --workdir "$WORKDIR" --distributed \
    --coordinator_address="localhost:$PORT" --num_processes="$NUM_PROCESSES" --process_id="$id" "$@" \
    > "$WORKDIR/process_$id.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
[[ $status == 0 ]] || { echo "a process failed; logs in $WORKDIR/process_*.log" >&2; tail -n 20 "$WORKDIR"/process_*.log >&2; }
exit $status
