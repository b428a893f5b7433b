"""Streaming tiled prediction of whole scenes into GeoTIFFs (``python -m mars_jax.predict``).

Tiles of ``tile`` px overlapping by ``overlap`` px (starts: ``tasks.sliding.window_starts``)
are read from a ``data.scene.Scene`` ``batch`` at a time, predicted by a ``Predictor`` and
blended as ``tasks.sliding`` blends windows, ``out = sum_w a_w y_w / sum_w a_w`` (Gaussian
``a`` by default), on the head's raw output (logits, values), then decoded (argmax, ...).

Memory does not grow with the scene: the output is cut into cells at every tile start and
end; a cell is decoded and written the moment the last tile covering it is blended, then
freed. The host holds one batch of tiles and the cells still waiting for a tile: the overlap
band below the current row of tiles (``overlap x width x (K + 1)`` floats; under the last
row but one, moved back to end on the scene's edge, the band can be up to a tile high). That
grows with the scene's width, not its area. GDAL's block cache is capped
(``data.scene.bounded_gdal_cache``). The output is a tiled, DEFLATE-compressed GeoTIFF on
the scene's grid (CRS and geotransform kept; embeddings on the grid of patches), converted to
a Cloud-Optimized GeoTIFF at the end (GDAL's COG driver), written beside the target as
``*.partial.tif`` and renamed, so an interrupted run leaves no half file under the name.

What is written, by task kind:
  segmentation, binary, change  band 1 uint8 class ids (nodata 255), the class names (tag
      ``CLASS_NAMES``) and a colour table; ``probabilities``: bands 2.. the class
      probabilities as uint8 0..254 with band scale 1/254 (and no colour table: TIFF palettes
      are for single-band files)
  regression   band 1 float32 values (nodata NaN)
  translation  bands 1-3 uint8 RGB with a mask band for no-data
  embed        D float32 bands (nodata NaN) per patch: ``fused`` (MMA), ``optical`` or ``sar``
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import tqdm
from rasterio.windows import Window

from mars_jax.data.scene import Grid, Scene, bounded_gdal_cache
from mars_jax.inference import functions
from mars_jax.inference.predictor import Predictor
from mars_jax.tasks.sliding import blend_weights, window_starts

WHATS = ("predict", "embed")
EMBEDDINGS = ("fused", "optical", "sar")
LABEL_NODATA = 255
PROBABILITY_LEVELS = 254  # probabilities as uint8 0..254 (255 is no-data)
BLOCK = 256  # GeoTIFF block side of the output
DENSE_KINDS = ("segmentation", "binary", "change", "regression", "translation")


class TiledError(ValueError):
    """A prediction that cannot run as asked; the message names the flag or input."""


# ------------------------------------------------------------------------------------------
# What each output band holds
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RasterOutput:
    """The bands written for one head output: how blended floats become pixels."""

    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str, ...]
    decode: Callable[[np.ndarray, np.ndarray], np.ndarray]  # ([h,w,K], valid) -> [n,h,w]
    colormap: dict[int, tuple[int, int, int, int]] | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    scales: tuple[float, ...] | None = None
    mask: bool = False  # validity written as a mask band (no nodata value fits)
    overview_resampling: str = "NEAREST"


def _labels_output(task, probabilities: bool) -> RasterOutput:
    from mars_jax.train.task_images import class_palette

    names = tuple(task.classes)
    palette = class_palette(len(names))

    def decode(blended: np.ndarray, valid: np.ndarray) -> np.ndarray:
        labels = blended.argmax(-1).astype(np.uint8)
        labels[~valid] = LABEL_NODATA
        if not probabilities:
            return labels[None]
        shifted = np.exp(blended - blended.max(-1, keepdims=True))
        p = shifted / shifted.sum(-1, keepdims=True)
        levels = np.rint(p * PROBABILITY_LEVELS).astype(np.uint8)
        levels[~valid] = LABEL_NODATA
        return np.concatenate([labels[None], np.moveaxis(levels, -1, 0)])

    count = 1 + (len(names) if probabilities else 0)
    return RasterOutput(
        count, "uint8", LABEL_NODATA,
        (f"{task.name} class", *(f"p({name})" for name in names if probabilities)),
        decode, colormap=None if probabilities else {  # TIFF palettes are single-band
            i: (*map(int, palette[i]), 255) for i in range(len(names))},
        tags={"CLASS_NAMES": json.dumps(list(names)), "TASK": task.name},
        scales=(1.0, *(1.0 / PROBABILITY_LEVELS,) * (count - 1)))


def _values_output(task) -> RasterOutput:
    def decode(blended: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return np.where(valid, blended[..., 0], np.nan).astype(np.float32)[None]

    return RasterOutput(1, "float32", math.nan, (f"{task.name} ({task.label})",), decode,
                        tags={"TASK": task.name}, overview_resampling="AVERAGE")


def _image_output(task) -> RasterOutput:
    def decode(blended: np.ndarray, valid: np.ndarray) -> np.ndarray:
        rgb = np.rint(np.clip(blended, 0, 1) * 255).astype(np.uint8)
        rgb[~valid] = 0
        return np.moveaxis(rgb, -1, 0)

    return RasterOutput(3, "uint8", None, ("red", "green", "blue"), decode,
                        tags={"TASK": task.name}, mask=True, overview_resampling="AVERAGE")


def _embedding_output(name: str, dim: int, patch: int) -> RasterOutput:
    def decode(blended: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return np.moveaxis(np.where(valid[..., None], blended, np.nan).astype(np.float32),
                           -1, 0)

    return RasterOutput(dim, "float32", math.nan,
                        tuple(f"{name} embedding {i}" for i in range(dim)), decode,
                        tags={"EMBEDDING": name, "PATCH_SIZE": str(patch)},
                        overview_resampling="AVERAGE")


# ------------------------------------------------------------------------------------------
# The plan: what runs, checked before anything is read or compiled
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    what: str
    tile: int  # input px
    overlap: int  # input px
    scale: int  # input px per output px (1, or the patch size for embeddings)
    batch: int
    weighting: str
    output: RasterOutput
    embedding: str | None
    grid: Grid  # the output's grid

    @property
    def out_tile(self) -> int:
        return self.tile // self.scale


def make_plan(predictor: Predictor, scene: Scene, *, what: str = "predict",
              tile: int | None = None, overlap: int | None = None, batch: int = 8,
              weighting: str = "gaussian", probabilities: bool = False,
              embedding: str | None = None) -> Plan:
    """Checks the request against the model and the scene (``TiledError`` naming the flag)."""
    if what not in WHATS:
        raise TiledError(f"--what must be one of {WHATS}, got {what!r}")
    patch = predictor.patch_size
    tile = tile or predictor.image_size or 8 * patch
    if tile % patch or tile <= 0:
        raise TiledError(f"--tile={tile} must be a positive multiple of the patch size {patch}")
    overlap = tile // 4 if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise TiledError(f"--overlap={overlap} must be in [0, --tile={tile})")
    if batch < 1:
        raise TiledError(f"--batch={batch} must be >= 1")
    blend_weights(1, weighting)  # names a bad weighting
    _check_sar_channels(predictor, scene)
    if what == "embed":
        if overlap % patch:
            raise TiledError(f"--what=embed writes one value per patch: --overlap={overlap} "
                             f"must be a multiple of the patch size {patch}")
        embedding = _embedding(predictor, scene, embedding)
        config = predictor.encoder.config
        dim = config.encoder.width if embedding == "fused" else (config.projection_dim
                                                                 or config.encoder.width)
        return Plan(what, tile, overlap, patch, batch, weighting,
                    _embedding_output(embedding, dim, patch), embedding,
                    scene.grid.coarser(patch))
    task = predictor.task
    if task is None:
        raise TiledError(f"{predictor.source} holds no task head (what={predictor.what!r}): "
                         "--what=predict needs a fine-tuned bundle or workdir; --what=embed "
                         "writes its embeddings")
    if task.kind not in DENSE_KINDS:
        hint = ("use python -m mars_jax.register" if task.kind == "registration" else
                "boxes are not a raster")
        raise TiledError(f"task {task.name!r} ({task.kind}) has no per-pixel output to write "
                         f"as a GeoTIFF: {hint}")
    if task.dates == 2 and task.name != "damage":
        raise TiledError(f"task {task.name!r} is bi-temporal (two dates of each modality): "
                         "whole-scene prediction reads one optical and one SAR image")
    sets = functions.predict_sets(task, predictor.modalities)
    if scene.modalities not in sets:
        needed = sorted({m for s in sets for m in s} - set(scene.modalities))
        given = " and ".join(f"--{m}" for m in scene.modalities)
        raise TiledError(
            f"task {task.name!r} ({predictor.source}) predicts from "
            f"{' or '.join('+'.join(s) for s in sets)}; {given} alone is not one of them: "
            f"pass {' / '.join(f'--{m}' for m in needed) or 'other inputs'}")
    output = (_labels_output(task, probabilities) if task.kind in ("segmentation", "binary",
                                                                     "change")
              else _values_output(task) if task.kind == "regression" else _image_output(task))
    if probabilities and task.kind not in ("segmentation", "binary", "change"):
        raise TiledError(f"--probabilities is for class maps; task {task.name!r} is "
                         f"{task.kind}")
    return Plan(what, tile, overlap, 1, batch, weighting, output, None, scene.grid)


def _check_sar_channels(predictor: Predictor, scene: Scene) -> None:
    wanted = predictor.encoder.config.sar_channels
    if scene.sar_channels is not None and scene.sar_channels != wanted:
        raise TiledError(f"--sar {scene.path('sar')}: {scene.sar_channels} SAR band(s), the "
                         f"model reads {wanted} ({predictor.source})")


def _embedding(predictor: Predictor, scene: Scene, embedding: str | None) -> str:
    fused = predictor.encoder.config.mma_layers > 0
    if embedding is None:
        return "fused" if fused else scene.modalities[0]
    if embedding not in EMBEDDINGS:
        raise TiledError(f"--embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    if embedding == "fused" and not fused:
        raise TiledError(f"--embedding=fused: {predictor.source} has no MMA layers (an "
                         "encoders bundle); use --embedding=optical or sar")
    if embedding != "fused" and embedding not in scene.modalities:
        raise TiledError(f"--embedding={embedding} needs --{embedding}")
    return embedding


# ------------------------------------------------------------------------------------------
# Cells: blended, then written when complete
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Cell:
    total: np.ndarray  # [h, w, K] float32: sum of weighted outputs
    weight: np.ndarray  # [h, w] float32
    valid: np.ndarray  # [h, w]
    remaining: int


def cell_edges(length: int, starts: Sequence[int], tile: int) -> list[int]:
    """Every tile start and end within ``[0, length]``: cells between them see one fixed set
    of tiles."""
    return sorted({0, length} | {s for s in starts if s < length}
                  | {min(s + tile, length) for s in starts})


class _Blender:
    """Accumulates tile outputs into cells; a complete cell goes to ``write``."""

    def __init__(self, rows: Sequence[int], cols: Sequence[int], tile: int, height: int,
                 width: int, weights: np.ndarray,
                 write: Callable[[int, int, np.ndarray, np.ndarray], None]):
        self.tile, self.weights, self.write = tile, weights, write
        self.row_edges = cell_edges(height, rows, tile)
        self.col_edges = cell_edges(width, cols, tile)
        self.cells: dict[tuple[int, int], _Cell] = {}
        self.counts = {}
        self.row_span = {r: self._span(self.row_edges, r) for r in rows}
        self.col_span = {c: self._span(self.col_edges, c) for c in cols}
        for r in rows:
            for c in cols:
                for i in self.row_span[r]:
                    for j in self.col_span[c]:
                        self.counts[i, j] = self.counts.get((i, j), 0) + 1
        self.pending_bytes = self.peak_bytes = 0

    def _span(self, edges: Sequence[int], start: int) -> range:
        first = edges.index(start)
        last = first
        while last + 1 < len(edges) and edges[last + 1] <= start + self.tile:
            last += 1
        return range(first, last)

    def add(self, row: int, col: int, output: np.ndarray, valid: np.ndarray) -> None:
        for i in self.row_span[row]:
            top, bottom = self.row_edges[i], self.row_edges[i + 1]
            for j in self.col_span[col]:
                left, right = self.col_edges[j], self.col_edges[j + 1]
                part = (slice(top - row, bottom - row), slice(left - col, right - col))
                cell = self.cells.get((i, j))
                if cell is None:
                    cell = _Cell(np.zeros((bottom - top, right - left, output.shape[-1]),
                                          np.float32),
                                 np.zeros((bottom - top, right - left), np.float32),
                                 valid[part].copy(), self.counts[i, j])
                    self.cells[i, j] = cell
                    self.pending_bytes += cell.total.nbytes + cell.weight.nbytes
                    self.peak_bytes = max(self.peak_bytes, self.pending_bytes)
                weight = self.weights[part]
                cell.total += output[part] * weight[..., None]
                cell.weight += weight
                cell.remaining -= 1
                if cell.remaining == 0:
                    del self.cells[i, j]
                    self.pending_bytes -= cell.total.nbytes + cell.weight.nbytes
                    self.write(top, left, cell.total / cell.weight[..., None], cell.valid)


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TiledResult:
    """What a run wrote and measured."""

    path: Path
    tiles: int
    seconds: float
    pixels: int  # input pixels of the scene
    peak_pending_bytes: int  # the most bytes of blended cells alive at once
    cog: bool

    @property
    def pixels_per_second(self) -> float:
        return self.pixels / self.seconds if self.seconds > 0 else math.inf


def _model_call(predictor: Predictor, plan: Plan) -> Callable[[dict], tuple[np.ndarray,
                                                                            np.ndarray]]:
    """Batch of windows -> (output [N, t, t, K], valid [N, t, t]) on the output grid."""
    if plan.what == "embed":
        def call(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            out = predictor.embed(inputs.get("optical"), inputs.get("sar"),
                                  valid=inputs["valid"], batch_size=plan.batch)
            return out[plan.embedding], out["patch_valid"].astype(bool)
        return call

    def call(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        prediction = predictor.predict(optical=inputs.get("optical"), sar=inputs.get("sar"),
                                       valid=inputs["valid"], batch_size=plan.batch)
        return prediction.outputs, inputs["valid"]
    return call


def _open_output(path: Path, plan: Plan):
    grid, output = plan.grid, plan.output
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=output.count,
                   dtype=output.dtype, crs=grid.crs, transform=grid.transform,
                   nodata=output.nodata, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                   compress="deflate", predictor=2 if output.dtype == "uint8" else 3,
                   bigtiff="if_safer", interleave="band" if output.count > 4 else "pixel")
    dst = rasterio.open(path, "w", **profile)
    for band, description in enumerate(output.descriptions, 1):
        dst.set_band_description(band, description)
    if output.colormap:
        dst.write_colormap(1, output.colormap)
    if output.scales:
        dst.scales = output.scales
    dst.update_tags(**output.tags)
    return dst


def predict_scene(predictor: Predictor, scene: Scene, out: str | Path, plan: Plan, *,
                  cog: bool = True, overwrite: bool = False, progress: bool = True
                  ) -> TiledResult:
    """Predicts ``scene`` tile by tile into the GeoTIFF ``out`` (module docstring)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise TiledError(f"--out {out} exists: pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.tif")
    grid, scale, tile = plan.grid, plan.scale, plan.out_tile
    rows = window_starts(max(grid.height, tile), tile, plan.overlap // scale)
    cols = window_starts(max(grid.width, tile), tile, plan.overlap // scale)
    origins = [(r, c) for r in rows for c in cols]
    call = _model_call(predictor, plan)
    start = time.perf_counter()
    with bounded_gdal_cache(), rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        dst = _open_output(partial, plan)
        try:
            def write(top: int, left: int, blended: np.ndarray, valid: np.ndarray) -> None:
                window = Window(left, top, blended.shape[1], blended.shape[0])
                dst.write(plan.output.decode(blended, valid), window=window)
                if plan.output.mask:
                    dst.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)

            blender = _Blender(rows, cols, tile, grid.height, grid.width,
                               blend_weights(tile, plan.weighting), write)
            with tqdm.tqdm(total=len(origins), unit="tile", desc=f"{plan.what} {out.name}",
                           disable=not progress, smoothing=0.1) as bar:
                for first in range(0, len(origins), plan.batch):
                    batch = origins[first:first + plan.batch]
                    windows = [scene.read(r * scale, c * scale, plan.tile, plan.tile)
                               for r, c in batch]
                    inputs = {key: np.stack([w[key] for w in windows]) for key in windows[0]}
                    outputs, valid = call(inputs)
                    if plan.what == "predict":
                        valid = valid.astype(bool)
                    for index, (r, c) in enumerate(batch):
                        blender.add(r, c, np.asarray(outputs[index], np.float32),
                                    np.asarray(valid[index]))
                    bar.update(len(batch))
            if blender.cells:  # every cell is covered by its tiles: a bug if any is left
                raise RuntimeError(f"{len(blender.cells)} cells were never completed")
        except BaseException:
            dst.close()
            partial.unlink(missing_ok=True)
            raise
        dst.close()
        if cog:
            _to_cog(partial, out, plan.output)
            partial.unlink()
        else:
            partial.replace(out)
    seconds = time.perf_counter() - start
    return TiledResult(out, len(origins), seconds, scene.grid.height * scene.grid.width,
                       blender.peak_bytes, cog)


def _to_cog(source: Path, target: Path, output: RasterOutput) -> None:
    """A Cloud-Optimized GeoTIFF copy (internal overviews, tiled, DEFLATE), beside the target
    first, renamed at the end."""
    staged = target.with_name(target.name + ".cog.partial.tif")
    try:
        rasterio.shutil.copy(source, staged, driver="COG", compress="DEFLATE",
                             blocksize=512, overview_resampling=output.overview_resampling,
                             bigtiff="IF_SAFER")
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)


__all__ = ["EMBEDDINGS", "WHATS", "Plan", "RasterOutput", "TiledError", "TiledResult",
           "cell_edges", "make_plan", "predict_scene"]
