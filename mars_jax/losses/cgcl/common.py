"""What every CGCL implementation shares: dtypes, unit embeddings, hard negatives, patch
validity, argument checks.

This module imports nothing else of the package: the implementations (dense.py, blockwise.py,
sharded.py) and ``cgcl_loss`` (__init__.py) import it, never the other way round.

``validate`` holds every argument check, written once: ``cgcl_loss`` calls it before
dispatching, and the checked entry points ``blockwise_cgcl_terms`` / ``sharded_cgcl_terms``
call it before their implementation; the implementations themselves assume valid arguments.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST
NORM_EPS = 1e-12  # l2_normalize's floor on the norm (blockwise.py's fused unit rows use it too)
# The logit of an excluded key (invalid patch, image without a valid patch, padding). Finite, so
# a row with no key left stays finite (no inf - inf, no NaN gradient), and far enough below any
# real logit (|logit| <= 1/tau + log(weight)) that exp(MASKED_LOGIT - max) is exactly 0.
MASKED_LOGIT = -1e9

CGCL_IMPLS = ("dense", "blockwise", "sharded")  # ``cgcl_loss(impl=...)``
CGCL_KEYS = ("gather", "ring")  # ``cgcl_loss(keys=...)``: how sharded CGCL shares SAR keys


def compute_dtype(x: jax.Array) -> jnp.dtype:
    """float32 for bf16 / fp16 / fp32 inputs, float64 for float64 ones (gradient checks)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = NORM_EPS) -> jax.Array:
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


def as_mask(valid: jax.Array | None) -> jax.Array | None:
    """A bool [B, N] patch mask from a bool or 0/1 array (None: every patch valid)."""
    return None if valid is None else jnp.asarray(valid) != 0


def zero_invalid(z: jax.Array, valid: jax.Array | None) -> jax.Array:
    """z with its invalid patches zeroed: whatever they hold (even NaN) reaches nothing, and
    their gradient is exactly 0."""
    return z if valid is None else jnp.where(valid[..., None], z, jnp.zeros((), z.dtype))


def valid_count(valid: jax.Array, axis: int | None = None, dtype=jnp.float32) -> jax.Array:
    """max(number of valid entries, 1): the divisor of a mean over the valid queries, which
    leaves an empty mean 0 instead of NaN."""
    return jnp.maximum(jnp.sum(valid, axis=axis, dtype=dtype), 1)


def unit_embeddings(z_rgb: jax.Array, z_sar: jax.Array, valid: jax.Array | None = None):
    """Unit patch rows r, s [B*N, D] and unit image embeddings g_r, g_s [B, D] (g_i = mean_j
    z_ij over the valid patches j, then normalised), in the compute dtype: cosine similarities
    become dot products. Invalid patches' rows are zero, as is an image without valid patch's
    embedding."""
    dtype = compute_dtype(z_rgb)
    zr, zs = zero_invalid(z_rgb.astype(dtype), valid), zero_invalid(z_sar.astype(dtype), valid)
    b, n, d = zr.shape
    r = l2_normalize(zr).reshape(b * n, d)
    s = l2_normalize(zs).reshape(b * n, d)
    if valid is None:
        return r, s, l2_normalize(jnp.mean(zr, axis=1)), l2_normalize(jnp.mean(zs, axis=1))
    count = valid_count(valid, axis=1, dtype=dtype)[:, None]
    g_r, g_s = jnp.sum(zr, axis=1) / count, jnp.sum(zs, axis=1) / count
    return r, s, l2_normalize(g_r), l2_normalize(g_s)


def inverse_temperatures(tau_patch, tau_global, tau_cross) -> tuple:
    """The logit scales (1/tau_patch, 1/tau_global, 1/tau_cross) of the streamed terms."""
    return 1.0 / tau_patch, 1.0 / tau_global, 1.0 / tau_cross


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------
def _one_of(names: Sequence[str]) -> str:
    """('a', 'b', 'c') -> "'a', 'b' or 'c'"."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


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


def check_valid(valid: jax.Array | None, shape: tuple[int, ...]) -> None:
    if valid is not None and tuple(jnp.shape(valid)) != tuple(shape[:2]):
        raise ValueError(f"valid must be [B, N] = {tuple(shape[:2])} (one flag per patch of "
                         f"embeddings {tuple(shape)}), got {tuple(jnp.shape(valid))}")


def check_streaming_args(chunk_size: int, key_dtype) -> None:
    if not (isinstance(chunk_size, int | np.integer) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if key_dtype is not None and not jnp.issubdtype(key_dtype, jnp.floating):
        raise ValueError(f"key_dtype must be a floating dtype, got {key_dtype!r}")


def validate(z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch, tau_global, tau_cross,
             impl: str = "dense", chunk_size: int = 2048, key_dtype=None,
             positions: jax.Array | None = None, hard_negatives: HardNegatives | None = None,
             keys: str = "gather", valid: jax.Array | None = None) -> None:
    """Every check of ``cgcl_loss``'s arguments (ValueError on the first that fails).

    All arguments are checked whatever the impl, so a configuration that works with one impl
    does not fail only when switched to another. The mesh is the sharded implementation's to
    check: it may come from ``jax.set_mesh`` and the batch must divide over its axes.
    """
    if impl not in CGCL_IMPLS:
        raise ValueError(f"CGCL impl must be {_one_of(CGCL_IMPLS)}, got {impl!r}")
    if keys not in CGCL_KEYS:
        raise ValueError(f"keys must be {_one_of(CGCL_KEYS)}, got {keys!r}")
    check_pair(z_rgb, z_sar)
    check_temperatures(tau_patch=tau_patch, tau_global=tau_global, tau_cross=tau_cross)
    check_streaming_args(chunk_size, key_dtype)
    check_positions(positions, z_rgb.shape, hard_negatives)
    check_valid(valid, z_rgb.shape)
