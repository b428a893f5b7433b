"""Dense registration descriptors: a UPerNet decoder whose output is an L2-normalised
descriptor per cell of its finest level (stride P/4), not logits at the image resolution.

One head serves both modalities (the backbone runs once per modality; CGCL already put the
two encoders' tokens in one space), so a descriptor of an optical cell and of the SAR cell
imaging the same ground can be compared by a dot product. Dropout is off by default: the
descriptors feed nearest-neighbour matching, where noise only hurts.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mars_jax.models.heads import BackboneOutput, UPerNetHead


def normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Unit vectors along the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class DescriptorHead(UPerNetHead):
    """``describe(out)`` -> [B, h, w, dim] unit descriptors at ``stride(out)`` pixels per cell;
    called on two backbone outputs (optical, SAR) it returns both concatenated on the last
    axis, [B, h, w, 2 * dim], the ``TaskModel`` interface of a two-input task."""

    def __init__(self, level_dims: Sequence[int], num_outputs: int, *, dropout: float = 0.0,
                 **kwargs):
        super().__init__(level_dims, num_outputs, dropout=dropout, **kwargs)

    @staticmethod
    def stride(backbone_out: BackboneOutput) -> int | float:
        """Pixels per descriptor cell: the ViT neck's finest level, P / 4."""
        return backbone_out["stride"] / 4

    def describe(self, backbone_out: BackboneOutput, *, rngs=None) -> jax.Array:
        levels, _ = self.pyramid(backbone_out)
        return normalize(self.decode(levels, rngs=rngs))

    def __call__(self, out_optical: BackboneOutput, out_sar: BackboneOutput, *,
                 image_size: tuple[int, int] | None = None, rngs=None) -> jax.Array:
        del image_size  # descriptors stay at their own stride
        return jnp.concatenate([self.describe(out_optical, rngs=rngs),
                                self.describe(out_sar, rngs=rngs)], axis=-1)
