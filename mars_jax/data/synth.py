"""SynthVHR: procedural very-high-resolution optical + SAR scene pairs with ground truth.

``render_pair(seed, index)`` draws one scene from its own random stream and images it twice: as
a true-ortho optical RGB picture and as a ground-range SAR backscatter image, with the labels of
the downstream tasks. It is a pure function of its arguments (no state between calls), so a data
set of any size is random access and needs no storage; ``SynthVHR`` wraps it as a grain-style
random-access data source. All randomness comes from ``SeedSequence([seed, index])``, split
into one stream per step, so options that skip a step leave the other arrays unchanged.

``python -m mars_jax.data.synth --preview grid.png [--seed S --count N --size PX --panel PX
--colours 256]`` writes a picture of several scenes (optical, SAR, land cover, height, second
date, damage).

Conventions
-----------
* Images are ``[row, column] = [y, x]`` arrays; ``x`` grows to the right (east) and ``y``
  downwards (south). Point coordinates are ``(x, y)`` in pixels, with the centre of pixel
  ``[j, i]`` at ``(i, j)``.
* Boxes ``(x0, y0, x1, y1)`` are pixel edges: an object covers columns ``x0 <= i < x1`` and rows
  ``y0 <= j < y1``, so ``instances[y0:y1, x0:x1]`` is its crop.
* Azimuths are degrees clockwise from image-up (north): 0 up, 90 right, 180 down, 270 left. The
  unit vector of azimuth ``a`` is ``(sin a, -cos a)`` in ``(x, y)``.
* ``sun_azimuth`` points from the scene to the sun. A height ``h`` casts its shadow towards
  ``sun_azimuth + 180``, ``h / tan(sun_elevation)`` metres long.
* ``look_azimuth`` points from the sensor to the scene on the ground (the range direction) and
  ``incidence`` is the angle from the vertical. A point at height ``h`` is imaged
  ``h / tan(incidence)`` metres towards the sensor (layover); the ground up to
  ``h * tan(incidence)`` metres beyond a wall, away from the sensor, gets no signal (radar
  shadow); the wall-ground corner facing the sensor returns a bright line (double bounce) at the
  footprint edge.
* Units: metres for heights, ``gsd`` in metres per pixel, angles in degrees, SAR as
  ``10 log10`` of the intensity (dB), floored at ``DB_FLOOR``.
* ``affine`` maps a pixel of the optical grid (where ``sar`` is co-registered) to ``sar_warped``:
  ``(x', y') = affine @ (x, y, 1)``, so ``sar_warped[y', x'] ~ sar[y, x]``.

Physical model
--------------
Flat terrain. Optical: per-material albedo with multi-scale texture, lit by the sun (Lambert on
each roof facet) plus a bluish sky term, which alone lights the shadows cast by buildings,
vehicles and tree crowns. Roofs are not displaced (a true orthophoto). SAR: per-material
backscatter sigma0 with its incidence-angle trend and texture, trees as displaced volume
scatterers, objects as prisms (displaced roof facets with local-incidence brightness, walls,
double-bounce and storey lines, radar shadow), thermal noise, and multiplicative fully developed
speckle ``Gamma(L, 1/L)``. The second date keeps the ground, the sun and the SAR geometry and
changes buildings (damaged, destroyed, newly built), crops and moisture.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "BARE_SOIL", "BOX_BUILDING", "BOX_SMALL_OBJECT", "BUILDING", "BUILDING_HEIGHT_RANGE",
    "CANOPY_HEIGHT_RANGE", "CLASS_NAMES", "DAMAGED", "DAMAGE_NAMES", "DB_FLOOR", "DESTROYED",
    "GSD_RANGE", "INCIDENCE_RANGE", "INTACT", "LOOKS_RANGE", "LOW_VEGETATION", "MIN_SIZE",
    "NESZ_RANGE_DB", "NEW_BUILDING", "NO_BUILDING", "ROAD", "SMALL_OBJECT",
    "SUN_ELEVATION_RANGE", "TREES", "WATER", "Acquisition", "Options", "Spans", "SynthVHR",
    "azimuth_vector", "main", "parse_options", "preview", "rasterize", "render_pair",
    "smooth_noise", "spans", "sweep", "to_db", "warp",
]

# --- public constants ---------------------------------------------------------------------------

BARE_SOIL, LOW_VEGETATION, TREES, WATER, ROAD, BUILDING, SMALL_OBJECT = range(7)
CLASS_NAMES = ("bare soil", "low vegetation", "trees", "water", "road", "building",
               "vehicle/ship")
BOX_BUILDING, BOX_SMALL_OBJECT = 0, 1
NO_BUILDING, INTACT, DAMAGED, DESTROYED, NEW_BUILDING = range(5)
DAMAGE_NAMES = ("no building", "intact", "damaged", "destroyed", "new")
DB_FLOOR = -50.0  # dB value of zero intensity and of no-data pixels
MIN_SIZE = 32

# Ranges the unspecified acquisition parameters are drawn from.
GSD_RANGE = (0.3, 1.0)
LOOKS_RANGE = (1.0, 8.0)  # log-uniform equivalent number of looks
INCIDENCE_RANGE = (25.0, 50.0)
SUN_ELEVATION_RANGE = (25.0, 70.0)
NESZ_RANGE_DB = (-27.0, -22.0)  # thermal noise floor
BUILDING_HEIGHT_RANGE = (3.0, 60.0)  # metres
CANOPY_HEIGHT_RANGE = (6.0, 18.0)  # metres, one per scene
# Accepted values of the options given explicitly.
_OPTION_LIMITS = {"gsd": (0.1, 2.0), "looks": (1.0, 1e4), "incidence": (15.0, 65.0),
                  "sun_elevation": (5.0, 90.0)}

_STOREY_M = 3.1
_MARKING_WIDTH_M = 0.15
_DASH_M = (3.0, 9.0)  # centre-line dash and period
_TREE_CROWN_M = (2.0, 4.5)  # radius of single crowns
_DEG = math.pi / 180.0
_DB_TO_LN = math.log(10.0) / 10.0


@dataclasses.dataclass(frozen=True)
class Options:
    """Keyword options of ``render_pair``; ``None`` means drawn from the scene's stream."""

    gsd: float | None = None  # metres per pixel
    looks: float | None = None  # equivalent number of looks L of the speckle
    incidence: float | None = None
    look_azimuth: float | None = None
    sun_azimuth: float | None = None
    sun_elevation: float | None = None
    small_objects: bool = True  # vehicles on roads, ships on water
    with_t2: bool = True  # second date, change and damage maps
    with_registration: bool = True  # sar_warped, affine, valid_warped
    speckle: bool = True  # False: the noise-free intensity (despeckling truth)


def parse_options(options: Mapping[str, Any]) -> Options:
    """Validates keyword options, naming the offending one."""
    known = {field.name: field for field in dataclasses.fields(Options)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown SynthVHR option(s) {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in options.items():
        if known[name].default is None:
            values[name] = _checked_number(name, value)
        elif not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"option {name!r} must be a bool, got {value!r}")
        else:
            values[name] = bool(value)
    return Options(**values)


def _checked_number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"option {name!r} must be a number or None, got {value!r}")
    value = float(value)
    low, high = _OPTION_LIMITS.get(name, (-math.inf, math.inf))
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"option {name!r} must be finite and in [{low}, {high}], got {value}")
    return value


# --- acquisition geometry -----------------------------------------------------------------------


def azimuth_vector(azimuth_deg: float) -> np.ndarray:
    """Unit ``(x, y)`` vector of an azimuth (clockwise from image-up, y pointing down)."""
    angle = azimuth_deg * _DEG
    return np.array([math.sin(angle), -math.cos(angle)])


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """Sun and SAR geometry of a scene. The ``*_shift`` methods map heights (metres) to
    (x, y) displacements in pixels, one row per height."""

    gsd: float
    sun_azimuth: float
    sun_elevation: float
    look_azimuth: float
    incidence: float
    looks: float
    nesz_db: float

    def shadow_shift(self, heights: np.ndarray) -> np.ndarray:
        """Where a point's optical shadow falls, relative to it: anti-sun, h / tan(elevation)."""
        scale = 1.0 / (math.tan(self.sun_elevation * _DEG) * self.gsd)
        return np.multiply.outer(np.asarray(heights, float) * scale,
                                 -azimuth_vector(self.sun_azimuth))

    def layover_shift(self, heights: np.ndarray) -> np.ndarray:
        """Where the SAR images a point at height h: towards the sensor by h / tan(incidence)."""
        scale = 1.0 / (math.tan(self.incidence * _DEG) * self.gsd)
        return np.multiply.outer(np.asarray(heights, float) * scale,
                                 -azimuth_vector(self.look_azimuth))

    def radar_shadow_shift(self, heights: np.ndarray) -> np.ndarray:
        """How far beyond a wall of height h the ground gets no signal: h * tan(incidence)."""
        scale = math.tan(self.incidence * _DEG) / self.gsd
        return np.multiply.outer(np.asarray(heights, float) * scale,
                                 azimuth_vector(self.look_azimuth))

    def sun_vector(self) -> np.ndarray:
        """Unit (x, y, up) vector towards the sun."""
        horizontal = azimuth_vector(self.sun_azimuth) * math.cos(self.sun_elevation * _DEG)
        return np.append(horizontal, math.sin(self.sun_elevation * _DEG))

    def sensor_vector(self) -> np.ndarray:
        """Unit (x, y, up) vector from the ground towards the SAR sensor."""
        horizontal = -azimuth_vector(self.look_azimuth) * math.sin(self.incidence * _DEG)
        return np.append(horizontal, math.cos(self.incidence * _DEG))


def _draw_acquisition(rng: np.random.Generator, options: Options) -> Acquisition:
    """Samples every parameter (so fixing one leaves the others unchanged), then overrides."""
    sun_azimuth = rng.uniform(110.0, 250.0)  # sun in the south at mid-morning to afternoon
    if rng.random() < 0.2:  # southern hemisphere: mirror about the east-west line
        sun_azimuth = (180.0 - sun_azimuth) % 360.0
    # Right- or left-looking from a near-polar orbit, ascending or descending, north-up image.
    look_azimuth = (90.0 + 180.0 * rng.integers(2) + rng.choice([-10.0, 10.0])
                    + rng.normal(0.0, 4.0)) % 360.0
    drawn = {
        "gsd": rng.uniform(*GSD_RANGE),
        "looks": math.exp(rng.uniform(*np.log(LOOKS_RANGE))),
        "incidence": rng.uniform(*INCIDENCE_RANGE),
        "look_azimuth": look_azimuth,
        "sun_azimuth": sun_azimuth,
        "sun_elevation": rng.uniform(*SUN_ELEVATION_RANGE),
        "nesz_db": rng.uniform(*NESZ_RANGE_DB),
    }
    for name in drawn:
        given = getattr(options, name, None)
        if given is not None:
            drawn[name] = given
    drawn["look_azimuth"] %= 360.0
    drawn["sun_azimuth"] %= 360.0
    return Acquisition(**drawn)


# --- raster primitives --------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)  # ~100 (size, cells) pairs occur at one size
def _spline_basis(size: int, cells: int) -> np.ndarray:
    """Cubic B-spline weights (size, cells + 3), rows scaled to unit L2 norm so that white
    noise interpolated through them has unit variance at every pixel."""
    t = (np.arange(size) + 0.5) * cells / size
    first = np.floor(t).astype(int)
    f = t - first
    weights = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1,
                        f**3], axis=1)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    basis = np.zeros((size, cells + 3), np.float32)
    basis[np.arange(size)[:, None], first[:, None] + np.arange(4)] = weights
    basis.flags.writeable = False
    return basis


def smooth_noise(rng: np.random.Generator, size: int, feature_px: float,
                 count: int | None = None) -> np.ndarray:
    """Unit-variance Gaussian field (size, size), or ``count`` of them, with features of about
    ``feature_px`` pixels: white noise on a coarse grid through separable cubic B-splines (two
    small matrix products)."""
    cells = int(np.clip(round(size / feature_px), 1, max(size // 4, 1)))  # >= 4 px features
    basis = _spline_basis(size, cells)
    shape = (cells + 3, cells + 3) if count is None else (count, cells + 3, cells + 3)
    return basis @ rng.standard_normal(shape, dtype=np.float32) @ basis.T


class Spans(NamedTuple):
    """Row spans of rasterised polygons: span n covers columns col0[n] <= i < col1[n] of row
    rows[n] and belongs to polygon owner[n]."""

    owner: np.ndarray
    rows: np.ndarray
    col0: np.ndarray
    col1: np.ndarray
    count: int  # number of polygons
    shape: tuple[int, int]

    def raster(self, values: Any, dtype: Any = np.float32) -> np.ndarray:
        """Per-pixel sum of ``values`` (one per polygon) over the polygons covering it.

        Span ends go into a difference image (one bincount) that a cumulative sum along rows
        turns into coverage: overlapping returns add up, as they do in a SAR image, and
        disjoint polygons can carry integer ids. Floats accumulate in float64, so that long
        rows of additions and subtractions leave no residue.
        """
        height, width = self.shape
        weights = np.broadcast_to(np.asarray(values, float), (self.count,))[self.owner]
        stride = width + 1
        start = self.rows * stride
        diff = np.bincount(np.concatenate([start + self.col0, start + self.col1]),
                           weights=np.concatenate([weights, -weights]),
                           minlength=height * stride)
        accumulate = np.int32 if np.issubdtype(dtype, np.integer) else np.float64
        coverage = np.cumsum(diff.reshape(height, stride)[:, :width], axis=1, dtype=accumulate)
        return coverage.astype(dtype, copy=False)

    def pixel_counts(self) -> np.ndarray:
        return np.bincount(self.owner, weights=self.col1 - self.col0, minlength=self.count)

    def sums(self, row_prefix: np.ndarray) -> np.ndarray:
        """Sum of an image under each polygon, from its row-wise prefix sums (H, W + 1)."""
        under = row_prefix[self.rows, self.col1] - row_prefix[self.rows, self.col0]
        return np.bincount(self.owner, weights=under, minlength=self.count)

    def boxes(self) -> np.ndarray:
        """Tight pixel-edge boxes (x0, y0, x1, y1) of the polygons (NaN where empty)."""
        boxes = np.full((self.count, 4), np.nan)
        if len(self.owner):
            first = np.r_[True, self.owner[1:] != self.owner[:-1]]  # spans come row-sorted
            owners, starts = self.owner[first], np.flatnonzero(first)
            boxes[owners, 0] = np.minimum.reduceat(self.col0, starts)
            boxes[owners, 1] = self.rows[starts]
            boxes[owners, 2] = np.maximum.reduceat(self.col1, starts)
            boxes[owners, 3] = np.maximum.reduceat(self.rows, starts) + 1
        return boxes


def spans(polygons: np.ndarray, shape: tuple[int, int]) -> Spans:
    """Rasterises convex polygons (N, V, 2): pixel (i, j) is inside when its centre is, with
    the half-open rule xl <= i < xr and yl <= j < yr, so polygons sharing an edge tile the
    plane without overlap and a whole-pixel shift of a polygon shifts its pixels."""
    polygons = np.asarray(polygons, float)
    height, width = shape
    # Edge-major (V, N) C-ordered tables, so that gathers and the reductions over edges run
    # along contiguous rows.
    x0, y0 = np.ascontiguousarray(polygons[..., 0].T), np.ascontiguousarray(polygons[..., 1].T)
    x1, y1 = np.roll(x0, -1, axis=0), np.roll(y0, -1, axis=0)
    # Each edge from its lower end, whichever way it is walked: polygons sharing an edge then
    # compute bit-identical crossings, and tile exactly.
    up = y0 <= y1
    xa, ya, xb, yb = np.where(up, x0, x1), np.where(up, y0, y1), np.where(up, x1, x0), \
        np.where(up, y1, y0)
    flat = ya == yb
    slope = (xb - xa) / np.where(flat, 1.0, yb - ya)
    intercept = xa - slope * ya  # edge: x = intercept + slope * y
    low, high = np.where(flat, np.inf, ya), np.where(flat, -np.inf, yb)
    row0 = np.clip(np.ceil(y0.min(axis=0, initial=np.inf)), 0, height).astype(np.intp)
    row1 = np.clip(np.ceil(y0.max(axis=0, initial=-np.inf)), 0, height).astype(np.intp)
    counts = np.maximum(row1 - row0, 0)
    owner = np.repeat(np.arange(len(polygons)), counts)
    rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts - row0, counts)
    y = rows.astype(float)
    gather = lambda table: np.take(table, owner, axis=1)  # C-ordered, unlike table[:, owner]
    crossed = (y >= gather(low)) & (y <= gather(high))
    x = gather(intercept) + gather(slope) * y
    missed = ~crossed * 1e9  # arithmetic masking: several times faster than np.where here
    col0 = np.clip(np.ceil((x + missed).min(axis=0, initial=np.inf)), 0, width).astype(np.intp)
    col1 = np.clip(np.ceil((x - missed).max(axis=0, initial=-np.inf)), 0, width).astype(np.intp)
    keep = col1 > col0
    return Spans(owner[keep], rows[keep], col0[keep], col1[keep], len(polygons), shape)


def rasterize(polygons: np.ndarray, values: Any, shape: tuple[int, int],
              dtype: Any = np.float32) -> np.ndarray:
    """Per-pixel sum of ``values`` over the convex polygons covering it (see ``Spans``)."""
    return spans(polygons, shape).raster(values, dtype)


def _row_prefix(mask: np.ndarray) -> np.ndarray:
    prefix = np.zeros((mask.shape[0], mask.shape[1] + 1), np.int32)
    np.cumsum(mask, axis=1, out=prefix[:, 1:])
    return prefix


def _edge_normals(polygons: np.ndarray) -> np.ndarray:
    """Outward unit normals (N, V, 2) of the edges from vertex i to i + 1."""
    edges = np.roll(polygons, -1, axis=1) - polygons
    x, y = polygons[..., 0], polygons[..., 1]
    orientation = np.sign((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))
    normals = np.stack([edges[..., 1], -edges[..., 0]], axis=-1) * orientation[:, None, None]
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    return normals / np.maximum(length, 1e-12)


def sweep(polygons: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Minkowski sum of each convex polygon with the segment from 0 to its shift (N, 2V, 2):
    the ground a prism's outline covers when projected along a direction (shadows, layover).

    Walking round the polygon, edges facing the shift are taken shifted, the others in place,
    and each vertex between the two kinds is joined to its shifted copy.
    """
    front = (_edge_normals(polygons) * shifts[:, None, :]).sum(axis=-1) > 0
    before = np.roll(front, 1, axis=1)[..., None]  # the edge ending at vertex i
    moved = polygons + shifts[:, None, :]
    first = np.where(before, moved, polygons)
    second = np.where(front[..., None], moved, polygons)
    return np.stack([first, second], axis=2).reshape(len(polygons), 2 * polygons.shape[1], 2)


def _shifted(image: np.ndarray, shift: Sequence[float], fill: Any = 0) -> np.ndarray:
    """``image`` moved by the (dx, dy) shift rounded to whole pixels: out[y, x] = in[y-dy, x-dx].
    ``fill=None`` keeps the original values where nothing moves in."""
    dx, dy = (round(float(v)) for v in shift)
    height, width = image.shape[:2]
    out = image.copy() if fill is None else np.full_like(image, fill)
    if abs(dx) < width and abs(dy) < height:
        out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
            image[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return out


def _swept_mask(mask: np.ndarray, shift: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """Union of the mask moved by each fraction of the shift (blob-shaped casters)."""
    out = np.zeros_like(mask)
    for fraction in fractions:
        out |= _shifted(mask, shift * fraction, False)
    return out


def _lerp(low: Any, high: Any, weight: float) -> Any:
    return np.add(low, np.multiply(np.subtract(high, low), weight))


# --- objects (buildings, vehicles, ships, rubble): oriented boxes as prisms -----------------------

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


# --- layout: roads, ground, water, buildings, small objects, trees --------------------------------


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


# --- the scene -----------------------------------------------------------------------------------

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


# --- rendering ----------------------------------------------------------------------------------

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


# --- second date -----------------------------------------------------------------------------


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


# --- registration --------------------------------------------------------------------------------


def _draw_affine(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rotation up to 3 degrees and scale 0.95-1.05 about the centre, then a translation up to
    3% of the size: optical pixel (x, y, 1) -> sar_warped pixel."""
    angle = rng.uniform(-3.0, 3.0) * _DEG
    scale = rng.uniform(0.95, 1.05)
    linear = scale * np.array([[math.cos(angle), -math.sin(angle)],
                               [math.sin(angle), math.cos(angle)]])
    centre = np.full(2, (size - 1) / 2)
    translation = centre + rng.uniform(-0.03, 0.03, 2) * size - linear @ centre
    return np.concatenate([linear, translation[:, None]], axis=1)


def warp(image: np.ndarray, affine: np.ndarray, fill: float = DB_FLOOR
         ) -> tuple[np.ndarray, np.ndarray]:
    """Resamples a (H, W) image bilinearly so that out[y', x'] = image[y, x] for
    (x', y') = affine @ (x, y, 1). Returns it (``fill`` where the source point falls outside
    the image) and the mask of pixels whose source point is inside."""
    height, width = image.shape
    inverse = np.linalg.inv(np.vstack([affine, [0.0, 0.0, 1.0]]))
    x, y = np.arange(width, dtype=float), np.arange(height, dtype=float)
    source_x = (inverse[0, 0] * x)[None, :] + (inverse[0, 1] * y + inverse[0, 2])[:, None]
    source_y = (inverse[1, 0] * x)[None, :] + (inverse[1, 1] * y + inverse[1, 2])[:, None]
    valid = ((source_x >= 0) & (source_x <= width - 1)
             & (source_y >= 0) & (source_y <= height - 1))
    left = np.clip(np.floor(source_x), 0, width - 2)
    top = np.clip(np.floor(source_y), 0, height - 2)
    fx, fy = (source_x - left).astype(np.float32), (source_y - top).astype(np.float32)
    corner = (top * width + left).astype(np.intp)
    flat = image.astype(np.float32).ravel()
    above = np.take(flat, corner)
    above += fx * (np.take(flat, corner + 1) - above)
    below = np.take(flat, corner + width)
    below += fx * (np.take(flat, corner + width + 1) - below)
    above += fy * (below - above)
    return np.where(valid, above, np.float32(fill)), valid


# --- public API ----------------------------------------------------------------------------------


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
    for name in ("gsd", "sun_azimuth", "sun_elevation", "look_azimuth", "incidence", "looks"):
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


class SynthVHR:
    """Random-access data source (grain's ``__len__`` / ``__getitem__`` protocol) of
    ``num_records`` scenes of the data set ``seed``."""

    def __init__(self, seed: int = 0, num_records: int = 1_000_000, size: int = 512,
                 **options: Any):
        for name, value, minimum in (("seed", seed, 0), ("num_records", num_records, 0),
                                     ("size", size, MIN_SIZE)):
            _check_int(name, value, minimum)
        parse_options(options)
        self.seed, self.num_records, self.size, self.options = seed, num_records, size, options

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"index {index} out of range [0, {self.num_records})")
        return render_pair(self.seed, int(index), self.size, **self.options)

    def __repr__(self) -> str:
        return (f"SynthVHR(seed={self.seed}, num_records={self.num_records}, size={self.size}, "
                f"options={self.options})")


# --- preview -------------------------------------------------------------------------------------

LANDCOVER_COLOURS = np.array([[176, 140, 100], [150, 200, 90], [30, 110, 40], [40, 90, 200],
                              [90, 90, 90], [220, 60, 50], [250, 220, 40]], np.uint8)
DAMAGE_COLOURS = np.array([[0, 0, 0], [60, 180, 75], [255, 200, 40], [220, 40, 40],
                           [70, 140, 255]], np.uint8)
_PREVIEW_DB_RANGE = (-25.0, 5.0)


def _grey(db: np.ndarray) -> np.ndarray:
    low, high = _PREVIEW_DB_RANGE
    return np.repeat((np.clip((db - low) / (high - low), 0, 1) * 255).astype(np.uint8), 3, -1)


def _height_colours(height: np.ndarray, top: float = 40.0) -> np.ndarray:
    """Dark blue (0 m) through orange to white (``top`` metres and above)."""
    stops = np.array([[20, 20, 40], [70, 40, 160], [220, 80, 60], [250, 200, 80],
                      [255, 255, 255]], float)
    position = np.clip(height / top, 0, 1) * (len(stops) - 1)
    channels = [np.interp(position, np.arange(len(stops)), stops[:, c]) for c in range(3)]
    return np.stack(channels, -1).astype(np.uint8)


def _blank(example: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.zeros_like(example["optical"])


# (title, picture of an example, whether to resize it smoothly rather than as labels)
_PREVIEW_COLUMNS = (
    ("optical", lambda e: e["optical"], True),
    ("SAR dB [-25, 5]", lambda e: _grey(e["sar"]), True),
    ("land cover", lambda e: LANDCOVER_COLOURS[e["landcover"]], False),
    ("height (0-40 m)", lambda e: _height_colours(e["height"]), False),
    ("optical t2", lambda e: e["optical_t2"] if "optical_t2" in e else _blank(e), True),
    ("SAR t2", lambda e: _grey(e["sar_t2"]) if "sar_t2" in e else _blank(e), True),
    ("damage t2", lambda e: DAMAGE_COLOURS[e["damage"]] if "damage" in e else _blank(e), False),
)


def _caption(seed: int, index: int, example: Mapping[str, np.ndarray]) -> str:
    value = lambda name: float(example[name])
    return (f"seed {seed} index {index}: gsd {value('gsd'):.2f} m, sun az "
            f"{value('sun_azimuth'):.0f} el {value('sun_elevation'):.0f}, look az "
            f"{value('look_azimuth'):.0f} inc {value('incidence'):.0f}, L {value('looks'):.1f}, "
            f"{len(example['boxes'])} objects")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def preview(path: str | Path, seed: int = 0, count: int = 4, size: int = 256,
            panel: int = 192, colours: int | None = None) -> Path:
    """Writes a PNG grid: one row per scene (``render_pair(seed, row, size)``), the columns of
    ``_PREVIEW_COLUMNS``, legends below; ``colours`` quantises it to an adaptive palette
    (a third of the bytes at 256)."""
    font, gap, line = _font(12), 4, 18
    row_height = panel + line + gap
    sheet = Image.new("RGB", (len(_PREVIEW_COLUMNS) * (panel + gap) + gap,
                              line + count * row_height + 2 * line + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, (title, _, _) in enumerate(_PREVIEW_COLUMNS):
        draw.text((gap + column * (panel + gap), 2), title, fill=(0, 0, 0), font=font)
    for row in range(count):
        example = render_pair(seed, row, size)
        top = line + row * row_height
        for column, (_, picture, smooth) in enumerate(_PREVIEW_COLUMNS):
            image = Image.fromarray(picture(example)).resize(
                (panel, panel), Image.BILINEAR if smooth else Image.NEAREST)
            sheet.paste(image, (gap + column * (panel + gap), top))
        draw.text((gap, top + panel + 1), _caption(seed, row, example), fill=(0, 0, 0),
                  font=font)
    bottom = line + count * row_height
    _legend(draw, font, (gap, bottom), "land cover:", CLASS_NAMES, LANDCOVER_COLOURS)
    _legend(draw, font, (gap, bottom + line), "damage:", DAMAGE_NAMES, DAMAGE_COLOURS)
    if colours is not None:
        sheet = sheet.quantize(colours, method=Image.Quantize.MEDIANCUT)
    path = Path(path)
    sheet.save(path, optimize=True)
    return path


def _legend(draw: ImageDraw.ImageDraw, font: Any, origin: tuple[int, int], title: str,
            names: Sequence[str], colours: np.ndarray) -> None:
    x, y = origin
    draw.text((x, y), title, fill=(0, 0, 0), font=font)
    x += 80
    for name, colour in zip(names, colours, strict=True):
        draw.rectangle([x, y + 2, x + 12, y + 14], fill=tuple(int(c) for c in colour),
                       outline=(0, 0, 0))
        draw.text((x + 16, y), name, fill=(0, 0, 0), font=font)
        x += 24 + int(draw.textlength(name, font=font))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preview", required=True, help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=4, help="scenes (rows)")
    parser.add_argument("--size", type=int, default=256, help="scene size in pixels")
    parser.add_argument("--panel", type=int, default=192, help="panel size in the grid")
    parser.add_argument("--colours", type=int, default=None,
                        help="quantise to this many colours (smaller file)")
    args = parser.parse_args(argv)
    path = preview(args.preview, args.seed, args.count, args.size, args.panel, args.colours)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
