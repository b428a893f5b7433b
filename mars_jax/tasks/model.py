"""A task model: the MaRS encoder as a multi-level backbone, and a head (TerraTorch's
backbone + neck + decoder + head; the neck and decoder live in the head).

Backbone output (``models.heads``' interface): ``features`` = the encoder's block outputs at
``levels`` (per modality, averaged over the modalities present in each example) and, last,
the MMA-fused tokens (averaged likewise), each as a ``[B, H/P, W/P, D]`` grid; ``stride`` P.
Averaging keeps the head's input width whatever the modalities given, so one model serves
RGB-only, SAR-only and both (modality dropout trains it to). Bi-temporal tasks run the one
backbone on each date and the change head fuses the two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mars_jax.models import MaRSConfig
from mars_jax.models.encoder import MaRSEncoder
from mars_jax.models.heads import HeadConfig, build_head
from mars_jax.tasks.registry import Task


def default_levels(depth: int, count: int = 3) -> tuple[int, ...]:
    """``count`` encoder block indices spread over the depth (ViT-B: 2, 5, 8), the fused
    MMA output being the deepest level (PANGAEA takes blocks 3, 5, 7, 11 of ViT-B)."""
    return tuple(max(0, round(depth * (k + 1) / (count + 1)) - 1) for k in range(count))


class TaskModel(nnx.Module):
    """``encoder`` (restorable from a pretraining checkpoint's ``encoder`` subtree) and
    ``head``."""

    def __init__(self, model: MaRSConfig, task: Task, head: HeadConfig, *,
                 levels: Sequence[int] | None = None, rngs: nnx.Rngs):
        self.task = task
        self.levels = tuple(default_levels(model.encoder.depth) if levels is None else levels)
        self.patch_size = model.patch_size
        self.encoder = MaRSEncoder(model, rngs=rngs)
        kind = dataclasses_replace(head, task.head_kind)
        if task.activation and kind.kind != "linear":  # e.g. translation's sigmoid
            kind = dataclasses.replace(kind, activation=task.activation)
        dims = (model.encoder.width,) * (len(self.levels) + 1)
        self.head = build_head(kind, dims, task.num_outputs, dtype=jnp.dtype(model.dtype),
                               param_dtype=jnp.dtype(model.param_dtype), rngs=rngs)
        for _, module in nnx.iter_modules(self.head):  # no RNG state: keys come per call
            if isinstance(module, nnx.Dropout):
                module.rngs = nnx.data(None)

    def backbone(self, optical: jax.Array | None, sar: jax.Array | None, *,
                 valid: jax.Array | None = None, present: jax.Array | None = None) -> dict:
        """The head's input dict (module docstring) for one date."""
        both = optical is not None and sar is not None
        out = self.encoder.encode(optical, sar, valid=valid, layers=sorted(set(self.levels)),
                                  present=present if both else None)
        weights = _modality_weights(out.z_rgb, out.z_sar, present if both else None)
        unique = sorted(set(self.levels))

        def mix(rgb, sar_):
            parts = [(w, x) for w, x in zip(weights, (rgb, sar_), strict=True) if x is not None]
            total = sum(w for w, _ in parts)
            return sum(w * x for w, x in parts) / total

        def level(index):
            k = unique.index(index)
            return mix(None if out.levels_rgb is None else out.levels_rgb[k],
                       None if out.levels_sar is None else out.levels_sar[k])

        rows, cols = out.grid
        grid = lambda x: x.reshape(x.shape[0], rows, cols, x.shape[-1])
        features = [grid(level(i)) for i in self.levels] + [grid(mix(out.f_rgb, out.f_sar))]
        return {"features": tuple(features), "stride": self.patch_size}

    def __call__(self, inputs: Mapping[str, jax.Array | None], *,
                 present: jax.Array | None = None, rngs: nnx.Rngs | None = None) -> jax.Array:
        """inputs: role -> array (``optical``, ``sar``, ``valid``, and ``*_t2`` for the second
        date; a missing modality absent or None). ``rngs``: the head's dropout stream, needed in
        train mode (the model keeps no RNG state, so its state is plain arrays to checkpoint
        and shard). Returns [B, H, W, K] float32 logits."""
        first = inputs.get("optical")
        first = first if first is not None else inputs["sar"]
        image_size = tuple(first.shape[1:3])
        valid = inputs.get("valid")
        out = self.backbone(inputs.get("optical"), inputs.get("sar"), valid=valid,
                            present=present)
        if self.task.dates == 1:
            return self.head(out, image_size=image_size, rngs=rngs)
        out_t2 = self.backbone(inputs.get("optical_t2"), inputs.get("sar_t2"), valid=valid,
                               present=present)
        return self.head(out, out_t2, image_size=image_size, rngs=rngs)


def _modality_weights(z_rgb, z_sar, present) -> tuple:
    """Per-example weights [B, 1, 1] of the RGB and SAR features (presence, or 1)."""
    if present is None:
        return (1.0, 1.0)
    w = present.astype(jnp.float32)
    return (w[:, 0, None, None], w[:, 1, None, None])


def dataclasses_replace(head: HeadConfig, kind: str) -> HeadConfig:
    """The head config with the task's kind when the config asks for the default UPerNet
    (a linear probe stays linear for segmentation kinds)."""
    if head.kind == "linear" and kind == "upernet":
        return head
    return dataclasses.replace(head, kind=kind if head.kind in ("upernet", kind) else head.kind)
