"""Semantic segmentation metrics from a confusion matrix streamed over the evaluation set.

Device side, per batch: ``batch_confusion(pred, target, C)`` -> int32 ``[C, C]``, ``M[t, p]``
= the number of kept pixels of target class t predicted as p. Host side: ``ConfusionMatrix``
adds the batch matrices in int64 and computes, with ``TP_c = M[c, c]``, ``T_c = sum_p M[c, p]``
(target pixels of c, TP + FN) and ``P_c = sum_t M[t, c]`` (predicted pixels of c, TP + FP):

    IoU_c       = TP_c / (T_c + P_c - TP_c)
    precision_c = TP_c / P_c                  recall_c = TP_c / T_c
    F1_c        = 2 TP_c / (T_c + P_c)        (the harmonic mean of precision and recall)
    OA          = sum_c TP_c / sum_c T_c      (overall pixel accuracy)
    mIoU, mF1, mAcc = the means of IoU_c, F1_c, recall_c over the classes where they are defined

A ratio whose denominator is 0 is undefined and reported as NaN, never as 0 or 1: IoU_c and
F1_c are NaN exactly for a class that is neither in the target nor predicted (an empty class),
precision_c for a class never predicted, recall_c for a class not in the target. The means
leave NaN out (mmseg's ``nanmean``), so a class missing from the evaluation set does not pull
mIoU down. A class in the target but never predicted has IoU 0 and F1 0 and counts in the
means; a class predicted but not in the target has IoU 0, F1 0, precision 0. (PANGAEA instead
divides by ``union + 1e-6``, which makes an empty class's IoU 0 and averages over all C; the
two agree whenever every class occurs in the target or the prediction.)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.metrics.common import divide, nanmean, to_host


def _check_integer(name: str, x: jax.Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"batch_confusion: {name} must hold integer class ids, got dtype "
                         f"{x.dtype}")


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_index"))
def batch_confusion(
    pred: jax.Array, target: jax.Array, num_classes: int, *, valid: jax.Array | None = None,
    ignore_index: int | None = None,
) -> jax.Array:
    """The int32 ``[C, C]`` confusion matrix of one batch: rows target class, columns predicted.

    pred, target: integer class ids of one shape (any, e.g. ``[B, H, W]``); valid: bool of that
    shape, or None. A pixel is left out when ``valid`` is false, when its target equals
    ``ignore_index`` or lies outside ``[0, C)``, or when its prediction lies outside
    ``[0, C)`` (an argmax never does). ``ignore_index`` may lie inside ``[0, C)``: that class
    then has no target pixels, but predictions of it still count as false positives.

    One scatter-add of 1 into ``C * C`` int32 bins at ``target * C + pred`` (left-out pixels
    aim past the end and are dropped): O(pixels) work, exact integer counts, and no
    ``[pixels, C]`` one-hot in memory. Under jit with the batch sharded, each device counts its
    own pixels and one all-reduce of ``C * C`` integers sums them.
    """
    if pred.shape != target.shape:
        raise ValueError(f"batch_confusion: pred and target must have one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if valid is not None and valid.shape != target.shape:
        raise ValueError(f"batch_confusion: valid must have the shape of target "
                         f"{tuple(target.shape)}, got {tuple(valid.shape)}")
    _check_integer("pred", pred)
    _check_integer("target", target)
    if num_classes < 1 or num_classes * num_classes >= 2**31:
        raise ValueError(f"batch_confusion: num_classes must be in [1, 46340], got {num_classes}")
    pred, target = pred.astype(jnp.int32), target.astype(jnp.int32)
    keep = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    if valid is not None:
        keep &= valid.astype(bool)
    bins = num_classes * num_classes
    index = jnp.where(keep, target * num_classes + pred, bins)  # past the end: dropped
    counts = jnp.zeros(bins, jnp.int32).at[index.ravel()].add(1, mode="drop")
    return counts.reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Host accumulator (int64) of ``batch_confusion`` matrices; ``compute`` gives the metrics.

    ``compute()`` keys: ``miou``, ``oa``, ``mf1``, ``macc``, then ``iou/<name>``,
    ``precision/<name>``, ``recall/<name>``, ``f1/<name>`` for each class (``class_names``,
    default ``"0"``, ``"1"``, ...). The formulas and the NaN rule are in the module docstring.
    """

    kind = "confusion_matrix"

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        names = tuple(str(i) for i in range(num_classes)) if class_names is None else tuple(
            str(name) for name in class_names)
        if len(names) != num_classes:
            raise ValueError(f"ConfusionMatrix: {len(names)} class names for {num_classes} "
                             f"classes: {list(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"ConfusionMatrix: class names must be distinct, got {list(names)}")
        self.num_classes = num_classes
        self.class_names = names
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, batch_matrix: Any) -> None:
        """Adds one ``[C, C]`` matrix (a ``batch_confusion`` output, device or host)."""
        batch = to_host(batch_matrix)
        if batch.shape != self.matrix.shape:
            raise ValueError(f"ConfusionMatrix: expected a {self.matrix.shape} matrix, got "
                             f"{batch.shape}")
        if not np.issubdtype(batch.dtype, np.integer):
            raise ValueError(f"ConfusionMatrix: expected integer counts, got dtype {batch.dtype}")
        self.matrix += batch.astype(np.int64)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Adds another accumulator's counts (e.g. another process's share); returns self."""
        if (other.num_classes, other.class_names) != (self.num_classes, self.class_names):
            raise ValueError(f"ConfusionMatrix.merge: classes differ: {list(self.class_names)} "
                             f"vs {list(other.class_names)}")
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        self.matrix[:] = 0

    def compute(self) -> dict[str, float]:
        m = self.matrix
        tp = np.diag(m).astype(np.float64)
        in_target = m.sum(axis=1)  # TP + FN
        predicted = m.sum(axis=0)  # TP + FP
        iou = divide(tp, in_target + predicted - tp)
        precision = divide(tp, predicted)
        recall = divide(tp, in_target)
        f1 = divide(2 * tp, in_target + predicted)
        out = {"miou": nanmean(iou), "oa": float(divide(tp.sum(), m.sum())),
               "mf1": nanmean(f1), "macc": nanmean(recall)}
        for key, values in (("iou", iou), ("precision", precision), ("recall", recall),
                            ("f1", f1)):
            out.update({f"{key}/{name}": float(v)
                        for name, v in zip(self.class_names, values, strict=True)})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes,
                "class_names": list(self.class_names), "matrix": self.matrix.tolist()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ConfusionMatrix:
        out = cls(int(state["num_classes"]), state["class_names"])
        out.update(np.asarray(state["matrix"], np.int64))
        return out

    def __repr__(self) -> str:
        return (f"ConfusionMatrix(num_classes={self.num_classes}, "
                f"pixels={int(self.matrix.sum())})")
