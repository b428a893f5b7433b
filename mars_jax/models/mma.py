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
from mars_jax.models.stack import TransformerStack


def layer_kind(index: int) -> Literal["intra", "meta"]:
    """Scope of the ``index``-th layer (0-based): the paper's 1st, 3rd, ... layers are intra."""
    return "intra" if index % 2 == 0 else "meta"


def attention_pattern(num_layers: int) -> tuple[str, ...]:
    """The stack's per-layer scopes: "intra" (within each modality) or "full" (meta)."""
    return tuple("intra" if layer_kind(i) == "intra" else "full" for i in range(num_layers))


class MetaModalityAttention(nnx.Module):
    def __init__(
        self, num_layers: int, dim: int, num_heads: int, mlp_dim: int, *,
        norm: layers.Norm = "post", dtype=jnp.float32, param_dtype=jnp.float32,
        attention_impl: Literal["xla", "cudnn"] | None = None, remat: layers.Remat = "none",
        scan_layers: bool = False, rngs: nnx.Rngs,
    ):
        self.blocks = TransformerStack(
            num_layers, dim, num_heads, mlp_dim, norm=norm, pattern=attention_pattern(num_layers),
            scan_layers=scan_layers, remat=remat, dtype=dtype, param_dtype=param_dtype,
            attention_impl=attention_impl, rngs=rngs)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(layer_kind(i) for i in range(self.blocks.depth))

    def __call__(self, z_rgb: jax.Array, z_sar: jax.Array, present: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """[B, N, D] x 2 -> fused [B, N, D] x 2 (RGB half, SAR half).

        ``present`` [B, 2] bool (RGB, SAR; at least one per example): a modality absent from
        an example is left out of its meta layers' keys, so the present one's tokens come out
        as ``single`` would give them (per-example modality dropout in one batch). The absent
        half's outputs are meaningless then.
        """
        if z_rgb.shape != z_sar.shape:
            raise ValueError(
                f"MMA needs RGB and SAR tokens of one shape, got {z_rgb.shape} and {z_sar.shape}")
        b, n = z_rgb.shape[:2]
        key_mask = None
        if present is not None:
            if tuple(present.shape) != (b, 2):
                raise ValueError(f"present must be [batch, 2] = {(b, 2)} (RGB, SAR), got "
                                 f"{tuple(present.shape)}")
            key_mask = jnp.repeat(present.astype(bool), n, axis=1)  # [B, 2N]
        t = self.blocks(jnp.concatenate([z_rgb, z_sar], axis=1),  # T = [Z_RGB; Z_SAR]
                        key_mask=key_mask)
        return t[:, :n], t[:, n:]

    def single(self, z: jax.Array) -> jax.Array:
        """One modality alone (the other missing): every layer attends within it, which is
        what both scopes reduce to when the second half is absent."""
        return self.blocks(z, scope="full")
