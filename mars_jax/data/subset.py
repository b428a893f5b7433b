"""A fixed, seeded subset of a random-access source: few-label fine-tuning.

``LabelSubset(source, fraction, seed)`` keeps ``round(fraction * len(source))`` examples (at
least one), drawn without replacement by a permutation of the seed, in increasing index order.
The draw depends only on ``(len(source), fraction, seed)``, so every process and every resume
sees the same labelled examples, and a smaller fraction's subset is contained in a larger
one's (the first k of one permutation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabelSubset:
    source: Any
    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"label fraction must be in (0, 1], got {self.fraction}")
        total = len(self.source)
        if total < 1:
            raise ValueError("LabelSubset: the source is empty")
        keep = max(1, round(self.fraction * total))
        order = np.random.default_rng(self.seed).permutation(total)[:keep]
        object.__setattr__(self, "indices", np.sort(order))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        if not 0 <= index < len(self.indices):
            raise IndexError(f"LabelSubset index {index} out of range [0, {len(self)})")
        return self.source[int(self.indices[index])]

    def __getattr__(self, name: str) -> Any:  # classes, extra_keys, ... of the source
        if name in ("source", "indices"):
            raise AttributeError(name)
        return getattr(self.source, name)
