"""``MetricSet``: named accumulators updated together, e.g. one per evaluation setting.

    metrics = MetricSet({"rgb": ConfusionMatrix(C), "sar": ConfusionMatrix(C),
                         "both": ConfusionMatrix(C)})
    for batch in data:
        metrics.update(eval_step(state, batch))   # {"rgb": [C, C], "sar": ..., "both": ...}
    metrics.compute(prefix="val/")                # {"val/rgb/miou": ..., "val/sar/miou": ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from mars_jax.metrics.binary import BinaryCounts
from mars_jax.metrics.image_quality import ImageQualitySums
from mars_jax.metrics.regression import RegressionSums
from mars_jax.metrics.segmentation import ConfusionMatrix


class Accumulator(Protocol):
    kind: str

    def update(self, batch: Any) -> None: ...
    def merge(self, other: Any) -> Any: ...
    def reset(self) -> None: ...
    def compute(self) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...


ACCUMULATORS = {cls.kind: cls for cls in (ConfusionMatrix, BinaryCounts, RegressionSums,
                                            ImageQualitySums)}


def accumulator_from_state_dict(state: Mapping[str, Any]) -> Accumulator:
    """Rebuilds any accumulator from its ``state_dict()`` (which names its ``kind``)."""
    kind = state.get("kind")
    if kind not in ACCUMULATORS:
        raise ValueError(f"unknown accumulator kind {kind!r}; kinds are {sorted(ACCUMULATORS)}")
    return ACCUMULATORS[kind].from_state_dict(state)


class MetricSet:
    """Accumulators by name; ``update`` takes a dict of batch statistics with those names."""

    def __init__(self, metrics: Mapping[str, Accumulator]):
        bad = [name for name in metrics if not name or "/" in name]
        if bad:
            raise ValueError(f"MetricSet: names must be non-empty and without '/', got {bad}")
        self.metrics = dict(metrics)

    def __getitem__(self, name: str) -> Accumulator:
        return self.metrics[name]

    def update(self, batch_stats: Mapping[str, Any]) -> None:
        """Updates the accumulator of each name in ``batch_stats`` (a subset of the names)."""
        unknown = sorted(set(batch_stats) - set(self.metrics))
        if unknown:
            raise KeyError(f"MetricSet: no accumulator for {unknown}; names are "
                           f"{sorted(self.metrics)}")
        for name, stats in batch_stats.items():
            self.metrics[name].update(stats)

    def merge(self, other: MetricSet) -> MetricSet:
        if set(other.metrics) != set(self.metrics):
            raise ValueError(f"MetricSet.merge: names differ: {sorted(self.metrics)} vs "
                             f"{sorted(other.metrics)}")
        for name, metric in self.metrics.items():
            metric.merge(other.metrics[name])
        return self

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def compute(self, prefix: str = "") -> dict[str, float]:
        """``{prefix + name + "/" + key: value}`` over every accumulator."""
        return {f"{prefix}{name}/{key}": value for name, metric in self.metrics.items()
                for key, value in metric.compute().items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: metric.state_dict() for name, metric in self.metrics.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Mapping[str, Any]]) -> MetricSet:
        return cls({name: accumulator_from_state_dict(s) for name, s in state.items()})
