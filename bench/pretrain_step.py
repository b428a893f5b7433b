r"""Pretraining step throughput: pairs/s, step time, MFU and memory for a config.

  python bench/pretrain_step.py --config=configs/pretrain.py:tiny
  python bench/pretrain_step.py --config=configs/pretrain.py:base --config.input.batch_size=64 \
      --config.model.dtype=bfloat16

Times the real jitted, sharded, donated train step of mars_jax.train.pretrain on device-resident
random batches (the input pipeline is benchmarked separately in bench/pipeline_bench.py).
MFU uses analytic FLOPs (mars_jax.train.flops) against the device's bf16 peak, or
MARS_PEAK_TFLOPS when set (e.g. a measured matmul peak).
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mars_jax import parallel
from mars_jax.data.contract import random_batch
from mars_jax.train import flops
from mars_jax.train.pretrain import initial_state, jit_train_step, make_plan, model_and_optimizer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pretrain.py:tiny", "Config.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.")


def main(argv):
    del argv
    config = _CONFIG.value
    plan = make_plan(config)
    graphdef, _, shardings, create = model_and_optimizer(plan, config.seed, 1000)
    state = initial_state(plan, shardings, create)
    step_fn = jit_train_step(graphdef, plan, config.seed, shardings)
    host = jax.device_get(random_batch(jax.random.key(0), plan.global_batch, plan.image_size,
                                       plan.model.sar_channels))
    batch = parallel.global_batch(host, plan.mesh)

    with jax.set_mesh(plan.mesh):
        start = time.perf_counter()
        compiled = step_fn.lower(state, batch, jnp.int32(0)).compile()
        compile_s = time.perf_counter() - start
        for i in range(2):
            state, metrics = compiled(state, batch, jnp.int32(i))
        jax.block_until_ready(metrics)
        times = []
        for r in range(_REPEATS.value):
            start = time.perf_counter()
            for i in range(_STEPS.value):
                state, metrics = compiled(state, batch, jnp.int32(i + 2 + r * _STEPS.value))
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - start) / _STEPS.value)
    step_s = float(np.median(times))
    step_flops = flops.train_flops(plan.model, image_size=plan.image_size,
                                   batch_size=plan.global_batch)
    peak = flops.peak_flops_per_device(jax.devices()[0])
    result = {
        "config": config.get("variant", "?"), "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(), "mesh": dict(plan.mesh.shape),
        "pairs": plan.global_batch, "image": plan.image_size, "dtype": plan.model.dtype,
        "remat": plan.model.remat, "scan_layers": plan.model.scan_layers,
        "pairs_per_s": round(plan.global_batch / step_s, 2),
        "step_ms": round(step_s * 1e3, 2), "compile_s": round(compile_s, 1),
        "train_gflops_per_pair": round(step_flops / plan.global_batch / 1e9, 2),
        "achieved_tflops_per_device": round(step_flops / step_s / jax.device_count() / 1e12, 4),
        "mfu": flops.mfu(step_flops, step_s, jax.device_count(), peak),
        "peak_tflops_per_device": None if peak is None else peak / 1e12,
        "loss": float(metrics["loss"]),
    }
    memory = compiled.memory_analysis()
    if memory is not None:
        result["xla_temp_gib_per_device"] = round(memory.temp_size_in_bytes / 2**30, 3)
        result["xla_argument_gib_per_device"] = round(memory.argument_size_in_bytes / 2**30, 3)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["peak_device_gib"] = round(stats["peak_bytes_in_use"] / 2**30, 2)
    print("pretrain_step", json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
