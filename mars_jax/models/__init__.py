"""Flax NNX modules: ViT encoders, Meta-Modality Attention, MIM decoders, the MaRS model."""

from mars_jax.models.mars import MaRS, MaRSConfig, MaRSOutput, TransformerSpec
from mars_jax.models.mma import MetaModalityAttention
from mars_jax.models.vit import ViTEncoder

__all__ = ["MaRS", "MaRSConfig", "MaRSOutput", "MetaModalityAttention", "TransformerSpec",
           "ViTEncoder"]
