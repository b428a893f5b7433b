"""PNG previews of whole-scene outputs, from decimated reads (never the whole raster).

``embedding_preview``: the first three principal components of a per-patch embedding GeoTIFF
as RGB. The basis is fitted on a decimated read (at most ``FIT_SIDE`` px a side), and the
preview (at most ``max_side`` px a side) is projected in row strips, each component stretched
between its 2nd and 98th percentiles over the fit sample, so memory stays bounded by
``max_side x strip x D``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

FIT_SIDE = 256
STRIP = 64


def _decimated(src, shape: tuple[int, int], window: Window | None = None) -> np.ndarray:
    data = src.read(out_shape=(src.count, *shape), window=window,
                    resampling=Resampling.nearest)
    return np.moveaxis(data, 0, -1).astype(np.float64)


def preview_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    factor = max(1.0, max(height, width) / max_side)
    return max(1, round(height / factor)), max(1, round(width / factor))


def pca_basis(samples: np.ndarray, components: int = 3
              ) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], basis [D, components]) of [N, D] samples, the leading eigenvectors of their
    covariance (sign fixed: each component's largest loading positive)."""
    mean = samples.mean(0)
    covariance = np.cov(samples - mean, rowvar=False).reshape(samples.shape[1],
                                                             samples.shape[1])
    values, vectors = np.linalg.eigh(covariance)
    basis = vectors[:, np.argsort(values)[::-1][:components]]
    basis *= np.sign(basis[np.abs(basis).argmax(0), np.arange(basis.shape[1])])
    if basis.shape[1] < components:  # fewer dimensions than colours
        basis = np.pad(basis, ((0, 0), (0, components - basis.shape[1])))
    return mean, basis


def embedding_preview(tif: str | Path, png: str | Path, max_side: int = 1024) -> Path:
    """Writes the PCA-to-RGB preview of an embedding GeoTIFF (module docstring)."""
    from mars_jax.train.images import save_png

    with rasterio.open(tif) as src:
        fit = _decimated(src, preview_shape(src.height, src.width, FIT_SIDE)).reshape(
            -1, src.count)
        fit = fit[np.isfinite(fit).all(-1)]
        if len(fit) < 2:
            raise ValueError(f"{tif}: fewer than two patches with data, no preview")
        mean, basis = pca_basis(fit)
        projected = (fit - mean) @ basis
        low, high = np.percentile(projected, 2, 0), np.percentile(projected, 98, 0)
        span = np.where(high > low, high - low, 1.0)
        height, width = preview_shape(src.height, src.width, max_side)
        rgb = np.zeros((height, width, 3), np.uint8)
        for top in range(0, height, STRIP):
            rows = min(STRIP, height - top)
            y0, y1 = top * src.height / height, (top + rows) * src.height / height
            window = Window(0, y0, src.width, y1 - y0)
            strip = _decimated(src, (rows, width), window)
            ok = np.isfinite(strip).all(-1)
            values = (np.nan_to_num(strip) - mean) @ basis
            colours = np.clip((values - low) / span, 0, 1) * 255
            rgb[top:top + rows] = np.where(ok[..., None], np.rint(colours), 0).astype(np.uint8)
    save_png(png, rgb)
    return Path(png)


__all__ = ["embedding_preview", "pca_basis", "preview_shape"]
