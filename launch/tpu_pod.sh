#!/usr/bin/env bash
# Runs the same command on every host of a Cloud TPU pod slice; each host joins the job
# through jax.distributed.initialize() (MARS_DISTRIBUTED=1), which reads the TPU metadata.
# The workdir must be shared storage (e.g. a gs:// bucket) so every host sees the checkpoints.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/pretrain.py:base gs://bucket/runs/base \
#       --config.mesh.fsdp=16
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,7p' "$0" >&2; exit 2
fi
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
printf -v extra '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd ~/mars_jax && MARS_DISTRIBUTED=1 python -m mars_jax.main --config=$config \
   --workdir=$workdir $extra"
