"""Layout: roads, ground parcels, water, buildings, small objects and trees."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from mars_jax.data.synth.constants import (
    _DASH_M,
    _DEG,
    _TREE_CROWN_M,
    BARE_SOIL,
    BUILDING_HEIGHT_RANGE,
    LOW_VEGETATION,
)
from mars_jax.data.synth.geometry import Acquisition
from mars_jax.data.synth.objects import (
    _FLAT_ROOFS,
    _GABLE_ROOFS,
    _KIND_BUILDING,
    _KIND_SHIP,
    _KIND_VEHICLE,
    _SHIP_COLOURS,
    _VEHICLE_COLOURS,
    _no_objects,
    _non_overlapping,
    _Objects,
    _objects,
)
from mars_jax.data.synth.raster import _lerp, rasterize, smooth_noise, spans


@dataclasses.dataclass(frozen=True)
class _Road:
    points: np.ndarray  # (n, 2) polyline vertices, pixels
    width: float  # pixels


def _arc_lengths(points: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def _along(points: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions and unit tangents at arc lengths ``s`` of a polyline."""
    cumulative = _arc_lengths(points)
    segment = np.clip(np.searchsorted(cumulative, s, side="right") - 1, 0, len(points) - 2)
    delta = points[segment + 1] - points[segment]
    length = np.maximum(cumulative[segment + 1] - cumulative[segment], 1e-9)
    t = (np.asarray(s) - cumulative[segment]) / length
    return points[segment] + t[:, None] * delta, delta / length[:, None]


def _inside(points: np.ndarray, size: int, margin: float = 0.0) -> np.ndarray:
    return np.all((points >= -margin) & (points < size + margin), axis=-1)


def _wiggly_line(rng: np.random.Generator, start: np.ndarray, heading: float, length: float,
                 steps: int, wiggle: float) -> np.ndarray:
    headings = heading + np.concatenate([[0.0], np.cumsum(rng.normal(0.0, wiggle, steps - 1))])
    moves = (length / steps) * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    return start + np.concatenate([np.zeros((1, 2)), np.cumsum(moves, axis=0)])


def _road_from(rng: np.random.Generator, point: np.ndarray, heading: float, size: int,
               wiggle: float, both_ways: bool, length: float) -> np.ndarray:
    steps = 1 if wiggle == 0 else 8
    forward = _wiggly_line(rng, point, heading, length, steps, wiggle)
    if not both_ways:
        return forward
    backward = _wiggly_line(rng, point, heading + math.pi, length, steps, wiggle)
    return np.concatenate([backward[::-1], forward[1:]])


def _positions_inside(points: np.ndarray, size: int, spacing: float, offset: float,
                      margin: float) -> tuple[np.ndarray, np.ndarray]:
    total = _arc_lengths(points)[-1]
    s = np.arange(offset, total, spacing)
    positions, tangents = _along(points, s)
    inside = _inside(positions, size, -margin)
    return positions[inside], tangents[inside]


def _road_network(rng: np.random.Generator, size: int, gsd: float,
                  urbanity: float) -> list[_Road]:
    """A trunk road across the scene; streets branch from points on existing roads, so the
    network is connected by construction. Dense scenes get a straight grid, rural ones a few
    winding roads."""
    metre = 1.0 / gsd
    heading = rng.uniform(0.0, math.pi)
    wiggle = 0.3 * (1.0 - urbanity) ** 2
    far = 2.0 * size
    trunk = _Road(_road_from(rng, rng.uniform(0.25, 0.75, 2) * size, heading, size, wiggle,
                             True, far), rng.uniform(7.0, 12.0) * metre)
    roads = [trunk]
    block = _lerp(260.0, 75.0, urbanity) * rng.uniform(0.85, 1.15) * metre
    points, tangents = _positions_inside(trunk.points, size, block, rng.uniform(0, block),
                                         0.05 * size)
    cross = []
    for point, tangent in zip(points, tangents, strict=True):
        turn = math.atan2(tangent[1], tangent[0]) + math.pi / 2
        turn += rng.normal(0.0, 0.03 + 0.2 * (1.0 - urbanity))
        both_ways = rng.random() < 0.3 + 0.7 * urbanity
        if not both_ways and rng.random() < 0.5:
            turn += math.pi
        length = far if both_ways else rng.uniform(0.3, 1.2) * size
        road = _Road(_road_from(rng, point, turn, size, wiggle, both_ways, length),
                     rng.uniform(5.0, 8.0) * metre)
        roads.append(road)
        if both_ways:
            cross.append(road)
    if urbanity > 0.5 and cross:
        street = cross[rng.integers(len(cross))]
        spacing = _lerp(200.0, 70.0, urbanity) * rng.uniform(0.85, 1.15) * metre
        points, _ = _positions_inside(street.points, size, spacing, rng.uniform(0, spacing), 0.0)
        away = _distance_to_polyline(points, trunk.points) > spacing / 2  # not on the trunk
        for point in points[away]:
            roads.append(_Road(_road_from(rng, point, heading, size, 0.0, True, far),
                               rng.uniform(5.0, 8.0) * metre))
    return roads


def _draw_roads(roads: Sequence[_Road], size: int, dashes: np.ndarray | None = None
                ) -> np.ndarray:
    """uint8 image: 1 on roads, 2 on the centre-line ``dashes`` (one pixel wide: their
    albedo mixes paint and asphalt)."""
    image = Image.new("L", (size, size))
    draw = ImageDraw.Draw(image)
    for road in roads:
        draw.line([tuple(p) for p in road.points], fill=1, width=max(1, round(float(road.width))),
                  joint="curve" if len(road.points) > 2 else None)
    for start, end in dashes if dashes is not None else ():
        draw.line([tuple(start), tuple(end)], fill=2)
    return np.asarray(image)


def _centre_dashes(roads: Sequence[_Road], size: int, gsd: float) -> np.ndarray:
    """(N, 2, 2) start and end points of the dashed centre lines near the image."""
    dash, period = (length / gsd for length in _DASH_M)
    segments = []
    for road in roads:
        s = np.arange(0.0, _arc_lengths(road.points)[-1] - dash, period)
        segments.append(np.stack([_along(road.points, s)[0], _along(road.points, s + dash)[0]],
                                 axis=1))
    segments = np.concatenate(segments)
    return segments[_inside(segments, size, dash).any(axis=1)]


@dataclasses.dataclass(frozen=True)
class _Ground:
    """Field parcels: the id map and per-parcel class, albedo, texture and sigma0."""

    parcel: np.ndarray  # (H, W) int32 parcel id
    classes: np.ndarray  # (P,) BARE_SOIL or LOW_VEGETATION
    albedo: np.ndarray  # (P, 3)
    crop: np.ndarray  # (P,) crop-row amplitude
    sar_db: np.ndarray  # (P,)
    rows: np.ndarray | None  # (H, W) float32 crop-row pattern in [-1, 1], None if unresolved


_SOIL_ALBEDO = np.array([[0.46, 0.38, 0.29], [0.52, 0.45, 0.36], [0.38, 0.30, 0.24],
                         [0.55, 0.50, 0.43]])
_GRASS_ALBEDO = np.array([[0.20, 0.30, 0.12], [0.26, 0.33, 0.15], [0.17, 0.26, 0.11]])
_CROP_ALBEDO = np.array([[0.15, 0.30, 0.09], [0.30, 0.36, 0.14], [0.55, 0.48, 0.26],
                         [0.47, 0.40, 0.30]])


def _ground(rng: np.random.Generator, size: int, acq: Acquisition, urbanity: float,
            heading: float) -> _Ground:
    """Parcels on a warped grid aligned with the trunk road: long strips split into fields
    (staggered from strip to strip), each bare, grass or crop, crops with rows where the gsd
    resolves them."""
    metre = 1.0 / acq.gsd
    angle = heading + rng.choice([0.0, math.pi / 2])
    width = _lerp(110.0, 45.0, urbanity) * rng.uniform(0.6, 1.4) * metre
    length = _lerp(80.0, 35.0, urbanity) * rng.uniform(0.6, 1.4) * metre
    reach = 1.5 * size + 30.0 * metre  # |coordinate| bound, to keep indices non-negative
    strips, fields = int(2 * reach / width) + 2, int(2 * reach / length) + 3
    count = strips * fields
    # Coordinates across strips (u) and along them (v), in units of parcel size, shifted
    # positive so that truncation is floor.
    warp = smooth_noise(rng, size, 150.0 * metre, count=2) * np.float32(6.0 * metre)
    x = np.arange(size, dtype=np.float32)
    cos, sin = math.cos(angle), math.sin(angle)
    u = ((x * (cos / width))[None, :] + (x * (sin / width) + reach / width)[:, None]
         + warp[0] * np.float32(1 / width))
    v = ((x * (-sin / length))[None, :] + (x * (cos / length) + reach / length)[:, None]
         + warp[1] * np.float32(1 / length))
    strip = u.astype(np.int32)
    v += np.take(rng.uniform(0, 1, strips).astype(np.float32), strip)
    parcel = strip * np.int32(fields) + v.astype(np.int32)

    draw = rng.random(count)
    p_crop, p_grass = _lerp(0.55, 0.0, urbanity), _lerp(0.25, 0.55, urbanity)
    is_crop = draw < p_crop
    is_grass = (draw >= p_crop) & (draw < p_crop + p_grass)
    classes = np.where(is_crop | is_grass, LOW_VEGETATION, BARE_SOIL)
    albedo = np.where(is_crop[:, None], _CROP_ALBEDO[rng.integers(len(_CROP_ALBEDO), size=count)],
                      np.where(is_grass[:, None],
                               _GRASS_ALBEDO[rng.integers(len(_GRASS_ALBEDO), size=count)],
                               _SOIL_ALBEDO[rng.integers(len(_SOIL_ALBEDO), size=count)]))
    albedo = albedo * rng.uniform(0.85, 1.15, (count, 1)) * rng.uniform(0.95, 1.05, (count, 3))
    sar_db = np.where(is_crop, rng.normal(-9.5, 1.5, count),
                      np.where(is_grass, rng.normal(-11.5, 1.2, count),
                               rng.normal(-13.0, 2.0, count)))
    row_spacing = rng.uniform(0.75, 3.0) * metre  # row crops to vineyards
    resolved = float(np.clip((row_spacing - 2.5) / 2.0, 0.0, 1.0))  # fades below 2.5 px a row
    crop = np.where(is_crop, rng.uniform(0.1, 0.3, count) * resolved, 0.0)
    rows = None
    if resolved > 0 and is_crop.any():
        along_u = np.take((rng.random(count) < 0.5).astype(np.float32), parcel)
        across_v = v * np.float32(length / row_spacing)
        rows = across_v + along_u * (u * np.float32(width / row_spacing) - across_v)  # u or v
        rows -= np.floor(rows)  # position within a row, then a triangle wave in [-1, 1]
        rows = np.abs(rows * np.float32(4.0) - np.float32(2.0)) - np.float32(1.0)
    return _Ground(parcel, classes, albedo, crop, sar_db, rows)


def _water(rng: np.random.Generator, size: int, gsd: float) -> np.ndarray:
    """None, a lake (thresholded smooth noise) or a river (a wide winding line with noisy
    banks)."""
    metre = 1.0 / gsd
    kind = rng.choice(3, p=[0.45, 0.3, 0.25])
    field = smooth_noise(rng, size, 70.0 * metre)
    if kind == 0:
        return np.zeros((size, size), bool)
    if kind == 1:
        fraction = rng.uniform(0.04, 0.25)
        level = np.quantile(field[::8, ::8], 1.0 - fraction)
        return field > level
    line = _road_from(rng, rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0, math.pi), size, 0.25,
                      True, 2.0 * size)
    half_width = rng.uniform(8.0, 25.0) * metre
    banks = _distance_field(line, size) + field * np.float32(0.25 * half_width)
    return banks < half_width


def _distance_to_polyline(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Distance of each point (G, 2) to a polyline (S + 1, 2), in the points' units."""
    gx, gy = points[None, :, 0], points[None, :, 1]  # (1, G)
    x0, y0 = polyline[:-1, :1], polyline[:-1, 1:]  # (S, 1): segments along the reduced axis
    dx, dy = np.diff(polyline[:, :1], axis=0), np.diff(polyline[:, 1:], axis=0)
    t = np.clip(((gx - x0) * dx + (gy - y0) * dy) / np.maximum(dx**2 + dy**2, 1e-12), 0.0, 1.0)
    return np.sqrt(((gx - x0 - t * dx) ** 2 + (gy - y0 - t * dy) ** 2).min(axis=0))


def _distance_field(polyline: np.ndarray, size: int, step: int = 8) -> np.ndarray:
    """Distance (pixels) of every pixel to a polyline, exact on a grid of ``step`` pixels and
    bilinear in between (a distance is 1-Lipschitz, so the error stays below ``step``/2)."""
    coarse = np.arange(0, size + step, step, dtype=float)
    grid = np.stack(np.meshgrid(coarse, coarse), axis=-1).reshape(-1, 2)
    distance = _distance_to_polyline(grid, polyline).reshape(len(coarse), len(coarse))
    basis = _interpolation_matrix(size, step, len(coarse))
    return basis @ distance.astype(np.float32) @ basis.T


@functools.lru_cache(maxsize=16)
def _interpolation_matrix(size: int, step: int, cells: int) -> np.ndarray:
    """(size, cells) linear interpolation from samples every ``step`` pixels."""
    position = np.arange(size) / step
    first = np.minimum(np.floor(position).astype(int), cells - 2)
    fraction = position - first
    matrix = np.zeros((size, cells), np.float32)
    matrix[np.arange(size), first] = 1.0 - fraction
    matrix[np.arange(size), first + 1] = fraction
    matrix.flags.writeable = False
    return matrix


def _roof_colours(rng: np.random.Generator, gable: np.ndarray) -> np.ndarray:
    k = len(gable)
    colours = np.where(gable[:, None], _GABLE_ROOFS[rng.integers(len(_GABLE_ROOFS), size=k)],
                       _FLAT_ROOFS[rng.integers(len(_FLAT_ROOFS), size=k)])
    return colours * rng.uniform(0.88, 1.12, (k, 1))


def _buildings(rng: np.random.Generator, roads: Sequence[_Road], size: int, gsd: float,
               urbanity: float) -> _Objects:
    """Candidate lots along both sides of every road (a second row in dense areas), each with
    a house or block: footprint, floors, roof type and materials."""
    metre = 1.0 / gsd
    frontage = _lerp(np.array([24.0, 42.0]), np.array([16.0, 45.0]), urbanity) * metre
    depth = _lerp(np.array([8.0, 14.0]), np.array([12.0, 30.0]), urbanity) * metre
    setback = _lerp(np.array([5.0, 16.0]), np.array([2.0, 5.0]), urbanity) * metre
    fill = _lerp(np.array([0.45, 0.7]), np.array([0.75, 0.95]), urbanity)
    centres, halves, angles = [], [], []
    for road in roads:
        total = _arc_lengths(road.points)[-1]
        for side in (1.0, -1.0):
            widths = rng.uniform(*frontage, int(total / frontage[0]) + 1)
            ends = np.cumsum(widths)
            inside = ends <= total
            widths, mids = widths[inside], (ends - widths / 2)[inside]
            points, tangents = _along(road.points, mids)
            near = _inside(points, size, 40.0 * metre)
            widths, points, tangents = widths[near], points[near], tangents[near]
            n = len(widths)
            normal = side * np.stack([-tangents[:, 1], tangents[:, 0]], axis=1)
            along = widths * rng.uniform(*fill, n)
            deep = rng.uniform(*depth, n)
            offset = road.width / 2 + rng.uniform(*setback, n) + deep / 2
            angle = np.arctan2(tangents[:, 1], tangents[:, 0]) + rng.normal(0.0, 0.02, n)
            centres.append(points + normal * offset[:, None])
            halves.append(np.stack([along, deep], axis=1) / 2)
            angles.append(angle)
            back = rng.random(n) < 0.6 * urbanity
            deep2 = rng.uniform(*depth, n)
            centres.append((points + normal * (offset + deep / 2 + 3.0 * metre
                                               + deep2 / 2)[:, None])[back])
            halves.append((np.stack([along * rng.uniform(0.6, 1.0, n), deep2], axis=1) / 2)[back])
            angles.append(angle[back])
    centres = np.concatenate(centres)
    k = len(centres)
    median_floors = _lerp(1.3, 5.5, urbanity)
    floors = np.clip(np.round(np.exp(rng.normal(math.log(median_floors), 0.3 + 0.35 * urbanity,
                                                k))), 1, 19)
    heights = np.clip(floors * rng.uniform(2.9, 3.2, k) + rng.uniform(0.4, 1.5, k),
                      *BUILDING_HEIGHT_RANGE)
    gable = (floors <= 3) & (rng.random(k) < 0.8 * (1.0 - urbanity) + 0.05)
    pitch = np.where(gable, rng.uniform(25.0, 40.0, k) * _DEG, 0.0)
    return _objects(centres, np.concatenate(halves), np.concatenate(angles), heights,
                    _KIND_BUILDING, pitch, _roof_colours(rng, gable), rng.normal(-7.0, 2.0, k),
                    rng.normal(-4.0, 1.5, k), rng.normal(10.0, 1.5, k))


def _vehicles(rng: np.random.Generator, roads: Sequence[_Road], size: int, gsd: float,
              urbanity: float) -> _Objects:
    """Cars and trucks in both lanes, heading along the road."""
    metre = 1.0 / gsd
    spacing = _lerp(90.0, 18.0, urbanity) * metre
    parts = []
    step = 4.0  # pixels between candidate positions, jittered along the road below
    for road in roads:
        points, tangents = _positions_inside(road.points, size, step, 0.0, 0.0)
        n = rng.poisson(len(points) * step / spacing)
        if n == 0:
            continue
        pick = rng.integers(len(points), size=n)
        tangents = tangents[pick]
        points = points[pick] + rng.uniform(0.0, step, (n, 1)) * tangents
        lane = rng.choice([-1.0, 1.0], n)
        normal = np.stack([-tangents[:, 1], tangents[:, 0]], axis=1)
        truck = rng.random(n) < 0.12
        length = np.where(truck, rng.uniform(8.0, 12.0, n), rng.uniform(4.0, 4.9, n)) * metre
        width = np.where(truck, 2.5, rng.uniform(1.7, 1.9, n)) * metre
        angle = np.arctan2(tangents[:, 1], tangents[:, 0]) + np.where(lane < 0, math.pi, 0)
        parts.append(_objects(
            points + normal * (lane * road.width / 4)[:, None],
            np.stack([length, width], axis=1) / 2, angle,
            np.where(truck, rng.uniform(3.0, 4.0, n), rng.uniform(1.4, 1.7, n)), _KIND_VEHICLE,
            0.0, _VEHICLE_COLOURS[rng.integers(len(_VEHICLE_COLOURS), size=n)],
            rng.normal(0.0, 2.0, n), -2.0, rng.normal(6.0, 2.0, n)))
    return _Objects.concat(parts) if parts else _no_objects()


def _ships(rng: np.random.Generator, water: np.ndarray, gsd: float) -> _Objects:
    """A few boats, 8-40 m long, at random points of open water (their fit is checked
    later)."""
    metre = 1.0 / gsd
    cells = np.flatnonzero(water[::4, ::4])
    n = min(6, rng.poisson(len(cells) * 16 * gsd**2 / 15000.0))
    if n == 0:
        return _no_objects()
    pick = cells[rng.integers(len(cells), size=n)]
    width = water[::4, ::4].shape[1]
    centres = np.stack([pick % width, pick // width], axis=1) * 4.0
    length = rng.uniform(8.0, 40.0, n) * metre
    return _objects(centres, np.stack([length, length * rng.uniform(0.2, 0.3, n)], axis=1) / 2,
                    rng.uniform(0, 2 * math.pi, n), rng.uniform(2.0, 6.0, n), _KIND_SHIP, 0.0,
                    _SHIP_COLOURS[rng.integers(len(_SHIP_COLOURS), size=n)],
                    rng.normal(2.0, 2.0, n), 0.0, rng.normal(10.0, 2.0, n))


def _place(candidates: _Objects, size: int, margin: float, min_pixels: int,
           clear_of: np.ndarray | None = None, clearance: float = 0.0,
           within: np.ndarray | None = None) -> np.ndarray:
    """Which candidates (in priority order) can stand: centre inside the image, at least
    ``min_pixels`` in it, ``margin`` pixels apart from each other, and either ``clearance``
    pixels clear of a mask (given as its row prefix sums, see ``_row_prefix``) or with the
    corners of their outline grown by ``margin`` within a mask (objects on roads or water,
    which are wide and smooth next to them)."""
    shape = (size, size)
    ok = _inside(candidates.centres, size)
    ok &= spans(candidates.polygons(), shape).pixel_counts() >= min_pixels
    if clear_of is not None:
        ok &= spans(candidates.polygons(margin / 2 + clearance), shape).sums(clear_of) == 0
    if within is not None:
        corners = np.rint(candidates.polygons(margin / 2)).astype(int)
        inside = _inside(corners, size).all(axis=1)
        x, y = np.clip(corners, 0, size - 1).transpose(2, 0, 1)
        ok &= inside & within[y, x].all(axis=1)
    keep = np.zeros(len(candidates), bool)
    index = np.flatnonzero(ok)
    keep[index[_non_overlapping(candidates.take(index), margin)]] = True
    return keep


def _crowns(rng: np.random.Generator, near: _Objects, roads: Sequence[_Road], size: int,
            gsd: float, urbanity: float) -> np.ndarray:
    """Single tree crowns (12-gons): in gardens around buildings and in rows along streets."""
    metre = 1.0 / gsd
    per_house = rng.poisson(1.8 * (1.0 - urbanity), len(near))
    owner = np.repeat(np.arange(len(near)), per_house)
    reach = np.hypot(*near.half_sizes.T)[owner] * rng.uniform(1.2, 2.2, len(owner))
    angle = rng.uniform(0, 2 * math.pi, len(owner))
    centres = [near.centres[owner] + reach[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)]
    if 0.2 < urbanity < 0.8 and rng.random() < 0.6:
        for road in roads[1:]:
            points, tangents = _positions_inside(road.points, size, 12.0 * metre,
                                                 rng.uniform(0, 12.0 * metre), 0.0)
            normal = np.stack([-tangents[:, 1], tangents[:, 0]], axis=1)
            for side in (1.0, -1.0):
                centres.append(points + side * normal * (road.width / 2 + 2.5 * metre))
    centres = np.concatenate(centres)
    radius = rng.uniform(*_TREE_CROWN_M, len(centres)) * metre
    corners = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    ring = np.stack([np.cos(corners), np.sin(corners)], axis=1)
    polygons = centres[:, None, :] + radius[:, None, None] * ring[None]
    return rasterize(polygons, 1, (size, size), np.int32) > 0
