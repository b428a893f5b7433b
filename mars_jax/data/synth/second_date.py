"""Second date: damage, new buildings and seasonal change."""

from __future__ import annotations

import dataclasses

import numpy as np

from mars_jax.data.synth.constants import DAMAGED, DESTROYED, INTACT, NO_BUILDING
from mars_jax.data.synth.layout import _SOIL_ALBEDO, _Ground
from mars_jax.data.synth.objects import (
    _KIND_BUILDING,
    _KIND_DAMAGED,
    _KIND_RUBBLE,
    _RUBBLE_ALBEDO,
    _Objects,
)
from mars_jax.data.synth.scene import _Scene


def _second_date(rng: np.random.Generator, scene: _Scene) -> tuple[_Objects, np.ndarray]:
    """Damage clustered round an epicentre (none in some scenes) plus construction on vacant
    lots. Returns the objects of the second date (the first date's, in order, then the new
    buildings) and each first-date object's damage code."""
    objects, size = scene.objects, scene.size
    k = len(objects)
    is_building = objects.kinds == _KIND_BUILDING
    severity = 0.0 if rng.random() < 0.25 else rng.uniform(0.1, 0.9)
    epicentre = rng.uniform(0, size, 2)
    radius = rng.uniform(0.2, 0.8) * size
    distance2 = ((objects.centres - epicentre) ** 2).sum(axis=1)
    hit = is_building & (rng.random(k) < severity * np.exp(-distance2 / (2 * radius**2)))
    destroyed = hit & (rng.random(k) < 0.3 + 0.4 * severity)
    damaged = hit & ~destroyed
    state = np.where(is_building, INTACT, NO_BUILDING)
    state[damaged], state[destroyed] = DAMAGED, DESTROYED
    t2 = objects.replace(destroyed, kinds=_KIND_RUBBLE, heights=rng.uniform(0.5, 2.0, k),
                         pitch=0.0, albedo=_RUBBLE_ALBEDO, roof_db=rng.normal(-3.0, 1.0, k),
                         wall_db=-12.0, dihedral_db=-30.0)
    t2 = t2.replace(damaged, kinds=_KIND_DAMAGED, heights=objects.heights * rng.uniform(0.7, 1, k),
                    roof_db=objects.roof_db + 3.0, dihedral_db=objects.dihedral_db - 6.0)
    build = rng.random(len(scene.vacant)) < (rng.uniform(0.0, 0.5) if rng.random() < 0.5 else 0)
    return _Objects.concat([t2, scene.vacant.take(build)]), state


def _seasonal(rng: np.random.Generator, ground: _Ground) -> _Ground:
    """Crops grow or are harvested, soils dry or wet: the changes that are not buildings."""
    count = len(ground.classes)
    harvested = (ground.crop > 0) & (rng.random(count) < 0.3)
    albedo = ground.albedo * rng.uniform(0.9, 1.1, (count, 1))
    albedo[harvested] = _SOIL_ALBEDO[rng.integers(len(_SOIL_ALBEDO), size=harvested.sum())]
    return dataclasses.replace(ground, albedo=albedo,
                               crop=np.where(harvested, 0.0, ground.crop),
                               sar_db=ground.sar_db + rng.normal(0.0, 1.0, count))
