"""Ingests folders of co-registered optical / SAR scenes into ArrayRecord shards of tiles.

    python -m mars_jax.data.ingest --optical OPT_DIR --sar SAR_DIR [--labels LULC_DIR] \\
        --out OUT_DIR --tile 512 --overlap 64 --sar-kind db [--sar-bands 1] [--strict]

or in Python ``ingest(IngestConfig(optical=..., sar=..., out=...)) -> IngestSummary``.

Pairing. Each folder is scanned (not recursively) with a pattern holding ``{id}`` and optional
``*`` wildcards, e.g. ``--optical-pattern '{id}_opt.png' --sar-pattern '{id}_sar.png'``; the
default pattern is the file stem with a raster suffix (.tif .tiff .png .jpg .jpeg), so same-name
files in two folders pair. Optical and SAR may share one folder when their patterns differ.

Conversion. SAR becomes dB float32 and optical uint8 RGB by the rules of ``mars_jax.data.io``
(``--sar-kind``, ``--sar-scale``/``--sar-offset`` calibration, ``--optical-scale`` or a
2..98 percentile stretch). Bands are picked by 1-based number or description: ``--sar-bands``
(default all), ``--optical-bands`` (default the first three, or a single band as grey).

Tiling. Tiles of ``--tile`` pixels start every ``tile - overlap`` pixels; the last row and column
of tiles are moved back to end on the scene's edge, so tiles cover the scene. A scene smaller than
a tile along an axis is padded (bottom / right) with no-data (``valid`` False, optical 0, SAR at
the dB floor, labels 0). Tiles with more than ``--max-nodata`` (default 0.3) of their pixels not
valid are dropped.

Example keys (docs/architecture.md, plus): ``optical`` uint8 [T,T,3]; ``sar`` float32 [T,T,C]
(dB); ``valid`` bool [T,T] (data in both modalities); ``id`` 0-d str (scene id); ``tile_origin``
int32 [2] (row, col of the tile's top-left pixel in the scene); for georeferenced scenes ``crs``
0-d str (``EPSG:n`` or WKT) and ``transform`` float64 [6], the tile's own affine in rasterio
``Affine`` order (a, b, c, d, e, f); with ``--labels``, ``landcover`` uint8 [T,T].

Bad input (unreadable or truncated file, missing partner, duplicate id, size / CRS / transform
mismatch, missing band, no valid pixel, bad labels, empty folder) is skipped, logged and counted
by reason; ``--strict`` stops at the first one instead (``StrictStop``; exit status 1), after
closing the shard being written. Finished shards are never touched by a run, except that
``--overwrite`` deletes the previous shards and summary when the new run writes its first tile.

Output: ``OUT/tiles-NNNNN.array_record`` (read them with ``ShardSource(list_shards(OUT))``) and
``OUT/ingest_summary.json``, the layout and counts for downstream readers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mars_jax.data import io
from mars_jax.data.records import SHARD_SUFFIX, ShardWriter, list_shards

log = logging.getLogger(__name__)

SHARD_NAME = "tiles"
SUMMARY_FILE = "ingest_summary.json"
SUMMARY_FORMAT = "mars_jax.ingest/1"
LABEL_KEY = "landcover"
LABEL_FILL = 0
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
DEFAULT_MAX_NODATA = 0.3
DEFAULT_SHARD_SIZE = 256


@dataclass
class IngestConfig:
    """Everything a run depends on (the CLI flags of the same names)."""

    optical: Path
    out: Path
    sar: Path | None = None  # None: the optical folder
    labels: Path | None = None
    optical_pattern: str | None = None  # None: file stem + raster suffix
    sar_pattern: str | None = None
    labels_pattern: str | None = None
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    max_nodata: float = DEFAULT_MAX_NODATA
    sar_kind: str = "db"
    sar_bands: tuple[io.Band, ...] | None = None  # None: all bands
    sar_scale: float = 1.0
    sar_offset: float = 0.0
    optical_bands: tuple[io.Band, ...] | None = None  # None: the first three (or one)
    optical_scale: float | None = None  # None: percentile stretch of non-uint8 optical
    shard_size: int = DEFAULT_SHARD_SIZE
    strict: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.optical, self.out = Path(self.optical), Path(self.out)
        self.sar = Path(self.sar) if self.sar is not None else self.optical
        self.labels = Path(self.labels) if self.labels is not None else None
        if self.tile < 1 or not 0 <= self.overlap < self.tile:
            raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile {self.tile} "
                             f"overlap {self.overlap}")
        if not 0 <= self.max_nodata <= 1:
            raise ValueError(f"max_nodata must be in [0, 1], got {self.max_nodata}")
        if self.sar_kind not in io.SAR_KINDS:
            raise ValueError(f"sar_kind must be one of {io.SAR_KINDS}, got {self.sar_kind!r}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        if self.optical_scale is not None and self.optical_scale <= 0:
            raise ValueError(f"optical_scale must be positive, got {self.optical_scale}")
        for pattern in (self.optical_pattern, self.sar_pattern, self.labels_pattern):
            pattern_regex(pattern)  # fails early on a malformed pattern
        shared = self.sar.resolve() == self.optical.resolve()
        if shared and (None in (self.optical_pattern, self.sar_pattern)
                       or self.optical_pattern == self.sar_pattern):
            raise ValueError("optical and SAR share a folder: give them different patterns, "
                             "e.g. --optical-pattern '{id}_opt.png' --sar-pattern '{id}_sar.png'")

    def folders(self) -> dict[str, tuple[Path, str | None]]:
        """Role -> (folder, pattern) of each input."""
        folders = {"optical": (self.optical, self.optical_pattern),
                   "SAR": (self.sar, self.sar_pattern)}
        if self.labels is not None:
            folders["labels"] = (self.labels, self.labels_pattern)
        return folders

    def to_json(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value
                for key, value in dataclasses.asdict(self).items()}


class IngestUsageError(ValueError):
    """The run cannot start as asked (missing folder, OUT already holds shards)."""


class BadInput(Exception):
    """One input that cannot be ingested, with the reason it is counted under."""

    def __init__(self, reason: str, path: Path, detail: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.reason, self.path, self.detail = reason, path, detail

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "path": str(self.path), "detail": self.detail}


class StrictStop(RuntimeError):
    """A strict run met bad input; ``summary`` tells what was written before."""

    def __init__(self, bad: BadInput, summary: IngestSummary):
        super().__init__(f"--strict: stopped at bad input {bad}")
        self.bad, self.summary = bad, summary


@dataclass
class IngestSummary:
    """Counts of a run; ``format()`` for people, ``to_json()`` for downstream readers."""

    config: IngestConfig
    scenes_found: int = 0
    scenes_ok: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    bad_inputs: list[BadInput] = field(default_factory=list)
    tiles_written: int = 0
    tiles_dropped: int = 0
    georeferenced_scenes: int = 0
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    shards: list[Path] = field(default_factory=list)
    num_bytes: int = 0
    seconds: float = 0.0
    stopped: str | None = None

    @property
    def scenes_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def bytes_per_tile(self) -> float:
        return self.num_bytes / self.tiles_written if self.tiles_written else 0.0

    def record_bad(self, bad: BadInput) -> None:
        self.skipped[bad.reason] += 1
        self.bad_inputs.append(bad)

    def record_keys(self, example: dict[str, np.ndarray]) -> None:
        for key, value in example.items():
            dtype = "str" if value.dtype.kind == "U" else value.dtype.name
            self.keys.setdefault(key, {"dtype": dtype, "shape": list(value.shape)})

    def format(self) -> str:
        config = self.config
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()))
        keys = ", ".join(f"{key} {spec['dtype']}{spec['shape']}" for key, spec in self.keys.items())
        names = sorted({path.name for path in (self.shards[:1] + self.shards[-1:])})
        shard_names = f" ({' .. '.join(names)})" if names else ""
        lines = [
            f"ingest summary: {config.out}",
            f"  scenes: {self.scenes_found} found, {self.scenes_ok} ok, "
            f"{self.scenes_skipped} skipped",
            f"  skipped by reason: {reasons or 'none'}",
            f"  tiles: {self.tiles_written} written, {self.tiles_dropped} dropped "
            f"(> {config.max_nodata:.0%} no-data); {config.tile}x{config.tile}, "
            f"overlap {config.overlap}; SAR in dB from {config.sar_kind}",
            f"  example keys: {keys or 'none written'}",
            f"  shards: {len(self.shards)}{shard_names}, {self.num_bytes:,} bytes, "
            f"{self.bytes_per_tile:,.0f} bytes per tile, {self.seconds:.1f} s",
        ]
        if self.stopped:
            lines.append(f"  stopped: {self.stopped}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        config = self.config
        return {
            "format": SUMMARY_FORMAT,
            "num_examples": self.tiles_written,
            "shards": [path.name for path in self.shards],
            "keys": self.keys,
            "tile": config.tile,
            "overlap": config.overlap,
            "optical_channels": 3,
            "sar_channels": self.keys.get("sar", {}).get("shape", [None])[-1],
            "sar_kind": config.sar_kind,
            "sar_units": "dB",
            "sar_floor_db": io.DB_FLOOR,
            "transform_order": "rasterio Affine (a, b, c, d, e, f)",
            "labels": LABEL_KEY if config.labels else None,
            "scenes": {"found": self.scenes_found, "ok": self.scenes_ok,
                       "georeferenced": self.georeferenced_scenes,
                       "skipped": dict(sorted(self.skipped.items()))},
            "tiles": {"written": self.tiles_written, "dropped_nodata": self.tiles_dropped},
            "bytes": self.num_bytes,
            "bytes_per_tile": self.bytes_per_tile,
            "seconds": self.seconds,
            "stopped": self.stopped,
            "bad_inputs": [bad.to_json() for bad in self.bad_inputs],
            "config": config.to_json(),
        }


# ---------------------------------------------------------------------------------------------
# Pairing


@dataclass
class SceneFiles:
    """The files found for one scene id, per role (zero, one or several of each)."""

    id: str
    files: dict[str, list[Path]]


def pattern_regex(pattern: str | None) -> re.Pattern:
    """``'{id}_sar.png'`` -> a regex capturing the id; None -> stem + a raster suffix."""
    if pattern is None:
        suffixes = "|".join(re.escape(suffix) for suffix in sorted(io.RASTER_SUFFIXES))
        return re.compile(rf"(?P<id>.+)(?:{suffixes})", re.IGNORECASE)
    if pattern.count("{id}") != 1:
        raise ValueError(f"a file pattern needs exactly one {{id}}, got {pattern!r}")
    before, after = (re.escape(part).replace(r"\*", ".*") for part in pattern.split("{id}"))
    return re.compile(f"{before}(?P<id>.+?){after}")


def describe(pattern: str | None) -> str:
    suffixes = "|".join(sorted(io.RASTER_SUFFIXES))
    return repr(pattern) if pattern else f"'{{id}}{{{suffixes}}}'"


def scan_folder(folder: Path, pattern: str | None) -> dict[str, list[Path]]:
    """Scene id -> files of ``folder`` (not recursive, hidden files ignored) matching pattern."""
    regex = pattern_regex(pattern)
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        match = regex.fullmatch(path.name)
        if match and path.is_file() and not path.name.startswith("."):
            found.setdefault(match["id"], []).append(path)
    return found


def find_scenes(config: IngestConfig) -> tuple[list[SceneFiles], list[BadInput]]:
    """Scenes sorted by id, or (when a folder has no matching file) none and ``empty_folder``."""
    scanned = {}
    for role, (folder, pattern) in config.folders().items():
        if not folder.is_dir():
            raise IngestUsageError(f"{role} folder {folder} does not exist")
        scanned[role] = scan_folder(folder, pattern)
    empty = [BadInput("empty_folder", folder, f"no {role} file matches {describe(pattern)}")
             for role, (folder, pattern) in config.folders().items() if not scanned[role]]
    if empty:
        return [], empty
    ids = sorted(set(scanned["optical"]) | set(scanned["SAR"]))
    return [SceneFiles(scene_id, {role: found.get(scene_id, []) for role, found in
                                  scanned.items()}) for scene_id in ids], []


# ---------------------------------------------------------------------------------------------
# One scene: read, check, convert


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

    @property
    def shape(self) -> tuple[int, int]:
        return self.valid.shape


def load_scene(scene: SceneFiles, config: IngestConfig) -> Scene:
    """Reads and converts one scene; raises ``BadInput`` naming the file and the problem."""
    paths = {role: _single_file(scene, role, config) for role in scene.files}
    rasters = {role: _read(path) for role, path in paths.items()}
    _check_same_grid(rasters)
    (sar_raw, sar_meta), (optical_raw, optical_meta) = rasters["SAR"], rasters["optical"]
    sar, sar_valid = _convert_sar(sar_raw, sar_meta, config)
    optical, optical_valid = _convert_optical(optical_raw, optical_meta, config)
    labels = _convert_labels(*rasters["labels"]) if "labels" in rasters else None
    georeferenced = [meta for _, meta in rasters.values() if meta.georeferenced]
    return Scene(id=scene.id, optical=optical, sar=sar, valid=optical_valid & sar_valid,
                 labels=labels,
                 crs=georeferenced[0].crs if georeferenced else None,
                 transform=georeferenced[0].transform if georeferenced else None)


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


def _convert_sar(raw: np.ndarray, meta: io.RasterMeta,
                 config: IngestConfig) -> tuple[np.ndarray, np.ndarray]:
    bands = config.sar_bands or tuple(range(1, meta.count + 1))
    selected = _select_bands(raw, meta, bands)
    sar, valid = io.sar_to_db(selected, config.sar_kind, scale=config.sar_scale,
                              offset=config.sar_offset, nodata=meta.nodata)
    if not valid.any():
        raise BadInput("all_nodata", meta.path,
                       "no valid SAR pixel (all zero, NaN, inf, nodata or non-positive)")
    return sar, valid


def _convert_optical(raw: np.ndarray, meta: io.RasterMeta,
                     config: IngestConfig) -> tuple[np.ndarray, np.ndarray]:
    bands = config.optical_bands or ((1, 2, 3) if meta.count >= 3 else (1,))
    selected = _select_bands(raw, meta, bands)
    if selected.shape[-1] not in (1, 3):
        raise BadInput("band_selection", meta.path,
                       f"optical needs 1 or 3 bands, {selected.shape[-1]} selected")
    optical, valid = io.optical_to_uint8(selected, scale=config.optical_scale, nodata=meta.nodata)
    if not valid.any():
        raise BadInput("all_nodata", meta.path, "no valid optical pixel (all NaN, inf or nodata)")
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
# Tiling


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


# ---------------------------------------------------------------------------------------------
# Output


class _Output:
    """Shards in OUT, opened at the first tile: a run with nothing to write changes nothing, and
    ``--overwrite`` deletes the previous output only once it has a tile to put in its place."""

    def __init__(self, out: Path, shard_size: int, overwrite: bool):
        self.out, self.shard_size = out, shard_size
        self.previous = list_shards(out) if out.is_dir() else []
        if self.previous and not overwrite:
            raise IngestUsageError(f"{out} already holds {len(self.previous)} shard(s) "
                                   f"(e.g. {self.previous[0].name}): pass --overwrite to "
                                   "replace them, or choose another --out")
        self._writer: ShardWriter | None = None

    @property
    def owns_directory(self) -> bool:
        """Whether a summary written now describes the shards in OUT."""
        return self._writer is not None or not self.previous

    def write(self, example: dict[str, np.ndarray]) -> None:
        if self._writer is None:
            self._delete_previous()
            self._writer = ShardWriter(self.out / SHARD_NAME, self.shard_size)
        self._writer.write(example)

    def _delete_previous(self) -> None:
        leftovers = [*self.out.glob(f"*{SHARD_SUFFIX}"), *self.out.glob(f"*{SHARD_SUFFIX}.tmp"),
                     self.out / SUMMARY_FILE]
        for path in leftovers:
            path.unlink(missing_ok=True)
        if self.previous:
            log.info("--overwrite: deleted %d previous shard(s) in %s", len(self.previous),
                     self.out)

    def close(self) -> list[Path]:
        return self._writer.close() if self._writer is not None else []


def write_summary_json(summary: IngestSummary) -> Path:
    """Writes OUT/ingest_summary.json atomically (a reader never sees half a file)."""
    path = summary.config.out / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# The run


def ingest(config: IngestConfig) -> IngestSummary:
    """Ingests the scenes of ``config`` into shards in ``config.out``; see the module docstring.

    Raises ``IngestUsageError`` before reading anything if the run cannot start, and
    ``StrictStop`` (carrying the summary) at the first bad input of a strict run.
    """
    started = time.perf_counter()
    summary = IngestSummary(config=config)
    output = _Output(config.out, config.shard_size, config.overwrite)
    scenes, folder_problems = find_scenes(config)
    try:
        for bad in folder_problems:
            _skip(bad, summary)
        _ingest_scenes(scenes, config, output, summary)
    except BaseException as error:
        summary.stopped = summary.stopped or f"{type(error).__name__}: {error}"
        raise
    finally:
        summary.shards = output.close()
        summary.num_bytes = sum(path.stat().st_size for path in summary.shards)
        summary.seconds = time.perf_counter() - started
        if output.owns_directory:
            write_summary_json(summary)
        else:
            log.warning("nothing written: the previous output in %s is left as it was",
                        config.out)
    return summary


def _ingest_scenes(scenes: list[SceneFiles], config: IngestConfig, output: _Output,
                   summary: IngestSummary) -> None:
    summary.scenes_found = len(scenes)
    for files in tqdm(scenes, desc="ingest", unit="scene", disable=not config.progress):
        try:
            scene = load_scene(files, config)
        except BadInput as bad:
            _skip(bad, summary)
            continue
        summary.scenes_ok += 1
        summary.georeferenced_scenes += scene.crs is not None
        for example in scene_tiles(scene, config.tile, config.overlap):
            if nodata_fraction(example["valid"]) > config.max_nodata:
                summary.tiles_dropped += 1
                continue
            output.write(example)
            summary.record_keys(example)
            summary.tiles_written += 1


def _skip(bad: BadInput, summary: IngestSummary) -> None:
    summary.record_bad(bad)
    if summary.config.strict:
        summary.stopped = f"--strict: {bad}"
        raise StrictStop(bad, summary)
    log.warning("skipped: %s", bad)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_bands(text: str) -> tuple[io.Band, ...]:
    """``'1,2'`` -> (1, 2); ``'VV'`` -> ('VV',): numbers are 1-based, words band descriptions."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"no band in {text!r}")
    return tuple(int(item) if item.isdigit() else item for item in items)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mars_jax.data.ingest",
        description="Tile co-registered optical / SAR scenes into ArrayRecord shards.",
        epilog="Conversion rules, pairing, tiling and the example keys: see the docstrings of "
               "mars_jax.data.ingest and mars_jax.data.io.")
    add = parser.add_argument
    add("--optical", type=Path, required=True, help="folder of optical scenes")
    add("--sar", type=Path, help="folder of SAR scenes (default: the optical folder)")
    add("--labels", type=Path, help=f"folder of label rasters, stored as {LABEL_KEY!r}")
    add("--out", type=Path, required=True, help="output folder of shards")
    add("--optical-pattern", help="e.g. '{id}_opt.png' (default: file stem + raster suffix)")
    add("--sar-pattern", help="e.g. '{id}_sar.png' (default: file stem + raster suffix)")
    add("--labels-pattern", help="e.g. '{id}_lc.tif' (default: file stem + raster suffix)")
    add("--tile", type=int, default=DEFAULT_TILE, help="tile size in pixels")
    add("--overlap", type=int, default=DEFAULT_OVERLAP, help="overlap of adjacent tiles")
    add("--max-nodata", type=float, default=DEFAULT_MAX_NODATA,
        help="drop tiles with a larger fraction of pixels without data")
    add("--sar-kind", choices=io.SAR_KINDS, default="db", help="unit of the SAR values")
    add("--sar-bands", type=parse_bands, help="e.g. '1' or 'VV' (default: all bands)")
    add("--sar-scale", type=float, default=1.0, help="calibration: value = scale * DN + offset")
    add("--sar-offset", type=float, default=0.0, help="calibration: value = scale * DN + offset")
    add("--optical-bands", type=parse_bands, help="e.g. '4,3,2' (default: bands 1,2,3)")
    add("--optical-scale", type=float,
        help="uint8 = round(value * scale) for non-uint8 optical (default: 2-98%% stretch)")
    add("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="tiles per shard")
    add("--strict", action="store_true", help="stop at the first bad input (exit status 1)")
    add("--overwrite", action="store_true",
        help="replace the shards in OUT (deleted when the first new tile is written)")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; exit status 0 when tiles were written, 1 when none or --strict stopped,
    2 for usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    log.setLevel(logging.INFO)
    try:
        config = IngestConfig(**vars(args))
    except ValueError as error:
        parser.error(str(error))
    try:
        with logging_redirect_tqdm():
            summary = ingest(config)
    except IngestUsageError as error:
        parser.error(str(error))
    except StrictStop as stop:
        print(stop.summary.format())
        print(f"error: {stop}", file=sys.stderr)
        return 1
    print(summary.format())
    if not summary.tiles_written:
        print("error: no tile written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
