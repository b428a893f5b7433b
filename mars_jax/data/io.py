"""Reading optical / SAR rasters and converting them to the data contract (docs/architecture.md).

Readers
-------
``read_raster(path)`` returns ``(array [H, W, C], RasterMeta)``. PNG and JPEG are read with
pillow and carry no georeferencing; every other file (GeoTIFF first of all) is read with
rasterio, keeping CRS, affine transform, nodata value, dtype and band descriptions. A file that
cannot be read completely (missing, not an image, truncated) raises ``RasterReadError`` naming it.
Whole scenes are read into memory.

Bands are chosen by 1-based number, as in GDAL and rasterio, or by band description (``VV``).

SAR -> dB float32 (``sar_to_db``)
---------------------------------
1. Calibration: ``x = scale * raw + offset``. The defaults (1, 0) take a digital number (DN) of a
   uint8 / uint16 file as the amplitude, intensity or dB value itself.
2. Conversion by kind: ``db``: ``x`` as is; ``intensity`` (power): ``10 log10(x)``;
   ``amplitude``: ``20 log10(x)`` (= ``10 log10(x^2)``).
3. No-data: a band of a pixel is no-data where the raw value is 0 (the fill value of SAR
   products, in every kind), equals the file's declared nodata, is NaN or +-inf, where the
   calibrated amplitude or intensity is <= 0, or where the dB value does not fit in float32. A
   pixel is valid only if all its bands are. No-data bands are set to ``floor_db`` (default
   ``DB_FLOOR`` = -50 dB, below the noise floor of SAR sensors), so no NaN or inf reaches a shard.

Optical -> uint8 RGB (``optical_to_uint8``)
-------------------------------------------
1. Bands: three bands give RGB; a single band is repeated into grey RGB (pick bands from wider
   files with ``select_bands``).
2. uint8 is kept as is. Other dtypes: with ``scale``, ``round(x * scale)`` clipped to [0, 255];
   without, a per-band linear stretch mapping the 2nd..98th percentiles of the scene's valid
   pixels to 0..255 (computed on the whole scene, so all its tiles share one stretch).
3. No-data: a pixel is no-data where all its bands equal the declared nodata or any band is NaN
   or +-inf; its RGB is set to 0.

Labels (``labels_to_uint8``): one band of integer class ids in 0..255, stored as uint8.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from mars_jax.data.contract import DB_FLOOR

SAR_KINDS = ("db", "amplitude", "intensity")
PILLOW_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
RASTER_SUFFIXES = frozenset({".tif", ".tiff"}) | PILLOW_SUFFIXES
DEFAULT_PERCENTILES = (2.0, 98.0)

_LOG_FACTOR = {"intensity": 10.0, "amplitude": 20.0}
# Pillow modes whose pixels are not plain channel values: convert them to ones that are.
_PILLOW_CONVERSIONS = {"1": "L", "P": "RGB", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB",
                       "LAB": "RGB", "HSV": "RGB"}

Band = int | str


class RasterReadError(OSError):
    """A raster file could not be read completely."""

    def __init__(self, path: Path, detail: str):
        super().__init__(f"cannot read {path}: {detail}")
        self.path, self.detail = path, detail


class BandSelectionError(ValueError):
    """A requested band is not in the file."""


@dataclass(frozen=True)
class RasterMeta:
    """What a raster file says about its pixels, besides the pixels.

    ``crs`` is an ``EPSG:n`` string when the CRS has an EPSG code, else WKT; ``transform`` is the
    pixel -> CRS affine in rasterio ``Affine`` order ``(a, b, c, d, e, f)``:
    ``x = a*col + b*row + c``, ``y = d*col + e*row + f``. Both are None without georeferencing.
    """

    path: Path
    height: int
    width: int
    count: int
    dtype: str
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    nodata: float | None = None
    descriptions: tuple[str | None, ...] = ()

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


def read_raster(path: str | os.PathLike) -> tuple[np.ndarray, RasterMeta]:
    """Reads a whole raster as ``[H, W, C]`` with its metadata; raises ``RasterReadError``."""
    path = Path(path)
    reader = _read_with_pillow if path.suffix.lower() in PILLOW_SUFFIXES else _read_with_rasterio
    try:
        return reader(path)
    except Exception as error:  # any failure to decode a file means the file is unusable
        cause = error.__cause__ or error.__context__
        detail = f"{error} ({cause})" if cause and str(cause) not in str(error) else str(error)
        raise RasterReadError(path, detail) from error


def _read_with_rasterio(path: Path) -> tuple[np.ndarray, RasterMeta]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            array = np.moveaxis(dataset.read(), 0, -1)
            georeferenced = dataset.crs is not None
            meta = RasterMeta(
                path=path, height=dataset.height, width=dataset.width, count=dataset.count,
                dtype=str(array.dtype),
                crs=dataset.crs.to_string() if georeferenced else None,
                transform=tuple(dataset.transform)[:6] if georeferenced else None,
                nodata=dataset.nodata, descriptions=tuple(dataset.descriptions))
    return array, meta


def _read_with_pillow(path: Path) -> tuple[np.ndarray, RasterMeta]:
    with Image.open(path) as image:
        image.load()  # decode now, so a truncated file fails here
        if image.mode in _PILLOW_CONVERSIONS:
            image = image.convert(_PILLOW_CONVERSIONS[image.mode])
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    height, width, count = array.shape
    meta = RasterMeta(path=path, height=height, width=width, count=count, dtype=str(array.dtype),
                      descriptions=(None,) * count)
    return array, meta


def select_bands(array: np.ndarray, meta: RasterMeta, bands: Sequence[Band]) -> np.ndarray:
    """The given bands of ``array [H, W, C]``, in the given order (1-based numbers or names)."""
    return array[..., [_band_index(meta, band) for band in bands]]


def _band_index(meta: RasterMeta, band: Band) -> int:
    if isinstance(band, int):
        if not 1 <= band <= meta.count:
            raise BandSelectionError(
                f"{meta.path}: band {band} requested, the file has bands 1..{meta.count}")
        return band - 1
    names = [(description or "").casefold() for description in meta.descriptions]
    if band.casefold() not in names:
        raise BandSelectionError(
            f"{meta.path}: no band described as {band!r} (descriptions: {meta.descriptions})")
    return names.index(band.casefold())


def same_crs(a: str, b: str) -> bool:
    """Whether two CRS strings (EPSG codes or WKT) denote the same CRS."""
    return a == b or CRS.from_user_input(a) == CRS.from_user_input(b)


def transforms_match(a: Sequence[float], b: Sequence[float], pixel_tolerance: float = 0.01,
                     scale_tolerance: float = 1e-6) -> bool:
    """Whether two affines put the same pixels on the same ground.

    Origins may differ by ``pixel_tolerance`` pixels and the linear part by ``scale_tolerance``
    relative: enough to absorb float noise of different writers, not a one-pixel shift.
    """
    a_lin, b_lin = np.array(a)[[0, 1, 3, 4]], np.array(b)[[0, 1, 3, 4]]
    pixel = max(abs(a[0]), abs(a[1]), abs(a[3]), abs(a[4]))
    origins_close = math.dist((a[2], a[5]), (b[2], b[5])) <= pixel_tolerance * pixel
    return origins_close and bool(np.allclose(a_lin, b_lin, rtol=0, atol=scale_tolerance * pixel))


def sar_to_db(raw: np.ndarray, kind: str, *, scale: float = 1.0, offset: float = 0.0,
              nodata: float | None = None,
              floor_db: float = DB_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """SAR ``[H, W, C]`` in ``kind`` units -> (dB float32 ``[H, W, C]``, valid bool ``[H, W]``).

    The rules are in the module docstring.
    """
    if kind not in SAR_KINDS:
        raise ValueError(f"SAR kind must be one of {SAR_KINDS}, got {kind!r}")
    raw = np.asarray(raw)
    work_dtype = np.promote_types(raw.dtype, np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        calibrated = raw.astype(work_dtype) * scale + offset
        nodata_bands = _sar_nodata(raw, calibrated, kind, nodata)
        if kind == "db":
            db = calibrated.astype(np.float32)
        else:
            linear = np.where(nodata_bands, 1, calibrated)
            db = (_LOG_FACTOR[kind] * np.log10(linear)).astype(np.float32)
    nodata_bands |= ~np.isfinite(db)
    db[nodata_bands] = floor_db
    return db, ~nodata_bands.any(axis=-1)


def _sar_nodata(raw: np.ndarray, calibrated: np.ndarray, kind: str,
                nodata: float | None) -> np.ndarray:
    nodata_bands = (raw == 0) | ~np.isfinite(calibrated)
    if nodata is not None:
        nodata_bands |= raw == nodata
    if kind != "db":
        nodata_bands |= ~(calibrated > 0)
    return nodata_bands


def optical_to_uint8(array: np.ndarray, *, scale: float | None = None,
                     nodata: float | None = None,
                     percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Optical ``[H, W, 1 or 3]`` -> (RGB uint8 ``[H, W, 3]``, valid bool ``[H, W]``).

    The rules are in the module docstring.
    """
    array = np.asarray(array)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"optical needs 1 or 3 bands [H, W, C], got shape {array.shape}")
    valid = _optical_valid(array, nodata)
    if array.dtype == np.uint8:
        rgb = array.copy()
    elif scale is not None:
        rgb = _scale_to_uint8(np.where(valid[..., None], array, 0), scale)
    else:
        rgb = _stretch_to_uint8(array, valid, percentiles)
    rgb[~valid] = 0
    return rgb, valid


def _optical_valid(array: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = np.isfinite(array).all(axis=-1)
    if nodata is not None:
        valid &= ~(array == nodata).all(axis=-1)
    return valid


def _scale_to_uint8(array: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _stretch_to_uint8(array: np.ndarray, valid: np.ndarray,
                      percentiles: tuple[float, float]) -> np.ndarray:
    rgb = np.zeros(array.shape, np.uint8)
    if not valid.any():
        return rgb
    for band in range(array.shape[-1]):
        values = array[..., band]
        low, high = np.percentile(values[valid], percentiles)
        gain = 255.0 / (high - low) if high > low else 0.0
        stretched = (np.where(valid, values, low).astype(np.float64) - low) * gain
        rgb[..., band] = np.clip(np.rint(stretched), 0, 255)
    return rgb


def labels_to_uint8(array: np.ndarray) -> np.ndarray:
    """Label raster ``[H, W, 1]`` of class ids -> uint8 ``[H, W]``; ValueError if not that."""
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[-1] != 1:
        raise ValueError(f"labels need one band, got shape {array.shape}")
    labels = array[..., 0]
    if labels.dtype == np.uint8:
        return labels.copy()
    with np.errstate(invalid="ignore"):
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()
                and labels.min() >= 0 and labels.max() <= 255):
            raise ValueError("labels must be integer class ids in 0..255")
    return labels.astype(np.uint8)
