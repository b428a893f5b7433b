"""Frozen dataclasses built from config sections, refusing keys they do not know."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def check_known_keys(cls: type, values: Mapping[str, Any], section: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{section} config: unknown keys {unknown}; known keys: {sorted(known)}")


def from_mapping(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """``cls(**values)``, after naming any key ``cls`` does not have (a typo, not a default)."""
    check_known_keys(cls, values, section)
    return cls(**values)
