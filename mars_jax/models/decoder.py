"""Light MIM decoder: visible tokens + mask tokens on the full grid -> per-patch pixels."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from mars_jax.models import layers
from mars_jax.models.patches import restore_grid
from mars_jax.models.stack import TransformerStack
from mars_jax.models.vit import sincos_2d_position_embedding


class MIMDecoder(nnx.Module):
    """MAE-style decoder for one modality (pre-norm blocks over all N grid positions)."""

    def __init__(
        self, *, in_dim: int, width: int, depth: int, num_heads: int, mlp_dim: int,
        out_dim: int, dtype=jnp.float32, param_dtype=jnp.float32,
        attention_impl: Literal["xla", "cudnn"] | None = None, remat: layers.Remat = "none",
        scan_layers: bool = False, rngs: nnx.Rngs,
    ):
        self.width = width
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed = layers.dense(in_dim, width, (None, "embed"), **kw)
        self.mask_token = layers.param(nnx.initializers.normal(0.02), (width,), ("embed",),
                                       param_dtype=param_dtype, rngs=rngs)
        self.blocks = TransformerStack(depth, width, num_heads, mlp_dim, norm="pre",
                                       attention_impl=attention_impl, remat=remat,
                                       scan_layers=scan_layers, **kw)
        self.norm = layers.layer_norm(width, **kw)
        self.head = layers.dense(width, out_dim, ("embed", "patch"), **kw)

    def __call__(self, tokens: jax.Array, ids_restore: jax.Array,
                 grid: tuple[int, int]) -> jax.Array:
        """tokens: [B, N_vis, in_dim] (ids_keep order); returns [B, N, out_dim] in grid order."""
        x = self.embed(tokens)
        x = restore_grid(x, self.mask_token[...], ids_restore)
        pos = sincos_2d_position_embedding(*grid, self.width)
        x = x + jnp.asarray(pos, x.dtype)
        return self.head(self.norm(self.blocks(x)))
