"""A pretraining checkpoint's encoder, loaded into a downstream model.

Pretraining checkpoints hold ``state`` = (pretrainer, optimiser); fine-tuning keeps the
pretrainer's ``encoder`` subtree only (input statistics, both ViTs, projections, MMA) and
drops the decoders, the temperatures and the Adam moments. Checkpoints written before the
encoder split, or with the other ``model.scan_layers``, are converted as a resume converts
them (``checkpoint.upgrade_legacy``, ``models.convert_layers``).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mars_jax.models import MaRSEncoder, convert_layers
from mars_jax.train.checkpoint import (
    CheckpointLayoutError,
    _flat_paths,
    _int_keys,
    _mismatch,
    upgrade_legacy,
)

MODEL = "0"  # the pretrainer's index in the saved (model, optimiser) state


def step_folder(checkpoint: str | os.PathLike, step: int | None = None) -> Path:
    """A step folder from a pretraining workdir, its ``checkpoints/`` folder or a step folder
    (``step``: that step; None: the newest)."""
    path = Path(checkpoint)
    if (path / "state").is_dir():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"init checkpoint {checkpoint}: no pretraining checkpoint "
                                "(a workdir, its checkpoints/ folder or a step folder)")
    if step is None:
        return folder / str(steps[-1])
    if step not in steps:
        raise FileNotFoundError(f"init checkpoint {checkpoint}: no step {step} (steps: {steps})")
    return folder / str(step)


def load_encoder(encoder: MaRSEncoder, checkpoint: str | os.PathLike,
                 step: int | None = None) -> Path:
    """Copies the checkpoint's encoder into ``encoder`` (in place); returns the step folder.

    Every parameter and statistic must match by path and shape: a checkpoint of another size
    or options is a ``CheckpointLayoutError`` naming the parameters that differ.
    """
    folder = step_folder(checkpoint, step)
    saved = ocp.StandardCheckpointer().restore((folder / "state").absolute())
    tree = upgrade_legacy(_int_keys(saved))
    models = [tree[k] for k in (MODEL, int(MODEL)) if k in tree]
    if not models or "encoder" not in models[0]:
        raise CheckpointLayoutError(f"{folder}: not a pretraining checkpoint (no encoder in "
                                    "its state)")
    state = nnx.state(encoder)
    target = nnx.to_pure_dict(state)
    source = convert_layers(models[0]["encoder"], target)
    got, want = _flat_paths(source), _flat_paths(target)
    if got != want:
        raise _mismatch(f"{folder}: the encoder does not match the configured model", got,
                        want)
    shapes = []
    for (path, mine), theirs in zip(jax.tree_util.tree_leaves_with_path(target),
                                    jax.tree.leaves(source), strict=True):
        if tuple(np.shape(theirs)) != tuple(np.shape(mine)):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            shapes.append(f"{name}: saved {tuple(np.shape(theirs))}, model "
                          f"{tuple(np.shape(mine))}")
    if shapes:
        raise CheckpointLayoutError(f"{folder}: encoder shapes differ from the configured "
                                    f"model: {shapes[:5]}")
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda x, t: jnp.asarray(x, jnp.asarray(t).dtype), source, target))
    nnx.update(encoder, state)
    return folder
