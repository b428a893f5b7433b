"""CGCL over a batch sharded on data-parallel mesh axes, equal to the single-device loss.

Inside ``jax.shard_map`` each device normalises its own patches and streams its local queries
against every key of the global batch (blockwise log-sum-exp, cgcl_blockwise.py). The SAR patch
keys of L_patch reach it in one of two ways:

  keys="gather": one all-gather (optionally in bf16); simple, O(M D) key memory per device;
  keys="ring":   the key shards travel around a ring of ``ppermute``s, one shard per step, and
                 in the backward pass each shard's gradient travels with it and arrives home
                 complete after a full turn: O(M D / devices) key memory per device.

The image embeddings (B x D, small) are all-gathered. Each device returns partial sums; the
means over the global batch are taken outside the shard_map, so no psum needs a transpose rule
and gradients flow back through the collectives.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from mars_jax.losses.cgcl import check_pair, check_temperatures, compute_dtype, unit_embeddings
from mars_jax.losses.cgcl_blockwise import (
    _block_sizes,
    _rounded,
    _streaming_lse_bwd,
    _streaming_lse_fwd,
    _to_blocks,
    streaming_logsumexp,
)


def _shift(x: jax.Array, axes: tuple[str, ...], shards: int) -> jax.Array:
    """Passes x to the next device of the ring over ``axes``."""
    return jax.lax.ppermute(x, axes, perm=[(i, (i + 1) % shards) for i in range(shards)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def ring_logsumexp(q: jax.Array, k: jax.Array, axes: tuple[str, ...], shards: int,
                   chunk_size: int, operand_dtype) -> jax.Array:
    """lse_i over the keys of every device of the ring (inside shard_map); k is the local shard."""
    return _ring_fwd(q, k, axes, shards, chunk_size, operand_dtype)[0]


def _ring_fwd(q, k, axes, shards, chunk_size, operand_dtype):
    def step(carry, _):
        lse, shard = carry
        block = _streaming_lse_fwd(q, shard, chunk_size, operand_dtype)[0]
        return (jnp.logaddexp(lse, block), _shift(shard, axes, shards)), None

    init = (jnp.full(q.shape[:1], -jnp.inf, q.dtype), k)
    (lse, _), _ = jax.lax.scan(step, init, None, length=shards)
    return lse, (q, k, lse)


def _ring_bwd(axes, shards, chunk_size, operand_dtype, residuals, g):
    """Each visiting key shard gets this device's softmax gradient, computed from the global
    lse, and carries its accumulated gradient along; after a full turn both are home."""
    q, k, lse = residuals
    q_op = q.astype(operand_dtype)
    lse_blocks = _to_blocks(lse, _block_sizes(q, k, chunk_size)[0])

    def step(carry, _):
        dq, shard, d_shard = carry
        dq_part, dk_part = _streaming_lse_bwd(
            chunk_size, operand_dtype, (q_op, shard.astype(operand_dtype), lse_blocks), g)
        return (dq + dq_part, _shift(shard, axes, shards),
                _shift(d_shard + dk_part, axes, shards)), None

    init = (jnp.zeros(q.shape, lse.dtype), k, jnp.zeros(k.shape, lse.dtype))
    (dq, _, dk), _ = jax.lax.scan(step, init, None, length=shards)
    return dq.astype(q.dtype), dk.astype(k.dtype)


ring_logsumexp.defvjp(_ring_fwd, _ring_bwd)


def _nce_sum(queries, keys, positives, tau, chunk_size, operand_dtype, ring=None):
    """Sum (not mean) over local queries of -log softmax against all keys: ``keys`` holds them
    all, or with ``ring=(axes, shards)`` this device's shard of them."""
    q = queries / tau
    if ring is None:
        lse = streaming_logsumexp(q, keys, chunk_size, operand_dtype)
    else:
        lse = ring_logsumexp(q, keys, *ring, chunk_size, operand_dtype)
    positive = jnp.sum(_rounded(q, operand_dtype) * _rounded(positives, operand_dtype), axis=-1)
    return jnp.sum(lse - positive)


def sharded_cgcl_terms(
    z_rgb: jax.Array, z_sar: jax.Array, mesh: Mesh, *, axes: Sequence[str] = ("data", "fsdp"),
    tau_patch: float = 0.05, tau_global: float = 0.07, tau_cross: float = 0.1,
    chunk_size: int = 4096, key_dtype=None, keys: str = "gather",
) -> dict[str, jax.Array]:
    """``{"patch", "global", "cross"}`` of ``cgcl_loss`` for [B, N, D] inputs whose batch is
    split over ``axes`` of ``mesh`` (other axes replicate). B must divide over ``axes``."""
    check_pair(z_rgb, z_sar)
    check_temperatures(tau_patch=tau_patch, tau_global=tau_global, tau_cross=tau_cross)
    if keys not in ("gather", "ring"):
        raise ValueError(f"keys must be 'gather' or 'ring', got {keys!r}")
    axes = tuple(axes)
    shards = int(np.prod([mesh.shape[a] for a in axes]))
    b, n, _ = z_rgb.shape
    if b % shards:
        raise ValueError(f"batch {b} does not divide over mesh axes {axes} ({shards} shards)")
    dtype = compute_dtype(z_rgb)
    operand = jnp.dtype(key_dtype) if key_dtype is not None else jnp.dtype(dtype)

    def local(zr, zs):
        ln = zr.shape[1]
        r, s, g_r, g_s = unit_embeddings(zr, zs)
        if keys == "ring":
            patch_keys, ring = s.astype(operand), (axes, shards)
        else:
            patch_keys, ring = jax.lax.all_gather(s.astype(operand), axes, tiled=True), None
        g_r_all = jax.lax.all_gather(g_r, axes, tiled=True)
        g_s_all = jax.lax.all_gather(g_s, axes, tiled=True)
        own_s = jnp.repeat(g_s, ln, axis=0)  # each patch's own image, other modality
        own_r = jnp.repeat(g_r, ln, axis=0)
        sums = jnp.stack([
            _nce_sum(r, patch_keys, s, tau_patch, chunk_size, operand, ring),
            _nce_sum(g_r, g_s_all, g_s, tau_global, chunk_size, operand),
            _nce_sum(r, g_s_all, own_s, tau_cross, chunk_size, operand)
            + _nce_sum(s, g_r_all, own_r, tau_cross, chunk_size, operand),
        ])
        return sums[None]  # [1, 3] per device

    partial = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(axes),) * 2,
                            out_specs=PartitionSpec(axes), check_vma=False)(z_rgb, z_sar)
    patch, global_, cross = jnp.sum(partial, axis=0)
    return {"patch": patch / (b * n), "global": global_ / b, "cross": cross / (2 * b * n)}
