"""The scene: random streams, palette, textures, and everything both dates share."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from mars_jax.data.synth.constants import _MARKING_WIDTH_M, CANOPY_HEIGHT_RANGE, Options
from mars_jax.data.synth.geometry import Acquisition, _draw_acquisition
from mars_jax.data.synth.layout import (
    _buildings,
    _centre_dashes,
    _crowns,
    _draw_roads,
    _Ground,
    _ground,
    _place,
    _Road,
    _road_network,
    _ships,
    _vehicles,
    _water,
)
from mars_jax.data.synth.objects import _non_overlapping, _Objects
from mars_jax.data.synth.raster import _lerp, _row_prefix, smooth_noise

_STREAMS = ("acquisition", "roads", "ground", "buildings", "small_objects", "trees", "texture",
            "speckle", "change", "speckle_t2", "registration")


def _streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    """One independent generator per purpose, so an option that skips or adds a step (small
    objects, the second date, speckle) leaves every other array unchanged."""
    children = np.random.SeedSequence([seed, index]).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in
            zip(_STREAMS, children, strict=True)}


@dataclasses.dataclass(frozen=True)
class _Palette:
    """Scene-wide materials of the non-parcel classes."""

    water_albedo: np.ndarray
    tree_albedo: np.ndarray
    road_albedo: np.ndarray
    marking_albedo: np.ndarray  # white paint mixed with asphalt as the gsd averages them
    paved: bool
    water_db: float
    tree_db: float
    road_db: float
    canopy_height: float  # metres


@dataclasses.dataclass(frozen=True)
class _Textures:
    grain: np.ndarray  # (H, W) uniform in [-0.5, 0.5): fine grain
    mottle: np.ndarray  # (H, W) unit field at crown scale (~3 m)
    moisture: np.ndarray  # (H, W) unit field at ~15 m, for SAR sigma0


@dataclasses.dataclass(frozen=True)
class _Scene:
    size: int
    acq: Acquisition
    ground: _Ground
    palette: _Palette
    water: np.ndarray
    road: np.ndarray
    markings: np.ndarray  # dashed centre lines on paved roads
    trees: np.ndarray  # may lie under objects of a later date; those hide it
    objects: _Objects  # buildings first, then small objects
    vacant: _Objects  # free lots where the second date may build
    textures: _Textures


def _palette(rng: np.random.Generator, acq: Acquisition, urbanity: float) -> _Palette:
    """Water, tree and road materials; sigma0 follows its incidence-angle trend (water falls
    fastest, being nearly specular)."""
    delta = acq.incidence - 35.0
    turbid = rng.random()
    paved = urbanity > 0.25
    road = (np.array([0.33, 0.33, 0.34]) * rng.uniform(0.8, 1.2) if paved
            else np.array([0.48, 0.43, 0.36]) * rng.uniform(0.9, 1.1))
    return _Palette(
        water_albedo=_lerp(np.array([0.05, 0.10, 0.17]), np.array([0.17, 0.20, 0.16]), turbid),
        tree_albedo=np.array([0.10, 0.18, 0.07]) * rng.uniform(0.85, 1.15, 3),
        road_albedo=road,
        marking_albedo=_lerp(road, np.full(3, 0.85), min(1.0, _MARKING_WIDTH_M / acq.gsd)),
        paved=paved,
        water_db=float(rng.normal(-24.0, 1.5) - 0.4 * delta),
        tree_db=float(rng.normal(-7.5, 0.8) - 0.05 * delta),
        road_db=float(rng.normal(-18.0, 1.5) - 0.25 * delta),
        canopy_height=float(rng.uniform(*CANOPY_HEIGHT_RANGE)),
    )


def _build_scene(seed: int, index: int, size: int, options: Options
                 ) -> tuple[_Scene, dict[str, np.random.Generator]]:
    """Everything both dates share: acquisition, roads, parcels, water, objects, trees and
    texture fields. Also returns the random streams, for the rendering steps."""
    streams = _streams(seed, index)
    acq = _draw_acquisition(streams["acquisition"], options)
    metre = 1.0 / acq.gsd
    urbanity = float(streams["roads"].beta(1.3, 1.3))  # rural 0 to dense urban 1
    roads = _road_network(streams["roads"], size, acq.gsd, urbanity)
    trunk = roads[0].points
    heading = math.atan2(trunk[-1, 1] - trunk[0, 1], trunk[-1, 0] - trunk[0, 0])
    ground = _ground(streams["ground"], size, acq, urbanity, heading)
    palette = _palette(streams["ground"], acq, urbanity)
    water = _water(streams["ground"], size, acq.gsd)
    drawn = _draw_roads(roads, size, dashes=_centre_dashes(roads, size, acq.gsd)
                        if palette.paved else None)
    road, markings = drawn > 0, drawn == 2

    lots = _buildings(streams["buildings"], roads, size, acq.gsd, urbanity)
    lots = lots.take(_place(lots, size, 2.0 * metre, 6, clear_of=_row_prefix(road | water),
                            clearance=1.0 * metre))
    occupied = streams["buildings"].random(len(lots)) < _lerp(0.55, 0.97, urbanity)
    buildings, vacant = lots.take(occupied), lots.take(~occupied)
    objects = buildings
    if options.small_objects:
        objects = _with_small_objects(streams["small_objects"], buildings, roads, road, water,
                                      acq.gsd, urbanity)
    trees = _trees(streams["trees"], buildings, roads, size, acq.gsd, urbanity) & ~(water | road)
    textures = _Textures(
        grain=streams["texture"].random((size, size), dtype=np.float32) - np.float32(0.5),
        mottle=smooth_noise(streams["texture"], size, 3.0 * metre),
        moisture=smooth_noise(streams["texture"], size, 15.0 * metre))
    scene = _Scene(size, acq, ground, palette, water, road, markings, trees, objects, vacant,
                   textures)
    return scene, streams


def _with_small_objects(rng: np.random.Generator, buildings: _Objects, roads: Sequence[_Road],
                        road: np.ndarray, water: np.ndarray, gsd: float, urbanity: float
                        ) -> _Objects:
    """Buildings followed by the vehicles that fit on the roads and the ships on the water."""
    size, metre = road.shape[0], 1.0 / gsd
    vehicles = _vehicles(rng, roads, size, gsd, urbanity)
    ships = _ships(rng, water, gsd)
    on_road = _place(vehicles, size, 0.0, 2, within=road)
    afloat = _place(ships, size, 2.0 * metre, 2, within=water)
    small = _Objects.concat([vehicles.take(on_road), ships.take(afloat)])
    free = _non_overlapping(_Objects.concat([buildings, small]), 0.3 * metre)
    return _Objects.concat([buildings, small.take(free[len(buildings):])])


def _trees(rng: np.random.Generator, buildings: _Objects, roads: Sequence[_Road], size: int,
           gsd: float, urbanity: float) -> np.ndarray:
    """Woods and copses (thresholded smooth noise, fewer in towns) plus single crowns."""
    fraction = min(rng.uniform(0.02, 0.3) * (1.3 - urbanity), 0.35)
    field = smooth_noise(rng, size, 22.0 / gsd)
    woods = field > np.quantile(field[::8, ::8], 1.0 - fraction)
    return woods | _crowns(rng, buildings, roads, size, gsd, urbanity)
