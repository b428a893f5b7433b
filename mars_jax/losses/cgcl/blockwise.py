"""Blockwise CGCL: the three terms of ``cgcl_loss`` with memory linear in M = B*N.

Every CGCL term is an InfoNCE sum over queries q_i (unit rows) against keys k_l with a scale
c = 1/tau and an optional logit bias b_il (hard negatives):

  L = sum_i ( lse_i - c q_i . k_pos(i) ),      lse_i = log sum_l exp(c q_i . k_l + b_il)

L_patch has M x M logits (q = RGB patches, k = SAR patches); L_cross has M x B (patches against
the other modality's image embeddings); L_global has B x B. None is materialised: queries and
keys are cut into blocks of ``chunk_size`` rows (zero-padded; padded keys get the logit
``MASKED_LOGIT``, padded query rows are dropped), and each query block keeps a running
log-sum-exp over the key blocks, so only one [chunk, chunk] logits block lives at a time:

  m' = max(m, max_l x_l),    s' = s * exp(m - m') + sum_l exp(x_l - m'),    lse = m + log s

The backward pass recomputes each block from the operands and the per-row lse (O(M)
residual): p_il = exp(logit_il - lse_i) is the row softmax and, with g_i the cotangent of row
i's loss and w_il = g_i p_il,

  dq_i = c (sum_l w_il k_l - g_i k_pos(i)),   dk_l = c sum_i w_il q_i - c sum_{i: pos(i)=l} g_i q_i,
  dc   = sum_il w_il q_i . k_l - sum_i g_i q_i . k_pos(i)

(dc makes learnable temperatures work). The positive's part is added in float32 inside the
same block as the softmax part: the two nearly cancel when the loss is small.

A patch mask (``valid``) enters in two places only: excluded keys (invalid patches, images
without a valid patch) are masked like padding, travelling with their key blocks around a
ring, and excluded queries' rows count 0 in the sums (cotangent g_i = 0 in the backward pass).
Invalid patches are zeroed as they are normalised (``_unit_fwd``, no copy of the embeddings)
and their gradient is set to exactly 0; the image embeddings are means over the valid patches.

``local_cgcl_sums`` is one custom VJP for all three terms: its residuals are only the inputs
and the per-row lse; the backward pass recomputes the unit operands (one block of images at
a time, ``_unit_fwd`` / ``_unit_bwd``) and adds every term's gradient, one logits block at a
time, into one float32 buffer per modality. With a ring (inside ``jax.shard_map``) k is this
device's shard of the keys: the shards travel around a ring of ``ppermute``s, one block at a
time, and in the backward pass each shard's gradient travels with it and is home, complete,
after a full turn (sharded.py).

``key_dtype`` (e.g. bfloat16) is the matmul operand dtype: unit embeddings are stored in it (and
their gradients returned in it), products are accumulated in the compute dtype (float32, or
float64 for float64 inputs). The positive logit is formed from the same rounded operands, so it
stays consistent with its row's log-sum-exp. Only reverse-mode differentiation is defined.

``blockwise_terms`` assumes valid arguments (``cgcl_loss`` checks them); ``blockwise_cgcl_terms``
is the same with the checks (``common.validate``), for calling it directly.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.losses.cgcl.common import (
    HIGHEST,
    MASKED_LOGIT,
    NORM_EPS,
    HardNegatives,
    as_mask,
    compute_dtype,
    hard_negative_bias,
    inverse_temperatures,
    l2_normalize,
    patch_metadata,
    valid_count,
    validate,
    zero_invalid,
)


class Streaming(NamedTuple):
    """Static settings of one streamed log-sum-exp (hashable: a custom_vjp nondiff argument)."""

    chunk_size: int
    hard: HardNegatives | None = None
    ring: tuple[tuple[str, ...], int] | None = None  # (mesh axes, shards) of a key ring


# ------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------
def _to_blocks(x: jax.Array | None, size: int, fill=0) -> jax.Array | None:
    """[R, ...] -> [ceil(R / size), size, ...], ``fill`` rows appended: loops need equal blocks."""
    if x is None:
        return None
    pad = -x.shape[0] % size
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
    return x.reshape(-1, size, *x.shape[1:])


def _from_blocks(x: jax.Array, rows: int) -> jax.Array:
    """Inverse of ``_to_blocks``: drops the padded rows."""
    return x.reshape(-1, *x.shape[2:])[:rows]


def _take(x: jax.Array | None, i) -> jax.Array | None:
    """x[i], or None for an absent (None) operand such as metadata without hard negatives."""
    return None if x is None else x[i]


class _Keys(NamedTuple):
    """Key blocks [nk, Ck, D], their validity [nk, Ck] (False: padding or an excluded key) and
    metadata [nk, Ck, 3] (or None)."""

    blocks: jax.Array
    valid: jax.Array
    meta: jax.Array | None


def _key_blocks(k: jax.Array, k_meta: jax.Array | None, size: int,
                k_valid: jax.Array | None = None) -> _Keys:
    valid = jnp.ones((k.shape[0],), bool) if k_valid is None else k_valid
    return _Keys(_to_blocks(k, size), _to_blocks(valid, size), _to_blocks(k_meta, size, fill=-1))


def _block_sizes(q: jax.Array, k: jax.Array, chunk_size: int) -> tuple[int, int]:
    """Blocks no larger than the operands: a batch smaller than a chunk is one unpadded block."""
    return min(chunk_size, q.shape[0]), min(chunk_size, k.shape[0])


def _block_logits(q_blk, q_meta, keys: _Keys, j, scale, hard):
    """Raw products x = q . k and logits c x + b of query block vs key block j (MASKED_LOGIT
    for padded and excluded keys)."""
    k_blk = keys.blocks[j]
    x = jnp.matmul(q_blk, k_blk.T, precision=HIGHEST, preferred_element_type=scale.dtype)
    logits = scale * x
    if hard is not None:
        logits = logits + hard_negative_bias(q_meta, keys.meta[j], hard, scale.dtype)
    return x, k_blk, jnp.where(keys.valid[j][None, :], logits, MASKED_LOGIT)


def _lse_blocks(q_blocks, q_meta, keys: _Keys, scale, hard) -> jax.Array:
    """[nq, Cq] log-sum-exp of every query row over all key blocks (running max and sum)."""

    def row(args):
        q_blk, qm = args

        def step(j, carry):
            run_max, run_sum = carry
            logits = _block_logits(q_blk, qm, keys, j, scale, hard)[2]
            # Masked logits are finite, so new_max is too (no -inf - -inf), even in a row
            # without any valid key (all patches invalid: a row of weight 0).
            new_max = jnp.maximum(run_max, jnp.max(logits, axis=1))
            run_sum = (run_sum * jnp.exp(run_max - new_max)
                       + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1))
            return new_max, run_sum

        rows = q_blk.shape[0]
        init = (jnp.full((rows,), -jnp.inf, scale.dtype), jnp.zeros((rows,), scale.dtype))
        run_max, run_sum = jax.lax.fori_loop(0, keys.blocks.shape[0], step, init)
        return run_max + jnp.log(run_sum)

    return jax.lax.map(row, (q_blocks, q_meta))


def _matmul(a, b, operand, acc):
    return jnp.matmul(a.astype(operand), b, precision=HIGHEST, preferred_element_type=acc)


def _accumulate_grads(q_blocks, q_meta, keys: _Keys, scale, hard, lse, g, dq, dk, dscale,
                      positives=None):
    """Adds this key set's dq, dk, dc into the accumulators, one logits block at a time.

    ``positives`` ([nq, Cq] indices into these keys, given while they are the home keys) adds
    the positive logits' part, -c g k_pos to dq and -c g q to dk, in float32 before the block
    is stored: it nearly cancels the softmax part when the loss is small.
    """
    operand, acc = q_blocks.dtype, scale.dtype
    k_size = keys.blocks.shape[1]

    def row(i, carry):
        dq, dk, dscale = carry
        q_blk, qm, lse_blk, g_blk = q_blocks[i], _take(q_meta, i), lse[i], g[i]
        dq_blk = dq[i].astype(acc)
        if positives is not None:
            pos = positives[i]
            k_pos = keys.blocks[pos // k_size, pos % k_size]
            dscale = dscale - jnp.sum(g_blk * _row_dot(q_blk, k_pos, acc))
            dq_blk = dq_blk - (scale * g_blk)[:, None] * k_pos.astype(acc)
            dk = dk.at[pos // k_size, pos % k_size].add(
                -(scale * g_blk)[:, None] * q_blk.astype(acc))

        def step(j, carry):
            dq_blk, dk, dscale = carry
            x, k_blk, logits = _block_logits(q_blk, qm, keys, j, scale, hard)
            w = jnp.exp(logits - lse_blk[:, None]) * g_blk[:, None]
            dscale = dscale + jnp.sum(w * x)  # padded keys: w = 0 and x = 0
            w = w * scale
            return (dq_blk + _matmul(w, k_blk, operand, acc),
                    dk.at[j].add(_matmul(w.T, q_blk, operand, acc)), dscale)

        dq_blk, dk, dscale = jax.lax.fori_loop(0, keys.blocks.shape[0], step,
                                               (dq_blk, dk, dscale))
        return dq.at[i].set(dq_blk.astype(dq.dtype)), dk, dscale

    return jax.lax.fori_loop(0, q_blocks.shape[0], row, (dq, dk, dscale))


def _shift(tree, axes: tuple[str, ...], shards: int):
    """Passes every array of ``tree`` ([blocks, ...] each) to the next device of the ring over
    ``axes``, one block at a time: one block in flight instead of a second copy of the shard
    (bf16 keys, 1M patches over 8 devices: 1,099 instead of 1,291 MiB)."""
    perm = [(i, (i + 1) % shards) for i in range(shards)]

    def shift(x):
        def block(b, x):
            return x.at[b].set(jax.lax.ppermute(x[b], axes, perm=perm))

        return jax.lax.fori_loop(0, x.shape[0], block, x)

    return jax.tree.map(shift, tree)


# ------------------------------------------------------------------------------------------
# Streamed InfoNCE rows with a hand-written backward pass
# ------------------------------------------------------------------------------------------
def _ring_steps(settings: Streaming) -> tuple[int, callable]:
    if settings.ring is None:
        return 1, lambda tree: tree
    axes, shards = settings.ring
    return shards, functools.partial(_shift, axes=axes, shards=shards)


def _nce_fwd(q, k, scale, positives, q_meta, k_meta, settings, k_valid=None):
    q_size, k_size = _block_sizes(q, k, settings.chunk_size)
    q_blocks, qm_blocks = _to_blocks(q, q_size), _to_blocks(q_meta, q_size, fill=-1)
    pos_blocks = _to_blocks(positives, q_size)
    steps, shift = _ring_steps(settings)

    def positive_logits(args):
        q_blk, pos = args
        return scale * _row_dot(q_blk, jnp.take(k, pos, axis=0), scale.dtype)

    positive = jax.lax.map(positive_logits, (q_blocks, pos_blocks))

    def step(carry, _):
        lse, keys = carry
        part = _lse_blocks(q_blocks, qm_blocks, keys, scale, settings.hard)
        return (jnp.logaddexp(lse, part), shift(keys)), None

    init = (jnp.full(q_blocks.shape[:2], -jnp.inf, scale.dtype),
            _key_blocks(k, k_meta, k_size, k_valid))
    (lse, _), _ = jax.lax.scan(step, init, None, length=steps)
    # Residuals are O((Q + K) * D): the operands and the [nq, Cq] row lse (padded rows included;
    # they are finite since padded queries are zero).
    loss = _from_blocks(lse - positive, q.shape[0])
    return loss, (q, k, scale, positives, q_meta, k_meta, lse)


def _nce_grads(settings, q, k, scale, positives, q_meta, k_meta, lse, g, dq, dk,
               k_valid=None):
    """Adds this InfoNCE's gradients into the float32 accumulators dq [nq, Cq, D] (queries,
    blocked) and dk [nk, Ck, D] (home keys, blocked); returns them and d(scale)."""
    q_size, k_size = _block_sizes(q, k, settings.chunk_size)
    q_blocks, qm_blocks = _to_blocks(q, q_size), _to_blocks(q_meta, q_size, fill=-1)
    g_blocks = _to_blocks(g, q_size)  # padded query rows get cotangent 0: they add nothing
    steps, shift = _ring_steps(settings)
    accumulate = functools.partial(_accumulate_grads, q_blocks, qm_blocks, scale=scale,
                                   hard=settings.hard, lse=lse, g=g_blocks)
    keys = _key_blocks(k, k_meta, k_size, k_valid)
    # Step 0 holds the home keys, and with them the positives.
    dq, dk, dscale = accumulate(keys=keys, dq=dq, dk=dk, dscale=jnp.zeros((), scale.dtype),
                                positives=_to_blocks(positives, q_size))
    keys, dk = shift((keys, dk))

    def step(carry, _):
        dq, keys, dk, dscale = carry
        dq, dk, dscale = accumulate(keys=keys, dq=dq, dk=dk, dscale=dscale)
        keys, dk = shift((keys, dk))
        return (dq, keys, dk, dscale), None

    if steps > 1:  # after ``steps`` shifts every shard and its gradient are home
        (dq, _, dk, dscale), _ = jax.lax.scan(step, (dq, keys, dk, dscale), None,
                                              length=steps - 1)
    return dq, dk, dscale


def _grad_buffer(x: jax.Array, chunk_size: int, dtype) -> jax.Array:
    """A zero float accumulator in the blocked layout of ``x`` as queries or keys."""
    size = min(chunk_size, x.shape[0])
    return jnp.zeros((-(-x.shape[0] // size), size, x.shape[1]), dtype)




# ------------------------------------------------------------------------------------------
# Unit embeddings, one block of images at a time
# ------------------------------------------------------------------------------------------
def _row_dot(a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """Row-wise dot products accumulated in ``dtype`` (broadcasting over leading axes)."""
    return jnp.sum(a.astype(dtype) * b.astype(dtype), axis=-1)


def _image_group(images: int, patches: int, chunk_size: int) -> int:
    """Images per block: the largest divisor of ``images`` with at most ``chunk_size`` rows."""
    fits = [g for g in range(1, images + 1) if images % g == 0 and g * patches <= chunk_size]
    return max(fits, default=1)


def _normalise_group(z_grp, dtype, valid_grp=None):
    """z in ``dtype`` (invalid patches zeroed), its squared norm and 1 / max(||z||, eps), as
    ``l2_normalize``."""
    z = zero_invalid(z_grp.astype(dtype), valid_grp)
    sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
    return z, sq, jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS * NORM_EPS))


def _grouped(z, chunk_size):
    """[B, N, ...] -> [groups, images per group, N, ...] (None stays None)."""
    if z is None:
        return None
    b, n = z.shape[:2]
    return z.reshape(b // _image_group(b, n, chunk_size), -1, *z.shape[1:])


def _unit_fwd(z, operand, chunk_size, valid=None):
    """Unit rows and image means (sums over the patches / N) of z, with invalid patches zeroed
    block by block here rather than in a copy of z."""
    b, n, d = z.shape
    dtype = compute_dtype(z)

    def group(args):
        z_grp, valid_grp = args
        zf, _, inv = _normalise_group(z_grp, dtype, valid_grp)
        return (zf * inv).astype(operand), jnp.mean(zf, axis=1)

    rows, means = jax.lax.map(group, (_grouped(z, chunk_size), _grouped(valid, chunk_size)))
    return (rows.reshape(b * n, d), means.reshape(b, d)), z


def _unit_bwd(operand, chunk_size, z, cotangents, valid=None):
    """Transpose of ``_unit_fwd``; invalid patches' gradient is exactly 0 (whatever they hold)."""
    d_rows, d_means = cotangents
    b, n, d = z.shape
    dtype = compute_dtype(z)
    groups = _grouped(z, chunk_size)

    def group(args):
        z_grp, valid_grp, dr, dm = args
        zf, sq, inv = _normalise_group(z_grp, dtype, valid_grp)
        u, dr = zf * inv, dr.astype(dtype)
        # d(z / ||z||) = (dr - u (u . dr)) / ||z||; below eps the norm is the constant eps.
        radial = jnp.where(sq >= NORM_EPS * NORM_EPS,
                           jnp.sum(u * dr, axis=-1, keepdims=True), 0)
        dz = zero_invalid(inv * (dr - u * radial) + dm[:, None, :] / n, valid_grp)
        return dz.astype(z.dtype)

    dz = jax.lax.map(group, (groups, _grouped(valid, chunk_size), d_rows.reshape(groups.shape),
                             d_means.reshape(groups.shape[0], -1, d)))
    return (dz.reshape(b, n, d),)




# ------------------------------------------------------------------------------------------
# CGCL from streamed terms: partial sums over local queries (shared with sharded.py)
# ------------------------------------------------------------------------------------------
class Layout(NamedTuple):
    """Static settings of ``local_cgcl_sums`` (hashable: a custom_vjp nondiff argument)."""

    chunk_size: int
    operand: np.dtype
    hard: HardNegatives | None = None
    axes: tuple[str, ...] | None = None  # data axes the batch is split over (None: unsplit)
    shards: int = 1  # devices over ``axes``
    ring: bool = False  # pass the SAR patch keys around a ring instead of all-gathering them


def _gather(x, layout: Layout):
    if layout.axes is None or x is None:
        return x
    return jax.lax.all_gather(x, layout.axes, tiled=True)


def _scatter(x, layout: Layout):
    """Transpose of ``_gather``: each shard's rows of the summed gradient."""
    if layout.axes is None:
        return x
    return jax.lax.psum_scatter(x, layout.axes, scatter_dimension=0, tiled=True)


def _prepare(z_rgb, z_sar, meta, valid, layout: Layout):
    """Everything the three terms read: unit operands, gathered keys, positives' indices and,
    with a patch mask, which queries count and which keys are candidates."""
    b, n, _ = z_rgb.shape
    (r, mean_r), _ = _unit_fwd(z_rgb, layout.operand, layout.chunk_size, valid)
    (s, mean_s), _ = _unit_fwd(z_sar, layout.operand, layout.chunk_size, valid)
    rows_valid = image_valid = None
    if valid is not None:
        rows_valid, image_valid = valid.reshape(-1), jnp.any(valid, axis=1)

    def image_embeddings(mean_r, mean_s):
        if valid is not None:  # invalid patches are zero: n / count makes valid patches' means
            rescale = n / valid_count(valid, axis=1, dtype=mean_r.dtype)[:, None]
            mean_r, mean_s = mean_r * rescale, mean_s * rescale
        return (l2_normalize(mean_r).astype(layout.operand),
                l2_normalize(mean_s).astype(layout.operand))

    (g_r, g_s), image_vjp = jax.vjp(image_embeddings, mean_r, mean_s)
    first = 0 if layout.axes is None else jax.lax.axis_index(layout.axes) * b
    images = first + jnp.arange(b, dtype=jnp.int32)
    rows = jnp.arange(b * n, dtype=jnp.int32)
    ring = (layout.axes, layout.shards) if layout.ring else None
    patch = Streaming(layout.chunk_size, layout.hard, ring)
    if layout.ring:  # local keys travel; the positive of row i is local key i
        patch_keys, k_meta, patch_pos, patch_keys_valid = s, meta, rows, rows_valid
    else:
        patch_keys, k_meta, patch_pos = _gather(s, layout), _gather(meta, layout), first * n + rows
        patch_keys_valid = _gather(rows_valid, layout)
    return dict(r=r, s=s, g_r=g_r, g_s=g_s, g_r_all=_gather(g_r, layout),
                g_s_all=_gather(g_s, layout), images=images, image_of_row=jnp.repeat(images, n),
                patch=patch, patch_keys=patch_keys, k_meta=k_meta, patch_pos=patch_pos,
                image_vjp=image_vjp, plain=Streaming(layout.chunk_size), rows_valid=rows_valid,
                image_valid=image_valid, patch_keys_valid=patch_keys_valid,
                image_keys_valid=_gather(image_valid, layout))


def _valid_sum(rows: jax.Array, valid: jax.Array | None) -> jax.Array:
    """The sum of the valid queries' rows (every row without a mask)."""
    return jnp.sum(rows) if valid is None else jnp.sum(jnp.where(valid, rows, 0))


def _row_cotangents(ct: jax.Array, valid: jax.Array | None, rows: int, dtype) -> jax.Array:
    """Each row's cotangent: ``ct`` for the valid queries' rows, 0 for the others."""
    if valid is None:
        return jnp.full((rows,), ct, dtype)
    return jnp.where(valid, ct, 0).astype(dtype)


def _local_fwd(z_rgb, z_sar, scales, meta, valid, layout):
    x = _prepare(z_rgb, z_sar, meta, valid, layout)
    c_patch, c_global, c_cross = scales
    patch, res_p = _nce_fwd(x["r"], x["patch_keys"], c_patch, x["patch_pos"], meta,
                            x["k_meta"], x["patch"], x["patch_keys_valid"])
    global_, res_g = _nce_fwd(x["g_r"], x["g_s_all"], c_global, x["images"], None, None,
                              x["plain"], x["image_keys_valid"])
    cross_r, res_r = _nce_fwd(x["r"], x["g_s_all"], c_cross, x["image_of_row"], None, None,
                              x["plain"], x["image_keys_valid"])
    cross_s, res_s = _nce_fwd(x["s"], x["g_r_all"], c_cross, x["image_of_row"], None, None,
                              x["plain"], x["image_keys_valid"])
    rows_valid = x["rows_valid"]
    sums = jnp.stack([_valid_sum(patch, rows_valid), _valid_sum(global_, x["image_valid"]),
                      _valid_sum(cross_r, rows_valid) + _valid_sum(cross_s, rows_valid)])
    # Only the inputs and each row's log-sum-exp are kept: the unit operands are recomputed.
    lse = tuple(res[-1] for res in (res_p, res_g, res_r, res_s))
    return sums, (z_rgb, z_sar, scales, meta, valid, lse)


def _local_bwd(layout, residuals, ct):
    """All four InfoNCE backward passes add into two float32 accumulators, dr and ds, in the
    blocked layout of the patch rows; the SAR patch keys' gradient travels the ring in ds."""
    z_rgb, z_sar, scales, meta, valid, (lse_p, lse_g, lse_r, lse_s) = residuals
    x = _prepare(z_rgb, z_sar, meta, valid, layout)
    c_patch, c_global, c_cross = scales
    acc, chunk = c_patch.dtype, layout.chunk_size
    b, n, _ = z_rgb.shape
    g_patch = _row_cotangents(ct[0], x["rows_valid"], b * n, acc)
    g_cross = _row_cotangents(ct[2], x["rows_valid"], b * n, acc)
    dr, ds = _grad_buffer(x["r"], chunk, acc), _grad_buffer(x["s"], chunk, acc)
    d_gr_all = _grad_buffer(x["g_r_all"], chunk, acc)
    d_gs_all = _grad_buffer(x["g_s_all"], chunk, acc)
    d_gr = _grad_buffer(x["g_r"], chunk, acc)

    image_keys_valid = x["image_keys_valid"]
    ds, d_gr_all, dc_s = _nce_grads(x["plain"], x["s"], x["g_r_all"], c_cross,
                                    x["image_of_row"], None, None, lse_s, g_cross, ds, d_gr_all,
                                    image_keys_valid)
    dr, d_gs_all, dc_r = _nce_grads(x["plain"], x["r"], x["g_s_all"], c_cross,
                                    x["image_of_row"], None, None, lse_r, g_cross, dr, d_gs_all,
                                    image_keys_valid)
    d_gr, d_gs_all, dc_g = _nce_grads(x["plain"], x["g_r"], x["g_s_all"], c_global,
                                      x["images"], None, None, lse_g,
                                      _row_cotangents(ct[1], x["image_valid"], b, acc), d_gr,
                                      d_gs_all, image_keys_valid)
    if layout.ring:
        dr, ds, dc_p = _nce_grads(x["patch"], x["r"], x["patch_keys"], c_patch, x["patch_pos"],
                                  meta, x["k_meta"], lse_p, g_patch, dr, ds,
                                  x["patch_keys_valid"])
    else:
        dr, dk, dc_p = _nce_grads(x["patch"], x["r"], x["patch_keys"], c_patch, x["patch_pos"],
                                  meta, x["k_meta"], lse_p, g_patch, dr,
                                  _grad_buffer(x["patch_keys"], chunk, acc),
                                  x["patch_keys_valid"])
        dk = _scatter(_from_blocks(dk, x["patch_keys"].shape[0]), layout)
        ds = ds + _to_blocks(dk, ds.shape[1])

    d_gr = _from_blocks(d_gr, b) + _scatter(_from_blocks(d_gr_all, x["g_r_all"].shape[0]), layout)
    d_gs = _scatter(_from_blocks(d_gs_all, x["g_s_all"].shape[0]), layout)
    d_mean_r, d_mean_s = x["image_vjp"]((d_gr.astype(layout.operand),
                                         d_gs.astype(layout.operand)))
    (dz_rgb,) = _unit_bwd(layout.operand, chunk, z_rgb, (_from_blocks(dr, b * n), d_mean_r),
                          valid)
    (dz_sar,) = _unit_bwd(layout.operand, chunk, z_sar, (_from_blocks(ds, b * n), d_mean_s),
                          valid)
    d_scales = tuple(d.astype(acc) for d in (dc_p, dc_g, dc_r + dc_s))
    return dz_rgb, dz_sar, d_scales, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def local_cgcl_sums(z_rgb: jax.Array, z_sar: jax.Array, scales: tuple, meta,
                    valid: jax.Array | None, layout: Layout) -> jax.Array:
    """[3] sums over these queries of L_patch, L_global and 2 L_cross (not yet means).

    scales: (1/tau_patch, 1/tau_global, 1/tau_cross) as scalars of the compute dtype (their
    gradients make learnable temperatures work). meta: [B*N, 3] int32 (image, row, col) of
    each patch for hard negatives, else None. valid: [B, N] bool patch mask, else None. With
    ``layout.axes`` (inside ``shard_map``) the batch is split over those axes and the keys (and
    their validity) come from every shard.

    Memory: the backward pass recomputes the unit operands and adds every term's gradient
    into one float32 buffer per modality, so at most ~3 copies of the local [B*N, D]
    embeddings (plus the ring's travelling keys and their gradient) are live at once.
    """
    return _local_fwd(z_rgb, z_sar, scales, meta, valid, layout)[0]


local_cgcl_sums.defvjp(_local_fwd, _local_bwd)


def term_means(sums: jax.Array, shape: tuple[int, ...],
               valid: jax.Array | None) -> dict[str, jax.Array]:
    """``local_cgcl_sums`` of the whole batch -> the terms: means over its M = B*N patches and
    B images, or over the valid patches and the images with one (0 when there is none)."""
    b, n = shape[:2]
    if valid is None:
        patches, images = b * n, b
    else:
        patches = valid_count(valid, dtype=sums.dtype)
        images = valid_count(jnp.any(valid, axis=1), dtype=sums.dtype)
    return {"patch": sums[0] / patches, "global": sums[1] / images,
            "cross": sums[2] / (2 * patches)}


def blockwise_terms(
    z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch, tau_global, tau_cross, chunk_size: int,
    key_dtype: jnp.dtype | None, positions: jax.Array | None,
    hard_negatives: HardNegatives | None, valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """``{"patch", "global", "cross"}`` of ``cgcl_loss``, in O(chunk^2 + B*N*D) memory; the
    arguments are assumed valid (see ``blockwise_cgcl_terms``)."""
    dtype = compute_dtype(z_rgb)
    operand = jnp.dtype(dtype if key_dtype is None else key_dtype)
    meta = patch_metadata(positions) if hard_negatives is not None else None
    scales = tuple(jnp.asarray(c, dtype)
                   for c in inverse_temperatures(tau_patch, tau_global, tau_cross))
    valid = as_mask(valid)
    sums = local_cgcl_sums(z_rgb, z_sar, scales, meta, valid,
                           Layout(chunk_size, operand, hard_negatives))
    return term_means(sums, z_rgb.shape, valid)


def blockwise_cgcl_terms(
    z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch, tau_global, tau_cross,
    chunk_size: int = 2048, key_dtype: jnp.dtype | None = None,
    positions: jax.Array | None = None, hard_negatives: HardNegatives | None = None,
    valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """``{"patch", "global", "cross"}`` of ``cgcl_loss``, in O(chunk^2 + B*N*D) memory.

    z_rgb, z_sar: [B, N, D], any float dtype; computed in float32 (float64 stays float64).
    chunk_size: rows per query / key block (memory ~ chunk^2 per live logits block).
    key_dtype: matmul operand dtype (e.g. jnp.bfloat16); None = the compute dtype.
    positions, hard_negatives, valid: see ``cgcl_loss``.
    """
    validate(z_rgb, z_sar, impl="blockwise", tau_patch=tau_patch, tau_global=tau_global,
             tau_cross=tau_cross, chunk_size=chunk_size, key_dtype=key_dtype,
             positions=positions, hard_negatives=hard_negatives, valid=valid)
    return blockwise_terms(z_rgb, z_sar, tau_patch=tau_patch, tau_global=tau_global,
                           tau_cross=tau_cross, chunk_size=chunk_size, key_dtype=key_dtype,
                           positions=positions, hard_negatives=hard_negatives, valid=valid)
