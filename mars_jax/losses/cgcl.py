"""Cross-Granularity Contrastive Learning (CGCL), the MaRS paper's three InfoNCE terms.

With s = cosine similarity, z^R, z^S in R^{B x N x D} the (visible) patch embeddings of the
two modalities, g_i = mean_j z_ij the image embeddings and M = B*N:

  L_patch  = -1/M sum_{ij} log softmax_{kl}( s(z^R_ij, z^S_kl) / tau_p )  at (k, l) = (i, j)
  L_global = -1/B sum_i    log softmax_k   ( s(g^R_i,  g^S_k)  / tau_g )  at k = i
  L_cross  = 1/(2M) sum_{ij} [ -log softmax_k s(z^R_ij, g^S_k)/tau_c  - log softmax_k
                               s(z^S_ij, g^R_k)/tau_c ]                    at k = i

Negatives span the whole batch given (all M SAR patches for L_patch). The dense formulation
here materialises the M x M patch logits; ``impl="blockwise"`` (cgcl_blockwise.py) streams them
with memory linear in M, for global batches at scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def compute_dtype(x: jax.Array) -> jnp.dtype:
    """float32 for bf16 / fp16 / fp32 inputs, float64 for float64 ones (gradient checks)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps): cosine similarity becomes a dot product; zero vectors stay zero."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def info_nce(queries: jax.Array, keys: jax.Array, labels: jax.Array, tau: float,
             precision=HIGHEST) -> jax.Array:
    """Mean over queries of -log softmax(queries @ keys.T / tau)[label]; rows unit-norm."""
    logits = jnp.matmul(queries, keys.T, precision=precision) / tau
    positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def check_pair(z_rgb: jax.Array, z_sar: jax.Array) -> None:
    if z_rgb.ndim != 3 or z_rgb.shape != z_sar.shape:
        raise ValueError(
            "CGCL needs z_rgb and z_sar of one shape [B, N, D], got "
            f"{tuple(z_rgb.shape)} and {tuple(z_sar.shape)}")
    if 0 in z_rgb.shape:
        raise ValueError(f"CGCL got an empty embedding batch of shape {tuple(z_rgb.shape)}")


def check_temperatures(**temperatures: float) -> None:
    for name, tau in temperatures.items():
        if not tau > 0:
            raise ValueError(f"{name} must be positive, got {tau}")


def unit_embeddings(z_rgb: jax.Array, z_sar: jax.Array):
    """Unit patch rows r, s [B*N, D] and unit image embeddings g_r, g_s [B, D] (g_i = mean_j
    z_ij, then normalised), in the compute dtype: cosine similarities become dot products."""
    dtype = compute_dtype(z_rgb)
    zr, zs = z_rgb.astype(dtype), z_sar.astype(dtype)
    b, n, d = zr.shape
    r = l2_normalize(zr).reshape(b * n, d)
    s = l2_normalize(zs).reshape(b * n, d)
    return r, s, l2_normalize(jnp.mean(zr, axis=1)), l2_normalize(jnp.mean(zs, axis=1))


def cgcl_loss(
    z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch: float = 0.05, tau_global: float = 0.07,
    tau_cross: float = 0.1, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0,
    precision=HIGHEST, impl: str = "dense", chunk_size: int = 4096, key_dtype=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(alpha*patch + beta*global + gamma*cross, {"patch", "global", "cross"})``.

    z_rgb, z_sar: [B, N, D], any float dtype; computed in float32 (float64 stays float64).
    ``impl="blockwise"`` streams the logits in ``chunk_size`` blocks with recomputation in the
    backward pass (memory linear in B*N; see cgcl_blockwise.py), optionally with ``key_dtype``
    matmul operands; ``"dense"`` materialises them (``precision`` applies to it).
    """
    if impl == "blockwise":
        from mars_jax.losses.cgcl_blockwise import blockwise_cgcl_terms

        terms = blockwise_cgcl_terms(z_rgb, z_sar, tau_patch=tau_patch, tau_global=tau_global,
                                     tau_cross=tau_cross, chunk_size=chunk_size,
                                     key_dtype=key_dtype)
        total = alpha * terms["patch"] + beta * terms["global"] + gamma * terms["cross"]
        return total, terms
    if impl != "dense":
        raise ValueError(f"CGCL impl must be 'dense' or 'blockwise', got {impl!r}")
    check_pair(z_rgb, z_sar)
    check_temperatures(tau_patch=tau_patch, tau_global=tau_global, tau_cross=tau_cross)
    b, n, _ = z_rgb.shape
    r, s, g_r, g_s = unit_embeddings(z_rgb, z_sar)

    patch = info_nce(r, s, jnp.arange(b * n), tau_patch, precision)
    global_ = info_nce(g_r, g_s, jnp.arange(b), tau_global, precision)
    image_of_patch = jnp.repeat(jnp.arange(b), n)
    cross = 0.5 * (info_nce(r, g_s, image_of_patch, tau_cross, precision)
                   + info_nce(s, g_r, image_of_patch, tau_cross, precision))
    total = alpha * patch + beta * global_ + gamma * cross
    return total, {"patch": patch, "global": global_, "cross": cross}


def modality_alignment_score(z_rgb: jax.Array, z_sar: jax.Array) -> jax.Array:
    """Modality Alignment Score: how much closer co-located RGB/SAR patches are than others.

    MAS = mean_{ij} s(z^R_ij, z^S_ij) - mean_{(ij) != (kl)} s(z^R_ij, z^S_kl), over all M = B*N
    patches of the batch. 0 when the modalities are unrelated (or collapsed to one vector),
    up to 2 when co-located patches coincide and others are opposite. Linear in M: the mean
    over all pairs is (sum_ij r_ij) . (sum_kl s_kl) / M^2, no M x M matrix.
    """
    check_pair(z_rgb, z_sar)
    b, n, d = z_rgb.shape
    m = b * n
    if m < 2:
        raise ValueError(f"MAS needs at least 2 patches to have non-matching pairs, got {m}")
    dtype = compute_dtype(z_rgb)
    r = l2_normalize(z_rgb.astype(dtype)).reshape(m, d)
    s = l2_normalize(z_sar.astype(dtype)).reshape(m, d)
    matched_sum = jnp.sum(r * s)
    all_sum = jnp.dot(r.sum(0), s.sum(0), precision=HIGHEST)
    return matched_sum / m - (all_sum - matched_sum) / (m * (m - 1))
