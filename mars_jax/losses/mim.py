"""Masked image modelling loss: reconstruct the masked patches' pixels."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize_patches(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Per-patch standardisation of MIM targets (MAE's ``norm_pix_loss``)."""
    mean = jnp.mean(patches, axis=-1, keepdims=True)
    var = jnp.var(patches, axis=-1, keepdims=True)
    return (patches - mean) * jax.lax.rsqrt(var + eps)


def mim_loss(
    pred: jax.Array, target: jax.Array, weights: jax.Array, *, norm_pix: bool = True,
    loss_type: str = "l2", eps: float = 1e-6,
) -> jax.Array:
    """Mean per-patch reconstruction error over the patches with weight (1 = masked patch).

    pred, target: [B, N, K] (K = P*P*C); weights: [B, N], normally the MAE mask, optionally
    times a per-patch validity. The per-patch error is the mean over K of (pred - t)^2 (l2)
    or |pred - t| (l1), with t the per-patch-normalised target when ``norm_pix``.
    Returns 0 when no patch has weight.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred and target must be one [B, N, K] shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if tuple(weights.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"weights must be [B, N] = {tuple(pred.shape[:2])}, got "
                         f"{tuple(weights.shape)}")
    if loss_type not in ("l1", "l2"):
        raise ValueError(f"loss_type must be 'l1' or 'l2', got {loss_type!r}")
    dtype = jnp.promote_types(pred.dtype, jnp.float32)
    pred, target, weights = pred.astype(dtype), target.astype(dtype), weights.astype(dtype)
    if norm_pix:
        target = normalize_patches(target, eps)
    diff = pred - target
    per_patch = jnp.mean(jnp.square(diff) if loss_type == "l2" else jnp.abs(diff), axis=-1)
    total_weight = jnp.sum(weights)
    return jnp.where(total_weight > 0,
                     jnp.sum(per_patch * weights) / jnp.maximum(total_weight, 1e-12), 0.0)
