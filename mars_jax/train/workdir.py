"""A training workdir as a model source: the run's config and parameters-only restores.

Every run writes ``W/config.json`` when it starts (the config as JSON, the mars_jax version
and, for fine-tuning, the task as resolved against the data: a dataset's own class names), so
a workdir names its model without the config file or the data it was trained on. Restores
read the model subtree of a checkpoint's ``state`` only (orbax partial restore): no Adam
moments, no data iterator, no data sources opened.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

import mars_jax
from mars_jax.models import convert_layers
from mars_jax.tasks import Task, get_task
from mars_jax.train.checkpoint import (
    CheckpointLayoutError,
    _flat_paths,
    _int_keys,
    _mismatch,
    upgrade_legacy,
)

RUN_CONFIG_FILE = "config.json"
MODEL = "0"  # the model's index in a saved (model, optimiser) state


# ------------------------------------------------------------------------------------------
# The run's config
# ------------------------------------------------------------------------------------------
def task_record(task: Task) -> dict[str, Any]:
    """What ``task_from_record`` needs: the registry name and the fields a dataset sets."""
    record: dict[str, Any] = {"name": task.name, "classes": list(task.classes)}
    if hasattr(task, "source_classes"):
        record["source_classes"] = (None if task.source_classes is None
                                    else list(task.source_classes))
    return record


def task_from_record(record: Mapping[str, Any]) -> Task:
    task = get_task(record["name"])
    changes: dict[str, Any] = {"classes": tuple(record.get("classes", task.classes))}
    if "source_classes" in record and hasattr(task, "source_classes"):
        source = record["source_classes"]
        changes["source_classes"] = None if source is None else tuple(source)
    return dataclasses.replace(task, **changes)


def write_run_config(workdir: str | os.PathLike,
                     config: ml_collections.ConfigDict | Mapping[str, Any],
                     task: Task | None = None) -> Path:
    """``W/config.json`` (process 0), written whole or not at all."""
    path = Path(workdir) / RUN_CONFIG_FILE
    if jax.process_index() != 0:
        return path
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(dict(config))
    record = {"mars_jax_version": mars_jax.__version__,
              "config": json.loads(config.to_json_best_effort()),
              "task": None if task is None else task_record(task)}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A workdir's config and, for fine-tuning, its resolved task."""

    config: ml_collections.ConfigDict
    task: Task | None

    @property
    def is_finetuning(self) -> bool:
        return "task" in self.config


def read_run_config(workdir: str | os.PathLike,
                    config: ml_collections.ConfigDict | None = None) -> RunConfig:
    """``W/config.json``, or ``config`` (the config the run was launched with) for a workdir
    written before runs recorded theirs."""
    path = Path(workdir) / RUN_CONFIG_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    if config is None:
        if not record:
            raise FileNotFoundError(
                f"{workdir}: no {RUN_CONFIG_FILE} (runs write it when they start); pass the "
                "config the run was launched with, e.g. "
                "config='configs/finetune.py:landcover,tiny'")
        config = ml_collections.ConfigDict(record["config"])
    task = record.get("task")
    if task is None and "task" in config:  # a fine-tuning config given for an older workdir
        task = {"name": config.task.name}
    return RunConfig(config, None if task is None else task_from_record(task))


# ------------------------------------------------------------------------------------------
# Parameters-only restores
# ------------------------------------------------------------------------------------------
def step_folder(workdir: str | os.PathLike, step: int | None = None, *,
                name: str | None = None, kind: str = "checkpoint") -> Path:
    """A step folder of a workdir, its ``checkpoints/`` folder or a step folder itself
    (``step``: that step; None: the newest). Errors read ``{name}: no {kind} ...`` (``name``:
    the path)."""
    name = str(workdir) if name is None else name
    path = Path(workdir)
    if (path / "state").is_dir():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"{name}: no {kind} (a workdir, its checkpoints/ folder or "
                                "a step folder)")
    if step is None:
        return folder / str(steps[-1])
    if step not in steps:
        raise FileNotFoundError(f"{name}: no step {step} (steps: {steps})")
    return folder / str(step)


def saved_model(folder: str | os.PathLike) -> dict:
    """The model half of a step folder's saved state as a pure dict of numpy arrays, in
    today's layout (``upgrade_legacy``); the optimiser's half is never read."""
    path = (Path(folder) / "state").absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = ocp.PyTreeCheckpointHandler().metadata(path)  # the item's: no step metadata
    tree = getattr(metadata, "tree", metadata)
    if MODEL not in tree:
        raise CheckpointLayoutError(f"{folder}: not a training checkpoint (no model in its "
                                    "state)")
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                          {MODEL: tree[MODEL]})
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
    return upgrade_legacy(_int_keys(restored[MODEL]))


def fill_module(module: nnx.Module, source: Mapping, where: str) -> None:
    """Copies a pure dict into ``module`` (in place), converting the stack layout
    (``convert_layers``); every parameter must match by path and shape, or a
    ``CheckpointLayoutError`` names those that differ."""
    state = nnx.state(module)
    target = nnx.to_pure_dict(state)
    source = convert_layers(source, target)
    got, want = _flat_paths(source), _flat_paths(target)
    if got != want:
        raise _mismatch(f"{where} does not match the configured model", got, want)
    shapes = []
    for (path, mine), theirs in zip(jax.tree_util.tree_leaves_with_path(target),
                                    jax.tree.leaves(source), strict=True):
        if tuple(np.shape(theirs)) != tuple(np.shape(mine)):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            shapes.append(f"{name}: saved {tuple(np.shape(theirs))}, model "
                          f"{tuple(np.shape(mine))}")
    if shapes:
        raise CheckpointLayoutError(f"{where}: shapes differ from the configured model: "
                                    f"{shapes[:5]}")
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda x, t: jnp.asarray(x, t.dtype), source, target))
    nnx.update(module, state)


# ------------------------------------------------------------------------------------------
# A workdir's model
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WorkdirModel:
    """A workdir's model, its provenance and its run config."""

    model: nnx.Module  # MaRSEncoder (pretraining) or TaskModel (fine-tuning), eval mode
    run: RunConfig
    folder: Path  # the step folder restored
    step: int
    experiment: Any  # Experiment or FinetuneExperiment

    @property
    def task(self) -> Task | None:
        return self.run.task


def load_workdir_model(workdir: str | os.PathLike, *, step: int | None = None,
                       config: ml_collections.ConfigDict | None = None) -> WorkdirModel:
    """The encoder of a pretraining workdir, or the task model of a fine-tuning one, restored
    parameters-only from its newest (or ``step``'s) checkpoint."""
    from mars_jax.models.encoder import MaRSEncoder

    run = read_run_config(workdir, config)
    folder = step_folder(workdir, step)
    saved = saved_model(folder)
    if run.is_finetuning:
        from mars_jax.tasks.model import TaskModel
        from mars_jax.train.finetune_config import FinetuneExperiment

        exp = FinetuneExperiment.from_config(run.config)
        task = run.task if run.task is not None else get_task(exp.task.name)
        run = dataclasses.replace(run, task=task)
        model = TaskModel(exp.model, task, exp.head, levels=exp.task.levels or None,
                          rngs=nnx.Rngs(0))
        fill_module(model, saved, f"checkpoint {folder}")
    else:
        from mars_jax.train.config import Experiment

        exp = Experiment.from_config(run.config)
        if "encoder" not in saved:
            raise CheckpointLayoutError(f"{folder}: not a pretraining checkpoint (no encoder "
                                        "in its state)")
        model = MaRSEncoder(exp.model, rngs=nnx.Rngs(0))
        fill_module(model, saved["encoder"], f"checkpoint {folder}")
    model.eval()
    return WorkdirModel(model, run, folder, int(folder.name), exp)
