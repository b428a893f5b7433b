#!/usr/bin/env bash
# One prepared GPU benchmark run (< 8 minutes on one H100): our step and CGCL benchmarks beside
# the yardsticks of ../shared/bench, in one call, so that ratios come from one machine.
#
# Prepare here (no network on the GPU machine), from the repo root:
#   echo /.whl/ >> .git/info/exclude; echo /.yard/ >> .git/info/exclude
#   cp -r ../shared/bench .yard
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl grain==0.2.18 ml-collections==1.1.0 clu==0.0.12 array-record==0.8.6 ...
# Then run it with carry=[".whl", ".yard"]:  bash launch/gpu_bench.sh
# On a CPU, tiny shapes check the script itself:
#   CONFIG=tiny STEPS="8:none:scan 8:dots:unscanned" PATCHES=2048 DIM=64 YARD_SMALL=1 \
#     bash launch/gpu_bench.sh
set -u
OUT=${OUT:-/tmp/gpu_bench}; mkdir -p "$OUT"
CONFIG=${CONFIG:-base}
# batch:remat[:scan|unscanned], one compiled step each (scan: nnx.scan over layers, the
# default of base / large)
STEPS=${STEPS:-64:none:scan 64:none:unscanned 128:dots:scan 256:full:scan}
PATCHES=${PATCHES:-8192,52480,262144,1048576}
DIM=${DIM:-768}
export PYTHONUNBUFFERED=1

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
run() {  # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  echo "== $name"
  timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $? ($name)"; grep -E "pretrain_step|mars_like|TFLOP|pairs/s|img/s|^ *M |^ +[0-9,]+ " "$OUT/$name.log"
}

if [ -d .yard ]; then  # the yardsticks: matmul peak, plain ViT-B/16, plain-JAX MaRS-B step
  small=${YARD_SMALL:+ANCHOR_SMALL=1}
  run yard_anchor 150 env $small python3 .yard/anchor_vit_and_matmul.py jax
  [ -z "$small" ] && run yard_anchor_torch 150 python3 .yard/anchor_vit_and_matmul.py torch
  run yard_plain_step 120 env $small PAIRS=64 python3 .yard/plain_jax_mars_step.py
fi
dtype=bfloat16; attention=cudnn
if python3 -c "import jax,sys; sys.exit(jax.devices()[0].platform != 'cpu')"; then
  dtype=float32; attention=xla
fi
for step in $STEPS; do
  IFS=: read -r batch remat layout <<< "$step"
  layout=${layout:-scan}
  scan=True; [ "$layout" = unscanned ] && scan=False
  run "step_${CONFIG}_b${batch}_${remat}_${layout}" 150 python3 bench/pretrain_step.py \
    --config="configs/pretrain.py:$CONFIG" --config.input.batch_size="$batch" \
    --config.model.dtype=$dtype --config.model.attention_impl=$attention \
    --config.model.remat="$remat" --config.model.scan_layers=$scan
done
run cgcl 180 python3 bench/cgcl_bench.py --patches "$PATCHES" --dim "$DIM" --repeats 5
