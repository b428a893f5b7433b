"""Modality Alignment Score (MAS), the MaRS paper's measure of RGB / SAR patch alignment."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mars_jax.losses.cgcl.common import HIGHEST, check_pair, compute_dtype, l2_normalize


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
