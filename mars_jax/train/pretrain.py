"""The MaRS pretraining loop: sharded jit step, grain input, orbax resume, metrics.

Sections: config checks (before anything compiles) -> mesh -> model and optimiser state
(created directly in their shardings) -> input pipeline -> restore or initialise -> compile
-> loop (one-step-lagged finiteness checks, periodic logs, images and checkpoints, SIGTERM).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from mars_jax import parallel
from mars_jax.data.pipeline import PRETRAIN_KEYS, SynthSource, make_pipeline
from mars_jax.models import MaRS, MaRSConfig
from mars_jax.train import flops, images
from mars_jax.train.checkpoint import Checkpointer
from mars_jax.train.metrics import MetricAccumulator, MetricLogger, Progress, console_line
from mars_jax.train.objective import CGCLTemperatures, LossConfig, pretraining_loss
from mars_jax.train.optim import OptimConfig, learning_rate_schedule, make_optimizer

_SECTION_KEYS = {
    "input": {"image_size", "batch_size"},
    "data": {"source", "synth_size", "shards_dir", "tfds_name", "tfds_split", "tfds_data_dir",
             "flips", "rotations", "workers"},
    "checkpoint": {"every_steps", "keep", "async_save"},
    "log": {"every_steps", "images_every_steps", "progress", "tensorboard"},
}


class NonFiniteError(FloatingPointError):
    """A loss term or the gradient norm stopped being finite."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything derived from the config and the devices, validated before compiling."""

    model: MaRSConfig
    loss: LossConfig
    optim: OptimConfig
    mesh: jax.sharding.Mesh
    rules: tuple[tuple[str, Any], ...]
    image_size: int
    global_batch: int


# ------------------------------------------------------------------------------------------
# Config checks: every mistake we can see before compiling gets a message naming it.
# ------------------------------------------------------------------------------------------
def _check_section_keys(config: ml_collections.ConfigDict) -> None:
    for section, allowed in _SECTION_KEYS.items():
        unknown = sorted(set(config[section].keys()) - allowed)
        if unknown:
            raise ValueError(f"config.{section}: unknown keys {unknown}; known keys: "
                             f"{sorted(allowed)}")


def make_plan(config: ml_collections.ConfigDict, devices=None) -> Plan:
    _check_section_keys(config)
    model = MaRSConfig.from_dict(config.model.to_dict())
    loss = LossConfig.from_dict(config.loss.to_dict())
    optim = OptimConfig.from_dict(config.optim.to_dict())
    mesh = parallel.create_mesh(dict(config.mesh), devices)
    rules = tuple((str(name), axes if axes is None or isinstance(axes, str) else tuple(axes))
                  for name, axes in config.sharding_rules)
    size, batch = int(config.input.image_size), int(config.input.batch_size)
    if size % model.patch_size:
        raise ValueError(f"config.input.image_size {size} is not divisible by the patch size "
                         f"{model.patch_size}")
    if config.total_steps < 1:
        raise ValueError(f"config.total_steps must be positive, got {config.total_steps}")
    data_parallel = parallel.data_parallel_size(mesh)
    micro = batch // optim.grad_accum_steps
    if batch % optim.grad_accum_steps or micro % data_parallel:
        raise ValueError(
            f"global batch {batch} (micro-batches of {batch / optim.grad_accum_steps:g} with "
            f"grad_accum_steps={optim.grad_accum_steps}) does not divide across the "
            f"{data_parallel} data-parallel devices of mesh {dict(mesh.shape)}")
    if batch % jax.process_count():
        raise ValueError(f"global batch {batch} does not divide across "
                         f"{jax.process_count()} processes")
    if config.data.source == "synth" and config.data.synth_size < size:
        raise ValueError(f"config.data.synth_size {config.data.synth_size} is smaller than "
                         f"the crop config.input.image_size {size}")
    return Plan(model, loss, optim, mesh, rules, size, batch)


# ------------------------------------------------------------------------------------------
# Input
# ------------------------------------------------------------------------------------------
def make_source(data: ml_collections.ConfigDict, seed: int):
    if data.source == "synth":
        return SynthSource(seed=seed, size=int(data.synth_size))
    if data.source == "shards":
        from mars_jax.data.records import ShardSource, list_shards

        shards = list_shards(data.shards_dir)
        if not shards:
            raise FileNotFoundError(f"config.data.shards_dir {data.shards_dir!r} holds no "
                                    "*.array_record shards")
        return ShardSource(shards)
    if data.source == "tfds":
        import tensorflow_datasets as tfds

        import mars_jax.data.tfds_builders  # noqa: F401  (registers the builders)

        return tfds.data_source(data.tfds_name, split=data.tfds_split,
                                data_dir=data.tfds_data_dir or None)
    raise ValueError(f"config.data.source must be 'synth', 'shards' or 'tfds', got "
                     f"{data.source!r}")


def make_input(config: ml_collections.ConfigDict, plan: Plan):
    return make_pipeline(
        make_source(config.data, config.seed), global_batch_size=plan.global_batch,
        seed=config.seed, keys=PRETRAIN_KEYS, crop_size=plan.image_size,
        flips=config.data.flips, rotations=config.data.rotations,
        process_index=jax.process_index(), process_count=jax.process_count(),
        worker_count=config.data.workers)


# ------------------------------------------------------------------------------------------
# State: model + optimiser, abstract first (for shardings), then created in place.
# ------------------------------------------------------------------------------------------
def model_and_optimizer(plan: Plan, seed: int, total_steps: int):
    """(graphdef, abstract state with shardings, shardings, create) for this plan."""
    tx = make_optimizer(plan.optim, total_steps)

    def create() -> tuple[MaRS, nnx.Optimizer]:
        model = MaRS(plan.model, rngs=nnx.Rngs(seed))
        if plan.loss.learnable_temperatures:  # trained and checkpointed with the model
            model.cgcl_temperatures = CGCLTemperatures(plan.loss.temperatures)
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
    shardings = parallel.state_shardings(abstract_state, plan.mesh, plan.rules)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        shardings)
    return graphdef, abstract_state, shardings, create


def initial_state(plan: Plan, shardings: Any, create: Callable) -> nnx.State:
    """Parameters and optimiser state initialised directly in their shardings."""
    with jax.set_mesh(plan.mesh):
        return jax.jit(lambda: nnx.split(create())[1], out_shardings=shardings)()


# ------------------------------------------------------------------------------------------
# The train step: a pure function of (state, batch, step), jitted with shardings + donation.
# ------------------------------------------------------------------------------------------
def make_train_step(graphdef: nnx.GraphDef, plan: Plan, seed: int) -> Callable:
    accum = plan.optim.grad_accum_steps
    base_key = jax.random.key(seed + 1)

    grid_width = plan.image_size // plan.model.patch_size

    def loss_fn(model: MaRS, batch: Mapping[str, jax.Array], key: jax.Array):
        out = model(batch["optical"], batch["sar"], key=key, valid=batch["valid"])
        temperatures = model.cgcl_temperatures() if plan.loss.learnable_temperatures else None
        return pretraining_loss(out, plan.loss, temperatures=temperatures,
                                grid_width=grid_width)

    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: nnx.State, batch: Mapping[str, jax.Array], step: jax.Array):
        model, optimizer = nnx.merge(graphdef, state)
        key = jax.random.fold_in(base_key, step)
        if accum == 1:
            (_, metrics), grads = grad_fn(model, batch, key)
        else:  # mean of the micro-batches' gradients and metrics, one scan, one update
            micro = jax.tree.map(lambda x: x.reshape(accum, -1, *x.shape[1:]), batch)
            first = jax.tree.map(lambda x: x[0], micro)
            (_, metrics), grads = grad_fn(model, first, jax.random.fold_in(key, 0))

            def accumulate(carry, index_and_batch):
                index, micro_batch = index_and_batch
                (_, m), g = grad_fn(model, micro_batch, jax.random.fold_in(key, index))
                return jax.tree.map(jnp.add, carry, (g, m)), None

            rest = jax.tree.map(lambda x: x[1:], micro)
            (grads, metrics), _ = jax.lax.scan(accumulate, (grads, metrics),
                                               (jnp.arange(1, accum), rest))
            grads, metrics = jax.tree.map(lambda x: x / accum, (grads, metrics))
        metrics["grad_norm"] = optax.tree.norm(grads)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), metrics

    return train_step


def jit_train_step(graphdef: nnx.GraphDef, plan: Plan, seed: int, shardings: Any) -> Callable:
    """The train step jitted with state / batch shardings and the state donated."""
    replicated = parallel.replicated(plan.mesh)
    return jax.jit(make_train_step(graphdef, plan, seed),
                   in_shardings=(shardings, parallel.batch_sharding(plan.mesh), replicated),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))


def make_preview(graphdef: nnx.GraphDef, seed: int, examples: int) -> Callable:
    """Forward pass on the first ``examples`` pairs with a fixed mask, for the image panel."""

    def preview(state: nnx.State, batch: Mapping[str, jax.Array]):
        model, _ = nnx.merge(graphdef, state)
        head = jax.tree.map(lambda x: x[:examples], batch)
        return model(head["optical"], head["sar"], key=jax.random.key(seed + 2),
                     valid=head["valid"])

    return preview


# ------------------------------------------------------------------------------------------
# Helpers for the loop
# ------------------------------------------------------------------------------------------
def _non_finite_terms(metrics: Mapping[str, float]) -> list[str]:
    return [k for k, v in metrics.items() if not math.isfinite(float(v))]


def _check_finite(step: int, metrics: Mapping[str, Any], last_good: int | None) -> dict:
    values = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
    bad = _non_finite_terms(values)
    if bad:
        raise NonFiniteError(
            f"non-finite {', '.join(f'{k}={values[k]}' for k in bad)} at step {step}; the run "
            f"stopped without saving it. Last good checkpoint: step {last_good}")
    return values


class _StopSignal:
    """Turns SIGTERM (preemption) into a flag the loop checks after each step."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to restore
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.received = True
        logging.warning("SIGTERM received: saving a checkpoint after this step, then stopping")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _sync_flag(flag: bool) -> bool:
    """True on every process if it is True on any (processes must stop at the same step)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str | Path, *, log=print,
          devices: list[jax.Device] | None = None) -> dict:
    """Pretrains (or resumes) to ``config.total_steps``; returns the last logged metrics.

    ``devices`` (default: all) are the devices the mesh is built from.
    """
    plan = make_plan(config, devices)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    mesh, total = plan.mesh, int(config.total_steps)

    # ---- Model and optimiser state, born in their shardings --------------------------------
    graphdef, abstract_state, shardings, create = model_and_optimizer(plan, config.seed, total)

    # ---- Input ------------------------------------------------------------------------------
    data_iter = iter(make_input(config, plan))

    # ---- Restore or initialise ------------------------------------------------------------
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save)
    start = checkpointer.latest_step() or 0
    if start >= total:
        log(f"nothing to do: checkpoint step {start} >= total_steps {total}")
    if start:
        state = checkpointer.restore(start, abstract_state, data_iter)
        log(f"resumed from step {start}: {checkpointer.directory}/{start}")
    else:
        state = initial_state(plan, shardings, create)

    # ---- Compile ---------------------------------------------------------------------------
    train_step = jit_train_step(graphdef, plan, config.seed, shardings)
    preview = jax.jit(make_preview(graphdef, config.seed, examples=4),
                      in_shardings=(shardings, parallel.batch_sharding(mesh)),
                      out_shardings=parallel.replicated(mesh))
    step_flops = flops.train_flops(plan.model, image_size=plan.image_size,
                                   batch_size=plan.global_batch)
    peak = flops.peak_flops_per_device(jax.devices()[0])
    schedule = learning_rate_schedule(plan.optim, total)

    # ---- Loop ------------------------------------------------------------------------------
    logger = MetricLogger(workdir, resume_step=start,
                          tensorboard=config.log.tensorboard) if is_main else None
    progress = Progress(total, start, pairs_per_step=plan.global_batch,
                        enabled=is_main and config.log.progress)
    accumulator = MetricAccumulator()
    last: dict[str, float] = {}
    pending: tuple[int, Any] | None = None
    timer_step, timer_start = start, time.perf_counter()
    step = start
    try:
        with _StopSignal() as stop, jax.set_mesh(mesh):
            for step in range(start + 1, total + 1):
                batch = parallel.global_batch(next(data_iter), mesh)
                state, metrics = train_step(state, batch, jnp.asarray(step - 1, jnp.int32))
                if pending is not None:  # check step s-1 while step s runs
                    accumulator.update(_check_finite(*pending, checkpointer.latest_step()))
                pending = (step, metrics)

                every = config.checkpoint.every_steps  # 0: no checkpoints but on SIGTERM
                save = bool(every) and (step % every == 0 or step == total)
                stopping = _sync_flag(stop.received)
                log_now = step % config.log.every_steps == 0 or save or stopping
                if log_now:  # includes every save: a saved state's step is checked first
                    accumulator.update(_check_finite(*pending, checkpointer.latest_step()))
                    pending = None
                    now = time.perf_counter()
                    seconds = (now - timer_start) / max(step - timer_step, 1)
                    timer_step, timer_start = step, now
                    last = accumulator.compute()
                    accumulator.reset()
                    last["learning_rate"] = float(schedule(step - 1))
                    last["pairs_per_s"] = plan.global_batch / seconds
                    last["step_seconds"] = seconds
                    mfu = flops.mfu(step_flops, seconds, jax.device_count(), peak)
                    if mfu is not None:
                        last["mfu"] = mfu
                    if logger:
                        logger.write_scalars(step, last)
                    progress.update(step, last)
                    if not config.log.progress and is_main:
                        log(console_line(step, total, last))
                if config.log.images_every_steps and (
                        step % config.log.images_every_steps == 0 or step == total):
                    out = preview(state, batch)
                    if logger:
                        panel = images.reconstruction_panel(
                            jax.device_get(out), patch_size=plan.model.patch_size,
                            grid=(plan.image_size // plan.model.patch_size,) * 2,
                            norm_pix=plan.loss.norm_pix)
                        logger.write_images(step, {"reconstruction": panel})
                if save or stopping:
                    checkpointer.save(step, state, data_iter)
                if stopping:
                    log(f"stopped by SIGTERM after step {step}; checkpoint saved")
                    break
            if pending is not None:
                accumulator.update(_check_finite(*pending, checkpointer.latest_step()))
    finally:
        checkpointer.close()
        progress.close()
        if logger:
            logger.close()

    if is_main:
        terms = " ".join(f"{k}={last[k]:.4f}" for k in
                         ("loss", "mim_rgb", "mim_sar", "cgcl", "mas") if k in last)
        saved = checkpointer.latest_step()
        log(f"done at step {step}/{total}: {terms}\n"
            f"  checkpoint: {f'{checkpointer.directory}/{saved}' if saved else 'none saved'}\n"
            f"  logs: {workdir / 'metrics.jsonl'}, {workdir / 'tensorboard'}, "
            f"{workdir / 'images'}")
    return last
