"""mars_jax: MaRS-style optical + SAR foundation models in JAX / Flax NNX."""

__version__ = "0.1.0"
