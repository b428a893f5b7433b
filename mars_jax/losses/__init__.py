"""Pretraining losses: CGCL (contrastive alignment) and MIM (masked reconstruction)."""

from mars_jax.losses.cgcl import cgcl_loss, modality_alignment_score
from mars_jax.losses.mim import mim_loss

__all__ = ["cgcl_loss", "mim_loss", "modality_alignment_score"]
