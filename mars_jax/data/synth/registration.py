"""Registration: the optical-to-``sar_warped`` affine and the bilinear warp."""

from __future__ import annotations

import math

import numpy as np

from mars_jax.data.contract import DB_FLOOR
from mars_jax.data.synth.constants import _DEG


def _draw_affine(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rotation up to 3 degrees and scale 0.95-1.05 about the centre, then a translation up to
    3% of the size: optical pixel (x, y, 1) -> sar_warped pixel."""
    angle = rng.uniform(-3.0, 3.0) * _DEG
    scale = rng.uniform(0.95, 1.05)
    linear = scale * np.array([[math.cos(angle), -math.sin(angle)],
                               [math.sin(angle), math.cos(angle)]])
    centre = np.full(2, (size - 1) / 2)
    translation = centre + rng.uniform(-0.03, 0.03, 2) * size - linear @ centre
    return np.concatenate([linear, translation[:, None]], axis=1)


def warp(image: np.ndarray, affine: np.ndarray, fill: float = DB_FLOOR
         ) -> tuple[np.ndarray, np.ndarray]:
    """Resamples a (H, W) image bilinearly so that out[y', x'] = image[y, x] for
    (x', y') = affine @ (x, y, 1). Returns it (``fill`` where the source point falls outside
    the image) and the mask of pixels whose source point is inside."""
    height, width = image.shape
    inverse = np.linalg.inv(np.vstack([affine, [0.0, 0.0, 1.0]]))
    x, y = np.arange(width, dtype=float), np.arange(height, dtype=float)
    source_x = (inverse[0, 0] * x)[None, :] + (inverse[0, 1] * y + inverse[0, 2])[:, None]
    source_y = (inverse[1, 0] * x)[None, :] + (inverse[1, 1] * y + inverse[1, 2])[:, None]
    valid = ((source_x >= 0) & (source_x <= width - 1)
             & (source_y >= 0) & (source_y <= height - 1))
    left = np.clip(np.floor(source_x), 0, width - 2)
    top = np.clip(np.floor(source_y), 0, height - 2)
    fx, fy = (source_x - left).astype(np.float32), (source_y - top).astype(np.float32)
    corner = (top * width + left).astype(np.intp)
    flat = image.astype(np.float32).ravel()
    above = np.take(flat, corner)
    above += fx * (np.take(flat, corner + 1) - above)
    below = np.take(flat, corner + width)
    below += fx * (np.take(flat, corner + width + 1) - below)
    above += fy * (below - above)
    return np.where(valid, above, np.float32(fill)), valid
