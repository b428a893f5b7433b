"""Cutting a scene into tiles: starts that cover the scene, padding past its edge, the tile's
own affine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from mars_jax.data import io
from mars_jax.data.ingest.scene import Scene
from mars_jax.data.ingest.summary import LABEL_KEY

LABEL_FILL = 0


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles covering ``length`` pixels; the last one ends on the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return [*starts, length - tile]


def tile_transform(transform: Sequence[float], row: int, col: int) -> np.ndarray:
    """The affine (a, b, c, d, e, f) of the tile whose top-left pixel is (row, col)."""
    a, b, c, d, e, f = transform[:6]
    return np.array([a, b, c + a * col + b * row, d, e, f + d * col + e * row], np.float64)


def scene_tiles(scene: Scene, tile: int, overlap: int) -> Iterator[dict[str, np.ndarray]]:
    """The examples of every tile of the scene, row by row (no-data not yet judged)."""
    height, width = scene.shape
    for row in tile_starts(height, tile, overlap):
        for col in tile_starts(width, tile, overlap):
            yield cut_tile(scene, row, col, tile)


def cut_tile(scene: Scene, row: int, col: int, tile: int) -> dict[str, np.ndarray]:
    """One example: the tile at (row, col), padded with no-data past the scene's edge."""
    crop = lambda array, fill: _pad(array[row:row + tile, col:col + tile], tile, fill)
    example = {
        "optical": crop(scene.optical, 0),
        "sar": crop(scene.sar, io.DB_FLOOR),
        "valid": crop(scene.valid, False),
        "id": np.asarray(scene.id),
        "tile_origin": np.array([row, col], np.int32),
    }
    if scene.crs is not None:
        example["crs"] = np.asarray(scene.crs)
        example["transform"] = tile_transform(scene.transform, row, col)
    if scene.labels is not None:
        example[LABEL_KEY] = crop(scene.labels, LABEL_FILL)
    return example


def _pad(array: np.ndarray, tile: int, fill: float) -> np.ndarray:
    missing = ((0, tile - array.shape[0]), (0, tile - array.shape[1]))
    if missing == ((0, 0), (0, 0)):
        return array
    return np.pad(array, missing + ((0, 0),) * (array.ndim - 2), constant_values=fill)


def nodata_fraction(valid: np.ndarray) -> float:
    """Fraction of pixels without data; exact at the threshold (30/100 == 0.3, 1 - 0.7 is not)."""
    return (valid.size - np.count_nonzero(valid)) / valid.size
