"""Public constants (classes, codes, parameter ranges) and the options of ``render_pair``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

BARE_SOIL, LOW_VEGETATION, TREES, WATER, ROAD, BUILDING, SMALL_OBJECT = range(7)
CLASS_NAMES = ("bare soil", "low vegetation", "trees", "water", "road", "building",
               "vehicle/ship")
BOX_BUILDING, BOX_SMALL_OBJECT = 0, 1
NO_BUILDING, INTACT, DAMAGED, DESTROYED, NEW_BUILDING = range(5)
DAMAGE_NAMES = ("no building", "intact", "damaged", "destroyed", "new")
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
