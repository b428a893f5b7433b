"""CenterNet's detection loss (Zhou et al. 2019), on fixed shapes.

Predictions (``models.detection.CenterNetHead``): heatmap logits ``x`` [B, h, w, K], size and
offset maps [B, h, w, 2]. Targets (``tasks.centernet.encode_targets``, batched): the Gaussian
heatmap ``y`` [B, h, w, K] (1 at each object's centre cell), and per object slot m < M
(``max_objects``) the flat centre cell ``indices`` [B, M] (row * w + col), ``size`` and
``offset`` [B, M, 2] and ``mask`` [B, M] (1 for a real object, 0 for padding).

Heatmap: the penalty-reduced pixel-wise focal loss, with p = sigmoid(x), alpha = 2, beta = 4,

    L_hm = -1/max(1, N) * sum_cells { (1 - p)^alpha log p                  if y = 1
                                    { (1 - y)^beta p^alpha log(1 - p)      otherwise

over the whole batch, N = the number of objects in the batch (sum of ``mask``; CenterNet
counts the cells with y = 1, the same unless two objects of one class share a centre cell).
log p and log(1 - p) are log_sigmoid(x) and log_sigmoid(-x), exact where CenterNet clamps p to
[1e-4, 1 - 1e-4].

Size and offset: L1 at the object centres, the mean over the real objects' coordinates
(CenterNet's RegL1Loss: the sum over masked coordinates / (2 N)), 0 without objects:

    L = L_hm + 0.1 L_size + 1.0 L_offset       (CenterNet's weights)

Padding slots are zeroed before any arithmetic, so whatever they hold reaches neither the loss
nor the gradient. Everything is computed in float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

FOCAL_ALPHA = 2.0
FOCAL_BETA = 4.0
SIZE_WEIGHT = 0.1
OFFSET_WEIGHT = 1.0


def focal_heatmap_loss(logits: jax.Array, target: jax.Array, num_objects: jax.Array, *,
                       alpha: float = FOCAL_ALPHA, beta: float = FOCAL_BETA) -> jax.Array:
    """CenterNet's penalty-reduced focal loss (module docstring), a float32 scalar."""
    if logits.shape != target.shape:
        raise ValueError(f"heatmap logits {tuple(logits.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    x = logits.astype(jnp.float32)
    y = target.astype(jnp.float32)
    p = jax.nn.sigmoid(x)
    positive = y >= 1.0
    pos = jnp.where(positive, (1.0 - p) ** alpha * jax.nn.log_sigmoid(x), 0.0)
    neg = jnp.where(positive, 0.0,
                    (1.0 - y) ** beta * p ** alpha * jax.nn.log_sigmoid(-x))
    return -(pos.sum() + neg.sum()) / jnp.maximum(1.0, num_objects.astype(jnp.float32))


def gather_at(maps: jax.Array, indices: jax.Array) -> jax.Array:
    """``maps`` [B, h, w, C] at the flat cells ``indices`` [B, M] -> [B, M, C]."""
    b, h, w, c = maps.shape
    flat = maps.reshape(b, h * w, c)
    return jnp.take_along_axis(flat, indices.astype(jnp.int32)[..., None], axis=1,
                               mode="clip")


def masked_l1_at(maps: jax.Array, indices: jax.Array, target: jax.Array,
                 mask: jax.Array) -> jax.Array:
    """Mean |maps at indices - target| over the coordinates of the masked-in objects (0 if
    none)."""
    keep = mask.astype(bool)[..., None]
    pred = gather_at(maps.astype(jnp.float32), indices)
    diff = jnp.where(keep, pred - jnp.where(keep, target.astype(jnp.float32), 0.0), 0.0)
    count = keep.sum() * pred.shape[-1]
    return jnp.abs(diff).sum() / jnp.maximum(1.0, count.astype(jnp.float32))


def centernet_loss(outputs: Mapping[str, jax.Array], targets: Mapping[str, jax.Array], *,
                   size_weight: float = SIZE_WEIGHT, offset_weight: float = OFFSET_WEIGHT,
                   alpha: float = FOCAL_ALPHA, beta: float = FOCAL_BETA) -> dict[str, jax.Array]:
    """The weighted CenterNet loss -> {"loss", "heatmap", "size", "offset", "objects"}
    (float32 scalars; "objects" the number N normalising them)."""
    mask = targets["mask"].astype(bool)
    num_objects = mask.sum().astype(jnp.float32)
    hm = focal_heatmap_loss(outputs["heatmap"], targets["heatmap"], num_objects, alpha=alpha,
                            beta=beta)
    size = masked_l1_at(outputs["size"], targets["indices"], targets["size"], mask)
    offset = masked_l1_at(outputs["offset"], targets["indices"], targets["offset"], mask)
    total = hm + size_weight * size + offset_weight * offset
    return {"loss": total, "heatmap": hm, "size": size, "offset": offset,
            "objects": num_objects}
