"""Raster primitives: smooth noise, convex polygon spans and rasterisation, sweeps, shifts."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


@functools.lru_cache(maxsize=512)  # ~100 (size, cells) pairs occur at one size
def _spline_basis(size: int, cells: int) -> np.ndarray:
    """Cubic B-spline weights (size, cells + 3), rows scaled to unit L2 norm so that white
    noise interpolated through them has unit variance at every pixel."""
    t = (np.arange(size) + 0.5) * cells / size
    first = np.floor(t).astype(int)
    f = t - first
    weights = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1,
                        f**3], axis=1)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    basis = np.zeros((size, cells + 3), np.float32)
    basis[np.arange(size)[:, None], first[:, None] + np.arange(4)] = weights
    basis.flags.writeable = False
    return basis


def smooth_noise(rng: np.random.Generator, size: int, feature_px: float,
                 count: int | None = None) -> np.ndarray:
    """Unit-variance Gaussian field (size, size), or ``count`` of them, with features of about
    ``feature_px`` pixels: white noise on a coarse grid through separable cubic B-splines (two
    small matrix products)."""
    cells = int(np.clip(round(size / feature_px), 1, max(size // 4, 1)))  # >= 4 px features
    basis = _spline_basis(size, cells)
    shape = (cells + 3, cells + 3) if count is None else (count, cells + 3, cells + 3)
    return basis @ rng.standard_normal(shape, dtype=np.float32) @ basis.T


class Spans(NamedTuple):
    """Row spans of rasterised polygons: span n covers columns col0[n] <= i < col1[n] of row
    rows[n] and belongs to polygon owner[n]."""

    owner: np.ndarray
    rows: np.ndarray
    col0: np.ndarray
    col1: np.ndarray
    count: int  # number of polygons
    shape: tuple[int, int]

    def raster(self, values: Any, dtype: Any = np.float32) -> np.ndarray:
        """Per-pixel sum of ``values`` (one per polygon) over the polygons covering it.

        Span ends go into a difference image (one bincount) that a cumulative sum along rows
        turns into coverage: overlapping returns add up, as they do in a SAR image, and
        disjoint polygons can carry integer ids. Floats accumulate in float64, so that long
        rows of additions and subtractions leave no residue.
        """
        height, width = self.shape
        weights = np.broadcast_to(np.asarray(values, float), (self.count,))[self.owner]
        stride = width + 1
        start = self.rows * stride
        diff = np.bincount(np.concatenate([start + self.col0, start + self.col1]),
                           weights=np.concatenate([weights, -weights]),
                           minlength=height * stride)
        accumulate = np.int32 if np.issubdtype(dtype, np.integer) else np.float64
        coverage = np.cumsum(diff.reshape(height, stride)[:, :width], axis=1, dtype=accumulate)
        return coverage.astype(dtype, copy=False)

    def pixel_counts(self) -> np.ndarray:
        return np.bincount(self.owner, weights=self.col1 - self.col0, minlength=self.count)

    def sums(self, row_prefix: np.ndarray) -> np.ndarray:
        """Sum of an image under each polygon, from its row-wise prefix sums (H, W + 1)."""
        under = row_prefix[self.rows, self.col1] - row_prefix[self.rows, self.col0]
        return np.bincount(self.owner, weights=under, minlength=self.count)

    def boxes(self) -> np.ndarray:
        """Tight pixel-edge boxes (x0, y0, x1, y1) of the polygons (NaN where empty)."""
        boxes = np.full((self.count, 4), np.nan)
        if len(self.owner):
            first = np.r_[True, self.owner[1:] != self.owner[:-1]]  # spans come row-sorted
            owners, starts = self.owner[first], np.flatnonzero(first)
            boxes[owners, 0] = np.minimum.reduceat(self.col0, starts)
            boxes[owners, 1] = self.rows[starts]
            boxes[owners, 2] = np.maximum.reduceat(self.col1, starts)
            boxes[owners, 3] = np.maximum.reduceat(self.rows, starts) + 1
        return boxes


def spans(polygons: np.ndarray, shape: tuple[int, int]) -> Spans:
    """Rasterises convex polygons (N, V, 2): pixel (i, j) is inside when its centre is, with
    the half-open rule xl <= i < xr and yl <= j < yr, so polygons sharing an edge tile the
    plane without overlap and a whole-pixel shift of a polygon shifts its pixels."""
    polygons = np.asarray(polygons, float)
    height, width = shape
    # Edge-major (V, N) C-ordered tables, so that gathers and the reductions over edges run
    # along contiguous rows.
    x0, y0 = np.ascontiguousarray(polygons[..., 0].T), np.ascontiguousarray(polygons[..., 1].T)
    x1, y1 = np.roll(x0, -1, axis=0), np.roll(y0, -1, axis=0)
    # Each edge from its lower end, whichever way it is walked: polygons sharing an edge then
    # compute bit-identical crossings, and tile exactly.
    up = y0 <= y1
    xa, ya, xb, yb = np.where(up, x0, x1), np.where(up, y0, y1), np.where(up, x1, x0), \
        np.where(up, y1, y0)
    flat = ya == yb
    slope = (xb - xa) / np.where(flat, 1.0, yb - ya)
    intercept = xa - slope * ya  # edge: x = intercept + slope * y
    low, high = np.where(flat, np.inf, ya), np.where(flat, -np.inf, yb)
    row0 = np.clip(np.ceil(y0.min(axis=0, initial=np.inf)), 0, height).astype(np.intp)
    row1 = np.clip(np.ceil(y0.max(axis=0, initial=-np.inf)), 0, height).astype(np.intp)
    counts = np.maximum(row1 - row0, 0)
    owner = np.repeat(np.arange(len(polygons)), counts)
    rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts - row0, counts)
    y = rows.astype(float)
    gather = lambda table: np.take(table, owner, axis=1)  # C-ordered, unlike table[:, owner]
    crossed = (y >= gather(low)) & (y <= gather(high))
    x = gather(intercept) + gather(slope) * y
    missed = ~crossed * 1e9  # arithmetic masking: several times faster than np.where here
    col0 = np.clip(np.ceil((x + missed).min(axis=0, initial=np.inf)), 0, width).astype(np.intp)
    col1 = np.clip(np.ceil((x - missed).max(axis=0, initial=-np.inf)), 0, width).astype(np.intp)
    keep = col1 > col0
    return Spans(owner[keep], rows[keep], col0[keep], col1[keep], len(polygons), shape)


def rasterize(polygons: np.ndarray, values: Any, shape: tuple[int, int],
              dtype: Any = np.float32) -> np.ndarray:
    """Per-pixel sum of ``values`` over the convex polygons covering it (see ``Spans``)."""
    return spans(polygons, shape).raster(values, dtype)


def _row_prefix(mask: np.ndarray) -> np.ndarray:
    prefix = np.zeros((mask.shape[0], mask.shape[1] + 1), np.int32)
    np.cumsum(mask, axis=1, out=prefix[:, 1:])
    return prefix


def _edge_normals(polygons: np.ndarray) -> np.ndarray:
    """Outward unit normals (N, V, 2) of the edges from vertex i to i + 1."""
    edges = np.roll(polygons, -1, axis=1) - polygons
    x, y = polygons[..., 0], polygons[..., 1]
    orientation = np.sign((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))
    normals = np.stack([edges[..., 1], -edges[..., 0]], axis=-1) * orientation[:, None, None]
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    return normals / np.maximum(length, 1e-12)


def sweep(polygons: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Minkowski sum of each convex polygon with the segment from 0 to its shift (N, 2V, 2):
    the ground a prism's outline covers when projected along a direction (shadows, layover).

    Walking round the polygon, edges facing the shift are taken shifted, the others in place,
    and each vertex between the two kinds is joined to its shifted copy.
    """
    front = (_edge_normals(polygons) * shifts[:, None, :]).sum(axis=-1) > 0
    before = np.roll(front, 1, axis=1)[..., None]  # the edge ending at vertex i
    moved = polygons + shifts[:, None, :]
    first = np.where(before, moved, polygons)
    second = np.where(front[..., None], moved, polygons)
    return np.stack([first, second], axis=2).reshape(len(polygons), 2 * polygons.shape[1], 2)


def _shifted(image: np.ndarray, shift: Sequence[float], fill: Any = 0) -> np.ndarray:
    """``image`` moved by the (dx, dy) shift rounded to whole pixels: out[y, x] = in[y-dy, x-dx].
    ``fill=None`` keeps the original values where nothing moves in."""
    dx, dy = (round(float(v)) for v in shift)
    height, width = image.shape[:2]
    out = image.copy() if fill is None else np.full_like(image, fill)
    if abs(dx) < width and abs(dy) < height:
        out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
            image[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return out


def _swept_mask(mask: np.ndarray, shift: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """Union of the mask moved by each fraction of the shift (blob-shaped casters)."""
    out = np.zeros_like(mask)
    for fraction in fractions:
        out |= _shifted(mask, shift * fraction, False)
    return out


def _lerp(low: Any, high: Any, weight: float) -> Any:
    return np.add(low, np.multiply(np.subtract(high, low), weight))
