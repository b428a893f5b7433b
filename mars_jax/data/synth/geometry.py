"""Acquisition geometry: azimuths, the sun and SAR geometry of a scene and how it is drawn."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mars_jax.data.synth.constants import (
    _DEG,
    GSD_RANGE,
    INCIDENCE_RANGE,
    LOOKS_RANGE,
    NESZ_RANGE_DB,
    SUN_ELEVATION_RANGE,
    Options,
)


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
