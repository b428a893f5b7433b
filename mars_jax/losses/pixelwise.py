"""Dense-task losses: per-pixel cross-entropy and regression, averaged over the kept pixels.

Cross-entropy (semantic segmentation, change detection), logits ``[B, H, W, K]``, labels
``[B, H, W]``. A pixel i is kept when ``labels != ignore_index``, ``0 <= label < K`` and
``valid`` (when given); with ``logp = log_softmax(logits)`` (in float32), ``w`` the class
weights (all 1 when not given) and ``eps`` the label smoothing:

    loss_i = (1 - eps) * w[y_i] * (-logp_i[y_i]) + eps / K * sum_k w[k] * (-logp_i[k])
    loss   = sum_{i kept} loss_i / sum_{i kept} w[y_i]

This is torch's ``CrossEntropyLoss(weight=w, ignore_index=..., label_smoothing=eps)`` with
``reduction="mean"`` (the weighted mean, normalised by the kept pixels' label weights, for the
smoothing term too), except that labels outside ``[0, K)`` are dropped instead of raising.

Regression (height, continuous maps), pred ``[B, H, W]`` or ``[B, H, W, 1]``, target
``[B, H, W]``, ``d = pred - target``, the mean over the pixels of ``mask`` of

    l1: |d|      l2: d^2      smooth_l1: 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta

(torch's ``SmoothL1Loss``; ``beta = 0`` is l1).

Both return ``(loss, pixels)``: a float32 scalar and the int32 number of pixels it averages.
With no kept pixel (or a zero total weight) the loss is 0 with zero gradient, never NaN.
Dropped pixels are replaced by zeros before any arithmetic, so NaN or inf there (no-data
heights, padding) reaches neither the loss nor the gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

REGRESSION_KINDS = ("l1", "l2", "smooth_l1")


def _safe_mean(total: jax.Array, count: jax.Array) -> jax.Array:
    """``total / count``, 0 (with zero gradient) when ``count`` is 0."""
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def masked_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, valid: jax.Array | None = None,
    ignore_index: int | None = 255, class_weights: jax.Array | None = None,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over the kept pixels (see the module docstring).

    logits: [B, H, W, K] (any float dtype; computed in float32); labels: [B, H, W] integer;
    valid: optional [B, H, W] bool; ignore_index: a label value to drop (None: none);
    class_weights: optional [K]; label_smoothing in [0, 1]. Any leading shape works as long
    as logits = labels.shape + (K,). Returns (loss float32 scalar, kept pixels int32).
    """
    if logits.ndim < 1 or tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(f"logits must be labels.shape + (K,), got logits "
                         f"{tuple(logits.shape)} and labels {tuple(labels.shape)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if valid is not None and tuple(valid.shape) != tuple(labels.shape):
        raise ValueError(f"valid must be {tuple(labels.shape)}, got {tuple(valid.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    num_classes = logits.shape[-1]
    if class_weights is not None and tuple(jnp.shape(class_weights)) != (num_classes,):
        raise ValueError(f"class_weights must be [K] = [{num_classes}], got "
                         f"{tuple(jnp.shape(class_weights))}")

    keep = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        keep &= labels != ignore_index
    if valid is not None:
        keep &= valid.astype(bool)
    safe_labels = jnp.where(keep, labels, 0).astype(jnp.int32)
    # Dropped pixels' logits never enter the arithmetic: garbage there cannot become NaN.
    logits = jnp.where(keep[..., None], logits.astype(jnp.float32), 0.0)
    neg_logp = -jax.nn.log_softmax(logits, axis=-1)
    nll = jnp.take_along_axis(neg_logp, safe_labels[..., None], axis=-1)[..., 0]

    if class_weights is None:
        label_weight = keep.astype(jnp.float32)
        smooth = jnp.mean(neg_logp, axis=-1)
    else:
        class_weights = jnp.asarray(class_weights, jnp.float32)
        label_weight = jnp.where(keep, class_weights[safe_labels], 0.0)
        smooth = jnp.sum(neg_logp * class_weights, axis=-1) / num_classes
    per_pixel = (1.0 - label_smoothing) * label_weight * nll
    if label_smoothing:
        per_pixel += label_smoothing * jnp.where(keep, smooth, 0.0)
    loss = _safe_mean(jnp.sum(per_pixel), jnp.sum(label_weight))
    return loss.astype(jnp.float32), jnp.sum(keep, dtype=jnp.int32)


def masked_regression_loss(
    pred: jax.Array, target: jax.Array, mask: jax.Array, *, kind: str = "l1",
    beta: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Mean per-pixel regression error over ``mask`` (see the module docstring).

    pred: [B, H, W] or [B, H, W, 1]; target, mask: [B, H, W] (mask: nonzero = counted);
    kind: "l1", "l2" or "smooth_l1" (with ``beta`` >= 0). Computed in float32 or wider.
    Returns (loss scalar, masked pixels int32).
    """
    if pred.ndim == target.ndim + 1 and pred.shape[-1] == 1:
        pred = pred[..., 0]
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred must be target.shape (+ (1,)), got pred {tuple(pred.shape)} "
                         f"and target {tuple(target.shape)}")
    if tuple(mask.shape) != tuple(target.shape):
        raise ValueError(f"mask must be {tuple(target.shape)}, got {tuple(mask.shape)}")
    if kind not in REGRESSION_KINDS:
        raise ValueError(f"kind must be one of {REGRESSION_KINDS}, got {kind!r}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    dtype = jnp.promote_types(jnp.promote_types(pred.dtype, target.dtype), jnp.float32)
    mask = mask.astype(bool)
    diff = jnp.where(mask, pred.astype(dtype), 0) - jnp.where(mask, target.astype(dtype), 0)
    if kind == "l2":
        error = jnp.square(diff)
    elif kind == "l1" or beta == 0:
        error = jnp.abs(diff)
    else:
        absolute = jnp.abs(diff)
        error = jnp.where(absolute < beta, 0.5 * jnp.square(diff) / beta, absolute - 0.5 * beta)
    pixels = jnp.sum(mask, dtype=jnp.int32)
    return _safe_mean(jnp.sum(error), pixels.astype(dtype)), pixels
