#!/usr/bin/env bash
# HOLD on a Cloud TPU VM slice (single- or multi-host), provisioned as a queued resource.
#
#   PROJECT=my-project ZONE=us-east5-b TPU_NAME=hold-v6e ACCELERATOR=v6e-16 \
#   WORKDIR=gs://my-bucket/hold/cifar10 DATA_DIR=gs://my-bucket/tensorflow_datasets \
#     launch/tpu_vm.sh create|wait|setup|train|log|status|delete
#
# create  queue a slice (add SPOT=1 for spot capacity); wait  block until it is ACTIVE
# setup   copy this checkout to every worker and install the pinned requirements plus jax[tpu]
# train   start `python -m hold_jax.main --distributed` on every worker (nohup, log in ~/hold_train.log);
#         CONFIG (default configs/cifar10.py) and ARGS (extra --config.a.b=value flags) choose the run
# log     tail the training log of worker 0;  status  describe the queued resource;  delete  free it
#
# Preemption (spot or maintenance): run create, wait, setup, train again with the same WORKDIR; training
# resumes from the last checkpoint in it. WORKDIR must be a bucket all workers share (orbax writes
# checkpoints collectively); DATA_DIR holds tfds data prepared elsewhere (nothing is downloaded).
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${TPU_NAME:?set TPU_NAME}"
ACCELERATOR="${ACCELERATOR:-v6e-8}"
CONFIG="${CONFIG:-configs/cifar10.py}"
ARGS="${ARGS:-}"
QUEUED_RESOURCE="${QUEUED_RESOURCE:-${TPU_NAME}-qr}"
JAX_VERSION="$(sed -n 's/^jax==//p' "$(dirname "$0")/../requirements.txt")"

# The TPU VM base image of each generation (Cloud TPU docs, "TPU software versions").
runtime_for() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v4-*) echo "tpu-ubuntu2204-base" ;;
    *) echo "launch/tpu_vm.sh: no runtime known for ACCELERATOR=$1; set RUNTIME" >&2; return 1 ;;
  esac
}
RUNTIME="${RUNTIME:-$(runtime_for "$ACCELERATOR")}"

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$1"
}

case "${1:-}" in
  create)
    run gcloud compute tpus queued-resources create "$QUEUED_RESOURCE" --project="$PROJECT" --zone="$ZONE" \
      --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" \
      ${SPOT:+--spot} ;;
  wait)
    until [[ "$(run gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" --project="$PROJECT" \
                 --zone="$ZONE" --format='value(state.state)')" == *ACTIVE* ]]; do
      [[ "${DRY_RUN:-0}" == 1 ]] && break
      echo "waiting for $QUEUED_RESOURCE to become ACTIVE..."; sleep 60
    done ;;
  setup)
    run gcloud compute tpus tpu-vm scp --recurse "$(cd "$(dirname "$0")/.." && pwd)" "$TPU_NAME":hold_jax \
      --project="$PROJECT" --zone="$ZONE" --worker=all
    on_all_workers "cd hold_jax && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
'jax[tpu]==$JAX_VERSION'" ;;
  train)
    : "${WORKDIR:?set WORKDIR (a gs:// bucket every worker can write)}"
    data_flag=""
    [[ -n "${DATA_DIR:-}" ]] && data_flag="--config.data.data_dir=$DATA_DIR"
    on_all_workers "cd hold_jax && nohup .venv/bin/python -m hold_jax.main --config $CONFIG --workdir $WORKDIR \
--distributed $data_flag $ARGS > ~/hold_train.log 2>&1 &" ;;
  log)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=0 \
      --command="tail -n 50 -f ~/hold_train.log" ;;
  status)
    run gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" --project="$PROJECT" --zone="$ZONE" ;;
  delete)
    run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" --project="$PROJECT" --zone="$ZONE" \
      --force --quiet ;;
  *)
    sed -n '2,20p' "$0"; exit 2 ;;
esac
