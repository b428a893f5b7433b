"""Disaster response: a pre-event optical image and a post-event SAR image -> a registered
damage map, per-building polygons and a summary (``python -m mars_jax.respond``).

1. Registration. The SAR is put on the optical grid by its georeferencing (``data.scene``),
   which after a disaster is often off by tens of pixels. Up to ``windows`` windows of
   ``register_tile`` px, spread over the part of the scene with data in both images, are
   described by the registrar (a fine-tuned registration head, or zero shot the CGCL patch
   embeddings of the damage model's encoders) and matched (``tasks.registration``); the
   matches of every window, in scene pixels, are fitted by one RANSAC affine: optical pixel
   -> SAR pixel. A fit that is not plausible (``implausible``: too few inliers, a scale or
   shear far from the georeferencing's, or windows moved by more than half a window) is
   rejected and the georeferencing kept, since a wrong warp ruins the damage map where a
   few pixels of misregistration only blur it. Or the transform is given (``transform``),
   or skipped.
2. Damage. The scene is reopened with that correction (the SAR warp's destination composed
   with it) and the damage head predicts it tile by tile (``inference.tiled``): damage.tif.
3. Buildings. The class map is polygonised in row strips (``rasterio.features.shapes``); a
   building is a connected footprint of non-background classes (the strips' pieces merged by
   ``shapely``), given the class covering most of its area. buildings.geojson is RFC 7946
   (WGS 84), each feature with its class, per-class areas in m^2 (of the scene CRS) and its
   centroid in scene pixels.
4. Pictures: overlay.png (the damage classes over the optical image) and the registration
   checkerboards before and after, from decimated reads; summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from mars_jax.data.scene import Scene, bounded_gdal_cache, open_scene
from mars_jax.inference.predictor import Predictor
from mars_jax.inference.registration import Image, Registrar
from mars_jax.metrics.registration import apply_transform, as_matrix
from mars_jax.tasks.matching import fit_transform

OUTPUTS = ("damage.tif", "buildings.geojson", "overlay.png", "summary.json",
           "registration_checkerboard.png", "registration_checkerboard_unregistered.png")
BACKGROUND = 0  # class id of "no building"
# A registration fit below these is rejected (``implausible``): RANSAC on a few matches fits
# noise, and after georeferencing the two grids share their scale and are off by far less
# than a window (the windows could not have matched otherwise).
MIN_INLIERS = 20
MAX_SCALE_CHANGE = 1.25  # singular values of the linear part within [1/1.25, 1.25]
POLYGON_STRIP = 1024  # rows of the class map polygonised at a time
OVERLAY_SIDE = 1024
# Colours of the damage classes by name (others: the class palette).
DAMAGE_COLOURS = {"intact": (40, 180, 60), "damaged": (250, 160, 20),
                  "destroyed": (220, 30, 30), "new": (40, 110, 250)}


class RespondError(ValueError):
    """Inputs the command cannot use: the message names them."""


# ------------------------------------------------------------------------------------------
# 1. Registration over a whole scene
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SceneRegistration:
    """The transform (optical px -> SAR px on the common grid; None: not found), how it was
    obtained, and the evidence: windows used, matches, RANSAC inliers."""

    transform: np.ndarray | None
    method: str
    windows: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    matches: int = 0
    inliers: int = 0
    rejected: str | None = None  # why a fit was not used (``implausible``)

    def record(self, size: tuple[int, int]) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "windows": [list(w) for w in
                                                                  self.windows],
                               "matches": self.matches, "inliers": self.inliers,
                               "rejected": self.rejected,
                               "transform": None if self.transform is None else
                               as_matrix(self.transform)[:2].tolist()}
        if self.transform is not None:
            h, w = size
            centre = np.array([[(w - 1) / 2, (h - 1) / 2]])
            out["shift_at_centre_px"] = (apply_transform(self.transform, centre)
                                         - centre)[0].round(3).tolist()
        return out


def registration_windows(scene: Scene, tile: int, count: int) -> list[tuple[int, int]]:
    """(row, col) of up to ``count`` ``tile``-px windows on a regular grid, the ones with data
    in both images over at least half their pixels (judged on a decimated read), evenly
    spread among those."""
    grid = scene.grid
    valid = scene.overview()["valid"]
    fy, fx = valid.shape[0] / grid.height, valid.shape[1] / grid.width
    candidates = []
    for row in range(0, max(grid.height - tile, 0) + 1, tile):
        for col in range(0, max(grid.width - tile, 0) + 1, tile):
            part = valid[int(row * fy):max(int((row + tile) * fy), int(row * fy) + 1),
                         int(col * fx):max(int((col + tile) * fx), int(col * fx) + 1)]
            if part.size and part.mean() >= 0.5:
                candidates.append((row, col))
    if len(candidates) <= count:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, count).round().astype(int)
    return [candidates[i] for i in sorted(set(picks))]


def register_scene(registrar: Registrar, scene: Scene, *, tile: int = 256, windows: int = 8,
                   threshold: float = 5.0, progress: bool = True) -> SceneRegistration:
    """Matches windows of the optical and (georeferenced) SAR image and fits one affine."""
    from tqdm import tqdm

    chosen = registration_windows(scene, tile, windows)
    if not chosen:
        return SceneRegistration(None, registrar.source,
                                 rejected=f"no {tile}-px window with data in both images")
    sources, targets = [], []
    for row, col in tqdm(chosen, desc="register", unit="window", disable=not progress):
        window = scene.read(row, col, tile, tile)
        result = registrar.register(Image(window["optical"], window["valid"]),
                                    Image(window["sar"], window["valid"]),
                                    threshold=threshold)
        offset = np.array([col, row], np.float64)
        sources.append(np.asarray(result.src, np.float64).reshape(-1, 2) + offset)
        targets.append(np.asarray(result.dst, np.float64).reshape(-1, 2) + offset)
    src, dst = np.concatenate(sources), np.concatenate(targets)
    fit = fit_transform(src, dst, "affine", threshold=threshold)
    inliers = int(fit.inliers.sum())
    centres = np.array([[col + tile / 2, row + tile / 2] for row, col in chosen], np.float64)
    reason = implausible(fit.transform, inliers, centres, tile)
    return SceneRegistration(None if reason else fit.transform, registrar.source, chosen,
                             len(src), inliers, rejected=reason)


def implausible(transform: np.ndarray | None, inliers: int, centres: np.ndarray, tile: int,
                *, min_inliers: int = MIN_INLIERS,
                max_scale_change: float = MAX_SCALE_CHANGE) -> str | None:
    """Why a registration fit over windows of ``tile`` px centred at ``centres`` (x, y)
    should not be used, or None when it may."""
    if transform is None:
        return "RANSAC found no transform"
    if inliers < min_inliers:
        return f"{inliers} RANSAC inliers, fewer than {min_inliers}"
    matrix = as_matrix(np.asarray(transform, np.float64))
    singular = np.linalg.svd(matrix[:2, :2], compute_uv=False)
    if singular.max() > max_scale_change or singular.min() < 1 / max_scale_change:
        return (f"scale {singular.min():.3f}-{singular.max():.3f}: the georeferenced grids "
                f"share their scale (allowed 1/{max_scale_change}-{max_scale_change})")
    moved = np.linalg.norm(apply_transform(matrix, centres) - centres, axis=-1).max()
    if moved > tile / 2:
        return f"windows moved by up to {moved:.0f} px, more than half a window ({tile // 2})"
    return None


def read_transform(path: str | Path) -> np.ndarray:
    """A 2x3 / 3x3 transform (optical px -> SAR px): ``register``'s transform.json, or a
    matrix as text / .npy (``inference.registration.load_truth``)."""
    from mars_jax.inference.registration import load_truth

    file = Path(path)
    if file.suffix == ".json":
        if not file.is_file():
            raise FileNotFoundError(f"--transform {path}: no such file")
        matrix = json.loads(file.read_text()).get("transform")
        if matrix is None:
            raise ValueError(f"--transform {path}: no transform in it (the registration "
                             "found none)")
        return as_matrix(np.asarray(matrix, np.float64))[:2]
    return as_matrix(load_truth(file))[:2]


# ------------------------------------------------------------------------------------------
# 3. Buildings
# ------------------------------------------------------------------------------------------
def building_polygons(path: str | Path, class_names: Sequence[str], *,
                      background: int = BACKGROUND, strip: int = POLYGON_STRIP
                      ) -> list[dict[str, Any]]:
    """Buildings of a class map GeoTIFF (module docstring): GeoJSON features (WGS 84)."""
    from rasterio.features import shapes
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape
    from shapely.ops import unary_union
    from shapely.strtree import STRtree

    pieces, values = [], []
    with rasterio.open(path) as src:
        nodata, crs = src.nodata, src.crs
        pixel_area = abs(src.transform.a * src.transform.e - src.transform.b * src.transform.d)
        projected = crs.is_projected
        inverse = ~src.transform
        for top in range(0, src.height, strip):
            window = Window(0, top, src.width, min(strip, src.height - top))
            labels = src.read(1, window=window)
            mask = labels != background
            if nodata is not None:
                mask &= labels != nodata
            if not mask.any():
                continue
            for geometry, value in shapes(labels, mask=mask,
                                          transform=src.window_transform(window)):
                pieces.append(shape(geometry))
                values.append(int(value))
    if not pieces:
        return []
    merged = unary_union(pieces)
    footprints = list(getattr(merged, "geoms", [merged]))
    tree = STRtree(pieces)
    def name(k: int) -> str:
        return class_names[k] if k < len(class_names) else str(k)

    features = []
    for footprint in sorted(footprints, key=lambda g: (-g.centroid.y, g.centroid.x)):
        areas: dict[int, float] = {}
        for index in tree.query(footprint, predicate="covers"):
            areas[values[index]] = areas.get(values[index], 0.0) + pieces[index].area
        label = max(areas, key=lambda k: (areas[k], k))
        col, row = inverse @ (footprint.centroid.x, footprint.centroid.y)
        features.append({
            "type": "Feature",
            "geometry": transform_geom(crs, "EPSG:4326", mapping(footprint)),
            "properties": {
                "id": len(features), "class": name(label), "class_id": label,
                "area_m2": round(footprint.area, 3) if projected else None,
                "pixels": round(footprint.area / pixel_area),
                "area_by_class_m2": {name(k): round(v, 3) for k, v in sorted(areas.items())}
                if projected else None,
                "centroid_px": [round(col, 2), round(row, 2)]}})
    return features


def summarise(features: Sequence[dict[str, Any]], class_names: Sequence[str],
              background: int = BACKGROUND) -> dict[str, Any]:
    """Buildings and footprint area per class."""
    counts = {n: 0 for i, n in enumerate(class_names) if i != background}
    areas = dict.fromkeys(counts, 0.0)
    for feature in features:
        props = feature["properties"]
        counts[props["class"]] = counts.get(props["class"], 0) + 1
        if props["area_m2"] is not None:
            areas[props["class"]] = areas.get(props["class"], 0.0) + props["area_m2"]
    return {"buildings": len(features), "buildings_by_class": counts,
            "area_by_class_m2": {k: round(v, 3) for k, v in areas.items()}}


# ------------------------------------------------------------------------------------------
# 4. Pictures
# ------------------------------------------------------------------------------------------
def class_colours(names: Sequence[str]) -> np.ndarray:
    from mars_jax.train.task_images import class_palette

    palette = class_palette(len(names)).astype(np.uint8)
    return np.array([DAMAGE_COLOURS.get(n, tuple(palette[i])) for i, n in enumerate(names)],
                    np.uint8)


def overlay_picture(scene: Scene, damage: str | Path, names: Sequence[str],
                    background: int = BACKGROUND, alpha: float = 0.6) -> np.ndarray:
    """The optical image (decimated) with each building class in its colour."""
    base = scene.overview(OVERLAY_SIDE)
    rgb = base["optical"].astype(np.float32)
    with rasterio.open(damage) as src:
        labels = src.read(1, out_shape=rgb.shape[:2], resampling=Resampling.nearest)
    colours = class_colours(names)
    drawn = (labels != background) & (labels < len(names))
    rgb[drawn] = (1 - alpha) * rgb[drawn] + alpha * colours[labels[drawn]]
    return np.rint(rgb).astype(np.uint8)


def checkerboard_picture(scene: Scene) -> np.ndarray:
    from mars_jax.tasks.registration_pictures import checkerboard, sar_to_display

    view = scene.overview(OVERLAY_SIDE)
    return checkerboard(view["optical"], sar_to_display(view["sar"], view["valid"]))


# ------------------------------------------------------------------------------------------
# The whole command
# ------------------------------------------------------------------------------------------
def check_damage_model(predictor: Predictor) -> None:
    task = predictor.task
    if task is None or task.kind != "segmentation":
        raise RespondError(
            f"--bundle {predictor.source} holds "
            + ("no task head" if task is None else f"a {task.name!r} ({task.kind}) head")
            + ": respond needs a damage segmentation head (fine-tune configs/finetune.py:"
            "damage,SIZE and export it)")
    missing = [m for m in ("optical", "sar") if m not in predictor.modalities]
    if missing:
        raise RespondError(f"--bundle {predictor.source}: the {task.name!r} head was trained "
                           f"without {missing}; respond reads pre-event optical and "
                           "post-event SAR")


def respond(predictor: Predictor, pre_optical: str | Path, post_sar: str | Path,
            out: str | Path, *, registrar: Registrar | None = None,
            transform: np.ndarray | None = None, register: bool = True,
            register_tile: int = 256, register_windows: int = 8, tile: int | None = None,
            overlap: int | None = None, batch: int = 8, sar_kind: str = "auto",
            overwrite: bool = False, progress: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """The command's work (module docstring); returns summary.json's record."""
    check_damage_model(predictor)
    with bounded_gdal_cache():
        return _respond(predictor, pre_optical, post_sar, Path(out), registrar=registrar,
                        transform=transform, register=register, register_tile=register_tile,
                        register_windows=register_windows, tile=tile, overlap=overlap,
                        batch=batch, sar_kind=sar_kind, overwrite=overwrite,
                        progress=progress, log=log)


def _respond(predictor: Predictor, pre_optical, post_sar, out: Path, *, registrar, transform,
             register: bool, register_tile: int, register_windows: int, tile, overlap,
             batch: int, sar_kind: str, overwrite: bool, progress: bool,
             log: Callable[[str], None]) -> dict[str, Any]:
    from mars_jax.inference.registration import zero_shot_registrar
    from mars_jax.inference.tiled import make_plan, predict_scene
    from mars_jax.train.images import save_png

    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise RespondError(f"--out {out} already holds {existing}: pass --overwrite or "
                           "another folder")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    names = list(predictor.task.classes)
    with open_scene(pre_optical, post_sar, sar_kind=sar_kind) as georeferenced:
        size = (georeferenced.grid.height, georeferenced.grid.width)
        save_png(out / "registration_checkerboard_unregistered.png",
                 checkerboard_picture(georeferenced))
        if transform is not None:
            registration = SceneRegistration(as_matrix(transform)[:2], "given (--transform)")
        elif not register:
            registration = SceneRegistration(None, "skipped (--noregister): georeferencing")
        else:
            registrar = registrar or zero_shot_registrar(predictor.encoder)
            registration = register_scene(registrar, georeferenced, tile=register_tile,
                                          windows=register_windows, progress=progress)
            if registration.transform is None:
                log(f"respond: registration not used ({registration.rejected}; "
                    f"{registration.matches} matches, {registration.inliers} inliers): going "
                    "on with the georeferencing alone")
    with open_scene(pre_optical, post_sar, sar_kind=sar_kind,
                    sar_correction=registration.transform) as scene:
        save_png(out / "registration_checkerboard.png", checkerboard_picture(scene))
        plan = make_plan(predictor, scene, tile=tile, overlap=overlap, batch=batch)
        result = predict_scene(predictor, scene, out / "damage.tif", plan, overwrite=True,
                               progress=progress)
        save_png(out / "overlay.png", overlay_picture(scene, out / "damage.tif", names))
        described = scene.describe()
    features = building_polygons(out / "damage.tif", names)
    geojson = {"type": "FeatureCollection", "features": features}
    (out / "buildings.geojson").write_text(json.dumps(geojson) + "\n")
    record = {"pre_optical": str(pre_optical), "post_sar": str(post_sar),
              "bundle": predictor.source, "classes": names,
              "registration": registration.record(size),
              "damage": {"tiles": result.tiles, "tile": plan.tile, "overlap": plan.overlap,
                         "seconds": round(result.seconds, 3),
                         "pixels_per_second": round(result.pixels_per_second, 1)},
              **summarise(features, names), "scene": described,
              "outputs": list(OUTPUTS), "seconds": round(time.perf_counter() - started, 3)}
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


__all__ = ["RespondError", "SceneRegistration", "building_polygons", "check_damage_model",
           "implausible", "read_transform", "register_scene", "registration_windows", "respond",
           "summarise"]
