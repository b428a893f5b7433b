"""Meta-Modality Attention: fuses RGB and SAR tokens by alternating attention scopes.

Layer l (1-based) over T = [Z_RGB; Z_SAR] in R^{B x 2N x D}:
  odd l  ("intra"): attention within each modality; the two halves run as a batch of 2B
                    sequences of N tokens, so no attention mask and no wasted FLOPs;
  even l ("meta"):  attention over all 2N tokens, the only place where modalities exchange.
Each layer is T = LN(H(T) + T); T = LN(MLP(T) + T) (post-norm, the paper's formulas), or
pre-norm as an option.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from mars_jax.models import layers


def layer_kind(index: int) -> Literal["intra", "meta"]:
    """Scope of the ``index``-th layer (0-based): the paper's 1st, 3rd, ... layers are intra."""
    return "intra" if index % 2 == 0 else "meta"


class MetaModalityAttention(nnx.Module):
    def __init__(
        self, num_layers: int, dim: int, num_heads: int, mlp_dim: int, *,
        norm: layers.Norm = "post", dtype=jnp.float32, param_dtype=jnp.float32,
        attention_impl: Literal["xla", "cudnn"] | None = None, remat: layers.Remat = "none",
        rngs: nnx.Rngs,
    ):
        self.layers = nnx.List([
            layers.TransformerBlock(dim, num_heads, mlp_dim, norm=norm, dtype=dtype,
                                    param_dtype=param_dtype, attention_impl=attention_impl,
                                    remat=remat, rngs=rngs)
            for _ in range(num_layers)
        ])

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(layer_kind(i) for i in range(len(self.layers)))

    def __call__(self, z_rgb: jax.Array, z_sar: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, N, D] x 2 -> fused [B, N, D] x 2 (RGB half, SAR half)."""
        if z_rgb.shape != z_sar.shape:
            raise ValueError(
                f"MMA needs RGB and SAR tokens of one shape, got {z_rgb.shape} and {z_sar.shape}")
        b, n, d = z_rgb.shape
        t = jnp.concatenate([z_rgb, z_sar], axis=1)  # T = [Z_RGB; Z_SAR]
        for i, layer in enumerate(self.layers):
            if layer_kind(i) == "intra":
                # [B, 2N, D] -> [2B, N, D] by a reshape: rows 2i and 2i+1 are image i's RGB and
                # SAR halves. Concatenating the halves along the batch instead would put all RGB
                # rows before all SAR rows, which on a batch-sharded mesh moves every
                # activation to another device (collective-permutes) and back, each layer.
                t = layer(t.reshape(2 * b, n, d)).reshape(b, 2 * n, d)
            else:
                t = layer(t)
        return t[:, :n], t[:, n:]
