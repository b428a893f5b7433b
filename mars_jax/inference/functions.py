"""The functions a trained model serves, shared by the Python predictor and the exported
``serving/*.jaxexport`` artifacts, so both compute exactly the same thing.

``embed`` (any encoder): per-patch CGCL embeddings of each modality given (the projected
encoder outputs, the space CGCL aligns), their masked mean over the patches with data (the
global embedding), and with MMA the fused tokens averaged over the modalities given.
``predict`` (a task model): the head's float32 output ``[B, H, W, K]`` (logits,
regression values, an image in [0, 1], CenterNet's packed maps), or for registration the
dense descriptors of each image given.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from mars_jax.tasks import Task
from mars_jax.tasks.registration import model_descriptors

MODALITIES = ("optical", "sar")
EMBED_SETS: tuple[tuple[str, ...], ...] = (("optical",), ("sar",), ("optical", "sar"))


def set_name(modalities: Sequence[str]) -> str:
    return "_".join(modalities)


def _masked_mean(tokens: jax.Array, weights: jax.Array) -> jax.Array:
    """[B, h, w, D] tokens, [B, h, w] weights -> [B, D]; every patch when none has data."""
    w = weights.astype(jnp.float32)
    w = jnp.where(w.sum((1, 2), keepdims=True) > 0, w, 1.0)[..., None]
    return (tokens * w).sum((1, 2)) / w.sum((1, 2))


def embed(model, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """``model``: a ``MaRSEncoder`` or a ``TaskModel`` (its encoder embeds). ``inputs``:
    ``optical`` [B, H, W, 3] uint8 and / or ``sar`` [B, H, W, C] dB, and ``valid`` [B, H, W]
    (optional). Returns ``{m}`` [B, h, w, D_e] and ``global_{m}`` [B, D_e] per modality m
    given, ``patch_valid`` [B, h, w] and, when the encoder has MMA layers, ``fused``
    [B, h, w, D] and ``global_fused`` [B, D]."""
    encoder = getattr(model, "encoder", model)
    fused = encoder.config.mma_layers > 0
    optical, sar = inputs.get("optical"), inputs.get("sar")
    out = encoder.encode(optical, sar, valid=inputs.get("valid"), fuse=fused)
    rows, cols = out.grid
    grid = lambda x: x.reshape(x.shape[0], rows, cols, x.shape[-1])
    patch_valid = out.patch_valid.reshape(-1, rows, cols)
    result = {"patch_valid": patch_valid}
    for name, tokens in (("optical", out.e_rgb), ("sar", out.e_sar)):
        if tokens is not None:
            result[name] = grid(tokens.astype(jnp.float32))
            result[f"global_{name}"] = _masked_mean(result[name], patch_valid)
    if fused:
        parts = [grid(f.astype(jnp.float32)) for f in (out.f_rgb, out.f_sar) if f is not None]
        result["fused"] = sum(parts) / len(parts)
        result["global_fused"] = _masked_mean(result["fused"], patch_valid)
    return result


def roles(task: Task, modalities: Sequence[str]) -> tuple[str, ...]:
    """The model's input roles for these modalities (``*_t2`` for a second date)."""
    return tuple(role for role in task.inputs if role.removesuffix("_t2") in modalities)


def predict_sets(task: Task, trained: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The modality sets a task model predicts from: registration one image at a time;
    other tasks every non-empty subset of the modalities it was trained on and reads."""
    usable = [m for m in MODALITIES if m in trained and m in task.roles]
    if task.kind == "registration":
        return tuple((m,) for m in usable)
    return tuple(s for n in range(1, len(usable) + 1)
                 for s in itertools.combinations(usable, n))


def predict(model, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """``inputs``: role -> images (``predict_sets``' roles) and ``valid``. Returns
    ``{"outputs": [B, H, W, K]}``; registration ``{m: [B, H/s, W/s, D]}`` per image."""
    if model.task.kind == "registration":
        return {m: model_descriptors(model, inputs[m], m, inputs.get("valid")).astype(
            jnp.float32) for m in MODALITIES if m in inputs}
    return {"outputs": model(dict(inputs)).astype(jnp.float32)}


SERVED = {"embed": embed, "predict": predict}  # the serving functions' kinds
