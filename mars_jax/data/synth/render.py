"""Rendering: materials, object rasters, the optical image and the SAR image."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mars_jax.data.contract import DB_FLOOR
from mars_jax.data.synth.constants import _DB_TO_LN, _DEG, _STOREY_M, LOW_VEGETATION
from mars_jax.data.synth.geometry import Acquisition, azimuth_vector
from mars_jax.data.synth.layout import _Ground
from mars_jax.data.synth.objects import (
    _KIND_BUILDING,
    _KIND_DAMAGED,
    _KIND_RUBBLE,
    _RUBBLE_ALBEDO,
    _TARP_ALBEDO,
    _Objects,
)
from mars_jax.data.synth.raster import _edge_normals, _shifted, _swept_mask, rasterize, spans, sweep
from mars_jax.data.synth.scene import _Palette, _Scene

_AMBIENT = np.array([0.30, 0.34, 0.42], np.float32)  # sky light, bluish
_DIRECT = np.array([0.95, 0.92, 0.85], np.float32)  # sun light, warm
# Material ids after the parcels', in this order; objects follow, one material each.
_WATER_MAT, _TREE_MAT, _ROAD_MAT, _MARKING_MAT, _OBJECT_MAT = range(5)


@dataclasses.dataclass(frozen=True)
class _Materials:
    """Per-material tables indexed by the material map: parcels, water, trees, road, objects."""

    albedo: np.ndarray  # (M, 3) float32
    grain: np.ndarray  # (M,) fine texture amplitude
    mottle: np.ndarray  # (M,) crown-scale texture amplitude
    crop: np.ndarray  # (M,) crop-row amplitude
    sigma: np.ndarray  # (M,) linear sigma0
    moisture_db: np.ndarray  # (M,) SAR texture amplitude in dB


def _materials(ground: _Ground, palette: _Palette, objects: _Objects) -> _Materials:
    k = len(objects)
    rough = np.isin(objects.kinds, [_KIND_RUBBLE, _KIND_DAMAGED])
    pad = lambda parcels, water, tree, road, marking, obj: np.concatenate(
        [parcels, [water, tree, road, marking], obj]).astype(np.float32)
    return _Materials(
        albedo=np.concatenate([ground.albedo, [palette.water_albedo, palette.tree_albedo,
                                               palette.road_albedo, palette.marking_albedo],
                               objects.albedo]).astype(np.float32),
        grain=pad(np.full(len(ground.classes), 0.16), 0.03, 0.25, 0.10, 0.05,
                  np.where(rough, 0.9, 0.06)),
        mottle=pad(np.where(ground.classes == LOW_VEGETATION, 0.10, 0.07), 0.04, 0.30, 0.03,
                   0.0, np.where(rough, 0.25, 0.03)),
        crop=pad(ground.crop, 0.0, 0.0, 0.0, 0.0, np.zeros(k)),
        sigma=np.exp(_DB_TO_LN * pad(ground.sar_db, palette.water_db, palette.tree_db,
                                     palette.road_db, palette.road_db, np.zeros(k))),
        moisture_db=pad(np.full(len(ground.classes), 1.5), 0.7, 1.2, 0.8, 0.8, np.zeros(k)),
    )


@dataclasses.dataclass(frozen=True)
class _ObjectRasters:
    instances: np.ndarray  # (H, W) int32, 0 background, k + 1 object k
    boxes: np.ndarray  # (K, 4) pixel edges
    sun_cosine: np.ndarray  # (H, W) float32 Lambert factor of the roof facet on each pixel
    shadow: np.ndarray  # (H, W) bool, optical shadow cast by objects on the ground
    radar_shadow: np.ndarray  # (H, W) bool, ground without signal behind objects
    returns: np.ndarray  # (H, W) float32 linear intensity of the objects' SAR returns


def _object_rasters(objects: _Objects, acq: Acquisition, shape: tuple[int, int]
                    ) -> _ObjectRasters:
    """All object geometry in three vectorised rasterisations: ids with roof facets, optical
    and radar shadows, and the SAR returns."""
    polygons, k = objects.polygons(), len(objects)
    # The two roof facets tile each footprint: one pass gives the object and its facet, as
    # code 2 * (object + 1) + facet.
    facets, normals = objects.facets()
    facet_spans = spans(facets.reshape(-1, 4, 2), shape)
    code = facet_spans.raster(np.arange(2, 2 * k + 2), np.int32)
    instances = code >> 1
    cosine = np.concatenate([[0.0, 0.0], np.maximum(normals @ acq.sun_vector(), 0.0).ravel()])
    sun_cosine = np.take(cosine.astype(np.float32), code)
    facet_boxes = facet_spans.boxes().reshape(k, 2, 4)
    boxes = np.concatenate([np.fmin(facet_boxes[:, 0, :2], facet_boxes[:, 1, :2]),
                            np.fmax(facet_boxes[:, 0, 2:], facet_boxes[:, 1, 2:])], axis=1)
    # Both casts in one pass: optical sweeps count 1, radar sweeps 2**16 (K < 2**16).
    casts = np.concatenate([sweep(polygons, acq.shadow_shift(objects.heights)),
                            sweep(polygons, acq.radar_shadow_shift(objects.heights))])
    counts = rasterize(casts, np.repeat([1, 1 << 16], len(objects)), shape, np.int32)
    ground = instances == 0  # shadows are drawn on the ground only, not on other roofs
    sun_shadow = ((counts & 0xFFFF) > 0) & ground
    radar_shadow = (counts > 0xFFFF) & ground
    sar_polygons, sar_values = _sar_returns(objects, acq)
    returns = np.maximum(rasterize(sar_polygons, sar_values, shape), np.float32(0))
    return _ObjectRasters(instances, boxes, sun_cosine, sun_shadow, radar_shadow, returns)


def _bands(start: np.ndarray, end: np.ndarray, normal: np.ndarray, width: float) -> np.ndarray:
    """Quads of ``width`` pixels centred on segments (start, end): bright lines."""
    half = normal * (width / 2)
    return np.stack([start - half, end - half, end + half, start + half], axis=-2)


def _sar_returns(objects: _Objects, acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Polygons and linear intensities of everything the prisms return to the sensor: each
    point at height h is imaged h / tan(theta) towards it (layover)."""
    shift = acq.layover_shift(objects.heights)  # (K, 2)
    roofs, roof_values = _roof_returns(objects, acq, shift)
    facades, facade_values = _facade_returns(objects, acq, shift)
    return np.concatenate([roofs, facades]), np.concatenate([roof_values, facade_values])


def _roof_returns(objects: _Objects, acq: Acquisition, shift: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Roof facets, displaced; brighter when tilted towards the sensor (cosine of the local
    incidence, cubed)."""
    facets, normals = objects.facets()
    cos_local = np.maximum(normals @ acq.sensor_vector(), 0.0)
    tilt_gain = (cos_local / math.cos(acq.incidence * _DEG)) ** 3
    values = np.exp(_DB_TO_LN * objects.roof_db)[:, None] * tilt_gain
    return (facets + shift[:, None, None, :]).reshape(-1, 4, 2), values.ravel()


def _facade_returns(objects: _Objects, acq: Acquisition, shift: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each footprint edge facing the sensor spreads its wall over the parallelogram between
    the edge and its displaced copy (layover), with a double-bounce line on the edge itself
    and fainter lines at each storey (balconies, window ledges). Facades count by the cosine
    of their aspect to the look direction, storey lines by its square; the double bounce by
    the cosine too (real dihedrals fade faster, but facades are rarely smooth)."""
    polygons = objects.polygons()
    normals = _edge_normals(polygons)  # (K, 4, 2)
    facing = np.maximum(-(normals @ azimuth_vector(acq.look_azimuth)), 0.0)  # cos aspect
    owner, edge = np.nonzero(facing > 1e-6)
    start, end = polygons[owner, edge], polygons[owner, (edge + 1) % 4]
    normal = normals[owner, edge]
    cosine, top = facing[owner, edge], shift[owner]
    walls = np.stack([start, end, end + top, start + top], axis=1)
    wall_values = np.exp(_DB_TO_LN * objects.wall_db[owner]) * cosine
    dihedrals = _bands(start, end, normal, 1.0)
    dihedral_values = np.exp(_DB_TO_LN * objects.dihedral_db[owner]) * cosine

    storeys = np.where(objects.kinds[owner] == _KIND_BUILDING,
                       np.floor((objects.heights[owner] - 0.5) / _STOREY_M), 0).astype(int)
    line = np.repeat(np.arange(len(owner)), storeys)
    level = np.arange(len(line)) - np.repeat(np.cumsum(storeys) - storeys, storeys) + 1
    up = (level * _STOREY_M / objects.heights[owner][line])[:, None] * top[line]
    storey_lines = _bands(start[line] + up, end[line] + up, normal[line], 1.0)
    storey_values = 0.5 * wall_values[line] * cosine[line]
    return (np.concatenate([walls, dihedrals, storey_lines]),
            np.concatenate([wall_values, dihedral_values, storey_values]))


def _material_map(scene: _Scene, trees: np.ndarray, instances: np.ndarray) -> np.ndarray:
    parcels = len(scene.ground.classes)
    material = scene.ground.parcel.copy()
    material[scene.water] = parcels + _WATER_MAT
    material[trees] = parcels + _TREE_MAT
    material[scene.road] = parcels + _ROAD_MAT
    material[scene.markings] = parcels + _MARKING_MAT
    on_object = instances > 0
    material[on_object] = parcels + _OBJECT_MAT - 1 + instances[on_object]
    return material


def _render_optical(scene: _Scene, materials: _Materials, material: np.ndarray,
                    trees: np.ndarray, rasters: _ObjectRasters,
                    damaged_pixels: np.ndarray | None = None) -> np.ndarray:
    """Albedo x texture x (sky + sun x cosine), with the sun term removed in cast shadows.
    Computed a colour plane at a time (contiguous arrays are several times faster than
    broadcasting over a last axis of 3)."""
    tex = scene.textures
    texture = np.take(materials.grain, material) * tex.grain
    texture += np.take(materials.mottle, material) * tex.mottle
    if scene.ground.rows is not None:
        texture += np.take(materials.crop, material) * scene.ground.rows
    texture += np.float32(1.0)
    np.maximum(texture, np.float32(0.0), out=texture)
    lit = texture * _sun_cosine(scene, trees, rasters)
    if damaged_pixels is not None:
        tarp = damaged_pixels & (tex.mottle < -1.2)
        rubble = damaged_pixels & ~tarp
    rgb = np.empty((*material.shape, 3), np.uint8)
    for channel in range(3):
        albedo = np.take(materials.albedo[:, channel] * np.float32(255.0), material)
        if damaged_pixels is not None:
            np.copyto(albedo, np.float32(255.0 * _RUBBLE_ALBEDO[channel]), where=rubble)
            np.copyto(albedo, np.float32(255.0 * _TARP_ALBEDO[channel]), where=tarp)
        plane = texture * _AMBIENT[channel]
        plane += lit * _DIRECT[channel]
        plane *= albedo
        np.minimum(plane, np.float32(255.0), out=plane)
        rgb[..., channel] = plane
    return rgb


def _sun_cosine(scene: _Scene, trees: np.ndarray, rasters: _ObjectRasters) -> np.ndarray:
    """Cosine between the surface normal and the sun, 0 in cast shadows: flat ground, roof
    facets, and bumpy crowns (lit on the side of the crown-scale field facing the sun)."""
    acq, mottle = scene.acq, scene.textures.mottle
    sun = acq.sun_vector()
    cosine = np.full(mottle.shape, np.float32(sun[2]))
    on_object = rasters.instances > 0
    np.copyto(cosine, rasters.sun_cosine, where=on_object)
    towards_sun = sun[:2] / max(np.linalg.norm(sun[:2]), 1e-6) / acq.gsd  # one metre
    slope = mottle - _shifted(mottle, -towards_sun, None)
    crown = np.float32(sun[2]) + np.float32(1.5 * np.linalg.norm(sun[:2])) * slope
    np.clip(crown, np.float32(0.05), np.float32(1.0), out=crown)
    np.copyto(cosine, crown, where=trees & ~on_object)
    canopy = _swept_mask(trees, acq.shadow_shift(scene.palette.canopy_height), (0.4, 0.7, 1.0))
    np.copyto(cosine, np.float32(0.0), where=rasters.shadow | (canopy & ~trees & ~on_object))
    return cosine


def _render_sar(scene: _Scene, materials: _Materials, material: np.ndarray, trees: np.ndarray,
                rasters: _ObjectRasters, rng: np.random.Generator, speckle: bool) -> np.ndarray:
    """Ground-range intensity: visible ground + displaced canopy volume + object returns +
    thermal noise, times speckle, in dB."""
    acq, tex = scene.acq, scene.textures
    sigma = np.take(materials.sigma, material) * np.exp(
        np.take(materials.moisture_db * np.float32(_DB_TO_LN), material) * tex.moisture)
    on_object = rasters.instances > 0
    canopy_height = scene.palette.canopy_height
    tree_shadow = _swept_mask(trees, acq.radar_shadow_shift(canopy_height), (0.34, 0.67, 1.0))
    canopy = np.where(trees & ~on_object & ~rasters.radar_shadow, sigma, np.float32(0))
    canopy *= np.exp(np.float32(0.3) * tex.mottle)  # crown-scale structure of the volume
    hidden = trees | on_object | rasters.radar_shadow | tree_shadow
    intensity = np.where(hidden, np.float32(0), sigma)
    # Volume scattering centre at ~60% of the canopy height.
    intensity += _shifted(canopy, acq.layover_shift(0.6 * canopy_height), 0)
    intensity += rasters.returns
    intensity += np.float32(math.exp(_DB_TO_LN * acq.nesz_db))
    if speckle:
        looks = acq.looks
        intensity *= rng.standard_gamma(looks, intensity.shape, dtype=np.float32)
        intensity *= np.float32(1.0 / looks)
    return to_db(intensity)[..., None]


def to_db(intensity: np.ndarray) -> np.ndarray:
    """10 log10 of an intensity, floored at DB_FLOOR, float32."""
    floor = np.float32(10.0 ** (DB_FLOOR / 10.0))
    return np.float32(10.0) * np.log10(np.maximum(intensity, floor), dtype=np.float32)
