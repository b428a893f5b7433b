"""Objects (buildings, vehicles, ships, rubble): oriented boxes extruded to prisms."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

_KIND_BUILDING, _KIND_VEHICLE, _KIND_SHIP, _KIND_DAMAGED, _KIND_RUBBLE = range(5)
_GABLE_ROOFS = np.array([[0.56, 0.27, 0.19], [0.44, 0.21, 0.16], [0.31, 0.31, 0.34],
                         [0.46, 0.37, 0.31], [0.27, 0.23, 0.23], [0.60, 0.38, 0.26]])
_FLAT_ROOFS = np.array([[0.62, 0.62, 0.60], [0.80, 0.80, 0.78], [0.42, 0.42, 0.43],
                        [0.24, 0.24, 0.26], [0.52, 0.49, 0.44], [0.47, 0.53, 0.51]])
_VEHICLE_COLOURS = np.array([[0.85, 0.85, 0.86], [0.07, 0.07, 0.08], [0.55, 0.56, 0.58],
                             [0.60, 0.10, 0.09], [0.12, 0.22, 0.50], [0.30, 0.31, 0.32]])
_SHIP_COLOURS = np.array([[0.88, 0.88, 0.88], [0.50, 0.52, 0.55], [0.55, 0.22, 0.15]])
_RUBBLE_ALBEDO = np.array([0.47, 0.44, 0.40])
_TARP_ALBEDO = np.array([0.12, 0.30, 0.62])


@dataclasses.dataclass(frozen=True)
class _Objects:
    """Oriented boxes extruded to prisms; all arrays share the first axis K."""

    centres: np.ndarray  # (K, 2) pixels
    half_sizes: np.ndarray  # (K, 2) pixels, along and across the axis
    angles: np.ndarray  # (K,) radians, axis direction from +x towards +y
    heights: np.ndarray  # (K,) metres
    kinds: np.ndarray  # (K,) _KIND_*
    pitch: np.ndarray  # (K,) radians, 0 for flat roofs, else a gable along the long side
    albedo: np.ndarray  # (K, 3)
    roof_db: np.ndarray  # (K,) SAR sigma0 of a flat roof at the scene's incidence
    wall_db: np.ndarray  # (K,) facade return, spread over the layover
    dihedral_db: np.ndarray  # (K,) wall-ground double bounce per pixel of line

    def __len__(self) -> int:
        return len(self.heights)

    def take(self, index: Any) -> _Objects:
        return _Objects(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def replace(self, mask: np.ndarray, **values: Any) -> _Objects:
        """Copy with ``values`` (scalars or per-object arrays) written where mask is True."""
        fields = {f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)}
        for name, value in values.items():
            value = np.asarray(value)
            per_object = value.ndim == fields[name].ndim
            fields[name][mask] = value[mask] if per_object else value
        return _Objects(**fields)

    @staticmethod
    def concat(parts: Sequence[_Objects]) -> _Objects:
        return _Objects(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                           for f in dataclasses.fields(_Objects)})

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        along = np.stack([np.cos(self.angles), np.sin(self.angles)], axis=-1)
        return along, np.stack([-along[:, 1], along[:, 0]], axis=-1)

    def polygons(self, margin: float = 0.0) -> np.ndarray:
        """(K, 4, 2) corners, optionally grown by ``margin`` pixels on every side."""
        along, across = self.axes()
        a = (self.half_sizes[:, 0] + margin)[:, None] * along
        b = (self.half_sizes[:, 1] + margin)[:, None] * across
        c = self.centres
        return np.stack([c + a + b, c - a + b, c - a - b, c + a - b], axis=1)

    def facets(self) -> tuple[np.ndarray, np.ndarray]:
        """Two roof facets per object, split along the ridge (the long axis): polygons
        (K, 2, 4, 2) and unit normals (K, 2, 3); flat roofs have two coplanar halves."""
        along, across = self.axes()
        long_is_along = self.half_sizes[:, 0] >= self.half_sizes[:, 1]
        ridge = np.where(long_is_along[:, None], along, across)
        side = np.where(long_is_along[:, None], across, -along)
        half_ridge = np.where(long_is_along, self.half_sizes[:, 0], self.half_sizes[:, 1])
        half_side = np.where(long_is_along, self.half_sizes[:, 1], self.half_sizes[:, 0])
        r = half_ridge[:, None] * ridge
        s = half_side[:, None] * side
        c = self.centres
        polygons = np.stack([np.stack([c + r + s, c - r + s, c - r, c + r], axis=1),
                             np.stack([c + r, c - r, c - r - s, c + r - s], axis=1)], axis=1)
        tilt = np.sin(self.pitch)[:, None]
        normals = np.stack([np.concatenate([side * tilt, np.cos(self.pitch)[:, None]], axis=1),
                            np.concatenate([-side * tilt, np.cos(self.pitch)[:, None]], axis=1)],
                           axis=1)
        return polygons, normals


def _objects(centres, half_sizes, angles, heights, kind, pitch, albedo, roof_db, wall_db,
             dihedral_db) -> _Objects:
    k = len(heights)
    full = lambda v: np.broadcast_to(np.asarray(v, float), (k,)).copy()
    return _Objects(np.asarray(centres, float).reshape(k, 2),
                    np.asarray(half_sizes, float).reshape(k, 2), full(angles), full(heights),
                    np.full(k, kind), full(pitch), np.asarray(albedo, float).reshape(k, 3),
                    full(roof_db), full(wall_db), full(dihedral_db))


def _no_objects() -> _Objects:
    return _objects(np.zeros((0, 2)), np.zeros((0, 2)), [], [], _KIND_BUILDING, [],
                    np.zeros((0, 3)), [], [], [])


def _rectangles_overlap(objects: _Objects, i: np.ndarray, j: np.ndarray,
                        margin: float) -> np.ndarray:
    """Separating-axis test of box pairs (i, j), each grown by margin / 2."""
    along, across = objects.axes()
    half = objects.half_sizes + margin / 2
    axes = np.stack([along[i], across[i], along[j], across[j]], axis=1)  # (P, 4, 2)
    gap = np.abs(((objects.centres[j] - objects.centres[i])[:, None, :] * axes).sum(-1))

    def radius(k: np.ndarray) -> np.ndarray:
        return (half[k, :1] * np.abs((along[k][:, None, :] * axes).sum(-1))
                + half[k, 1:] * np.abs((across[k][:, None, :] * axes).sum(-1)))

    return ~np.any(gap > radius(i) + radius(j), axis=1)


def _non_overlapping(objects: _Objects, margin: float) -> np.ndarray:
    """Greedy selection in list order (the order is the priority) of boxes that keep
    ``margin`` pixels apart."""
    k = len(objects)
    reach = np.hypot(*objects.half_sizes.T) + margin
    x, y = objects.centres.T
    near = (x[:, None] - x) ** 2 + (y[:, None] - y) ** 2 < (reach[:, None] + reach) ** 2
    i, j = np.nonzero(np.triu(near, 1))  # bounding circles meet: test those pairs exactly
    hit = _rectangles_overlap(objects, i, j, margin)
    i, j = i[hit], j[hit]
    keep = np.ones(k, bool)
    for first, second in zip(i, j, strict=True):  # i < j: the earlier box wins
        if keep[first]:
            keep[second] = False
    return keep
