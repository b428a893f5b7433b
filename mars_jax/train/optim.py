"""AdamW with linear warmup + cosine decay, decay masks and global-norm clipping."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from mars_jax.typed_config import Section


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    SECTION = "optim"
    learning_rate: float = 1.5e-4  # peak, after warmup
    end_learning_rate_fraction: float = 0.0  # cosine decays to this fraction of the peak
    warmup_steps: int = 0
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0  # None or 0: no clipping
    grad_accum_steps: int = 1  # micro-batches per step (gradients averaged inside the step)

    def validate(self) -> None:
        self.require_positive("learning_rate", "grad_accum_steps", "eps")
        self.require(isinstance(self.grad_accum_steps, int), "grad_accum_steps", "an int")
        self.require_non_negative("warmup_steps", "weight_decay", "end_learning_rate_fraction")
        for name in ("b1", "b2"):
            self.require(0 <= getattr(self, name) < 1, name, "in [0, 1)")
        self.require(self.clip_norm is None or self.clip_norm >= 0, "clip_norm",
                     "None or >= 0 (0: no clipping)")


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate,
        warmup_steps=min(cfg.warmup_steps, max(total_steps - 1, 0)),
        decay_steps=max(total_steps, 1),
        end_value=cfg.learning_rate * cfg.end_learning_rate_fraction)


DECAYED = "kernel"  # the weights of every Linear / LinearGeneral layer


def parameter_name(path: tuple) -> str:
    """The last named entry of a pytree path: ``.../attn/qkv/bias`` -> ``bias``."""
    for entry in reversed(path):
        name = getattr(entry, "key", getattr(entry, "name", None))
        if isinstance(name, str) and name != "value":
            return name
    return ""


def decay_mask(params: Any) -> Any:
    """Weight decay on kernels only, chosen by path, never by rank: biases (the qkv bias is
    ``[3, heads, head_dim]``), norms, mask tokens and temperatures are not decayed, and
    scanned layers' leading axis changes nothing. Position embeddings are fixed tables."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: parameter_name(path) == DECAYED, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.clip_norm:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw
