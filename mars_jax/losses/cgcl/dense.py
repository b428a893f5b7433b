"""Dense CGCL (``cgcl_loss(impl="dense")``): every logits matrix materialised.

L_patch's M x M logits (M = B*N) are formed in one matmul, so memory grows as M^2: the
reference the streamed implementations (blockwise.py, sharded.py) are tested against, and the
fastest choice while the logits fit. Arguments are assumed valid (``common.validate``).
With a patch mask, excluded keys get the logit ``MASKED_LOGIT`` and excluded queries weight 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mars_jax.losses.cgcl.common import (
    HIGHEST,
    MASKED_LOGIT,
    HardNegatives,
    as_mask,
    hard_negative_bias,
    patch_metadata,
    unit_embeddings,
    valid_count,
)


def info_nce(queries: jax.Array, keys: jax.Array, labels: jax.Array, tau,
             precision=HIGHEST, bias: jax.Array | None = None,
             valid: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """Mean over queries of -log softmax(queries @ keys.T / tau + bias)[label]; rows unit-norm.

    The positive's bias is taken as 0: the bias weights negatives only. valid: (query, key)
    bool masks; the mean is then over the valid queries, and only valid keys are candidates
    (a valid query's positive always is one)."""
    logits = jnp.matmul(queries, keys.T, precision=precision) / tau
    positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    if bias is not None:
        logits = logits + bias
    if valid is None:
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)
    query_valid, key_valid = valid
    rows = jax.nn.logsumexp(jnp.where(key_valid[None, :], logits, MASKED_LOGIT), axis=1)
    rows = jnp.where(query_valid, rows - positive, 0)
    return jnp.sum(rows) / valid_count(query_valid, dtype=rows.dtype)


def dense_terms(z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch, tau_global, tau_cross,
                precision=HIGHEST, positions: jax.Array | None = None,
                hard_negatives: HardNegatives | None = None,
                valid: jax.Array | None = None) -> dict[str, jax.Array]:
    """The three terms with every logits matrix materialised (M x M for L_patch)."""
    b, n, _ = z_rgb.shape
    valid = as_mask(valid)
    r, s, g_r, g_s = unit_embeddings(z_rgb, z_sar, valid)
    bias = None
    if hard_negatives is not None:
        meta = patch_metadata(positions)
        bias = hard_negative_bias(meta, meta, hard_negatives, r.dtype)
    patches = images = cross_valid = None  # (query, key) masks of each term
    if valid is not None:
        rows, imgs = valid.reshape(-1), jnp.any(valid, axis=1)
        patches, images, cross_valid = (rows, rows), (imgs, imgs), (rows, imgs)
    patch = info_nce(r, s, jnp.arange(b * n), tau_patch, precision, bias, patches)
    global_ = info_nce(g_r, g_s, jnp.arange(b), tau_global, precision, valid=images)
    image_of_patch = jnp.repeat(jnp.arange(b), n)
    cross = 0.5 * (info_nce(r, g_s, image_of_patch, tau_cross, precision, valid=cross_valid)
                   + info_nce(s, g_r, image_of_patch, tau_cross, precision, valid=cross_valid))
    return {"patch": patch, "global": global_, "cross": cross}
