"""CGCL over a batch sharded on data-parallel mesh axes, equal to the single-device loss.

Inside ``jax.shard_map`` each device normalises its own patches, all-gathers the SAR patch
keys (optionally in bf16) and the image embeddings of both modalities, and streams its local
queries against all of them (blockwise log-sum-exp, cgcl_blockwise.py). Each device returns its
partial sums; the means over the global batch are taken outside the shard_map, so no psum needs
a transpose rule and gradients flow back through the all-gathers as reduce-scatters.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from mars_jax.losses.cgcl import check_pair, compute_dtype, l2_normalize
from mars_jax.losses.cgcl_blockwise import _rounded, streaming_logsumexp


def _nce_sum(queries, keys, positives, tau, chunk_size, operand_dtype):
    """Sum (not mean) over local queries of -log softmax against all gathered keys."""
    q = queries / tau
    lse = streaming_logsumexp(q, keys, chunk_size, operand_dtype)
    positive = jnp.sum(_rounded(q, operand_dtype) * _rounded(positives, operand_dtype), axis=-1)
    return jnp.sum(lse - positive)


def sharded_cgcl_terms(
    z_rgb: jax.Array, z_sar: jax.Array, mesh: Mesh, *, axes: Sequence[str] = ("data", "fsdp"),
    tau_patch: float = 0.05, tau_global: float = 0.07, tau_cross: float = 0.1,
    chunk_size: int = 4096, key_dtype=None,
) -> dict[str, jax.Array]:
    """``{"patch", "global", "cross"}`` of ``cgcl_loss`` for [B, N, D] inputs whose batch is
    split over ``axes`` of ``mesh`` (other axes replicate). B must divide over ``axes``."""
    check_pair(z_rgb, z_sar)
    axes = tuple(axes)
    shards = int(np.prod([mesh.shape[a] for a in axes]))
    b, n, _ = z_rgb.shape
    if b % shards:
        raise ValueError(f"batch {b} does not divide over mesh axes {axes} ({shards} shards)")
    dtype = compute_dtype(z_rgb)
    operand = jnp.dtype(key_dtype) if key_dtype is not None else jnp.dtype(dtype)

    def local(zr, zs):
        zr, zs = zr.astype(dtype), zs.astype(dtype)
        lb, ln, d = zr.shape
        r = l2_normalize(zr).reshape(lb * ln, d)
        s = l2_normalize(zs).reshape(lb * ln, d)
        g_r, g_s = l2_normalize(zr.mean(1)), l2_normalize(zs.mean(1))
        s_all = jax.lax.all_gather(s.astype(operand), axes, tiled=True)
        g_r_all = jax.lax.all_gather(g_r, axes, tiled=True)
        g_s_all = jax.lax.all_gather(g_s, axes, tiled=True)
        own_s = jnp.repeat(g_s, ln, axis=0)  # each patch's own image, other modality
        own_r = jnp.repeat(g_r, ln, axis=0)
        sums = jnp.stack([
            _nce_sum(r, s_all, s, tau_patch, chunk_size, operand),
            _nce_sum(g_r, g_s_all, g_s, tau_global, chunk_size, operand),
            _nce_sum(r, g_s_all, own_s, tau_cross, chunk_size, operand)
            + _nce_sum(s, g_r_all, own_r, tau_cross, chunk_size, operand),
        ])
        return sums[None]  # [1, 3] per device

    partial = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(axes),) * 2,
                            out_specs=PartitionSpec(axes), check_vma=False)(z_rgb, z_sar)
    patch, global_, cross = jnp.sum(partial, axis=0)
    return {"patch": patch / (b * n), "global": global_ / b, "cross": cross / (2 * b * n)}
