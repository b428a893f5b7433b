"""Dense CGCL (``cgcl_loss(impl="dense")``): every logits matrix materialised.

L_patch's M x M logits (M = B*N) are formed in one matmul, so memory grows as M^2: the
reference the streamed implementations (blockwise.py, sharded.py) are tested against, and the
fastest choice while the logits fit. Arguments are assumed valid (``common.validate``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mars_jax.losses.cgcl.common import (
    HIGHEST,
    HardNegatives,
    hard_negative_bias,
    patch_metadata,
    unit_embeddings,
)


def info_nce(queries: jax.Array, keys: jax.Array, labels: jax.Array, tau,
             precision=HIGHEST, bias: jax.Array | None = None) -> jax.Array:
    """Mean over queries of -log softmax(queries @ keys.T / tau + bias)[label]; rows unit-norm.

    The positive's bias is taken as 0: the bias weights negatives only."""
    logits = jnp.matmul(queries, keys.T, precision=precision) / tau
    positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    if bias is not None:
        logits = logits + bias
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def dense_terms(z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch, tau_global, tau_cross,
                precision=HIGHEST, positions: jax.Array | None = None,
                hard_negatives: HardNegatives | None = None) -> dict[str, jax.Array]:
    """The three terms with every logits matrix materialised (M x M for L_patch)."""
    b, n, _ = z_rgb.shape
    r, s, g_r, g_s = unit_embeddings(z_rgb, z_sar)
    bias = None
    if hard_negatives is not None:
        meta = patch_metadata(positions)
        bias = hard_negative_bias(meta, meta, hard_negatives, r.dtype)
    patch = info_nce(r, s, jnp.arange(b * n), tau_patch, precision, bias)
    global_ = info_nce(g_r, g_s, jnp.arange(b), tau_global, precision)
    image_of_patch = jnp.repeat(jnp.arange(b), n)
    cross = 0.5 * (info_nce(r, g_s, image_of_patch, tau_cross, precision)
                   + info_nce(s, g_r, image_of_patch, tau_cross, precision))
    return {"patch": patch, "global": global_, "cross": cross}
