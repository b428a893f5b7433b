"""Losses: CGCL (contrastive alignment) and MIM (masked reconstruction) for pretraining,
masked pixel-wise losses for the dense downstream tasks."""

from mars_jax.losses.cgcl import cgcl_loss, modality_alignment_score
from mars_jax.losses.mim import mim_loss
from mars_jax.losses.pixelwise import masked_cross_entropy, masked_regression_loss

__all__ = ["cgcl_loss", "masked_cross_entropy", "masked_regression_loss", "mim_loss",
           "modality_alignment_score"]
