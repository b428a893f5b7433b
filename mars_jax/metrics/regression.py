"""Dense regression metrics (heights, depths) over a mask, streamed over a data set.

Device side, per batch: ``batch_sums(pred, target, mask)`` -> the sufficient statistics over
the kept pixels (``mask`` true): ``count`` N, ``abs_error`` sum |e|, ``squared_error`` sum e^2
(e = pred - target) and ``delta`` [3], the number of pixels with ratio r < 1.25^k, k = 1, 2, 3.
Host side: ``RegressionSums`` adds them in int64 / float64 and computes

    mae = sum |e| / N      rmse = sqrt(sum e^2 / N)      delta_k = #{r < 1.25^k} / N

    r = max(p', t') / min(p', t'),   x' = max(x, eps)    (r = max(p/t, t/p) when p, t >= eps)

Ratios are defined for positive values only, so predictions and targets below ``eps`` (default
1e-6, in the target's unit) count as ``eps``: a pixel where both are <= 0 has r = 1 (a hit),
one where the target is 0 and the prediction 1 m has r = 1e6 (a miss). For the depth
convention (deltas over positive targets only) pass ``mask & (target > 0)``. An empty mask
gives count 0 and NaN for every other metric. Masked-out pixels never enter the sums, even
when they hold NaN.

Within a batch the sums are float32 (float64 under x64 with float64 inputs): for a batch of
a few million pixels that is about 1e-6 relative; the host adds the batches in float64.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.metrics.common import divide, to_host

DELTA_THRESHOLDS = (1.25, 1.25**2, 1.25**3)


@functools.partial(jax.jit, static_argnames=("eps",))
def batch_sums(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None, *,
               eps: float = 1e-6) -> dict[str, jax.Array]:
    """Per-batch sums over the pixels where ``mask`` is true (every pixel when None).

    pred, target: float arrays of one shape; mask: bool of that shape. Returns ``count``
    (int32), ``abs_error``, ``squared_error`` (float32 or wider) and ``delta`` (int32 [3]).
    """
    if pred.shape != target.shape:
        raise ValueError(f"batch_sums: pred and target must have one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if mask is not None and mask.shape != target.shape:
        raise ValueError(f"batch_sums: mask must have the shape of target "
                         f"{tuple(target.shape)}, got {tuple(mask.shape)}")
    dtype = jnp.promote_types(jnp.promote_types(pred.dtype, target.dtype), jnp.float32)
    p, t = pred.astype(dtype), target.astype(dtype)
    m = jnp.ones(t.shape, bool) if mask is None else mask.astype(bool)
    error = jnp.where(m, p - t, 0)  # masked-out pixels (NaN or not) contribute exact zeros
    hi = jnp.maximum(jnp.maximum(p, eps), jnp.maximum(t, eps))
    lo = jnp.minimum(jnp.maximum(p, eps), jnp.maximum(t, eps))
    delta = jnp.stack([jnp.sum(m & (hi < threshold * lo), dtype=jnp.int32)
                       for threshold in DELTA_THRESHOLDS])  # hi / lo < thr, with no division
    return {"count": jnp.sum(m, dtype=jnp.int32), "abs_error": jnp.sum(jnp.abs(error)),
            "squared_error": jnp.sum(jnp.square(error)), "delta": delta}


class RegressionSums:
    """Host accumulator (int64 counts, float64 sums) of ``batch_sums``; ``compute`` -> mae,
    rmse, delta1, delta2, delta3 (fractions in [0, 1]) and count."""

    kind = "regression_sums"

    def __init__(self):
        self.count = 0
        self.abs_error = 0.0
        self.squared_error = 0.0
        self.delta = np.zeros(len(DELTA_THRESHOLDS), np.int64)

    def update(self, batch: Mapping[str, Any]) -> None:
        """Adds one ``batch_sums`` output (a dict with count, abs_error, squared_error,
        delta)."""
        missing = {"count", "abs_error", "squared_error", "delta"} - set(batch)
        if missing:
            raise ValueError(f"RegressionSums: batch statistics lack {sorted(missing)}; got "
                             f"{sorted(batch)}")
        delta = to_host(batch["delta"])
        if delta.shape != self.delta.shape:
            raise ValueError(f"RegressionSums: delta must have shape {self.delta.shape}, got "
                             f"{delta.shape}")
        self.count += int(to_host(batch["count"]))
        self.abs_error += float(to_host(batch["abs_error"]))
        self.squared_error += float(to_host(batch["squared_error"]))
        self.delta += delta.astype(np.int64)

    def merge(self, other: RegressionSums) -> RegressionSums:
        self.count += other.count
        self.abs_error += other.abs_error
        self.squared_error += other.squared_error
        self.delta += other.delta
        return self

    def reset(self) -> None:
        self.count, self.abs_error, self.squared_error = 0, 0.0, 0.0
        self.delta[:] = 0

    def compute(self) -> dict[str, float]:
        deltas = divide(self.delta, self.count)
        return {"mae": float(divide(self.abs_error, self.count)),
                "rmse": math.sqrt(float(divide(self.squared_error, self.count))),
                **{f"delta{k}": float(v) for k, v in enumerate(deltas, start=1)},
                "count": self.count}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "abs_error": self.abs_error,
                "squared_error": self.squared_error, "delta": [int(d) for d in self.delta]}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> RegressionSums:
        out = cls()
        out.update(state)
        return out

    def __repr__(self) -> str:
        return f"RegressionSums(count={self.count})"
