"""A pretraining checkpoint's encoder, loaded into a downstream model.

Pretraining checkpoints hold ``state`` = (pretrainer, optimiser); fine-tuning keeps the
pretrainer's ``encoder`` subtree only (input statistics, both ViTs, projections, MMA) and
never reads the decoders' optimiser moments (``workdir.saved_model``: a parameters-only
restore). Checkpoints written before the encoder split, or with the other
``model.scan_layers``, are converted as a resume converts them (``checkpoint.upgrade_legacy``,
``models.convert_layers``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mars_jax.models import MaRSEncoder
from mars_jax.train.checkpoint import CheckpointLayoutError
from mars_jax.train.workdir import fill_module, saved_model
from mars_jax.train.workdir import step_folder as _step_folder


def step_folder(checkpoint: str | os.PathLike, step: int | None = None) -> Path:
    """A step folder from a pretraining workdir, its ``checkpoints/`` folder or a step folder
    (``step``: that step; None: the newest)."""
    return _step_folder(checkpoint, step, name=f"init checkpoint {checkpoint}",
                        kind="pretraining checkpoint")


def load_encoder(encoder: MaRSEncoder, checkpoint: str | os.PathLike,
                 step: int | None = None) -> Path:
    """Copies the checkpoint's encoder into ``encoder`` (in place); returns the step folder.

    Every parameter and statistic must match by path and shape: a checkpoint of another size
    or options is a ``CheckpointLayoutError`` naming the parameters that differ.
    """
    folder = step_folder(checkpoint, step)
    saved = saved_model(folder)
    if "encoder" not in saved:
        raise CheckpointLayoutError(f"{folder}: not a pretraining checkpoint (no encoder in "
                                    "its state)")
    fill_module(encoder, saved["encoder"], f"{folder}: the encoder")
    return folder
