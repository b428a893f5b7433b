"""Coarse-to-fine descriptor matching and the robust transform fit of optical-SAR registration.

  1. coarse: the fine descriptor maps are average-pooled to patch cells (``pool`` fine cells a
     side) and matched by mutual nearest neighbours (cosine similarity);
  2. fine: every fine cell of a matched optical patch looks for its twin in a window of
     +-``radius`` fine cells around the same place in the matched SAR patch; the best cell's
     position is refined to sub-cell precision by a parabola through its neighbours' scores;
  3. fit: OpenCV's RANSAC (``estimateAffine2D`` / ``findHomography``) over all fine matches.

Steps 1-2 are ``jnp`` with fixed shapes (every query is computed, a mask says which count), so
they jit once per image size. Points are pixel coordinates (x, y) with pixel centres at
integers; a cell of stride s covers pixels [s*i, s*(i+1)), its centre at s*(i + 0.5) - 0.5.
The zero-shot path (encoder tokens as descriptors) is the same with ``pool=1``.
"""

from __future__ import annotations

import dataclasses

import cv2
import jax
import jax.numpy as jnp
import numpy as np

MODELS = ("affine", "homography")


def cell_centres(rows: int, cols: int, stride: float) -> jax.Array:
    """[rows, cols, 2] pixel (x, y) of the cell centres of a grid of this stride."""
    y, x = jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing="ij")
    return (jnp.stack([x, y], -1).astype(jnp.float32) + 0.5) * stride - 0.5


def pool_cells(desc: jax.Array, pool: int) -> jax.Array:
    """[h, w, D] -> [h/pool, w/pool, D] unit means of pool x pool blocks."""
    h, w, d = desc.shape
    pooled = desc.reshape(h // pool, pool, w // pool, pool, d).mean(axis=(1, 3))
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-6)


def mutual_nearest(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """a [Na, D], b [Nb, D] unit descriptors -> (index into b [Na], mutual [Na] bool,
    similarity [Na]) of each a's nearest b, mutual when that b's nearest a is it."""
    sim = a @ b.T
    a_to_b = jnp.argmax(sim, axis=1)
    b_to_a = jnp.argmax(sim, axis=0)
    mutual = b_to_a[a_to_b] == jnp.arange(a.shape[0])
    return a_to_b, mutual, jnp.take_along_axis(sim, a_to_b[:, None], 1)[:, 0]


def _parabola(left: jax.Array, centre: jax.Array, right: jax.Array) -> jax.Array:
    """Sub-cell offset of a peak in [-0.5, 0.5] from three scores (0 where not a peak)."""
    curve = left - 2.0 * centre + right
    offset = jnp.where(curve < 0, 0.5 * (left - right) / jnp.where(curve < 0, curve, -1.0),
                       0.0)
    return jnp.clip(offset, -0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class MatchSettings:
    """``pool``: fine cells per patch side (1: match at one level, the zero-shot tokens);
    ``radius``: fine-search half-window in fine cells; ``min_similarity``: coarse matches
    below it are dropped."""

    pool: int = 4
    radius: int = 2
    min_similarity: float = 0.0


def match_descriptors(desc_a: jax.Array, desc_b: jax.Array, stride: float,
                      settings: MatchSettings = MatchSettings(),
                      valid_a: jax.Array | None = None, valid_b: jax.Array | None = None
                      ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Coarse-to-fine matches from image A (optical) to image B (SAR).

    desc_a [ha, wa, D], desc_b [hb, wb, D]: unit descriptors on grids of ``stride`` pixels
    per cell (both divisible by ``settings.pool``); valid_*: optional [h, w] bool cells with
    data. Returns src [M, 2], dst [M, 2] pixel points, score [M] and mask [M] (M = ha * wa,
    one query per fine cell of A; mask: a mutual coarse match, in both images' valid data).
    """
    pool, radius = settings.pool, settings.radius
    ha, wa, _ = desc_a.shape
    hb, wb, _ = desc_b.shape
    if ha % pool or wa % pool or hb % pool or wb % pool:
        raise ValueError(f"descriptor grids {desc_a.shape[:2]} and {desc_b.shape[:2]} must be "
                         f"divisible by pool={pool}")
    va = jnp.ones((ha, wa), bool) if valid_a is None else valid_a.astype(bool)
    vb = jnp.ones((hb, wb), bool) if valid_b is None else valid_b.astype(bool)
    coarse_a, coarse_b = pool_cells(desc_a, pool), pool_cells(desc_b, pool)
    ca_rows, ca_cols = coarse_a.shape[:2]
    cb_cols = coarse_b.shape[1]
    target, mutual, coarse_sim = mutual_nearest(coarse_a.reshape(-1, coarse_a.shape[-1]),
                                                coarse_b.reshape(-1, coarse_b.shape[-1]))
    keep = mutual & (coarse_sim >= settings.min_similarity)

    # One query per fine cell of A: its coarse cell's match gives the search centre in B.
    rows, cols = jnp.meshgrid(jnp.arange(ha), jnp.arange(wa), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    coarse_index = (rows // pool) * ca_cols + cols // pool
    del ca_rows
    b_index = target[coarse_index]
    centre_r = (b_index // cb_cols) * pool + rows % pool
    centre_c = (b_index % cb_cols) * pool + cols % pool

    # Scores over a window of radius + 1 (the rim feeds the parabola only).
    reach = radius + 1
    offsets = jnp.arange(-reach, reach + 1)
    win_r = centre_r[:, None, None] + offsets[None, :, None]
    win_c = centre_c[:, None, None] + offsets[None, None, :]
    inside = (win_r >= 0) & (win_r < hb) & (win_c >= 0) & (win_c < wb)
    gathered = desc_b[jnp.clip(win_r, 0, hb - 1), jnp.clip(win_c, 0, wb - 1)]
    query = desc_a[rows, cols]
    scores = jnp.einsum("mijd,md->mij", gathered, query)
    scores = jnp.where(inside & vb[jnp.clip(win_r, 0, hb - 1), jnp.clip(win_c, 0, wb - 1)],
                       scores, -2.0)
    core = scores[:, 1:-1, 1:-1]
    side = 2 * radius + 1
    best = jnp.argmax(core.reshape(len(rows), -1), axis=1)
    br, bc = best // side + 1, best % side + 1  # in the padded window
    m = jnp.arange(len(rows))
    peak = scores[m, br, bc]
    dr = _parabola(scores[m, br - 1, bc], peak, scores[m, br + 1, bc])
    dc = _parabola(scores[m, br, bc - 1], peak, scores[m, br, bc + 1])
    fine_r = centre_r + (br - reach) + dr
    fine_c = centre_c + (bc - reach) + dc
    src = (jnp.stack([cols, rows], -1).astype(jnp.float32) + 0.5) * stride - 0.5
    dst = (jnp.stack([fine_c, fine_r], -1).astype(jnp.float32) + 0.5) * stride - 0.5
    mask = keep[coarse_index] & va[rows, cols] & (peak > -1.0)
    return src, dst, peak, mask


@dataclasses.dataclass(frozen=True)
class Fit:
    """A robust fit: ``transform`` 2x3 / 3x3 (A pixel -> B pixel; None when it failed) and
    the ``inliers`` mask over the matches given."""

    transform: np.ndarray | None
    inliers: np.ndarray


def fit_transform(src: np.ndarray, dst: np.ndarray, model: str = "affine", *,
                  threshold: float = 5.0, max_iters: int = 5000, confidence: float = 0.999,
                  seed: int = 0) -> Fit:
    """RANSAC (OpenCV) of ``model`` on [N, 2] point pairs; ``threshold`` is the inlier
    reprojection error in pixels (GUSO's FSC uses 5). Seeded, so a fit is repeatable."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    src = np.ascontiguousarray(src, np.float64).reshape(-1, 2)
    dst = np.ascontiguousarray(dst, np.float64).reshape(-1, 2)
    needed = 3 if model == "affine" else 4
    if len(src) < needed:
        return Fit(None, np.zeros(len(src), bool))
    cv2.setRNGSeed(seed)
    if model == "affine":
        matrix, inliers = cv2.estimateAffine2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
            maxIters=max_iters, confidence=confidence, refineIters=10)
    else:
        matrix, inliers = cv2.findHomography(src, dst, cv2.RANSAC, threshold,
                                             maxIters=max_iters, confidence=confidence)
    if matrix is None or inliers is None:
        return Fit(None, np.zeros(len(src), bool))
    return Fit(np.asarray(matrix, np.float64), inliers.reshape(-1).astype(bool))
