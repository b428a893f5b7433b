"""Public API: ``render_pair`` and the random-access source ``SynthSource``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from mars_jax.data.contract import SCENE_PARAMETERS
from mars_jax.data.synth.constants import (
    BOX_BUILDING,
    BOX_SMALL_OBJECT,
    BUILDING,
    DAMAGED,
    MIN_SIZE,
    NEW_BUILDING,
    NO_BUILDING,
    ROAD,
    SMALL_OBJECT,
    TREES,
    WATER,
    parse_options,
)
from mars_jax.data.synth.objects import _KIND_BUILDING, _KIND_DAMAGED, _Objects
from mars_jax.data.synth.registration import _draw_affine, warp
from mars_jax.data.synth.render import (
    _material_map,
    _materials,
    _object_rasters,
    _ObjectRasters,
    _render_optical,
    _render_sar,
)
from mars_jax.data.synth.scene import _build_scene, _Scene
from mars_jax.data.synth.second_date import _seasonal, _second_date


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def render_pair(seed: int, index: int, size: int = 512, **options: Any) -> dict[str, np.ndarray]:
    """Scene ``index`` of the data set ``seed``, as a dict of numpy arrays (H = W = size).

    Keys: ``optical`` uint8 [H,W,3]; ``sar`` float32 [H,W,1] dB (co-registered with optical);
    ``valid`` bool [H,W]; ``landcover`` uint8 [H,W] (``CLASS_NAMES``); ``height`` float32 [H,W]
    building height in metres (0 off buildings); ``instances`` int32 [H,W] (0 background, k for
    object k); ``boxes`` float32 [K,4] pixel-edge (x0, y0, x1, y1); ``box_classes`` int32 [K]
    (``BOX_BUILDING``, ``BOX_SMALL_OBJECT``); ``object_heights`` float32 [K]; ``road`` bool
    [H,W]; with ``with_t2``: ``optical_t2``, ``sar_t2``, ``change`` bool (any building
    change), ``damage`` uint8 (``DAMAGE_NAMES``; damaged and destroyed on the first-date
    footprint, new on the new one); with ``with_registration``: ``sar_warped`` float32
    [H,W,1], ``affine`` float32 [2,3] (optical pixel (x, y, 1) -> sar_warped pixel),
    ``valid_warped`` bool [H,W]; and 0-d float32 ``gsd``, ``sun_azimuth``, ``sun_elevation``,
    ``look_azimuth``, ``incidence``, ``looks``. Options: see ``Options``.
    """
    for name, value, minimum in (("seed", seed, 0), ("index", index, 0), ("size", size, MIN_SIZE)):
        _check_int(name, value, minimum)
    opts = parse_options(options)
    size = int(size)
    scene, streams = _build_scene(int(seed), int(index), size, opts)
    first = _image(scene, scene.objects, streams["speckle"], opts.speckle)
    out = {"optical": first.optical, "sar": first.sar, "valid": np.ones((size, size), bool),
           **_labels(scene, first)}
    if opts.with_t2:
        out.update(_second_date_example(scene, first, streams, opts.speckle))
    if opts.with_registration:
        affine = _draw_affine(streams["registration"], size)
        warped, valid = warp(first.sar[..., 0], affine)
        out.update(sar_warped=warped[..., None], affine=affine.astype(np.float32),
                   valid_warped=valid)
    for name in SCENE_PARAMETERS:
        out[name] = np.asarray(getattr(scene.acq, name), np.float32)  # 0-d array
    return out


class _Image(NamedTuple):
    optical: np.ndarray
    sar: np.ndarray
    rasters: _ObjectRasters
    material: np.ndarray


def _image(scene: _Scene, objects: _Objects, rng: np.random.Generator, speckle: bool
           ) -> _Image:
    """Both modalities of the scene with these objects standing (one date)."""
    rasters = _object_rasters(objects, scene.acq, (scene.size, scene.size))
    trees = scene.trees & (rasters.instances == 0)
    materials = _materials(scene.ground, scene.palette, objects)
    material = _material_map(scene, trees, rasters.instances)
    damaged_pixels = None
    if (objects.kinds == _KIND_DAMAGED).any():  # partly collapsed roofs
        damaged = np.concatenate([[False], objects.kinds == _KIND_DAMAGED])
        damaged_pixels = damaged[rasters.instances] & (scene.textures.mottle > 0.3)
    return _Image(_render_optical(scene, materials, material, trees, rasters, damaged_pixels),
                  _render_sar(scene, materials, material, trees, rasters, rng, speckle),
                  rasters, material)


def _labels(scene: _Scene, first: _Image) -> dict[str, np.ndarray]:
    """First-date labels; land cover is a lookup of the material map, which already ranks
    the classes (objects over roads over trees and water over parcels)."""
    objects, instances = scene.objects, first.rasters.instances
    is_building = objects.kinds == _KIND_BUILDING
    object_class = np.where(is_building, BUILDING, SMALL_OBJECT)
    material_class = np.concatenate([scene.ground.classes, [WATER, TREES, ROAD, ROAD],
                                     object_class])
    building_heights = np.concatenate([[0.0], np.where(is_building, objects.heights, 0.0)])
    return {
        "landcover": np.take(material_class.astype(np.uint8), first.material),
        "height": np.take(building_heights.astype(np.float32), instances),
        "instances": instances,
        "boxes": first.rasters.boxes.astype(np.float32).reshape(-1, 4),
        "box_classes": np.where(is_building, BOX_BUILDING, BOX_SMALL_OBJECT).astype(np.int32),
        "object_heights": objects.heights.astype(np.float32),
        "road": scene.road.copy(),
    }


def _second_date_example(scene: _Scene, first: _Image, streams: Mapping[str, Any],
                         speckle: bool) -> dict[str, np.ndarray]:
    """The second date's images (same geometry, new speckle) and its change labels."""
    change_rng = streams["change"]
    objects, state = _second_date(change_rng, scene)
    scene = dataclasses.replace(scene, ground=_seasonal(change_rng, scene.ground))
    second = _image(scene, objects, streams["speckle_t2"], speckle)
    damage = np.take(np.concatenate([[NO_BUILDING], state]).astype(np.uint8),
                     first.rasters.instances)
    damage[second.rasters.instances > len(state)] = NEW_BUILDING
    return {"optical_t2": second.optical, "sar_t2": second.sar, "change": damage >= DAMAGED,
            "damage": damage}


@dataclasses.dataclass(frozen=True)
class SynthSource:
    """Random-access data source (grain's ``__len__`` / ``__getitem__`` protocol) of ``length``
    scenes of the data set ``seed``: example ``i`` is ``render_pair(seed, i, size, **options)``.

    Nothing is stored, so any ``length`` works. ``options`` are ``render_pair``'s keyword
    options, given as a mapping or as (name, value) pairs; they are checked here, like
    ``seed``, ``size`` and ``length``, and kept as pairs sorted by name, so the source is a
    frozen dataclass of plain values: hashable, and picklable for grain's worker processes.
    The default options skip the second date and the registration, which pretraining does not
    read (scene ``i`` is the same with any options: they only add or drop arrays).
    """

    seed: int = 0
    size: int = 512
    length: int = 1_000_000
    options: tuple[tuple[str, Any], ...] = (("with_registration", False), ("with_t2", False))

    def __post_init__(self) -> None:
        for name, value, minimum in (("seed", self.seed, 0), ("size", self.size, MIN_SIZE),
                                     ("length", self.length, 0)):
            _check_int(name, value, minimum)
        options = dict(self.options)
        parse_options(options)
        object.__setattr__(self, "options", tuple(sorted(options.items())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(f"SynthSource index {index} out of range [0, {self.length})")
        return render_pair(self.seed, int(index), self.size, **dict(self.options))
