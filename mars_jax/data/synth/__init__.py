"""SynthVHR: procedural very-high-resolution optical + SAR scene pairs with ground truth.

``render_pair(seed, index)`` draws one scene from its own random stream and images it twice: as
a true-ortho optical RGB picture and as a ground-range SAR backscatter image, with the labels of
the downstream tasks. It is a pure function of its arguments (no state between calls), so a data
set of any size is random access and needs no storage; ``SynthSource`` wraps it as a grain-style
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

Modules
-------
``constants`` (classes, codes, ranges, ``Options``), ``geometry`` (``Acquisition``), ``raster``
(noise, polygon spans, sweeps), ``objects`` (oriented prisms), ``layout`` (roads, parcels,
water, buildings, vehicles, ships, trees), ``scene`` (what both dates share), ``render`` (both
modalities), ``second_date``, ``registration`` (``warp``), ``api`` (``render_pair``,
``SynthSource``) and ``preview`` (the picture grid and the command line). This package
re-exports the public names; ``DB_FLOOR`` comes from ``mars_jax.data.contract``.
"""

from mars_jax.data.contract import DB_FLOOR
from mars_jax.data.synth.api import SynthSource, render_pair
from mars_jax.data.synth.constants import (
    BARE_SOIL,
    BOX_BUILDING,
    BOX_SMALL_OBJECT,
    BUILDING,
    BUILDING_HEIGHT_RANGE,
    CANOPY_HEIGHT_RANGE,
    CLASS_NAMES,
    DAMAGE_NAMES,
    DAMAGED,
    DESTROYED,
    GSD_RANGE,
    INCIDENCE_RANGE,
    INTACT,
    LOOKS_RANGE,
    LOW_VEGETATION,
    MIN_SIZE,
    NESZ_RANGE_DB,
    NEW_BUILDING,
    NO_BUILDING,
    ROAD,
    SMALL_OBJECT,
    SUN_ELEVATION_RANGE,
    TREES,
    WATER,
    Options,
    parse_options,
)
from mars_jax.data.synth.geometry import Acquisition, azimuth_vector
from mars_jax.data.synth.preview import DAMAGE_COLOURS, LANDCOVER_COLOURS, main, preview
from mars_jax.data.synth.raster import Spans, rasterize, smooth_noise, spans, sweep
from mars_jax.data.synth.registration import warp
from mars_jax.data.synth.render import to_db

__all__ = [
    "BARE_SOIL", "BOX_BUILDING", "BOX_SMALL_OBJECT", "BUILDING", "BUILDING_HEIGHT_RANGE",
    "CANOPY_HEIGHT_RANGE", "CLASS_NAMES", "DAMAGED", "DAMAGE_COLOURS", "DAMAGE_NAMES",
    "DB_FLOOR", "DESTROYED", "GSD_RANGE", "INCIDENCE_RANGE", "INTACT", "LANDCOVER_COLOURS",
    "LOOKS_RANGE", "LOW_VEGETATION", "MIN_SIZE", "NESZ_RANGE_DB", "NEW_BUILDING", "NO_BUILDING",
    "ROAD", "SMALL_OBJECT", "SUN_ELEVATION_RANGE", "TREES", "WATER", "Acquisition", "Options",
    "Spans", "SynthSource", "azimuth_vector", "main", "parse_options", "preview", "rasterize",
    "render_pair", "smooth_noise", "spans", "sweep", "to_db", "warp",
]
