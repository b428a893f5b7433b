"""Whole scenes, window by window: the reader behind streaming tiled inference.

``open_scene(optical=..., sar=...)`` opens one or two georeferenced rasters (GeoTIFF or any
file rasterio reads) on one pixel grid: the optical image's, or the SAR's when it comes alone.
A SAR image on another CRS, resolution or extent is brought onto that grid by a GDAL warp
(rasterio ``WarpedVRT``, bilinear), window by window. ``sar_correction``, a 2x3 affine from
registration (optical pixel (x, y, 1) -> SAR pixel on the common grid), moves it further: the
warp's destination geotransform becomes ``grid ∘ correction``, so grid pixel p receives the
SAR content at ``correction(p)`` and registered SAR streams like any other.

The conversions to the data contract (``data.io``) are decided once per scene from a decimated
read (``overview`` px on the longer side): the optical stretch limits, the SAR unit
(``io.decide_sar_kind``) and, for uncalibrated SAR, the map onto the reference dB statistics.
``Scene.read(row, col, height, width)`` converts each window the same way, so tiles agree at
their seams, and reads that window only (what lies past the scene is padded as no-data).
``Scene.reads`` records the shape of every window read, for the memory checks.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from mars_jax.data import io
from mars_jax.data.contract import DB_FLOOR, SAR_DB_MEAN, SAR_DB_STD
from mars_jax.data.datasets.base import SarOptions

DEFAULT_OVERVIEW = 1024  # px on the longer side of the read the conversions are decided on
MODALITIES = ("optical", "sar")
# GDAL's block cache, in MiB. Its default (5% of RAM) fills with a big scene's blocks during
# the decimated read alone: 1.7 GiB more peak memory for a 16k-px scene, nothing for a 2k one.
GDAL_CACHEMAX_MB = 128


def bounded_gdal_cache() -> rasterio.Env:
    """A rasterio environment whose GDAL block cache is ``GDAL_CACHEMAX_MB``: around every
    read of a whole scene, so memory does not grow with the files."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHEMAX_MB)


class SceneError(ValueError):
    """Inputs that cannot form a scene: the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """A pixel grid on the ground: CRS, pixel -> CRS affine, size."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    def window_transform(self, row: int, col: int) -> Affine:
        return self.transform @ Affine.translation(col, row)

    def coarser(self, factor: int) -> Grid:
        """The grid of ``factor`` x ``factor`` pixel cells (per-patch outputs)."""
        return Grid(self.crs, self.transform @ Affine.scale(factor),
                    -(-self.height // factor), -(-self.width // factor))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the CRS."""
        xs, ys = zip(*(self.transform @ corner for corner in (
            (0, 0), (self.width, 0), (0, self.height), (self.width, self.height))),
            strict=True)
        return min(xs), min(ys), max(xs), max(ys)


@dataclasses.dataclass(frozen=True)
class OpticalConversion:
    """Optical window -> uint8 RGB: which bands, the scene's stretch (None: uint8 kept)."""

    bands: tuple[int, ...]  # 1-based
    limits: tuple[tuple[float, float], ...] | None
    nodata: float | None
    mask_band: bool  # validity also from an alpha / mask band

    def apply(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return io.optical_to_uint8(raw, nodata=self.nodata, limits=self.limits)

    def describe(self) -> dict[str, Any]:
        return {"bands": list(self.bands), "stretch": None if self.limits is None else
                [list(limit) for limit in self.limits], "nodata": self.nodata}


@dataclasses.dataclass(frozen=True)
class SarConversion:
    """SAR window -> dB: bands, the unit decided for the scene, calibration, and the map onto
    the reference dB statistics (None: not normalised)."""

    bands: tuple[int, ...]  # 1-based
    kind: io.SarKind
    scale: float
    offset: float
    nodata: float | None
    db_map: tuple[tuple[float, ...], tuple[float, ...]] | None  # (gains, offsets)
    mask_band: bool

    def apply(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        db, valid = io.sar_to_db(raw, self.kind.kind, scale=self.scale, offset=self.offset,
                                 nodata=self.nodata)
        if self.db_map is not None:
            db = io.apply_db_map(db, valid, *self.db_map)
        return db, valid

    def describe(self) -> dict[str, Any]:
        return {"bands": list(self.bands), "kind": self.kind.kind, "rule": self.kind.rule,
                "scale": self.scale, "offset": self.offset, "nodata": self.nodata,
                "normalised": None if self.db_map is None else
                {"gains": list(self.db_map[0]), "offsets": list(self.db_map[1])}}


@dataclasses.dataclass
class _Source:
    path: Path
    file: Any  # the rasterio dataset of the file
    reader: Any  # what windows are read from: the file, or a WarpedVRT onto the grid
    warped: bool
    conversion: OpticalConversion | SarConversion | None = None

    def close(self) -> None:
        if self.reader is not self.file:
            self.reader.close()
        self.file.close()


class Scene:
    """One or two rasters on one grid, read window by window (module docstring)."""

    def __init__(self, grid: Grid, sources: dict[str, _Source]):
        self.grid = grid
        self._sources = sources
        self.reads: list[tuple[str, int, int]] = []  # (modality, height, width) of each read
        self._overviews: dict[int, dict[str, np.ndarray]] = {}  # max_side -> overview

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self._sources)

    @property
    def sar_channels(self) -> int | None:
        sar = self._sources.get("sar")
        return None if sar is None else len(sar.conversion.bands)

    def path(self, modality: str) -> Path:
        return self._sources[modality].path

    def read(self, row: int, col: int, height: int, width: int) -> dict[str, np.ndarray]:
        """The window's ``optical`` uint8 [h, w, 3] and / or ``sar`` dB float32 [h, w, C],
        and ``valid`` [h, w]: pixels inside the scene with data in every modality."""
        out: dict[str, np.ndarray] = {}
        valid = np.zeros((height, width), bool)
        top, left = max(row, 0), max(col, 0)
        bottom, right = min(row + height, self.grid.height), min(col + width, self.grid.width)
        inside = bottom > top and right > left
        if inside:
            valid[top - row:bottom - row, left - col:right - col] = True
        for modality, source in self._sources.items():
            conversion = source.conversion
            channels = 3 if modality == "optical" else len(conversion.bands)
            dtype = np.uint8 if modality == "optical" else np.float32
            fill = 0 if modality == "optical" else DB_FLOOR
            pixels = np.full((height, width, channels), fill, dtype)
            if inside:
                self.reads.append((modality, bottom - top, right - left))
                window = Window(left, top, right - left, bottom - top)
                raw = np.moveaxis(source.reader.read(list(conversion.bands), window=window),
                                  0, -1)
                converted, ok = conversion.apply(raw)
                if conversion.mask_band:
                    ok &= source.reader.dataset_mask(window=window) > 0
                converted[~ok] = fill
                pixels[top - row:bottom - row, left - col:right - col] = converted
                valid[top - row:bottom - row, left - col:right - col] &= ok
            out[modality] = pixels
        out["valid"] = valid
        return out

    def overview(self, max_side: int = DEFAULT_OVERVIEW) -> dict[str, np.ndarray]:
        """The whole scene decimated to ``max_side`` px on its longer side (nearest), converted
        like every window: for previews. Read once per size (a big scene's decimated read
        walks its whole file)."""
        if max_side not in self._overviews:
            self._overviews[max_side] = self._read_overview(max_side)
        return self._overviews[max_side]

    def _read_overview(self, max_side: int) -> dict[str, np.ndarray]:
        shape = overview_shape(self.grid, max_side)
        out, valid = {}, np.ones(shape, bool)
        for modality, source in self._sources.items():
            raw = _decimated(source.reader, source.conversion.bands, shape)
            converted, ok = source.conversion.apply(raw)
            out[modality] = converted
            valid &= ok
        out["valid"] = valid
        return out

    def describe(self) -> dict[str, Any]:
        """The scene for a summary: grid, files, whether the SAR was warped, conversions."""
        return {"crs": self.grid.crs.to_string(), "transform": list(self.grid.transform)[:6],
                "height": self.grid.height, "width": self.grid.width,
                **{m: {"path": str(s.path), "warped_onto_grid": s.warped,
                       **s.conversion.describe()} for m, s in self._sources.items()}}

    def close(self) -> None:
        for source in self._sources.values():
            source.close()

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def overview_shape(grid: Grid, max_side: int) -> tuple[int, int]:
    factor = max(1.0, max(grid.height, grid.width) / max_side)
    return max(1, math.ceil(grid.height / factor)), max(1, math.ceil(grid.width / factor))


def _decimated(reader, bands: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    raw = reader.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
    return np.moveaxis(raw, 0, -1)


def _open(path: str | Path, role: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SceneError(f"{role} {path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        raise SceneError(f"{role} {path}: cannot read it as a raster ({error})") from None
    if dataset.crs is None:
        dataset.close()
        raise SceneError(
            f"{role} {path}: the file has no CRS (no georeferencing), so its pixels cannot "
            "be placed on the ground, co-gridded with the other image or written as a "
            "GeoTIFF; assign one (e.g. gdal_edit.py -a_srs EPSG:32633 -a_ullr ...) first")
    return dataset


def _grid(dataset) -> Grid:
    return Grid(dataset.crs, dataset.transform, dataset.height, dataset.width)


def _on_grid(dataset, grid: Grid) -> bool:
    return (dataset.height, dataset.width) == (grid.height, grid.width) and io.same_crs(
        dataset.crs.to_string(), grid.crs.to_string()) and io.transforms_match(
        tuple(dataset.transform)[:6], tuple(grid.transform)[:6])


def _check_overlap(path: Path, dataset, grid: Grid, reference: Path) -> None:
    left, bottom, right, top = transform_bounds(dataset.crs, grid.crs, *dataset.bounds)
    g_left, g_bottom, g_right, g_top = grid.bounds
    if min(right, g_right) <= max(left, g_left) or min(top, g_top) <= max(bottom, g_bottom):
        raise SceneError(
            f"--sar {path} and --optical {reference} do not overlap: the SAR covers "
            f"({left:.1f}, {bottom:.1f}, {right:.1f}, {top:.1f}) and the optical image "
            f"({g_left:.1f}, {g_bottom:.1f}, {g_right:.1f}, {g_top:.1f}) in "
            f"{grid.crs.to_string()} (left, bottom, right, top)")


def _warp_onto(dataset, grid: Grid, correction: np.ndarray | None):
    transform = grid.transform
    if correction is not None:
        a = np.asarray(correction, np.float64)[:2]
        transform = transform @ Affine(*a[0], *a[1])
    fill = dataset.nodata if dataset.nodata is not None else 0.0
    return WarpedVRT(dataset, crs=grid.crs, transform=transform, width=grid.width,
                     height=grid.height, resampling=Resampling.bilinear, src_nodata=fill,
                     nodata=fill)


def _optical_conversion(dataset, path: Path, shape: tuple[int, int]
                        ) -> tuple[OpticalConversion, np.ndarray]:
    """The scene's optical conversion, and the decimated read it was decided on."""
    meta = io.dataset_meta(dataset, path)
    bands = meta.data_bands
    bands = bands[:3] if len(bands) >= 3 else bands[:1]
    if not bands:
        raise SceneError(f"--optical {path}: no data band")
    sample = _decimated(dataset, bands, shape)
    limits = None
    if np.dtype(meta.dtype) != np.uint8:
        valid = io.optical_valid(sample, meta.nodata)
        if io.has_mask_band(dataset):
            valid &= _decimated_mask(dataset, shape)
        limits = tuple(io.stretch_limits(sample, valid))
    conversion = OpticalConversion(tuple(bands), limits, meta.nodata, io.has_mask_band(dataset))
    return conversion, sample


def _decimated_mask(reader, shape: tuple[int, int]) -> np.ndarray:
    return reader.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0


def _sar_conversion(source: _Source, options: SarOptions, shape: tuple[int, int],
                    optical_valid: np.ndarray | None) -> SarConversion:
    meta = io.dataset_meta(source.file, source.path)
    bands = meta.data_bands
    if not bands:
        raise SceneError(f"--sar {source.path}: no data band")
    sample = _decimated(source.reader, bands, shape)
    if len(bands) > 1 and all(np.array_equal(sample[..., 0], sample[..., b])
                              for b in range(1, len(bands))):
        bands, sample = bands[:1], sample[..., :1]  # a grey image saved as RGB: one band
    scale, offset = io.sar_calibration(meta)
    try:
        kind = io.decide_sar_kind(sample, meta, options.kind, scale=scale, offset=offset)
    except io.SarKindError as error:
        raise SceneError(f"--sar {error}") from None
    mask_band = not source.warped and io.has_mask_band(source.file)
    conversion = SarConversion(tuple(bands), kind, scale, offset, meta.nodata, None, mask_band)
    mode = options.normalise
    if mode == "auto":
        mode = "percentile" if io.sar_uncalibrated(kind, sample.dtype, meta) else "none"
    if mode == "percentile":
        db, valid = conversion.apply(sample)
        if mask_band:
            valid &= _decimated_mask(source.reader, shape)
        if optical_valid is not None:
            valid &= optical_valid
        gains, offsets = io.db_statistics_map(db, valid, (SAR_DB_MEAN,), (SAR_DB_STD,))
        conversion = dataclasses.replace(conversion, db_map=(tuple(gains), tuple(offsets)))
    return conversion


def open_scene(optical: str | Path | None = None, sar: str | Path | None = None, *,
               sar_kind: str = "auto", sar_normalise: str = "auto",
               sar_correction: np.ndarray | None = None,
               overview: int = DEFAULT_OVERVIEW) -> Scene:
    """Opens the scene (module docstring); raises ``SceneError`` naming the file for a file
    that is missing, unreadable or without CRS, and for images that do not overlap."""
    if optical is None and sar is None:
        raise SceneError("give --optical, --sar or both")
    options = SarOptions(sar_kind, sar_normalise)
    sources: dict[str, _Source] = {}
    with bounded_gdal_cache():
        return _open_scene(optical, sar, options, sar_correction, overview, sources)


def _open_scene(optical, sar, options: SarOptions, sar_correction, overview: int,
                sources: dict[str, _Source]) -> Scene:
    try:
        if optical is not None:
            dataset = _open(optical, "--optical")
            sources["optical"] = _Source(Path(optical), dataset, dataset, False)
        if sar is not None:
            dataset = _open(sar, "--sar")
            sources["sar"] = _Source(Path(sar), dataset, dataset, False)
        first = sources["optical" if "optical" in sources else "sar"]
        grid = _grid(first.file)
        if "sar" in sources and "optical" in sources:
            source = sources["sar"]
            _check_overlap(source.path, source.file, grid, first.path)
            if sar_correction is not None or not _on_grid(source.file, grid):
                source.reader, source.warped = _warp_onto(source.file, grid,
                                                          sar_correction), True
        elif sar_correction is not None:
            raise SceneError("a SAR correction (registration) needs both --optical and --sar")
        shape = overview_shape(grid, overview)
        optical_valid = None
        if "optical" in sources:
            source = sources["optical"]
            source.conversion, sample = _optical_conversion(source.file, source.path, shape)
            optical_valid = source.conversion.apply(sample)[1]
        if "sar" in sources:
            sources["sar"].conversion = _sar_conversion(sources["sar"], options, shape,
                                                        optical_valid)
    except BaseException:
        for source in sources.values():
            source.close()
        raise
    return Scene(grid, sources)


__all__ = ["DEFAULT_OVERVIEW", "GDAL_CACHEMAX_MB", "Grid", "OpticalConversion",
           "SarConversion", "Scene", "SceneError", "bounded_gdal_cache", "open_scene",
           "overview_shape"]
