"""Flax NNX modules: transformer stacks, ViT encoders, MMA, the MaRS encoder and pretrainer."""

from mars_jax.models.config import (
    DECODER_PRESETS,
    ENCODER_PRESETS,
    MaRSConfig,
    TransformerSpec,
)
from mars_jax.models.encoder import EncoderOutput, MaRSEncoder
from mars_jax.models.mma import MetaModalityAttention
from mars_jax.models.pretrainer import CGCLTemperatures, MaRSOutput, MaRSPretrainer
from mars_jax.models.stack import TransformerStack, convert_layers
from mars_jax.models.vit import ViTEncoder

__all__ = ["DECODER_PRESETS", "ENCODER_PRESETS", "CGCLTemperatures", "EncoderOutput",
           "MaRSConfig", "MaRSEncoder", "MaRSOutput", "MaRSPretrainer",
           "MetaModalityAttention", "TransformerSpec", "TransformerStack", "ViTEncoder",
           "convert_layers"]
