"""Pieces the accumulators share: reading device arrays on the host, divisions, means."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def to_host(x: Any) -> np.ndarray:
    """A numpy copy of ``x`` (numpy, jax, or nested lists).

    A jax array spread over several processes (a multi-host jit's output) is read from this
    process's first shard, which holds the whole value when the array is replicated, as the
    outputs of the batch statistics are; a value that is split between processes is an error.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.sharding.is_fully_replicated:
            raise ValueError(f"metric statistics of shape {x.shape} are split over processes "
                             f"({x.sharding}); replicate them before reading them on the host")
        x = x.addressable_data(0)
    return np.asarray(x)


def divide(numerator: Any, denominator: Any) -> np.ndarray:
    """``numerator / denominator`` in float64, NaN where the denominator is 0 (no warning)."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    out = np.full(np.broadcast_shapes(numerator.shape, denominator.shape), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def nanmean(values: np.ndarray) -> float:
    """Mean of the values that are not NaN; NaN when there are none (no warning)."""
    values = np.asarray(values, np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")
