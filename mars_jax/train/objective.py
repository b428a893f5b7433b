"""The pretraining objective: L = L_mim_rgb + L_mim_sar + lambda * L_cgcl."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from mars_jax.losses import cgcl_loss, mim_loss, modality_alignment_score
from mars_jax.models import MaRSOutput
from mars_jax.typed_config import from_mapping


@dataclasses.dataclass(frozen=True)
class LossConfig:
    cgcl_weight: float = 1.0  # lambda
    tau_patch: float = 0.05
    tau_global: float = 0.07
    tau_cross: float = 0.1
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    mim_type: str = "l2"
    norm_pix: bool = True
    cgcl_impl: str = "dense"  # or "blockwise": memory linear in the number of patches
    cgcl_chunk_size: int = 2048

    def __post_init__(self):
        if self.cgcl_impl not in ("dense", "blockwise"):
            raise ValueError(f"loss config: cgcl_impl must be 'dense' or 'blockwise', got "
                             f"{self.cgcl_impl!r}")
        if self.mim_type not in ("l1", "l2"):
            raise ValueError(f"loss config: mim_type must be 'l1' or 'l2', got {self.mim_type!r}")
        for name in ("tau_patch", "tau_global", "tau_cross"):
            if not getattr(self, name) > 0:
                raise ValueError(f"loss config: {name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LossConfig:
        return from_mapping(cls, values, "loss")


def pretraining_loss(out: MaRSOutput, cfg: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss and every term (plus the Modality Alignment Score) for logging."""
    weights = out.masking.mask * out.patch_valid  # masked patches with data in both modalities
    mim = dict(norm_pix=cfg.norm_pix, loss_type=cfg.mim_type)
    mim_rgb = mim_loss(out.pred_rgb, out.target_rgb, weights, **mim)
    mim_sar = mim_loss(out.pred_sar, out.target_sar, weights, **mim)
    cgcl, terms = cgcl_loss(out.e_rgb, out.e_sar, tau_patch=cfg.tau_patch,
                            tau_global=cfg.tau_global, tau_cross=cfg.tau_cross,
                            alpha=cfg.alpha, beta=cfg.beta, gamma=cfg.gamma,
                            impl=cfg.cgcl_impl, chunk_size=cfg.cgcl_chunk_size)
    total = mim_rgb + mim_sar + cfg.cgcl_weight * cgcl
    metrics = {"loss": total, "mim_rgb": mim_rgb, "mim_sar": mim_sar, "cgcl": cgcl,
               **{f"cgcl_{k}": v for k, v in terms.items()}}
    b, n, _ = out.z_rgb.shape
    if b * n >= 2:
        metrics["mas"] = modality_alignment_score(out.e_rgb, out.e_sar)
    return total, metrics
