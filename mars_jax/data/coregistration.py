"""A co-registration sanity check for optical / SAR pairs without georeferencing.

Optical and SAR share few intensities (texture vs backscatter) but many edges: field, road and
building outlines. The residual shift of a pair is estimated by phase correlation of the two
edge maps (gradient magnitude after smoothing; SAR in dB, where speckle is additive) in a few
windows, and the median of the windows' shifts is taken, so one window of layover or of
featureless water does not decide. Good to a few pixels: layover and shadow move building
edges in SAR, so a perfect pair reads a small shift; it is meant to catch pairs that are off by
much more (a wrong crop, a wrong pairing, a different scene).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW = 256
OPTICAL_SIGMA = 2.0  # pixels of Gaussian smoothing before the gradient
SAR_SIGMA = 3.0  # more for SAR: speckle


@dataclass(frozen=True)
class Shift:
    """The SAR image's content sits ``(dy, dx)`` pixels from the optical one's; ``strength``:
    the height of the correlation peak in standard deviations of the surface (below ~3 the
    estimate means little: few shared edges)."""

    dy: int
    dx: int
    strength: float
    windows: int

    @property
    def magnitude(self) -> float:
        return float(np.hypot(self.dy, self.dx))

    def to_json(self) -> dict[str, float]:
        return {"dy": self.dy, "dx": self.dx, "strength": round(self.strength, 2),
                "windows": self.windows}


def edge_map(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gradient magnitude of the smoothed image, standardised (zero mean, unit std)."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.asarray(image, np.float64), sigma)
    magnitude = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    return (magnitude - magnitude.mean()) / (magnitude.std() + 1e-12)


def correlation_surface(reference: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Phase correlation surface of two equal windows, standardised; its peak sits at the
    (circular) shift of ``moved`` against ``reference``.

    The cross-power spectrum is only partly whitened (divided by the square root of its
    magnitude): full whitening amplifies the noise of two different sensors' edge maps.
    """
    h, w = reference.shape
    taper = np.outer(np.hanning(h), np.hanning(w))
    cross = np.conj(np.fft.fft2(reference * taper)) * np.fft.fft2(moved * taper)
    surface = np.fft.ifft2(cross / (np.sqrt(np.abs(cross)) + 1e-12)).real
    return (surface - surface.mean()) / (surface.std() + 1e-12)


def estimate_shift(optical: np.ndarray, sar_db: np.ndarray, valid: np.ndarray | None = None,
                   window: int = DEFAULT_WINDOW, grid: int = 3) -> Shift:
    """The residual shift of SAR ``[H, W, C]`` (dB) against optical ``[H, W, 3]``.

    Up to ``grid x grid`` overlapping windows of ``window`` pixels (the whole image when it is
    smaller) vote: their correlation surfaces are summed and the peak of the sum is taken, so
    a window of layover or of featureless water does not decide. Edges within a few pixels of
    no-data (``valid`` False: fill of a rotated image) are left out: the fill's outline is
    in one image only.
    """
    from scipy import ndimage

    grey = np.asarray(optical, np.float64).mean(axis=-1)
    sar = np.asarray(sar_db, np.float64).mean(axis=-1)
    height, width = grey.shape
    keep = np.ones((height, width), bool) if valid is None else np.asarray(valid, bool)
    keep = ndimage.binary_erosion(keep, iterations=int(3 * SAR_SIGMA), border_value=1)
    size = min(window, height, width)
    rows = sorted({int(r) for r in np.linspace(0, height - size, grid)})
    cols = sorted({int(c) for c in np.linspace(0, width - size, grid)})
    total = np.zeros((size, size))
    for row in rows:
        for col in cols:
            crop = (slice(row, row + size), slice(col, col + size))
            total += correlation_surface(_masked_edges(grey[crop], keep[crop], OPTICAL_SIGMA),
                                         _masked_edges(sar[crop], keep[crop], SAR_SIGMA))
    windows = len(rows) * len(cols)
    peak = np.unravel_index(int(np.argmax(total)), total.shape)
    dy, dx = (int(p - size) if p > size // 2 else int(p) for p in peak)
    return Shift(dy=dy, dx=dx, strength=float(total.max() / windows), windows=windows)


def _masked_edges(image: np.ndarray, keep: np.ndarray, sigma: float) -> np.ndarray:
    """The edge map with no-data filled by the valid mean first and its edges zeroed."""
    if keep.all() or not keep.any():
        return edge_map(image, sigma)
    filled = np.where(keep, image, image[keep].mean())
    return np.where(keep, edge_map(filled, sigma), 0.0)
