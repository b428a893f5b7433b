"""``--mode=summary``: what a config will build and cost, without training.

Prints the config, the parameter table (clu.parameter_overview), analytic FLOPs per step and
a memory estimate from XLA's compiled train step on the abstract state (nothing allocated).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import parameter_overview
from flax import nnx

from mars_jax.data import contract
from mars_jax.train import flops
from mars_jax.train.forward import count_parameters
from mars_jax.train.pretrain import jit_train_step, make_plan, model_and_optimizer


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def print_summary(config: ml_collections.ConfigDict, *, log=print, compile_step: bool = True,
                  devices: list[jax.Device] | None = None) -> dict:
    plan = make_plan(config, devices)
    graphdef, abstract, shardings, _ = model_and_optimizer(
        plan, config.seed, int(config.total_steps))
    model, optimizer = nnx.merge(graphdef, abstract)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    log(str(config))
    log(parameter_overview.get_parameter_overview(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
        include_stats=False))
    counts = count_parameters(model)["total"]
    step_flops = flops.train_flops(plan.model, image_size=plan.image_size,
                                   batch_size=plan.global_batch)
    state_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                      for x in jax.tree.leaves(nnx.state((model, optimizer))))
    result = {"parameters": counts, "train_flops_per_step": step_flops,
              "state_bytes": state_bytes}
    log(f"parameters: {counts / 1e6:.2f}M | train FLOPs per step: {step_flops:.3e} "
        f"({step_flops / plan.global_batch:.3e} per pair) | params + optimiser state: "
        f"{_gib(state_bytes)} | mesh {dict(plan.mesh.shape)}")
    if compile_step:
        size, batch = plan.image_size, plan.global_batch
        batch_spec = contract.batch_spec(batch, size, plan.model.sar_channels)
        step = jit_train_step(graphdef, plan, config.seed, shardings)
        with jax.set_mesh(plan.mesh):
            compiled = step.lower(abstract, batch_spec,
                                  jax.ShapeDtypeStruct((), jnp.int32)).compile()
        memory = compiled.memory_analysis()
        if memory is not None:
            result["temp_bytes_per_device"] = memory.temp_size_in_bytes
            result["argument_bytes_per_device"] = memory.argument_size_in_bytes
            log(f"per device (XLA, {jax.devices()[0].platform}): arguments "
                f"{_gib(memory.argument_size_in_bytes)}, temporaries "
                f"{_gib(memory.temp_size_in_bytes)}, outputs {_gib(memory.output_size_in_bytes)}")
    return result
