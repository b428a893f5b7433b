"""Reading optical / SAR rasters and converting them to the data contract (docs/architecture.md).

Readers
-------
``read_raster(path)`` returns ``(array [H, W, C], RasterMeta)``. PNG and JPEG are read with
pillow and carry no georeferencing; every other file (GeoTIFF first of all) is read with
rasterio, keeping CRS, affine transform, nodata value, dtype and band descriptions. A file that
cannot be read completely (missing, not an image, truncated) raises ``RasterReadError`` naming it.
Whole rasters are read into memory (``data.scene`` reads scenes window by window, with
these conversions decided once per scene).

Bands are chosen by 1-based number, as in GDAL and rasterio, or by band description (``VV``).

SAR unit (``decide_sar_kind``, for ``--sar-kind auto``)
-------------------------------------------------------
Integer data without calibration (no scale / offset in the file or given) is amplitude DN:
display images, uncalibrated products (``SarKind.uncalibrated``). Otherwise the unit the
metadata states (band units, then tags such as ``UNITS``), else dB when the values fit dB
(1st..99th percentiles within ``DB_PLAUSIBLE``, at least ``DB_MIN_NEGATIVE`` of them negative).
Anything else cannot be told and raises ``SarKindError``. An explicit or stated unit the values
cannot be in (dB values of 8..255, negative amplitudes) raises ``SarKindError`` too, naming the
file, the range and the flag to use, unless forced. ``match_db_statistics`` maps uncalibrated dB
onto given statistics (an affine map per band).

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
   pixels to 0..255 (computed on the whole scene, so all its tiles share one stretch; or given
   as ``limits``, from ``stretch_limits`` of a decimated read of a scene too large to load).
3. No-data: a pixel is no-data where all its bands equal the declared nodata or any band is NaN
   or +-inf; its RGB is set to 0. Alpha and mask bands come with the metadata
   (``RasterMeta.mask``). ``border_black`` finds the black fill of rotated display images: black
   runs connected to the image border.

Labels (``labels_to_uint8``): one band of integer class ids in 0..255, stored as uint8.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
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
    units: tuple[str | None, ...] = ()  # per band, e.g. "dB" (GDAL band units)
    tags: dict[str, str] = field(default_factory=dict)  # dataset-level metadata items
    scales: tuple[float, ...] = ()  # per band: value = scale * DN + offset (GDAL)
    offsets: tuple[float, ...] = ()
    # Valid pixels from an alpha band or a mask band (GDAL / PNG alpha); None: no such band.
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    alpha_band: int | None = None  # 1-based number of the alpha band, if any

    @property
    def data_bands(self) -> tuple[int, ...]:
        """1-based numbers of every band but the alpha band: the default band selection."""
        return tuple(band for band in range(1, self.count + 1) if band != self.alpha_band)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    @property
    def display_format(self) -> bool:
        """PNG / JPEG: display images, 8-bit, without georeferencing or calibration."""
        return self.path.suffix.lower() in PILLOW_SUFFIXES

    @property
    def calibrated(self) -> bool:
        """Whether the file declares a calibration (scale / offset other than 1 / 0)."""
        return any(s != 1 for s in self.scales) or any(o != 0 for o in self.offsets)


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
            meta = dataset_meta(dataset, path, mask=_mask_band(dataset))
    return array, meta


def dataset_meta(dataset, path: Path, *, mask: np.ndarray | None = None) -> RasterMeta:
    """An open rasterio dataset's ``RasterMeta`` (without reading its pixels)."""
    georeferenced = dataset.crs is not None
    return RasterMeta(
        path=path, height=dataset.height, width=dataset.width, count=dataset.count,
        dtype=str(np.dtype(dataset.dtypes[0])),
        crs=dataset.crs.to_string() if georeferenced else None,
        transform=tuple(dataset.transform)[:6] if georeferenced else None,
        nodata=dataset.nodata, descriptions=tuple(dataset.descriptions),
        units=tuple(dataset.units), tags=dict(dataset.tags()),
        scales=tuple(dataset.scales), offsets=tuple(dataset.offsets),
        mask=mask, alpha_band=_alpha_band(dataset))


def has_mask_band(dataset) -> bool:
    """Whether validity comes from an alpha or mask band (not the nodata value)."""
    flags = {flag for band_flags in dataset.mask_flag_enums for flag in band_flags}
    return _alpha_band(dataset) is not None or (
        MaskFlags.per_dataset in flags and MaskFlags.nodata not in flags)


def _alpha_band(dataset) -> int | None:
    alpha = [i + 1 for i, ci in enumerate(dataset.colorinterp) if ci == ColorInterp.alpha]
    return alpha[0] if alpha else None


def _mask_band(dataset) -> np.ndarray | None:
    """Valid pixels by the file's alpha or mask band (not its nodata value: handled apart)."""
    return dataset.dataset_mask() > 0 if has_mask_band(dataset) else None


def _read_with_pillow(path: Path) -> tuple[np.ndarray, RasterMeta]:
    with Image.open(path) as image:
        image.load()  # decode now, so a truncated file fails here
        if image.mode in _PILLOW_CONVERSIONS:
            image = image.convert(_PILLOW_CONVERSIONS[image.mode])
        array = np.asarray(image)
        alpha = image.mode in ("RGBA", "LA", "La", "RGBa")
    if array.ndim == 2:
        array = array[..., None]
    height, width, count = array.shape
    meta = RasterMeta(path=path, height=height, width=width, count=count, dtype=str(array.dtype),
                      descriptions=(None,) * count, mask=array[..., -1] > 0 if alpha else None,
                      alpha_band=count if alpha else None)
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


def sar_calibration(meta: RasterMeta) -> tuple[float, float]:
    """(scale, offset) of the file's calibration when all bands share one, else (1, 0)."""
    if meta.calibrated and len(set(meta.scales)) == 1 and len(set(meta.offsets)) == 1:
        return float(meta.scales[0]), float(meta.offsets[0])
    return 1.0, 0.0


def sar_uncalibrated(kind: SarKind, dtype: np.dtype, meta: RasterMeta) -> bool:
    """Whether SAR taken as ``kind`` is uncalibrated display DN: integer linear values with
    neither calibration nor a stated unit (their dB scale is then arbitrary)."""
    return kind.uncalibrated or (kind.kind != "db" and np.dtype(dtype).kind in "ui"
                                 and not meta.calibrated and stated_sar_kind(meta) is None)


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


# ---------------------------------------------------------------------------------------------
# What unit SAR values are in (``--sar-kind auto``), and whether they can be in a given one

SAR_KIND_CHOICES = ("auto", *SAR_KINDS)
# dB backscatter of land, water and cities at VHR lies within these bounds (1st / 99th
# percentiles); 8-bit display DN (0..255) and linear intensity (>= 0) do not.
DB_PLAUSIBLE = (-60.0, 45.0)
DB_MIN_NEGATIVE = 0.25  # fraction of negative values dB data has at least (land is < 0 dB)
_UNIT_WORDS = (("db", "db"), ("decibel", "db"), ("amplitude", "amplitude"),
               ("intensity", "intensity"), ("power", "intensity"), ("sigma0", "intensity"))
_UNIT_TAGS = ("units", "unit", "sar_units", "sar_kind", "measurement")


class SarKindError(ValueError):
    """SAR values that cannot be in the unit asked for (or whose unit cannot be told)."""


@dataclass(frozen=True)
class SarKind:
    """The unit SAR values are taken in, the rule that decided (shared by like scenes), the
    reason in this file's terms (its values), and whether they are uncalibrated display DN."""

    kind: str
    rule: str
    reason: str
    uncalibrated: bool = False


def stated_sar_kind(meta: RasterMeta) -> str | None:
    """The unit the file's metadata states (band units first, then dataset tags), or None."""
    texts = [unit for unit in meta.units if unit]
    texts += [value for key, value in meta.tags.items() if key.casefold() in _UNIT_TAGS]
    for text in texts:
        words = re.findall(r"[a-z0-9]+", text.casefold())
        for word, kind in _UNIT_WORDS:
            if word in words:
                return kind
    return None


def _value_profile(values: np.ndarray) -> tuple[float, float, float, str]:
    """(1st percentile, 99th percentile, fraction negative, "min..max") of the finite non-zero
    values: the percentiles decide (a few outliers do not), the range is what users check."""
    values = values[np.isfinite(values) & (values != 0)]
    if values.size == 0:
        return math.nan, math.nan, 0.0, "none"
    low, high = np.percentile(values, (1, 99))
    return float(low), float(high), float(np.mean(values < 0)), \
        f"{values.min():g}..{values.max():g}"


def _fits_db(low: float, high: float, negative: float) -> bool:
    return DB_PLAUSIBLE[0] <= low and high <= DB_PLAUSIBLE[1] and negative >= DB_MIN_NEGATIVE


def implausible_for(kind: str, low: float, high: float, negative: float,
                    span: str = "") -> str | None:
    """Why values with this profile cannot be in ``kind``, or None when they can."""
    if math.isnan(low):
        return None  # no value to judge: the no-data checks report it
    if kind == "db" and not (DB_PLAUSIBLE[0] <= low and high <= DB_PLAUSIBLE[1]
                             and negative >= 0.01):
        return (f"dB backscatter lies within {DB_PLAUSIBLE[0]:g}..{DB_PLAUSIBLE[1]:g} dB and is "
                f"mostly negative; these values span {span} (1st..99th percentiles "
                f"{low:g}..{high:g}, {negative:.0%} negative)")
    if kind != "db" and negative > 0.01:
        return (f"{kind} cannot be negative, and {negative:.0%} of these values are "
                f"(they span {span}): they would all become no-data")
    return None


def decide_sar_kind(raw: np.ndarray, meta: RasterMeta, requested: str, *, scale: float = 1.0,
                    offset: float = 0.0, force: bool = False) -> SarKind:
    """The unit of SAR ``raw`` (the selected bands) for ``--sar-kind requested``.

    ``auto``: integer data without any calibration (neither the file's scale / offset nor
    ``scale`` / ``offset``) is amplitude DN, uncalibrated; otherwise the unit the metadata
    states, else dB when the calibrated values fit dB. An explicit kind (or a stated one) is
    checked against the values: implausible values raise ``SarKindError`` naming the file,
    the range and the flag to use, unless ``force`` (explicit kinds only).
    """
    if requested not in SAR_KIND_CHOICES:
        raise ValueError(f"SAR kind must be one of {SAR_KIND_CHOICES}, got {requested!r}")
    raw = np.asarray(raw)
    user_calibration = scale != 1 or offset != 0
    with np.errstate(invalid="ignore", over="ignore"):
        calibrated = raw.astype(np.promote_types(raw.dtype, np.float32)) * scale + offset
    low, high, negative, span = _value_profile(np.where(raw == 0, 0, calibrated))
    described = f"{raw.dtype} values {span}"
    if requested != "auto":
        problem = implausible_for(requested, low, high, negative, span)
        if problem and not force:
            better = _auto_kind(raw, meta, scale, offset)
            hint = f"--sar-kind {better}" if better and better != requested else "--sar-kind"
            raise SarKindError(
                f"{meta.path}: --sar-kind {requested}, but {problem}: pass {hint} (or keep "
                f"--sar-kind {requested} with --force)")
        flag = f"--sar-kind {requested}" + (" --force" if problem else "")
        return SarKind(requested, flag, flag + (f" ({problem})" if problem else ""))
    if math.isnan(low):  # no valid value: the no-data checks report the scene
        return SarKind("db", "no valid value", "no valid value to judge the unit by")
    integer = raw.dtype.kind in "ui"
    if integer and not (user_calibration or meta.calibrated or stated_sar_kind(meta)):
        if negative > 0.01:
            raise SarKindError(
                f"{meta.path}: {described} ({negative:.0%} negative) are neither amplitude DN "
                "nor dB: pass --sar-kind db with --sar-scale / --sar-offset")
        return SarKind("amplitude", f"{raw.dtype} without calibration metadata: amplitude DN "
                       "(20 log10 DN)", f"{described} without calibration metadata",
                       uncalibrated=True)
    stated = stated_sar_kind(meta)
    if stated:
        problem = implausible_for(stated, low, high, negative, span)
        if problem:
            raise SarKindError(f"{meta.path}: the file states SAR in {stated}, but {problem}: "
                               "pass --sar-kind (with --force to keep it)")
        return SarKind(stated, f"the file's metadata states {stated}",
                       f"the file's metadata states {stated}; values {span}")
    if _fits_db(low, high, negative):
        return SarKind("db", f"{raw.dtype} values that fit dB (mostly negative, within "
                             f"{DB_PLAUSIBLE[0]:g}..{DB_PLAUSIBLE[1]:g})",
                       f"{described} ({negative:.0%} negative) fit dB")
    raise SarKindError(
        f"{meta.path}: cannot tell the unit of {described} ({negative:.0%} negative, no "
        "unit in the metadata): pass --sar-kind intensity or --sar-kind amplitude (linear "
        "values) or --sar-kind db")


def _auto_kind(raw, meta, scale: float, offset: float) -> str | None:
    """What ``--sar-kind auto`` would take these values as (None: it cannot tell)."""
    try:
        return decide_sar_kind(raw, meta, "auto", scale=scale, offset=offset).kind
    except SarKindError:
        return None


def db_statistics_map(db: np.ndarray, valid: np.ndarray, mean: Sequence[float],
                      std: Sequence[float], percentiles: tuple[float, float] = (2.0, 98.0)
                      ) -> tuple[list[float], list[float]]:
    """The per-band affine ``gain * db + offset`` giving the valid pixels the dB ``mean`` and
    ``std`` (``match_db_statistics``), without applying it: a whole scene's map, fitted on a
    decimated read and applied window by window (``apply_db_map``)."""
    bands = db.shape[-1]
    mean = list(mean) * bands if len(mean) == 1 else list(mean)
    std = list(std) * bands if len(std) == 1 else list(std)
    gains, offsets = [], []
    for band in range(bands):
        values = db[..., band][valid].astype(np.float64)
        if values.size:
            clipped = np.clip(values, *np.percentile(values, percentiles))
            spread, centre = clipped.std(), clipped.mean()
        else:
            spread, centre = 0.0, 0.0
        gain = std[band] / spread if spread > 0 else 0.0
        gains.append(float(gain))
        offsets.append(float(mean[band] - gain * centre))
    return gains, offsets


def apply_db_map(db: np.ndarray, valid: np.ndarray, gains: Sequence[float],
                 offsets: Sequence[float], floor_db: float = DB_FLOOR) -> np.ndarray:
    """``gain * db + offset`` per band on the valid pixels, floored at ``floor_db``; no-data
    stays at ``floor_db``. float32."""
    gains = np.asarray(gains, np.float32)
    offsets = np.asarray(offsets, np.float32)
    mapped = np.maximum(gains * db.astype(np.float32) + offsets, np.float32(floor_db))
    return np.where(valid[..., None], mapped, np.float32(floor_db)).astype(np.float32)


def match_db_statistics(db: np.ndarray, valid: np.ndarray, mean: Sequence[float],
                        std: Sequence[float], percentiles: tuple[float, float] = (2.0, 98.0),
                        floor_db: float = DB_FLOOR) -> tuple[np.ndarray, list[float], list[float]]:
    """An affine map per band giving the valid pixels the dB ``mean`` and ``std``.

    For uncalibrated SAR (display DN), whose dB values carry an arbitrary gain and offset
    while the model normalises with fixed dB statistics. The moments are those of the values
    clipped to their ``percentiles`` (winsorised), so the DN floor of dark water and a few
    saturated corner reflectors do not set the scale. -> (dB, gains, offsets): ``gain * db +
    offset`` per band, no-data kept at ``floor_db`` and values floored there.
    """
    gains, offsets = db_statistics_map(db, valid, mean, std, percentiles)
    return apply_db_map(db, valid, gains, offsets, floor_db), gains, offsets


# ---------------------------------------------------------------------------------------------
# Optical


def border_black(array: np.ndarray, threshold: int = 0) -> np.ndarray:
    """Pixels of black runs (every band <= threshold) connected to the image border.

    The fill of rotated or reprojected display images: black corners and edges. Black inside
    the image (shadows, water at night) is kept unless it touches fill that touches the border.
    """
    from scipy import ndimage

    black = (np.asarray(array) <= threshold).all(axis=-1)
    seeds = np.zeros_like(black)
    seeds[[0, -1], :], seeds[:, [0, -1]] = black[[0, -1], :], black[:, [0, -1]]
    return ndimage.binary_propagation(seeds, mask=black)


def optical_to_uint8(array: np.ndarray, *, scale: float | None = None,
                     nodata: float | None = None,
                     percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                     limits: Sequence[tuple[float, float]] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Optical ``[H, W, 1 or 3]`` -> (RGB uint8 ``[H, W, 3]``, valid bool ``[H, W]``).

    The rules are in the module docstring. ``limits``: the stretch's (low, high) per band,
    fitted elsewhere (``stretch_limits`` of a whole scene's decimated read), instead of this
    array's own percentiles: every window of a scene then shares one stretch.
    """
    array = _as_rgb(array)
    valid = optical_valid(array, nodata)
    if array.dtype == np.uint8:
        rgb = array.copy()
    elif scale is not None:
        rgb = _scale_to_uint8(np.where(valid[..., None], array, 0), scale)
    else:
        if limits is None:
            limits = stretch_limits(array, valid, percentiles)
        rgb = _stretch_to_uint8(array, valid, limits)
    rgb[~valid] = 0
    return rgb, valid


def _as_rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"optical needs 1 or 3 bands [H, W, C], got shape {array.shape}")
    return array


def stretch_limits(array: np.ndarray, valid: np.ndarray | None = None,
                   percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                   nodata: float | None = None) -> list[tuple[float, float]]:
    """The linear stretch's (low, high) per band: the ``percentiles`` of the valid pixels
    (``valid`` None: by ``nodata`` and finiteness). No valid pixel: (0, 0), all black."""
    array = _as_rgb(array)
    if valid is None:
        valid = optical_valid(array, nodata)
    if not valid.any():
        return [(0.0, 0.0)] * array.shape[-1]
    return [tuple(float(v) for v in np.percentile(array[..., band][valid], percentiles))
            for band in range(array.shape[-1])]


def optical_valid(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels not all ``nodata`` and with every band finite (alpha / mask bands apart)."""
    valid = np.isfinite(array).all(axis=-1)
    if nodata is not None:
        valid &= ~(array == nodata).all(axis=-1)
    return valid


def _scale_to_uint8(array: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _stretch_to_uint8(array: np.ndarray, valid: np.ndarray,
                      limits: Sequence[tuple[float, float]]) -> np.ndarray:
    rgb = np.zeros(array.shape, np.uint8)
    for band, (low, high) in enumerate(limits):
        gain = 255.0 / (high - low) if high > low else 0.0
        stretched = (np.where(valid, array[..., band], low).astype(np.float64) - low) * gain
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
