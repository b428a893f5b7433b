"""The MaRS pretraining loop: sharded jit step, grain input, orbax resume, metrics.

Sections: config checks (before anything compiles) -> mesh -> model and optimiser state
(created directly in their shardings) -> input pipeline -> restore or initialise -> compile
-> loop (one-step-lagged finiteness checks, periodic logs, images and checkpoints,
preemption). The loop's pieces live in ``loop.py``, shared with fine-tuning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mars_jax import parallel
from mars_jax.data.pipeline import PRETRAIN_KEYS, SynthSource, make_pipeline
from mars_jax.data.records import CORRUPT_KEY
from mars_jax.models import MaRSConfig, MaRSPretrainer
from mars_jax.train import flops, images
from mars_jax.train.checkpoint import Checkpointer, quiet_background_save_errors
from mars_jax.train.config import DataConfig, Experiment
from mars_jax.train.forward import new_pretrainer
from mars_jax.train.loop import (
    NonFiniteError,
    Preemption,
    Reporter,
    check_finite,
    itstime,
    restore_or_init,
)
from mars_jax.train.metrics import CORRUPT_METRIC
from mars_jax.train.objective import LossConfig, pretraining_loss
from mars_jax.train.optim import OptimConfig, learning_rate_schedule, make_optimizer
from mars_jax.train.shard_check import check_ingest_summary
from mars_jax.train.workdir import write_run_config

__all__ = ["NonFiniteError", "Plan", "initial_state", "jit_train_step", "make_plan",
           "make_train_step", "model_and_optimizer", "train"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything derived from the config and the devices, validated before compiling."""

    experiment: Experiment
    mesh: jax.sharding.Mesh

    @property
    def model(self) -> MaRSConfig:
        return self.experiment.model

    @property
    def loss(self) -> LossConfig:
        return self.experiment.loss

    @property
    def optim(self) -> OptimConfig:
        return self.experiment.optim

    @property
    def rules(self) -> tuple[tuple[str, Any], ...]:
        return self.experiment.sharding_rules

    @property
    def image_size(self) -> int:
        return self.experiment.input.image_size

    @property
    def global_batch(self) -> int:
        return self.experiment.input.batch_size

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.model.patch_size
        return side, side


# ------------------------------------------------------------------------------------------
# Config checks: every mistake we can see before compiling gets a message naming it.
# ------------------------------------------------------------------------------------------
def check_batch_layout(batch: int, accum: int, mesh: jax.sharding.Mesh) -> None:
    """The global batch cuts into ``accum`` micro-batches spread over every data-parallel
    device, and into equal process shares."""
    data_parallel = parallel.data_parallel_size(mesh)
    if batch % accum or (batch // accum) % data_parallel:
        raise ValueError(
            f"global batch {batch} (micro-batches of {batch / accum:g} with "
            f"grad_accum_steps={accum}) does not divide across the {data_parallel} "
            f"data-parallel devices of mesh {dict(mesh.shape)}")
    if batch % jax.process_count():
        raise ValueError(f"global batch {batch} does not divide across "
                         f"{jax.process_count()} processes")


def make_plan(config: ml_collections.ConfigDict, devices=None) -> Plan:
    exp = Experiment.from_config(config)
    mesh = parallel.create_mesh(exp.mesh.sizes(), devices)
    size, batch, accum = exp.input.image_size, exp.input.batch_size, exp.optim.grad_accum_steps
    if size % exp.model.patch_size:
        raise ValueError(f"config.input.image_size {size} is not divisible by the patch size "
                         f"{exp.model.patch_size}")
    check_batch_layout(batch, accum, mesh)
    if exp.data.source == "synth" and exp.data.synth_size < size:
        raise ValueError(f"config.data.synth_size {exp.data.synth_size} is smaller than "
                         f"the crop config.input.image_size {size}")
    check_ingest_summary(exp)
    return Plan(exp, mesh)


# ------------------------------------------------------------------------------------------
# Input
# ------------------------------------------------------------------------------------------
def make_source(data: DataConfig, seed: int):
    if data.source == "synth":
        return SynthSource(seed=seed, size=data.synth_size)
    if data.source == "shards":
        from mars_jax.data.records import ShardSource, list_shards

        shards = list_shards(data.shards_dir)
        if not shards:
            raise FileNotFoundError(f"config.data.shards_dir {data.shards_dir!r} holds no "
                                    "*.array_record shards")
        return ShardSource(shards, skip_corrupt=data.skip_corrupt)
    import tensorflow_datasets as tfds

    import mars_jax.data.tfds_builders  # noqa: F401  (registers the builders)

    return tfds.data_source(data.tfds_name, split=data.tfds_split,
                            data_dir=data.tfds_data_dir or None)


def make_input(plan: Plan):
    exp = plan.experiment
    source = make_source(exp.data, exp.seed)
    return make_pipeline(  # extra_keys: the CORRUPT_KEY marks of ShardSource(skip_corrupt=True)
        source, global_batch_size=plan.global_batch, seed=exp.seed,
        keys=PRETRAIN_KEYS + tuple(getattr(source, "extra_keys", ())),
        crop_size=plan.image_size, flips=exp.data.flips,
        rotations=exp.data.rotations, process_index=jax.process_index(),
        process_count=jax.process_count(), worker_count=exp.data.workers)


# ------------------------------------------------------------------------------------------
# State: model + optimiser, abstract first (for shardings), then created in place.
# ------------------------------------------------------------------------------------------
def model_and_optimizer(plan: Plan, seed: int, total_steps: int):
    """(graphdef, abstract state with shardings, shardings, create) for this plan."""
    tx = make_optimizer(plan.optim, total_steps)

    def create() -> tuple[MaRSPretrainer, nnx.Optimizer]:
        model = new_pretrainer(plan.model, plan.loss, seed)
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
def micro_batches(x: jax.Array, accum: int, mesh: jax.sharding.Mesh) -> jax.Array:
    """[B, ...] -> [accum, B / accum, ...], micro-batch i = rows i, i + accum, ...

    MaxText's layout: each device's contiguous rows hold B / (devices accum) rows of every
    micro-batch, so every micro-batch stays spread over all data-parallel devices and
    cutting moves nothing (a plain reshape(accum, -1) would give each micro-batch a subset
    of the devices)."""
    x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    spec = PartitionSpec(None, parallel.BATCH_AXES, *(None,) * (x.ndim - 2))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def make_loss_and_grads(plan: Plan) -> Callable:
    """``fn(params, rest, model_def, inputs) -> ((loss, metrics), grads)``: the pretraining
    loss of one (micro-)batch whose ``inputs`` carry their ``mask_noise`` [B, N]."""
    grid = plan.grid

    def loss_fn(params: nnx.State, rest: nnx.State, model_def: nnx.GraphDef,
                inputs: Mapping[str, jax.Array]):
        model = nnx.merge(model_def, params, rest)
        out = model(inputs["optical"], inputs["sar"], mask_noise=inputs["mask_noise"],
                    valid=inputs["valid"], position_offsets=inputs.get("position_offsets"))
        temperatures = model.temperatures() if model.temperatures is not None else None
        return pretraining_loss(out, plan.loss, temperatures=temperatures,
                                grid_width=grid[1])

    return jax.value_and_grad(loss_fn, has_aux=True)


def mask_noise(plan: Plan, seed: int, step: jax.Array, batch_size: int) -> jax.Array:
    """[B, N] uniform noise of this step's shared masks (smallest noise: visible)."""
    key = jax.random.fold_in(jax.random.key(seed + 1), step)
    return jax.random.uniform(key, (batch_size, plan.grid[0] * plan.grid[1]))


def position_offsets(jitter: int, seed: int, step: jax.Array, batch_size: int) -> jax.Array:
    """[B, 2, 2] int32 offsets in [0, jitter] patches: per pair, the optical's and the SAR's
    own (rows, columns) shift of their patch positions (``LossConfig.position_jitter``)."""
    key = jax.random.fold_in(jax.random.key(seed + 3), step)
    return jax.random.randint(key, (batch_size, 2, 2), 0, jitter + 1, jnp.int32)


def accumulated_gradients(loss_and_grads: Callable, params: nnx.State, rest: nnx.State,
                          model_def: nnx.GraphDef, inputs: Mapping[str, jax.Array],
                          accum: int, mesh: jax.sharding.Mesh):
    """(mean gradient, mean metrics) over ``accum`` micro-batches of ``inputs``: one
    ``lax.scan`` whose carry (zeros first) holds arrays only, never the NNX model."""
    if accum == 1:
        (_, metrics), grads = loss_and_grads(params, rest, model_def, inputs)
        return grads, metrics
    micro = jax.tree.map(lambda x: micro_batches(x, accum, mesh), inputs)
    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(loss_and_grads, params, rest, model_def, first)[0][1]
    zeros = (jax.tree.map(jnp.zeros_like, params),
             jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes))

    def accumulate(carry, micro_batch):
        (_, m), g = loss_and_grads(params, rest, model_def, micro_batch)
        return jax.tree.map(jnp.add, carry, (g, m)), None

    (grads, metrics), _ = jax.lax.scan(accumulate, zeros, micro)
    return jax.tree.map(lambda x: x / accum, (grads, metrics))


def make_train_step(graphdef: nnx.GraphDef, plan: Plan, seed: int) -> Callable:
    """One optimiser step on the global batch, the gradient averaged over
    ``grad_accum_steps`` micro-batches.

    The shared masks are drawn for the whole batch and cut with it, so a micro-batch sees
    the masks it would have had in one large step: MIM terms average to the large-batch
    values, while CGCL's negatives span one micro-batch (as in any accumulation of a
    contrastive loss).

    A batch from ``ShardSource(skip_corrupt=True)`` also carries ``CORRUPT_KEY`` (1 per example
    that replaced a corrupt record): its global sum is the metric ``data/corrupt_skipped``."""
    accum = plan.optim.grad_accum_steps
    loss_and_grads = make_loss_and_grads(plan)

    def train_step(state: nnx.State, batch: Mapping[str, jax.Array], step: jax.Array):
        batch = dict(batch)
        corrupt = batch.pop(CORRUPT_KEY, None)
        model, optimizer = nnx.merge(graphdef, state)
        model_def, params, rest = nnx.split(model, nnx.Param, ...)
        size = batch["optical"].shape[0]
        inputs = dict(batch, mask_noise=mask_noise(plan, seed, step, size))
        if plan.loss.position_jitter:
            inputs["position_offsets"] = position_offsets(plan.loss.position_jitter, seed, step,
                                                          size)
        grads, metrics = accumulated_gradients(loss_and_grads, params, rest, model_def,
                                               inputs, accum, plan.mesh)
        metrics["grad_norm"] = optax.tree.norm(grads)
        if corrupt is not None:
            metrics[CORRUPT_METRIC] = jnp.sum(corrupt)
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


def write_preview(reporter: Reporter, step: int, preview: Callable, state: nnx.State,
                  batch: Mapping[str, jax.Array], plan: Plan) -> None:
    out = preview(state, batch)
    if reporter.is_main:
        panel = images.reconstruction_panel(jax.device_get(out),
                                            patch_size=plan.model.patch_size, grid=plan.grid,
                                            norm_pix=plan.loss.norm_pix)
        reporter.write_images(step, {"reconstruction": panel})


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str | Path, *, log=print,
          devices: list[jax.Device] | None = None) -> dict:
    """Pretrains (or resumes) to ``config.total_steps``; returns the last logged metrics.

    ``devices`` (default: all) are the devices the mesh is built from.
    """
    # ---- Config checks and mesh -----------------------------------------------------------
    plan = make_plan(config, devices)
    exp, mesh, total = plan.experiment, plan.mesh, plan.experiment.total_steps
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_run_config(workdir, config)

    # ---- Model and optimiser state, born in their shardings ------------------------------
    graphdef, abstract_state, shardings, create = model_and_optimizer(plan, exp.seed, total)

    # ---- Input ------------------------------------------------------------------------------
    data_iter = iter(make_input(plan))

    # ---- Restore or initialise ------------------------------------------------------------
    checkpointer = Checkpointer(workdir / "checkpoints", keep=exp.checkpoint.keep,
                                async_save=exp.checkpoint.async_save)
    try:
        state, start = restore_or_init(checkpointer, abstract_state, data_iter,
                                       lambda: initial_state(plan, shardings, create),
                                       total_steps=total, strict=exp.checkpoint.strict_resume,
                                       log=log)
    except BaseException:
        checkpointer.close(quiet=True)
        raise
    if state is None:  # finished already
        checkpointer.close()
        _log_done(log, start, total, {}, checkpointer, workdir)
        return {}

    # ---- Compile ---------------------------------------------------------------------------
    train_step = jit_train_step(graphdef, plan, exp.seed, shardings)
    preview = jax.jit(make_preview(graphdef, exp.seed, examples=4),
                      in_shardings=(shardings, parallel.batch_sharding(mesh)),
                      out_shardings=parallel.replicated(mesh))
    reporter = Reporter(
        workdir, exp.log, start=start, total=total, examples_per_step=plan.global_batch,
        step_flops=flops.train_flops(plan.model, image_size=plan.image_size,
                                     batch_size=plan.global_batch),
        schedule=learning_rate_schedule(plan.optim, total), log=log)

    # ---- Loop ------------------------------------------------------------------------------
    pending: tuple[int, Any] | None = None  # step s is checked while step s + 1 runs
    step, failed = start, True
    try:
        with Preemption(checkpointer) as preemption, jax.set_mesh(mesh), \
                quiet_background_save_errors():
            for step in range(start + 1, total + 1):
                batch = parallel.global_batch(next(data_iter), mesh)
                state, metrics = train_step(state, batch, jnp.asarray(step - 1, jnp.int32))
                if pending is not None:
                    reporter.add(check_finite(*pending, checkpointer.latest_step()))
                pending = (step, metrics)

                save = itstime(step, exp.checkpoint.every_steps, total) or step == total
                stopping = preemption.reached(step)
                if itstime(step, exp.log.every_steps) or save or stopping:
                    # A saved state's step is checked first, so no bad state is saved.
                    reporter.add(check_finite(*pending, checkpointer.latest_step()))
                    pending = None
                    reporter.report(step)
                if itstime(step, exp.log.images_every_steps, total):
                    write_preview(reporter, step, preview, state, batch, plan)
                if save or stopping:
                    checkpointer.save(step, state, data_iter)
                if stopping:
                    log(f"stopped by SIGTERM after step {step}; checkpoint saved")
                    break
            if pending is not None:
                reporter.add(check_finite(*pending, checkpointer.latest_step()))
            checkpointer.wait()  # the last save's outcome, inside the quiet block
        failed = False
    finally:
        reporter.close()
        checkpointer.close(quiet=failed)
    _log_done(log, step, total, reporter.last, checkpointer, workdir)
    return reporter.last


def _log_done(log, step: int, total: int, last: Mapping[str, float],
              checkpointer: Checkpointer, workdir: Path) -> None:
    if jax.process_index() != 0:
        return
    terms = " ".join(f"{k}={last[k]:.4f}" for k in ("loss", "mim_rgb", "mim_sar", "cgcl", "mas")
                     if k in last)
    saved = checkpointer.latest_step()
    log(f"done at step {step}/{total}: {terms}\n"
        f"  checkpoint: {f'{checkpointer.directory}/{saved}' if saved else 'none saved'}\n"
        f"  logs: {workdir / 'metrics.jsonl'}, {workdir / 'tensorboard'}, "
        f"{workdir / 'images'}")
