"""Modality Alignment Score (MAS), the MaRS paper's measure of RGB / SAR patch alignment."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mars_jax.losses.cgcl.common import (
    HIGHEST,
    as_mask,
    check_pair,
    check_valid,
    compute_dtype,
    l2_normalize,
    valid_count,
    zero_invalid,
)


def modality_alignment_score(z_rgb: jax.Array, z_sar: jax.Array,
                             valid: jax.Array | None = None) -> jax.Array:
    """Modality Alignment Score: how much closer co-located RGB/SAR patches are than others.

    MAS = mean_{ij} s(z^R_ij, z^S_ij) - mean_{(ij) != (kl)} s(z^R_ij, z^S_kl), over all M = B*N
    patches of the batch. 0 when the modalities are unrelated (or collapsed to one vector),
    up to 2 when co-located patches coincide and others are opposite. Linear in M: the mean
    over all pairs is (sum_ij r_ij) . (sum_kl s_kl) / M^2, no M x M matrix.

    valid: optional [B, N] patch mask (as ``cgcl_loss``'s): the means are then over the M
    valid patches and their pairs, and MAS is 0 when fewer than 2 patches are valid.
    """
    check_pair(z_rgb, z_sar)
    check_valid(valid, z_rgb.shape)
    b, n, d = z_rgb.shape
    m = b * n
    if m < 2:
        raise ValueError(f"MAS needs at least 2 patches to have non-matching pairs, got {m}")
    dtype = compute_dtype(z_rgb)
    valid = as_mask(valid)
    r = l2_normalize(zero_invalid(z_rgb.astype(dtype), valid)).reshape(m, d)
    s = l2_normalize(zero_invalid(z_sar.astype(dtype), valid)).reshape(m, d)
    matched_sum = jnp.sum(r * s)  # invalid rows are zero: they add nothing to either sum
    all_sum = jnp.dot(r.sum(0), s.sum(0), precision=HIGHEST)
    if valid is None:
        return matched_sum / m - (all_sum - matched_sum) / (m * (m - 1))
    count = valid_count(valid, dtype=dtype)
    score = matched_sum / count - (all_sum - matched_sum) / jnp.maximum(count * (count - 1), 1)
    return jnp.where(count >= 2, score, 0)
