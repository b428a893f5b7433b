"""Cross-Granularity Contrastive Learning (CGCL), the MaRS paper's three InfoNCE terms.

With s = cosine similarity, z^R, z^S in R^{B x N x D} the (visible) patch embeddings of the
two modalities, g_i = mean_j z_ij the image embeddings and M = B*N:

  L_patch  = -1/M sum_{ij} log softmax_{kl}( s(z^R_ij, z^S_kl) / tau_p )  at (k, l) = (i, j)
  L_global = -1/B sum_i    log softmax_k   ( s(g^R_i,  g^S_k)  / tau_g )  at k = i
  L_cross  = 1/(2M) sum_{ij} [ -log softmax_k s(z^R_ij, g^S_k)/tau_c  - log softmax_k
                               s(z^S_ij, g^R_k)/tau_c ]                    at k = i

Negatives span the whole batch given (all M SAR patches for L_patch). The dense formulation
here materialises the M x M patch logits; ``impl="blockwise"`` (cgcl_blockwise.py) streams them
with memory linear in M, and ``impl="sharded"`` (cgcl_sharded.py) does so for a batch split over
the data axes of a device mesh, equal to the single-device loss.

Options from the paper, off by default:
  hard negatives  L_patch's denominator weights the query's own-image patches within a radius
                  (on the patch grid) ``weight`` times: sum_kl w_ij,kl exp(s/tau_p), positive
                  weight 1 (``HardNegatives``; needs each patch's grid position);
  temperatures    may be traced arrays (learnable temperatures get gradients in every impl).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

HIGHEST = jax.lax.Precision.HIGHEST


def compute_dtype(x: jax.Array) -> jnp.dtype:
    """float32 for bf16 / fp16 / fp32 inputs, float64 for float64 ones (gradient checks)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps): cosine similarity becomes a dot product; zero vectors stay zero."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


@dataclasses.dataclass(frozen=True)
class HardNegatives:
    """L_patch hard negatives: the query's own-image patches within ``radius`` grid cells
    (Euclidean, the positive itself excluded) count ``weight`` times in the denominator.

    Neighbouring patches of one scene look alike; weighting them up makes the loss separate
    them instead of treating them as easy negatives (hard-negative-aware InfoNCE).
    """

    radius: float
    weight: float

    def __post_init__(self):
        if not (self.radius > 0 and math.isfinite(self.radius)):
            raise ValueError(f"hard-negative radius must be positive and finite, got "
                             f"{self.radius}")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"hard-negative weight must be positive, got {self.weight}")


def patch_metadata(positions: jax.Array) -> jax.Array:
    """[B, N, 2] (row, col) grid positions -> [B*N, 3] int32 (image, row, col) per patch."""
    b, n, _ = positions.shape
    image = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None, None], (b, n, 1))
    return jnp.concatenate([image, positions.astype(jnp.int32)], axis=-1).reshape(b * n, 3)


def hard_negative_bias(q_meta: jax.Array, k_meta: jax.Array, hard: HardNegatives,
                       dtype=jnp.float32) -> jax.Array:
    """[Q, K] additive logit bias: log(weight) on hard negatives, 0 elsewhere."""
    same = q_meta[:, None, 0] == k_meta[None, :, 0]
    d2 = (jnp.square(q_meta[:, None, 1] - k_meta[None, :, 1])
          + jnp.square(q_meta[:, None, 2] - k_meta[None, :, 2]))
    hard_mask = same & (d2 > 0) & (d2 <= hard.radius ** 2)
    return jnp.where(hard_mask, jnp.asarray(math.log(hard.weight), dtype), jnp.zeros((), dtype))


def info_nce(queries: jax.Array, keys: jax.Array, labels: jax.Array, tau,
             precision=HIGHEST, bias: jax.Array | None = None) -> jax.Array:
    """Mean over queries of -log softmax(queries @ keys.T / tau + bias)[label]; rows unit-norm.

    The positive's bias is taken as 0: the bias weights negatives only."""
    logits = jnp.matmul(queries, keys.T, precision=precision) / tau
    positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    if bias is not None:
        logits = logits + bias
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def check_pair(z_rgb: jax.Array, z_sar: jax.Array) -> None:
    if z_rgb.ndim != 3 or z_rgb.shape != z_sar.shape:
        raise ValueError(
            "CGCL needs z_rgb and z_sar of one shape [B, N, D], got "
            f"{tuple(z_rgb.shape)} and {tuple(z_sar.shape)}")
    if 0 in z_rgb.shape:
        raise ValueError(f"CGCL got an empty embedding batch of shape {tuple(z_rgb.shape)}")


def check_temperatures(**temperatures) -> None:
    """Python numbers must be positive; arrays (learnable temperatures) are the caller's."""
    for name, tau in temperatures.items():
        if isinstance(tau, int | float | np.number) and not tau > 0:
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


def check_positions(positions: jax.Array | None, shape: tuple[int, ...],
                    hard_negatives: HardNegatives | None) -> None:
    if hard_negatives is None:
        return
    if positions is None:
        raise ValueError("hard negatives need each patch's grid position: pass positions "
                         f"[B, N, 2] for embeddings of shape {tuple(shape)}")
    if tuple(positions.shape) != (*shape[:2], 2):
        raise ValueError(f"positions must be [B, N, 2] = {(*shape[:2], 2)} (row, col per "
                         f"patch), got {tuple(positions.shape)}")


def cgcl_loss(
    z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch=0.05, tau_global=0.07, tau_cross=0.1,
    alpha=1.0, beta=1.0, gamma=1.0, precision=HIGHEST, impl: str = "dense",
    chunk_size: int = 2048, key_dtype=None, positions: jax.Array | None = None,
    hard_negatives: HardNegatives | None = None, mesh: Mesh | None = None,
    axes: Sequence[str] = ("data", "fsdp"), keys: str = "gather",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(alpha*patch + beta*global + gamma*cross, {"patch", "global", "cross"})``.

    z_rgb, z_sar: [B, N, D], any float dtype; computed in float32 (float64 stays float64).
    Temperatures and weights may be arrays (learnable temperatures, adaptive weights).
    impl: "dense" materialises the logits (``precision`` applies to it); "blockwise" streams
      them in ``chunk_size`` blocks with recomputation in the backward pass (memory linear in
      B*N), with ``key_dtype`` (e.g. bfloat16) matmul operands; "sharded" does the same for a
      batch split over ``axes`` of ``mesh`` (default: the mesh set by ``jax.set_mesh``), with
      the SAR patch keys all-gathered (``keys="gather"``) or passed around a ring ("ring").
    positions, hard_negatives: [B, N, 2] grid (row, col) of each patch and ``HardNegatives``
      for L_patch; both None by default.
    """
    check_pair(z_rgb, z_sar)
    check_temperatures(tau_patch=tau_patch, tau_global=tau_global, tau_cross=tau_cross)
    check_positions(positions, z_rgb.shape, hard_negatives)
    taus = dict(tau_patch=tau_patch, tau_global=tau_global, tau_cross=tau_cross)
    extra = dict(chunk_size=chunk_size, key_dtype=key_dtype, positions=positions,
                 hard_negatives=hard_negatives)
    if impl == "blockwise":
        from mars_jax.losses.cgcl_blockwise import blockwise_cgcl_terms

        terms = blockwise_cgcl_terms(z_rgb, z_sar, **taus, **extra)
    elif impl == "sharded":
        from mars_jax.losses.cgcl_sharded import sharded_cgcl_terms

        terms = sharded_cgcl_terms(z_rgb, z_sar, mesh, axes=axes, keys=keys, **taus, **extra)
    elif impl == "dense":
        terms = dense_cgcl_terms(z_rgb, z_sar, **taus, precision=precision,
                                 positions=positions, hard_negatives=hard_negatives)
    else:
        raise ValueError(f"CGCL impl must be 'dense', 'blockwise' or 'sharded', got {impl!r}")
    total = alpha * terms["patch"] + beta * terms["global"] + gamma * terms["cross"]
    return total, terms


def dense_cgcl_terms(z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch, tau_global, tau_cross,
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
