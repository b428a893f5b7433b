"""Pictures of a registration: SAR for display, resampled onto the optical grid, a
checkerboard of both, and the matches drawn side by side (OpenCV's warps and lines)."""

from __future__ import annotations

import cv2
import numpy as np

from mars_jax.metrics.registration import as_matrix


def sar_to_display(db: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """dB [H, W, C] -> uint8 [H, W] grey, 2-98 percentile stretch of the valid pixels."""
    grey = db[..., 0].astype(np.float32)
    values = grey[valid] if valid.any() else grey.reshape(-1)
    low, high = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    out = np.clip((grey - low) / max(high - low, 1e-6), 0, 1) * 255
    return np.where(valid, out, 0).astype(np.uint8)


def resample_onto(transform: np.ndarray, image: np.ndarray, size: tuple[int, int],
                  nearest: bool = False) -> np.ndarray:
    """``out[y, x] = image[T(x, y)]`` on an (H, W) grid: T maps the target grid to ``image``."""
    height, width = size
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    matrix = as_matrix(transform)
    image = np.ascontiguousarray(image)
    if np.allclose(matrix[2], [0, 0, 1]):
        return cv2.warpAffine(image, matrix[:2], (width, height), flags=flags,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.warpPerspective(image, matrix, (width, height), flags=flags,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def checkerboard(optical: np.ndarray, sar_grey: np.ndarray, squares: int = 8) -> np.ndarray:
    """uint8 RGB [H, W, 3]: optical and SAR in alternating squares (``squares`` a side)."""
    h, w = sar_grey.shape
    side = max(1, min(h, w) // squares)
    rows, cols = np.arange(h)[:, None] // side, np.arange(w)[None, :] // side
    use_sar = ((rows + cols) % 2).astype(bool)
    return np.where(use_sar[..., None], np.repeat(sar_grey[..., None], 3, -1), optical)


def matches_picture(optical: np.ndarray, sar_grey: np.ndarray, result, limit: int = 80,
                    min_width: int = 768) -> np.ndarray:
    """Optical | SAR side by side with up to ``limit`` inlier matches drawn (green lines,
    spread evenly over the inliers), magnified by a whole factor to at least ``min_width``
    pixels so that a small pair's lines stay readable."""
    h = max(optical.shape[0], sar_grey.shape[0])
    left = np.zeros((h, optical.shape[1], 3), np.uint8)
    left[:optical.shape[0]] = optical
    right = np.zeros((h, sar_grey.shape[1], 3), np.uint8)
    right[:sar_grey.shape[0]] = sar_grey[..., None]
    canvas = np.concatenate([left, right], axis=1)
    zoom = max(1, -(-min_width // canvas.shape[1]))
    canvas = np.ascontiguousarray(np.repeat(np.repeat(canvas, zoom, 0), zoom, 1))
    inliers = np.flatnonzero(result.fit.inliers)
    chosen = inliers[np.linspace(0, len(inliers) - 1, min(limit, len(inliers))).astype(int)]
    for i in chosen:
        a = np.rint((np.asarray(result.src[i]) + 0.5) * zoom - 0.5).astype(int)
        b = np.rint((np.asarray(result.dst[i]) + 0.5) * zoom - 0.5).astype(int)
        b[0] += optical.shape[1] * zoom
        cv2.line(canvas, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), (0, 220, 0), 1,
                 cv2.LINE_AA)
        for point in (a, b):
            cv2.circle(canvas, (int(point[0]), int(point[1])), 2, (255, 220, 0), -1)
    return canvas
