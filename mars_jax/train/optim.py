"""AdamW with linear warmup + cosine decay, decay masks and global-norm clipping."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import optax

from mars_jax.typed_config import from_mapping


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1.5e-4  # peak, after warmup
    end_learning_rate_fraction: float = 0.0  # cosine decays to this fraction of the peak
    warmup_steps: int = 0
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0  # None or 0: no clipping
    grad_accum_steps: int = 1  # micro-batches per step (gradients averaged inside the step)

    def __post_init__(self):
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.grad_accum_steps < 1:
            raise ValueError(f"optim config: invalid values {self}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> OptimConfig:
        return from_mapping(cls, values, "optim")


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate,
        warmup_steps=min(cfg.warmup_steps, max(total_steps - 1, 0)),
        decay_steps=max(total_steps, 1),
        end_value=cfg.learning_rate * cfg.end_learning_rate_fraction)


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: not on norms, biases or mask tokens (all rank < 2).

    Position embeddings are fixed sin-cos tables, not parameters, so nothing else to exclude.
    """
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.clip_norm:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw
