"""Binary (positive-class) metrics, e.g. change or building masks, streamed over a data set.

Device side, per batch: ``batch_counts(pred, target)`` -> int32 ``[4]`` = (TP, FP, FN, TN)
over the kept pixels. Host side: ``BinaryCounts`` adds them in int64 and computes

    precision = TP / (TP + FP)            recall = TP / (TP + FN)
    f1        = 2 TP / (2 TP + FP + FN)   iou    = TP / (TP + FP + FN)
    oa        = (TP + TN) / (TP + FP + FN + TN)

A ratio whose denominator is 0 is NaN (undefined), as in ``segmentation``: precision when
nothing is predicted positive, recall when the target has no positive, f1 and iou when neither
has one, oa when no pixel was kept. This equals scikit-learn's ``zero_division=np.nan``.
Otherwise a metric with TP = 0 is 0 (e.g. recall and f1 when positives exist but none is
found).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.metrics.common import divide, to_host

COUNT_NAMES = ("tp", "fp", "fn", "tn")


def _check_mask(name: str, x: jax.Array) -> None:
    if not (x.dtype == jnp.bool_ or jnp.issubdtype(x.dtype, jnp.integer)):
        raise ValueError(f"batch_counts: {name} must be bool or integer (nonzero = positive), "
                         f"got dtype {x.dtype}; threshold probabilities first")


@jax.jit
def batch_counts(pred: jax.Array, target: jax.Array, *,
                 valid: jax.Array | None = None) -> jax.Array:
    """int32 ``[4]`` = (TP, FP, FN, TN) of one batch over the pixels where ``valid`` is true.

    pred, target: bool or integer masks of one shape (nonzero = positive); valid: bool of that
    shape, or None (every pixel). Four masked sums: under jit with the batch sharded, each
    device sums its pixels and one all-reduce adds the four counts.
    """
    if pred.shape != target.shape:
        raise ValueError(f"batch_counts: pred and target must have one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if valid is not None and valid.shape != target.shape:
        raise ValueError(f"batch_counts: valid must have the shape of target "
                         f"{tuple(target.shape)}, got {tuple(valid.shape)}")
    _check_mask("pred", pred)
    _check_mask("target", target)
    p, t = pred.astype(bool), target.astype(bool)
    v = jnp.ones(t.shape, bool) if valid is None else valid.astype(bool)

    def count(x):
        return jnp.sum(x & v, dtype=jnp.int32)

    return jnp.stack([count(p & t), count(p & ~t), count(~p & t), count(~p & ~t)])


class BinaryCounts:
    """Host accumulator (int64) of ``batch_counts``; ``compute`` -> precision, recall, f1,
    iou (of the positive class) and oa, with the NaN rule of the module docstring."""

    kind = "binary_counts"

    def __init__(self):
        self.counts = np.zeros(4, np.int64)

    def update(self, batch: Any) -> None:
        """Adds one ``[4]`` (TP, FP, FN, TN) vector (a ``batch_counts`` output)."""
        batch = to_host(batch)
        if batch.shape != (4,) or not np.issubdtype(batch.dtype, np.integer):
            raise ValueError(f"BinaryCounts: expected 4 integer counts (tp, fp, fn, tn), got "
                             f"shape {batch.shape} dtype {batch.dtype}")
        self.counts += batch.astype(np.int64)

    def merge(self, other: BinaryCounts) -> BinaryCounts:
        self.counts += other.counts
        return self

    def reset(self) -> None:
        self.counts[:] = 0

    def compute(self) -> dict[str, float]:
        tp, fp, fn, tn = self.counts
        return {"precision": float(divide(tp, tp + fp)), "recall": float(divide(tp, tp + fn)),
                "f1": float(divide(2 * tp, 2 * tp + fp + fn)),
                "iou": float(divide(tp, tp + fp + fn)),
                "oa": float(divide(tp + tn, tp + fp + fn + tn))}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind,
                **{name: int(c) for name, c in zip(COUNT_NAMES, self.counts, strict=True)}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> BinaryCounts:
        out = cls()
        out.counts[:] = [int(state[name]) for name in COUNT_NAMES]
        return out

    def __repr__(self) -> str:
        return "BinaryCounts(" + ", ".join(
            f"{name}={int(c)}" for name, c in zip(COUNT_NAMES, self.counts, strict=True)) + ")"
