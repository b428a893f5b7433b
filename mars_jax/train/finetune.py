"""Fine-tuning a pretrained MaRS encoder on a downstream task, and evaluating it.

Sections, as pretraining's loop (``pretrain.py``) and with its pieces (``loop.py``, the
checkpointer, the accumulated gradients, the input pipeline): config checks (sources opened,
first example checked, the init checkpoint found, before anything compiles) -> mesh -> model
and optimiser state born in their shardings, the encoder loaded from ``init.checkpoint`` ->
input -> restore or initialise -> compile -> loop (periodic logs, evaluations, checkpoints,
preemption) -> final evaluation -> ``W/results.json``.

The protocol chooses what trains (``finetune_config`` docstring): "frozen" and "linear"
differentiate the head's parameters only, so the encoder's are never touched (bit-identical),
and the optimiser holds moments for the head alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from mars_jax import parallel
from mars_jax.data.pipeline import make_pipeline
from mars_jax.data.subset import LabelSubset
from mars_jax.data.synth import SynthSource
from mars_jax.tasks import Task, get_task
from mars_jax.tasks.model import TaskModel
from mars_jax.train.checkpoint import Checkpointer, quiet_background_save_errors
from mars_jax.train.evaluate import (
    EvalResult,
    LabelStatistics,
    evaluate,
    label_statistics,
    modality_sets,
)
from mars_jax.train.finetune_config import FinetuneExperiment
from mars_jax.train.finetune_optim import finetune_schedule, layer_scales, make_finetune_optimizer
from mars_jax.train.loop import Preemption, Reporter, check_finite, itstime, restore_or_init
from mars_jax.train.pretrain import accumulated_gradients, check_batch_layout, initial_state
from mars_jax.train.pretrained import load_encoder, step_folder
from mars_jax.train.workdir import write_run_config
from mars_jax.typed_config import ConfigError

__all__ = ["FinetunePlan", "evaluate_checkpoint", "finetune", "make_finetune_plan"]

RESULTS_FILE = "results.json"
EVAL_RESULTS_FILE = "eval_results.json"
SECOND_DATE_KEYS = ("optical_t2", "sar_t2", "change", "damage")
BASELINE_EXAMPLES = 64  # training examples whose labels give the trivial baseline


@dataclasses.dataclass(frozen=True)
class FinetunePlan:
    """Everything derived from the config, the devices and the data, checked before
    compiling."""

    experiment: FinetuneExperiment
    mesh: jax.sharding.Mesh
    task: Task  # the registry's, with a dataset's own class names
    train_source: Any
    eval_source: Any
    eval_sets: dict[str, tuple[str, ...]]
    init_folder: Path | None
    labels: LabelStatistics  # of the first BASELINE_EXAMPLES training examples

    @property
    def baseline(self) -> int | float | tuple[float, ...]:
        """The trivial prediction (``LabelStatistics.baseline``; translation: a colour)."""
        return self.labels.baseline(self.task)

    @property
    def class_weights(self) -> np.ndarray | None:
        if self.experiment.task.class_weighting == "none":
            return None
        return self.labels.median_frequency_weights(self.task)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.experiment.task.modalities

    @property
    def image_size(self) -> int:
        return self.experiment.input.image_size

    @property
    def overlap(self) -> int:
        overlap = self.experiment.eval.overlap
        return self.image_size // 4 if overlap < 0 else overlap

    @property
    def batch_windows(self) -> int:
        """Windows per prediction call, rounded up to fill every data-parallel device."""
        dp = parallel.data_parallel_size(self.mesh)
        return -(-self.experiment.eval.batch_windows // dp) * dp

    @property
    def eval_scenes(self) -> int:
        scenes = self.experiment.eval.scenes
        return len(self.eval_source) if not scenes else min(scenes, len(self.eval_source))


# ------------------------------------------------------------------------------------------
# Config checks and data
# ------------------------------------------------------------------------------------------
def task_source(exp: FinetuneExperiment, task: Task, split: str) -> Any:
    """The training (``split="train"``, label fraction applied) or held-out source."""
    data, train = exp.data, split == "train"
    if data.source == "synth":
        keys = task.keys(("optical", "sar"))
        t2 = any(key in SECOND_DATE_KEYS for key in keys)
        options = (("with_registration", "affine" in keys), ("with_t2", t2))
        if train:
            source = SynthSource(seed=data.synth_seed, size=data.synth_size,
                                 length=data.synth_scenes, options=options)
        else:
            if not exp.eval.scenes:
                raise ConfigError("eval config: scenes must be > 0 for data.source='synth' "
                                  "(SynthVHR has no end)")
            if exp.eval.synth_seed == data.synth_seed:
                raise ConfigError(f"eval config: synth_seed {exp.eval.synth_seed} is the "
                                  "training data set (data.synth_seed): held-out scenes must "
                                  "come from another seed")
            return SynthSource(seed=exp.eval.synth_seed, size=exp.eval.synth_size,
                               length=exp.eval.scenes, options=options)
    elif data.source == "dataset":
        from mars_jax.data.datasets import open_dataset

        source = open_dataset(data.dataset, data.root,
                              split=data.split if train else exp.eval.split)
    elif data.source == "shards":
        from mars_jax.data.datasets import ingested_labels

        folder = data.shards_dir if train else exp.eval.shards_dir
        if not folder:
            raise ConfigError("eval config: shards_dir must name the held-out shards for "
                              "data.source='shards'")
        source = ingested_labels(folder)
    else:
        import tensorflow_datasets as tfds

        import mars_jax.data.tfds_builders  # noqa: F401  (registers the builders)

        source = tfds.data_source(data.tfds_name, split=data.split if train else
                                  exp.eval.split, data_dir=data.tfds_data_dir or None)
    if train and exp.task.label_fraction < 1:
        source = LabelSubset(source, exp.task.label_fraction, seed=exp.seed)
    return source


def _describe(exp: FinetuneExperiment, split: str) -> str:
    data = exp.data
    where = {"synth": "SynthVHR", "dataset": f"{data.dataset} at {data.root}",
             "shards": "shards", "tfds": f"TFDS {data.tfds_name}"}[data.source]
    return f"{split} example 0 of {where}"


def make_finetune_plan(config: ml_collections.ConfigDict, devices=None) -> FinetunePlan:
    exp = FinetuneExperiment.from_config(config)
    mesh = parallel.create_mesh(exp.mesh.sizes(), devices)
    size, depth = exp.input.image_size, exp.model.encoder.depth
    if size % exp.model.patch_size:
        raise ConfigError(f"input config: image_size {size} is not divisible by the patch "
                          f"size {exp.model.patch_size}")
    check_batch_layout(exp.input.batch_size, exp.optim.grad_accum_steps, mesh)
    if any(level >= depth for level in exp.task.levels):
        raise ConfigError(f"task config: levels {exp.task.levels} must be encoder blocks "
                          f"below the depth {depth}")
    task = get_task(exp.task.name)
    train_source, eval_source = task_source(exp, task, "train"), task_source(exp, task, "eval")
    classes = tuple(getattr(train_source, "classes", ()) or ())
    if classes and task.kind == "segmentation":
        task = dataclasses.replace(task, classes=classes)
    if classes and task.kind == "detection" and getattr(train_source, "task", "") == \
            "detection":  # a detection dataset (COCO): its own categories, every one kept
        task = dataclasses.replace(task, classes=classes, source_classes=None)
    for source, split in ((train_source, "training"), (eval_source, "held-out")):
        if len(source) < 1:
            raise ValueError(f"the {split} set is empty ({_describe(exp, split)})")
        first = source[0]
        task.check_example(first, exp.task.modalities, where=_describe(exp, split))
    image_key = next(iter(task.inputs.values()))
    height, width = (int(n) for n in train_source[0][image_key].shape[:2])
    if min(height, width) < size:
        raise ConfigError(f"training examples are {height}x{width}, smaller than the crop "
                          f"input.image_size={size} (for SynthVHR raise data.synth_size)")
    if len(train_source) < exp.input.batch_size:
        raise ConfigError(f"{len(train_source)} labelled training examples (label_fraction "
                          f"{exp.task.label_fraction}) cannot fill a global batch of "
                          f"{exp.input.batch_size}")
    try:
        sets = modality_sets(exp.eval.modalities, exp.task.modalities)
    except ValueError as error:
        raise ConfigError(f"eval config: {error}") from None
    init = step_folder(exp.init.checkpoint, exp.init.step) if exp.init.checkpoint else None
    count = min(len(train_source), BASELINE_EXAMPLES)
    labels = label_statistics(task, (train_source[i] for i in range(count)))
    return FinetunePlan(exp, mesh, task, train_source, eval_source, sets, init, labels)


def make_input(plan: FinetunePlan):
    exp = plan.experiment
    source = plan.train_source
    return make_pipeline(
        source, global_batch_size=exp.input.batch_size, seed=exp.seed,
        keys=plan.task.keys(plan.modalities) + tuple(getattr(source, "extra_keys", ())),
        crop_size=plan.image_size, flips=exp.data.flips, rotations=exp.data.rotations,
        process_index=jax.process_index(), process_count=jax.process_count(),
        worker_count=exp.data.workers, check_contract=False,
        map_fn=None if type(plan.task).prepare is Task.prepare else plan.task.prepare)


# ------------------------------------------------------------------------------------------
# State: the task model and an optimiser over what the protocol trains
# ------------------------------------------------------------------------------------------
def trainable(protocol: str) -> nnx.filterlib.Filter:
    """The parameters a protocol differentiates and updates."""
    return nnx.Param if protocol == "full" else nnx.All(nnx.Param, nnx.PathContains("head"))


def model_and_optimizer(plan: FinetunePlan, total_steps: int):
    """(graphdef, abstract state with shardings, shardings, create)."""
    exp = plan.experiment
    wrt = trainable(exp.task.protocol)

    def create() -> tuple[TaskModel, nnx.Optimizer]:
        model = TaskModel(exp.model, plan.task, exp.head, levels=exp.task.levels or None,
                          rngs=nnx.Rngs(exp.seed))
        scales = None
        if exp.task.protocol == "full" and exp.optim.layer_decay < 1:
            scales = layer_scales(nnx.state(model, wrt), depth=exp.model.encoder.depth,
                                  mma_layers=exp.model.mma_layers,
                                  decay=exp.optim.layer_decay)
        tx = make_finetune_optimizer(exp.optim, total_steps, scales=scales)
        return model, nnx.Optimizer(model, tx, wrt=wrt)

    graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
    shardings = parallel.state_shardings(abstract_state, plan.mesh, exp.sharding_rules)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        shardings)
    return graphdef, abstract_state, shardings, create


def pretrained_state(plan: FinetunePlan, graphdef: nnx.GraphDef, shardings: Any,
                     create: Callable) -> nnx.State:
    """A fresh state whose encoder is the init checkpoint's (random without one); a
    regression head starts at the training labels' mean, a translation head at their mean
    colour."""
    state = initial_state(plan, shardings, create)
    kind, linear = plan.task.kind, plan.experiment.head.kind == "linear"
    starts = not linear and ((kind == "regression" and plan.baseline > 0)
                             or kind == "translation")
    if plan.init_folder is None and not starts:
        return state
    model, optimizer = nnx.merge(graphdef, state)
    if plan.init_folder is not None:
        load_encoder(model.encoder, plan.init_folder)
    if starts:  # the head starts at the training mean (RegressionHead.start_at)
        model.head.start_at(plan.baseline)
    return jax.device_put(nnx.state((model, optimizer)), shardings)


# ------------------------------------------------------------------------------------------
# The train step
# ------------------------------------------------------------------------------------------
def draw_presence(key: jax.Array, batch: int, rate: float) -> jax.Array:
    """[B, 2] (optical, SAR) presence: with probability ``rate`` an example loses one
    modality, either with even odds; never both."""
    k_drop, k_which = jax.random.split(key)
    drop = jax.random.uniform(k_drop, (batch,)) < rate
    drop_sar = jax.random.bernoulli(k_which, 0.5, (batch,))
    return jnp.stack([~(drop & ~drop_sar), ~(drop & drop_sar)], axis=1)


def make_loss_and_grads(plan: FinetunePlan, seed: int) -> Callable:
    """``fn(params, rest, model_def, inputs) -> ((loss, metrics), grads)`` of one
    (micro-)batch; ``inputs`` carry ``example_seed`` [B] (dropout keys) and, with modality
    dropout, ``present`` [B, 2]."""
    task, modalities = plan.task, plan.modalities
    weights = None if plan.class_weights is None else jnp.asarray(plan.class_weights)
    ssim_weight = plan.experiment.task.ssim_weight  # translation only (validated)

    def loss_fn(params: nnx.State, rest: nnx.State, model_def: nnx.GraphDef,
                inputs: Mapping[str, jax.Array]):
        model = nnx.merge(model_def, params, rest)
        key = jax.random.fold_in(jax.random.key(seed + 3), inputs["example_seed"][0])
        inputs = task.augment(inputs, jax.random.fold_in(key, 1))
        logits = model(task.model_inputs(inputs, modalities), present=inputs.get("present"),
                       rngs=nnx.Rngs(dropout=key))
        loss = task.loss(logits, inputs, class_weights=weights, ssim_weight=ssim_weight)
        return loss, {"loss": loss}

    return jax.value_and_grad(loss_fn, has_aux=True)


def make_train_step(graphdef: nnx.GraphDef, plan: FinetunePlan, seed: int) -> Callable:
    exp = plan.experiment
    accum, rate, wrt = exp.optim.grad_accum_steps, exp.task.modality_dropout, trainable(
        exp.task.protocol)
    loss_and_grads = make_loss_and_grads(plan, seed)

    def train_step(state: nnx.State, batch: Mapping[str, jax.Array], step: jax.Array):
        model, optimizer = nnx.merge(graphdef, state)
        model_def, params, rest = nnx.split(model, wrt, ...)
        size = next(iter(batch.values())).shape[0]
        inputs = dict(batch, example_seed=step * size + jnp.arange(size, dtype=jnp.int32))
        if rate:
            inputs["present"] = draw_presence(
                jax.random.fold_in(jax.random.key(seed + 4), step), size, rate)
        grads, metrics = accumulated_gradients(loss_and_grads, params, rest, model_def,
                                               inputs, accum, plan.mesh)
        metrics["grad_norm"] = optax.tree.norm(grads)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), metrics

    return train_step


def jit_train_step(graphdef: nnx.GraphDef, plan: FinetunePlan, seed: int,
                   shardings: Any) -> Callable:
    replicated = parallel.replicated(plan.mesh)
    return jax.jit(make_train_step(graphdef, plan, seed),
                   in_shardings=(shardings, parallel.batch_sharding(plan.mesh), replicated),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))


def jit_predict(graphdef: nnx.GraphDef, plan: FinetunePlan, shardings: Any) -> Callable:
    """``(state, role inputs) -> float32 outputs``, the model in eval mode (no dropout);
    ``inputs`` may carry ``present`` [N, 2] (``evaluate``'s presence masks)."""

    def predict(state: nnx.State, inputs: Mapping[str, jax.Array]) -> jax.Array:
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        inputs = dict(inputs)
        present = inputs.pop("present", None)
        return model(inputs, present=present)

    return jax.jit(predict, in_shardings=(shardings, parallel.batch_sharding(plan.mesh)),
                   out_shardings=parallel.replicated(plan.mesh))


# ------------------------------------------------------------------------------------------
# Evaluation and results
# ------------------------------------------------------------------------------------------
def run_evaluation(plan: FinetunePlan, predictor: Callable, state: nnx.State,
                   baseline: int | float | tuple[float, ...], *, panels: bool = True
                   ) -> EvalResult:
    exp = plan.experiment
    scenes = (plan.eval_source[i] for i in range(plan.eval_scenes))
    if plan.task.kind == "detection":
        from mars_jax.train.evaluate_detection import evaluate_detection

        return evaluate_detection(
            plan.task, lambda inputs: predictor(state, inputs), scenes, plan.eval_sets,
            window=plan.image_size, overlap=plan.overlap, batch_windows=plan.batch_windows,
            panels=exp.eval.panels if panels else 0, total=plan.eval_scenes,
            progress=exp.eval.progress and jax.process_index() == 0)
    if plan.task.kind == "registration":
        from mars_jax.train.evaluate_registration import evaluate_registration

        return evaluate_registration(
            plan.task, lambda inputs: predictor(state, inputs), scenes,
            batch=parallel.data_parallel_size(plan.mesh), panels=exp.eval.panels if panels
            else 0, total=plan.eval_scenes, progress=exp.eval.progress
            and jax.process_index() == 0)
    return evaluate(plan.task, lambda inputs: predictor(state, inputs), scenes, plan.eval_sets,
                    window=plan.image_size, overlap=plan.overlap,
                    batch_windows=plan.batch_windows, weighting=exp.eval.weighting,
                    baseline=baseline, panels=exp.eval.panels if panels else 0,
                    total=plan.eval_scenes, presence=len(plan.modalities) == 2,
                    progress=exp.eval.progress and jax.process_index() == 0)


def _finite(values: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in values.items()}


def _json_prediction(value: int | float | tuple[float, ...]) -> int | float | list[float]:
    """A baseline prediction as JSON holds it (a colour as a list)."""
    if isinstance(value, tuple | list | np.ndarray):  # a colour, or a transform's rows
        return np.asarray(value, np.float64).tolist()
    return value


def results_record(plan: FinetunePlan, result: EvalResult, step: int,
                   baseline: int | float | tuple[float, ...]) -> dict:
    """``results.json``: the task, protocol, modalities, every metric per modality set (NaN,
    an undefined metric such as the IoU of a class absent from both, as null; translation:
    psnr, ssim, l1, a perfect image's infinite PSNR as null too), the baseline (translation:
    its colour, a list of 3 floats in [0, 1]) and the checkpoint the encoder started from."""
    exp, task = plan.experiment, plan.task
    return {
        "task": task.name, "protocol": exp.task.protocol, "variant": exp.variant,
        "train_modalities": list(plan.modalities), "label_fraction": exp.task.label_fraction,
        "modality_dropout": exp.task.modality_dropout, "head": exp.head.kind, "step": step,
        "total_steps": exp.total_steps,
        "init_checkpoint": str(plan.init_folder) if plan.init_folder else None,
        "headline": task.headline, "higher_is_better": task.higher_is_better,
        "classes": list(task.classes),
        "headline_values": {name: _finite(m).get(task.headline)
                            for name, m in result.metrics.items()},
        "metrics": {name: _finite(m) for name, m in result.metrics.items()},
        "baseline": {"prediction": _json_prediction(baseline),
                     "metrics": _finite(result.baseline)},
        "class_weights": None if plan.class_weights is None else [
            float(w) for w in plan.class_weights],
        "eval": {"source": exp.data.source, "scenes": result.scenes,
                 "window": plan.image_size, "overlap": plan.overlap,
                 "weighting": exp.eval.weighting,
                 "modality_sets": {k: list(v) for k, v in plan.eval_sets.items()}},
    }


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Written whole or not at all (a temporary file renamed over the old one)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)


def report_evaluation(reporter: Reporter, step: int, result: EvalResult, task: Task) -> None:
    scalars = {f"eval/{name}/{key}": value for name, metrics in result.metrics.items()
               for key, value in metrics.items() if math.isfinite(value)}
    reporter.write_scalars(step, scalars)
    if result.panels:
        reporter.write_images(step, {f"predictions_{name}": panel
                                     for name, panel in result.panels.items()})


def summary_line(result: EvalResult, task: Task) -> str:
    parts = [f"{name}: {task.headline}={m.get(task.headline, float('nan')):.4f}"
             for name, m in result.metrics.items()]
    base = result.baseline.get(task.headline, float("nan"))
    return f"{task.name} " + ", ".join(parts) + f" (baseline {base:.4f})"


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------
def finetune(config: ml_collections.ConfigDict, workdir: str | Path, *, log=print,
             devices: list[jax.Device] | None = None) -> dict:
    """Fine-tunes (or resumes) to ``config.total_steps``, evaluates, writes
    ``W/results.json`` and returns its record. A finished run only evaluates again when its
    results are missing."""
    # ---- Config checks, data and mesh ----------------------------------------------------
    plan = make_finetune_plan(config, devices)
    exp, mesh, total = plan.experiment, plan.mesh, plan.experiment.total_steps
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_run_config(workdir, config, plan.task)
    results_path = workdir / RESULTS_FILE
    if results_path.exists():
        done = json.loads(results_path.read_text())
        if done.get("step") == total:
            log(f"nothing to do: {results_path} holds step {total}")
            return done

    # ---- Model and optimiser state --------------------------------------------------------
    graphdef, abstract_state, shardings, create = model_and_optimizer(plan, total)

    # ---- Input, restore or initialise -----------------------------------------------------
    data_iter = iter(make_input(plan))
    checkpointer = Checkpointer(workdir / "checkpoints", keep=exp.checkpoint.keep,
                                async_save=exp.checkpoint.async_save)
    try:
        state, start = restore_or_init(
            checkpointer, abstract_state, data_iter,
            lambda: pretrained_state(plan, graphdef, shardings, create), total_steps=total,
            strict=exp.checkpoint.strict_resume, log=log)
        if state is None:  # trained, not evaluated: evaluate the final step
            state = checkpointer.restore(start, abstract_state, data_iter)
    except BaseException:
        checkpointer.close(quiet=True)
        raise
    if start == 0 and plan.init_folder is not None:
        log(f"encoder loaded from {plan.init_folder}")

    # ---- Compile --------------------------------------------------------------------------
    train_step = jit_train_step(graphdef, plan, exp.seed, shardings)
    predictor = jit_predict(graphdef, plan, shardings)
    baseline = plan.baseline
    reporter = Reporter(workdir, exp.log, start=start, total=total,
                        examples_per_step=exp.input.batch_size,
                        schedule=finetune_schedule(exp.optim, total), log=log)

    # ---- Loop -----------------------------------------------------------------------------
    pending: tuple[int, Any] | None = None
    step, failed, stopped = start, True, False
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
                stopped = preemption.reached(step)
                if itstime(step, exp.log.every_steps) or save or stopped:
                    reporter.add(check_finite(*pending, checkpointer.latest_step()))
                    pending = None
                    reporter.report(step)
                if save or stopped:
                    checkpointer.save(step, state, data_iter)
                if stopped:
                    log(f"stopped by SIGTERM after step {step}; checkpoint saved")
                    break
                if step < total and itstime(step, exp.eval.every_steps):
                    result = run_evaluation(plan, predictor, state, baseline, panels=False)
                    report_evaluation(reporter, step, result, plan.task)
                    log(f"step {step}: {summary_line(result, plan.task)}")
            if pending is not None:
                reporter.add(check_finite(*pending, checkpointer.latest_step()))
            checkpointer.wait()
            record = None
            if not stopped:
                # ---- Final evaluation ---------------------------------------------------
                result = run_evaluation(plan, predictor, state, baseline)
                report_evaluation(reporter, total, result, plan.task)
                record = results_record(plan, result, total, baseline)
                if jax.process_index() == 0:
                    write_json(results_path, record)
        failed = False
    finally:
        reporter.close()
        checkpointer.close(quiet=failed)
    if record is None:
        return {}
    log(f"done at step {total}/{total}: {summary_line(result, plan.task)}\n"
        f"  results: {results_path}\n  checkpoint: {checkpointer.directory}/{total}")
    return record


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | Path, *,
                        log=print, devices: list[jax.Device] | None = None) -> dict:
    """``--mode=eval``: scores the newest fine-tuned checkpoint in ``workdir`` with the
    config's ``eval`` section (e.g. ``--config.eval.modalities=sar``) and writes
    ``W/eval_results.json`` (the results.json record)."""
    plan = make_finetune_plan(config, devices)
    workdir = Path(workdir)
    graphdef, state, shardings, step = restore_newest(plan, workdir)
    predictor = jit_predict(graphdef, plan, shardings)
    baseline = plan.baseline
    with jax.set_mesh(plan.mesh):
        result = run_evaluation(plan, predictor, state, baseline)
    record = results_record(plan, result, step, baseline)
    if jax.process_index() == 0:
        write_json(workdir / EVAL_RESULTS_FILE, record)
        if result.panels:
            from mars_jax.train.images import save_png

            for name, panel in result.panels.items():
                save_png(workdir / "images" / f"eval_{name}_{step}.png", panel)
    log(f"step {step}: {summary_line(result, plan.task)}\n  results: "
        f"{workdir / EVAL_RESULTS_FILE}")
    return record


def restore_newest(plan: FinetunePlan, workdir: Path):
    """(graphdef, state, shardings, step) of the newest fine-tuned checkpoint in ``workdir``."""
    graphdef, abstract_state, shardings, _ = model_and_optimizer(plan, plan.experiment
                                                                 .total_steps)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=plan.experiment.checkpoint.keep,
                                async_save=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"no fine-tuned checkpoint in {workdir / 'checkpoints'}; "
                                    "run --mode=finetune with this --workdir first")
        state = checkpointer.restore(step, abstract_state, iter(make_input(plan)))
    finally:
        checkpointer.close(quiet=True)
    return graphdef, state, shardings, step


def restore_finetuned(config: ml_collections.ConfigDict, workdir: str | Path, *,
                      devices: list[jax.Device] | None = None) -> tuple[nnx.Module, int]:
    """The task model of the newest fine-tuned checkpoint in ``workdir`` and its step."""
    plan = make_finetune_plan(config, devices)
    graphdef, state, _, step = restore_newest(plan, Path(workdir))
    model, _ = nnx.merge(graphdef, state)
    return model, step
