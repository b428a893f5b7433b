#!/usr/bin/env bash
# Runs mars_jax on this machine, from any directory:
#   launch/local.sh [CONFIG] [FLAGS...]     e.g. launch/local.sh configs/pretrain.py:tiny
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-configs/pretrain.py:tiny}"
[ $# -gt 0 ] && shift
exec python -m mars_jax.main --config="$config" "$@"
