"""The fine-tuning optimiser: pretraining's AdamW with a multistep schedule option and
layer-wise learning-rate decay (LLRD).

LLRD (BEiT, MAE fine-tuning): with ``L`` = encoder depth + MMA layers, parameter ``p`` of
layer ``l(p)`` gets the learning rate ``lr * decay ** (L + 1 - l(p))``, where

    l = 0           the patch embeddings (both ViTs)
    l = i + 1       ViT block i (both ViTs: they sit at the same depth)
    l = depth       the ViTs' final norms (the top of each ViT)
    l = depth+1+j   MMA layer j
    l = L           anything else in the encoder (the CGCL projections)
    l = L + 1       the head (scale 1)

Scanned stacks (``stacked/<g>`` with a leading ``layers`` axis, group ``g`` of period ``p``)
get one scale per layer along that axis: row ``k`` is layer ``k * p + g``. As in BEiT the
scale multiplies the whole update, weight decay included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

from mars_jax.train.finetune_config import FinetuneOptimConfig
from mars_jax.train.optim import decay_mask, learning_rate_schedule

VITS = ("optical_vit", "sar_vit")


def finetune_schedule(cfg: FinetuneOptimConfig, total_steps: int) -> optax.Schedule:
    """"cosine": pretraining's warmup + cosine; "multistep": linear warmup, then the peak
    times ``gamma`` after each milestone (fractions of ``total_steps``, counted from 0)."""
    if cfg.schedule == "cosine":
        return learning_rate_schedule(cfg, total_steps)
    boundaries = {round(m * total_steps): cfg.gamma for m in cfg.milestones}
    constant = optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if not warmup:
        return constant
    ramp = optax.linear_schedule(0.0, cfg.learning_rate, warmup)
    return optax.join_schedules([ramp, lambda step: constant(step + warmup)], [warmup])


def _names(path: tuple) -> tuple[str, ...]:
    names = []
    for entry in path:
        name = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", None)))
        if name != "value":
            names.append(str(name))
    return tuple(names)


def layer_index(names: tuple[str, ...], depth: int, mma_layers: int) -> int | None:
    """l(p) of the module docstring for an unscanned parameter path (None: a scanned leaf,
    whose rows differ; see ``layer_scales``)."""
    top = depth + mma_layers
    if not names or names[0] != "encoder":
        return top + 1
    if len(names) > 1 and names[1] in VITS:
        if "patch_embed" in names:
            return 0
        if "blocks" in names:
            at = names.index("blocks")
            if names[at + 1] == "layers":
                return int(names[at + 2]) + 1
            return None
        return depth
    if len(names) > 1 and names[1] == "mma" and "blocks" in names:
        at = names.index("blocks")
        if names[at + 1] == "layers":
            return depth + 1 + int(names[at + 2])
        return None
    return top


def layer_scales(params: Any, *, depth: int, mma_layers: int, decay: float
                 ) -> dict[tuple[str, ...], Any]:
    """Path names -> learning-rate multiplier (a float, or for scanned leaves a float32
    ``[n, 1, ...]`` column, one row per layer) of every leaf of ``params``."""
    top = depth + mma_layers
    leaves = [(_names(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(params)]
    periods: dict[tuple[str, ...], int] = {}
    for names, _ in leaves:
        if "stacked" in names:
            at = names.index("stacked")
            periods[names[:at]] = max(periods.get(names[:at], 0), int(names[at + 1]) + 1)
    scales = {}
    for names, leaf in leaves:
        index = layer_index(names, depth, mma_layers)
        if index is not None:
            scales[names] = float(decay ** (top + 1 - index))
            continue
        at = names.index("stacked")
        group, period, rows = int(names[at + 1]), periods[names[:at]], np.shape(leaf)[0]
        first = depth + 1 if names[1] == "mma" else 1
        ids = first + np.arange(rows) * period + group
        column = (decay ** (top + 1 - ids)).astype(np.float32)
        scales[names] = column.reshape(rows, *([1] * (len(np.shape(leaf)) - 1)))
    return scales


def scale_by_layer(scales: Mapping[tuple[str, ...], Any]) -> optax.GradientTransformation:
    """Multiplies each update by its ``layer_scales`` entry, found by path (so it applies to
    any pytree of the same parameters: nnx.State or a pure dict)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params

        def scale(path, update):
            factor = scales[_names(path)]
            return update if isinstance(factor, float) and factor == 1.0 else \
                update * jax.numpy.asarray(factor, update.dtype)

        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(init, update)


def make_finetune_optimizer(cfg: FinetuneOptimConfig, total_steps: int, *,
                            scales: Mapping[tuple[str, ...], Any] | None = None
                            ) -> optax.GradientTransformation:
    """Clip -> AdamW (decay on kernels) at ``finetune_schedule`` -> per-layer scales."""
    adamw = optax.adamw(finetune_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2,
                        eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    parts = ([optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []) + [adamw]
    if scales is not None and cfg.layer_decay < 1.0:
        parts.append(scale_by_layer(scales))
    return optax.chain(*parts) if len(parts) > 1 else parts[0]
