#!/usr/bin/env bash
# Runs mars_jax on this machine as one process, or as N processes on loopback (the same code
# path as a multi-host cluster; on CPU the processes talk through gloo collectives).
#
#   launch/local.sh CONFIG WORKDIR [FLAGS...]               one process
#   NPROC=2 DEVICES_PER_PROC=4 launch/local.sh CONFIG WORKDIR [FLAGS...]
#
# DEVICES_PER_PROC simulates that many CPU devices per process (XLA host platform devices).
# Process 0's output goes to the terminal, the others' to WORKDIR/process_<i>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" >&2; exit 2
fi
config="$1"; workdir="$2"; shift 2
nproc="${NPROC:-1}"
if [ -n "${DEVICES_PER_PROC:-}" ]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROC} ${XLA_FLAGS:-}"
fi
if [ "$nproc" -eq 1 ]; then
  exec python -m mars_jax.main --config="$config" --workdir="$workdir" "$@"
fi

mkdir -p "$workdir"
port=$(python -c 'import portpicker; print(portpicker.pick_unused_port())')
pids=()
for ((i = 0; i < nproc; i++)); do
  args=(--config="$config" --workdir="$workdir" --coordinator_address="127.0.0.1:$port"
        --num_processes="$nproc" --process_id="$i" "$@")
  if [ "$i" -eq 0 ]; then
    python -m mars_jax.main "${args[@]}" &
  else
    python -m mars_jax.main "${args[@]}" > "$workdir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
