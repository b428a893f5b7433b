"""One scene: read its files, check they cover the same pixels, convert to the data contract.

Every decision taken on the way (the SAR unit and why, the normalisation, identical bands
stored once, the optical no-data rule, the residual shift) is written into the scene's notes,
which the summary reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mars_jax.data import coregistration, io
from mars_jax.data.ingest.config import BadInput, IngestConfig
from mars_jax.data.ingest.pairing import SceneFiles, describe

# Display images: pure black is fill; JPEG blurs it, so near-black counts there.
BORDER_BLACK_THRESHOLD = {".png": 0, ".jpg": 8, ".jpeg": 8}


@dataclass
class Scene:
    """A pair converted to the data contract, ready to tile."""

    id: str
    optical: np.ndarray  # uint8 [H, W, 3]
    sar: np.ndarray  # float32 dB [H, W, C]
    valid: np.ndarray  # bool [H, W]
    labels: np.ndarray | None = None  # uint8 [H, W]
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    sar_path: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.valid.shape


def load_scene(scene: SceneFiles, config: IngestConfig) -> Scene:
    """Reads and converts one scene; raises ``BadInput`` naming the file and the problem."""
    paths = {role: _single_file(scene, role, config) for role in scene.files}
    rasters = {role: _read(path) for role, path in paths.items()}
    _check_same_grid(rasters)
    notes: dict[str, Any] = {}
    (sar_raw, sar_meta), (optical_raw, optical_meta) = rasters["SAR"], rasters["optical"]
    sar, sar_valid, uncalibrated = _convert_sar(sar_raw, sar_meta, config, notes)
    optical, optical_valid = _convert_optical(optical_raw, optical_meta, config, notes)
    if _normalise(config, uncalibrated) == "percentile":  # over the pixels tiles will use
        sar = _match_statistics(sar, optical_valid & sar_valid, sar_meta, config, notes)
    labels = _convert_labels(*rasters["labels"]) if "labels" in rasters else None
    georeferenced = [meta for _, meta in rasters.values() if meta.georeferenced]
    if config.check_alignment:
        _check_alignment(optical, sar, optical_valid & sar_valid, sar_meta.path, config, notes)
    return Scene(id=scene.id, optical=optical, sar=sar, valid=optical_valid & sar_valid,
                 labels=labels,
                 crs=georeferenced[0].crs if georeferenced else None,
                 transform=georeferenced[0].transform if georeferenced else None,
                 notes=notes, sar_path=sar_meta.path)


def _single_file(scene: SceneFiles, role: str, config: IngestConfig) -> Path:
    files = scene.files[role]
    if len(files) == 1:
        return files[0]
    if files:
        raise BadInput("duplicate_id", files[0],
                       f"{len(files)} {role} files for id {scene.id!r}: {[f.name for f in files]}")
    folder, pattern = config.folders()[role]
    partner = next(found[0] for found in scene.files.values() if found)
    raise BadInput("missing_partner", partner,
                   f"no {role} file for id {scene.id!r} in {folder} matching {describe(pattern)}")


def _read(path: Path) -> tuple[np.ndarray, io.RasterMeta]:
    try:
        return io.read_raster(path)
    except io.RasterReadError as error:
        raise BadInput("unreadable", path, error.detail) from error


def _check_same_grid(rasters: dict[str, tuple[np.ndarray, io.RasterMeta]]) -> None:
    """Every raster covers the optical one's pixels: same size and, if georeferenced, place."""
    reference = rasters["optical"][1]
    for _, meta in rasters.values():
        if (meta.height, meta.width) != (reference.height, reference.width):
            raise BadInput("size_mismatch", meta.path,
                           f"{meta.height}x{meta.width} pixels, but {reference.path} has "
                           f"{reference.height}x{reference.width}")
        if not (meta.georeferenced and reference.georeferenced):
            continue
        if not io.same_crs(meta.crs, reference.crs):
            raise BadInput("crs_mismatch", meta.path,
                           f"CRS {_short(meta.crs)}, but {reference.path} has "
                           f"{_short(reference.crs)}")
        if not io.transforms_match(meta.transform, reference.transform):
            raise BadInput("transform_mismatch", meta.path,
                           f"transform {meta.transform}, but {reference.path} has "
                           f"{reference.transform}")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# SAR


def _convert_sar(raw: np.ndarray, meta: io.RasterMeta, config: IngestConfig,
                 notes: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, bool]:
    """-> (dB, valid, whether uncalibrated display DN)."""
    selected = _sar_bands(raw, meta, config, notes)
    scale, offset = _calibration(meta, config, selected.shape[-1], notes)
    try:
        kind = io.decide_sar_kind(selected, meta, config.sar_kind, scale=scale, offset=offset,
                                  force=config.force)
    except io.SarKindError as error:
        raise BadInput("sar_kind", meta.path, str(error).removeprefix(f"{meta.path}: ")
                       ) from error
    notes["sar_kind"], notes["sar_kind_rule"] = kind.kind, kind.rule
    notes["sar_kind_reason"] = kind.reason
    nodata = meta.nodata
    sar, valid = io.sar_to_db(selected, kind.kind, scale=scale, offset=offset, nodata=nodata)
    if meta.mask is not None:
        valid &= meta.mask
    if not valid.any():
        raise BadInput("all_nodata", meta.path,
                       "no valid SAR pixel (all zero, NaN, inf, nodata or non-positive)")
    return sar, valid, kind.uncalibrated


def _normalise(config: IngestConfig, uncalibrated: bool) -> str:
    if config.sar_normalise == "auto":
        return "percentile" if uncalibrated else "none"
    return config.sar_normalise


def _match_statistics(sar: np.ndarray, valid: np.ndarray, meta: io.RasterMeta,
                      config: IngestConfig, notes: dict[str, Any]) -> np.ndarray:
    for name in ("sar_db_mean", "sar_db_std"):
        if len(getattr(config, name)) not in (1, sar.shape[-1]):
            raise BadInput("band_selection", meta.path,
                           f"{sar.shape[-1]} SAR bands but {len(getattr(config, name))} values "
                           f"of --{name.replace('_', '-')}")
    sar, gains, offsets = io.match_db_statistics(sar, valid, config.sar_db_mean,
                                                 config.sar_db_std)
    notes["sar_normalised"] = {"gain": gains, "offset": offsets}
    return sar


def _sar_bands(raw: np.ndarray, meta: io.RasterMeta, config: IngestConfig,
               notes: dict[str, Any]) -> np.ndarray:
    """The bands asked for; by default every data band, identical copies stored once (a grey
    display image saved as RGB is one polarisation, not three)."""
    if config.sar_bands:
        return _select_bands(raw, meta, config.sar_bands)
    selected = _select_bands(raw, meta, meta.data_bands)
    if selected.shape[-1] > 1 and all(np.array_equal(selected[..., 0], selected[..., b])
                                      for b in range(1, selected.shape[-1])):
        notes["identical_sar_bands"] = selected.shape[-1]
        return selected[..., :1]
    return selected


def _calibration(meta: io.RasterMeta, config: IngestConfig, bands: int,
                 notes: dict[str, Any]) -> tuple[float, float]:
    """--sar-scale / --sar-offset when given, else the file's own (one for all bands)."""
    if config.sar_scale != 1 or config.sar_offset != 0 or not meta.calibrated:
        return config.sar_scale, config.sar_offset
    scales, offsets = set(meta.scales), set(meta.offsets)
    if len(scales) > 1 or len(offsets) > 1:
        raise BadInput("calibration", meta.path,
                       f"per-band scales {meta.scales} / offsets {meta.offsets}: give one "
                       "--sar-scale / --sar-offset with --sar-bands")
    notes["sar_calibration"] = "the file's scale / offset"
    return float(scales.pop()), float(offsets.pop())


# ---------------------------------------------------------------------------------------------
# Optical


def _convert_optical(raw: np.ndarray, meta: io.RasterMeta, config: IngestConfig,
                     notes: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    bands = config.optical_bands or ((1, 2, 3) if len(meta.data_bands) >= 3 else (1,))
    selected = _select_bands(raw, meta, bands)
    if selected.shape[-1] not in (1, 3):
        raise BadInput("band_selection", meta.path,
                       f"optical needs 1 or 3 bands, {selected.shape[-1]} selected")
    rule = config.optical_nodata_value()
    nodata = meta.nodata if rule == "auto" else (None if rule == "none" else rule)
    optical, valid = io.optical_to_uint8(selected, scale=config.optical_scale, nodata=nodata)
    masks = []
    if meta.mask is not None and rule != "none":
        valid &= meta.mask
        masks.append("alpha / mask band")
    if rule == "auto" and meta.display_format and meta.mask is None:
        threshold = BORDER_BLACK_THRESHOLD[meta.path.suffix.lower()]
        valid &= ~io.border_black(selected, threshold)
        masks.append("black fill touching the border" + (f" (<= {threshold})" if threshold
                                                         else ""))
    elif nodata is not None:
        masks.append(f"value {nodata:g}")
    optical[~valid] = 0
    if masks:
        notes["optical_nodata"] = {"rule": " + ".join(masks),
                                   "fraction": round(1 - float(valid.mean()), 4)}
    if not valid.any():
        raise BadInput("all_nodata", meta.path, "no valid optical pixel (all NaN, inf, nodata, "
                       "masked or black fill)")
    return optical, valid


def _select_bands(raw: np.ndarray, meta: io.RasterMeta, bands: Sequence[io.Band]) -> np.ndarray:
    try:
        return io.select_bands(raw, meta, bands)
    except io.BandSelectionError as error:
        raise BadInput("band_selection", meta.path, str(error)) from error


def _convert_labels(raw: np.ndarray, meta: io.RasterMeta) -> np.ndarray:
    try:
        return io.labels_to_uint8(raw)
    except ValueError as error:
        raise BadInput("bad_labels", meta.path, str(error)) from error


# ---------------------------------------------------------------------------------------------
# Co-registration


def _check_alignment(optical: np.ndarray, sar: np.ndarray, valid: np.ndarray, sar_path: Path,
                     config: IngestConfig, notes: dict[str, Any]) -> None:
    shift = coregistration.estimate_shift(optical, sar, valid)
    if shift.magnitude > config.max_shift:
        raise BadInput("misaligned", sar_path,
                       f"SAR content sits {shift.magnitude:.0f} px (dy {shift.dy}, dx "
                       f"{shift.dx}) from the optical image's, more than --max-shift "
                       f"{config.max_shift:g} (peak strength {shift.strength:.1f})")
    notes["shift"] = shift.to_json()
