"""Blockwise CGCL: the three terms of ``cgcl.cgcl_loss`` with memory linear in M = B*N.

Every CGCL term is an InfoNCE mean over queries q_i (unit rows scaled by 1/tau) against keys k_l:

  L = 1/Q sum_i ( lse_i - q_i . k_pos(i) ),      lse_i = log sum_l exp(q_i . k_l)

L_patch has M x M logits (q = RGB patches, k = SAR patches); L_cross has M x B (patches against
the other modality's image embeddings); L_global has B x B. None is materialised: queries and
keys are cut into blocks of ``chunk_size`` rows (zero-padded; padded keys masked to -inf, padded
query rows dropped), and for each query block a ``lax.scan`` over key blocks keeps a running
log-sum-exp, so only one [chunk, chunk] logits block lives at a time:

  m' = max(m, max_l x_l),    s' = s * exp(m - m') + sum_l exp(x_l - m'),    lse = m + log s

The backward pass is a ``jax.custom_vjp`` that recomputes each logits block from the saved
keys, queries and the per-row lse (O(M) residual), giving p_il = exp(q_i . k_l - lse_i) = the
row softmax, and with g_i the cotangent of lse_i:

  dq_i = g_i sum_l p_il k_l,        dk_l = sum_i g_i p_il q_i

For L_patch (g_i = 1/M, q = r/tau, k = s) autodiff adds the positive term and the 1/tau, giving
dL/dr_i = (sum_l p_il s_l - s_i) / (tau M) and dL/ds_l = (sum_i p_il r_i - r_l) / (tau M).

dq is accumulated across the inner scan over key blocks and dk across the outer scan over query
blocks, one logits block per step, in the same sweep (each block's softmax is computed once).
Temporary memory is O(chunk^2 + (Q + K) * D) instead of O(Q * K).

``key_dtype`` (e.g. bfloat16) is the matmul operand dtype: keys are stored in it and query blocks
are cast to it, with products accumulated in the compute dtype (float32, or float64 for float64
inputs). The positive logit is formed from the same rounded operands, so it stays consistent with
its row's log-sum-exp. Only reverse-mode differentiation is defined (custom VJP).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.losses.cgcl import check_pair, check_temperatures, compute_dtype, unit_embeddings

HIGHEST = jax.lax.Precision.HIGHEST


def _to_blocks(x: jax.Array, size: int) -> jax.Array:
    """[R, ...] -> [ceil(R / size), size, ...], zero rows appended: scan needs equal blocks."""
    pad = -x.shape[0] % size
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(-1, size, *x.shape[1:])


def _from_blocks(x: jax.Array, rows: int) -> jax.Array:
    """Inverse of ``_to_blocks``: drops the padded rows."""
    return x.reshape(-1, *x.shape[2:])[:rows]


def _block_logits(q_blk: jax.Array, k_blk: jax.Array, k_valid: jax.Array,
                  acc_dtype: jnp.dtype) -> jax.Array:
    """[Cq, Ck] logits accumulated in acc_dtype; padded keys get -inf, i.e. exp(.) = 0."""
    logits = jnp.matmul(q_blk, k_blk.T, precision=HIGHEST, preferred_element_type=acc_dtype)
    return jnp.where(k_valid[None, :], logits, -jnp.inf)


def _block_sizes(q: jax.Array, k: jax.Array, chunk_size: int) -> tuple[int, int]:
    """Blocks no larger than the operands: a batch smaller than a chunk is one unpadded block."""
    return min(chunk_size, q.shape[0]), min(chunk_size, k.shape[0])


def _row_block_lse(q_blk: jax.Array, k_blocks: jax.Array, k_valid: jax.Array,
                   acc_dtype: jnp.dtype) -> jax.Array:
    """Streaming log-sum-exp of one query block over all key blocks (running max and sum)."""

    def step(carry, key_block):
        run_max, run_sum = carry
        logits = _block_logits(q_blk, *key_block, acc_dtype)
        new_max = jnp.maximum(run_max, jnp.max(logits, axis=1))
        # Block 0 always holds a real key, so new_max is finite and no -inf - -inf arises.
        run_sum = (run_sum * jnp.exp(run_max - new_max)
                   + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1))
        return (new_max, run_sum), None

    rows = q_blk.shape[0]
    init = (jnp.full((rows,), -jnp.inf, acc_dtype), jnp.zeros((rows,), acc_dtype))
    (run_max, run_sum), _ = jax.lax.scan(step, init, (k_blocks, k_valid))
    return run_max + jnp.log(run_sum)


def _blocked_operands(q: jax.Array, k: jax.Array, chunk_size: int):
    """Query blocks, key blocks and the key-validity mask (False on padded keys)."""
    q_size, k_size = _block_sizes(q, k, chunk_size)
    k_valid = _to_blocks(jnp.ones((k.shape[0],), bool), k_size)
    return _to_blocks(q, q_size), _to_blocks(k, k_size), k_valid


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def streaming_logsumexp(q: jax.Array, k: jax.Array, chunk_size: int,
                        operand_dtype: np.dtype) -> jax.Array:
    """lse_i = log sum_l exp(q_i . k_l) for q [Q, D], k [K, D], never forming the Q x K matrix.

    Accumulates in q's dtype; the matmul operands are cast to ``operand_dtype``.
    """
    return _streaming_lse_fwd(q, k, chunk_size, operand_dtype)[0]


def _streaming_lse_fwd(q, k, chunk_size, operand_dtype):
    acc_dtype = q.dtype
    q_op, k_op = q.astype(operand_dtype), k.astype(operand_dtype)
    q_blocks, k_blocks, k_valid = _blocked_operands(q_op, k_op, chunk_size)
    lse = jax.lax.map(lambda q_blk: _row_block_lse(q_blk, k_blocks, k_valid, acc_dtype),
                      q_blocks)
    # Residuals are O((Q + K) * D): the matmul operands and the [nq, Cq] row lse (padded rows
    # included; they are finite since padded queries are zero).
    return _from_blocks(lse, q.shape[0]), (q_op, k_op, lse)


def _streaming_lse_bwd(chunk_size, operand_dtype, residuals, g):
    """Recomputes each softmax block p = exp(logits - lse) to form dq = (g p) k, dk = (g p)^T q."""
    q_op, k_op, lse = residuals
    acc_dtype = lse.dtype
    q_blocks, k_blocks, k_valid = _blocked_operands(q_op, k_op, chunk_size)
    # Padded query rows get cotangent 0, so they add nothing to dk.
    g_blocks = _to_blocks(g, q_blocks.shape[1])

    def matmul(a, b):
        return jnp.matmul(a.astype(operand_dtype), b, precision=HIGHEST,
                          preferred_element_type=acc_dtype)

    def row_block(dk_acc, row):
        q_blk, lse_blk, g_blk = row

        def step(dq_blk, key_block):
            k_blk, valid = key_block
            logits = _block_logits(q_blk, k_blk, valid, acc_dtype)
            weights = jnp.exp(logits - lse_blk[:, None]) * g_blk[:, None]
            return dq_blk + matmul(weights, k_blk), matmul(weights.T, q_blk)

        dq_blk = jnp.zeros(q_blk.shape, acc_dtype)
        dq_blk, dk_parts = jax.lax.scan(step, dq_blk, (k_blocks, k_valid))
        return dk_acc + dk_parts, dq_blk

    dk = jnp.zeros(k_blocks.shape, acc_dtype)
    dk, dq_blocks = jax.lax.scan(row_block, dk, (q_blocks, lse, g_blocks))
    return _from_blocks(dq_blocks, q_op.shape[0]), _from_blocks(dk, k_op.shape[0])


streaming_logsumexp.defvjp(_streaming_lse_fwd, _streaming_lse_bwd)


def _rounded(x: jax.Array, operand_dtype: np.dtype) -> jax.Array:
    """x as the matmul sees it, back in x's dtype: keeps the positive logit one of the row's."""
    return x.astype(operand_dtype).astype(x.dtype)


def _info_nce(queries: jax.Array, keys: jax.Array, positives: jax.Array, tau: float,
              chunk_size: int, operand_dtype: np.dtype) -> jax.Array:
    """Mean_i of -log softmax_l(queries_i . keys_l / tau) at the key equal to positives_i."""
    q = queries / tau
    lse = streaming_logsumexp(q, keys, chunk_size, operand_dtype)
    positive = jnp.sum(_rounded(q, operand_dtype) * _rounded(positives, operand_dtype), axis=-1)
    return jnp.mean(lse - positive)


def _check_args(temperatures: dict[str, float], chunk_size: int, key_dtype) -> None:
    check_temperatures(**temperatures)
    if not (isinstance(chunk_size, int | np.integer) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if key_dtype is not None and not jnp.issubdtype(key_dtype, jnp.floating):
        raise ValueError(f"key_dtype must be a floating dtype, got {key_dtype!r}")


def blockwise_cgcl_terms(
    z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch: float, tau_global: float,
    tau_cross: float, chunk_size: int = 4096, key_dtype: jnp.dtype | None = None,
) -> dict[str, jax.Array]:
    """``{"patch", "global", "cross"}`` of ``cgcl_loss``, in O(chunk^2 + B*N*D) memory.

    z_rgb, z_sar: [B, N, D], any float dtype; computed in float32 (float64 stays float64).
    chunk_size: rows per query / key block (memory ~ chunk^2 per live logits block).
    key_dtype: matmul operand dtype (e.g. jnp.bfloat16); None = the compute dtype.
    """
    check_pair(z_rgb, z_sar)
    _check_args({"tau_patch": tau_patch, "tau_global": tau_global, "tau_cross": tau_cross},
                chunk_size, key_dtype)
    dtype = compute_dtype(z_rgb)
    operand_dtype = jnp.dtype(dtype if key_dtype is None else key_dtype)
    n = z_rgb.shape[1]
    r, s, g_r, g_s = unit_embeddings(z_rgb, z_sar)

    nce = functools.partial(_info_nce, chunk_size=chunk_size, operand_dtype=operand_dtype)
    patch = nce(r, s, s, tau_patch)
    global_ = nce(g_r, g_s, g_s, tau_global)
    # Patch (i, j)'s positive is its own image's embedding of the other modality.
    cross = 0.5 * (nce(r, g_s, jnp.repeat(g_s, n, axis=0), tau_cross)
                   + nce(s, g_r, jnp.repeat(g_r, n, axis=0), tau_cross))
    return {"patch": patch, "global": global_, "cross": cross}
