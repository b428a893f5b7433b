"""Anchor-free detection head: CenterNet (Zhou et al. 2019, "Objects as Points") on backbone
features.

The head takes the backbone dict of ``models.heads`` ({"features", "stride", "strides"}),
builds a pyramid (``heads.ViTNeck`` for ViT levels: strides P/4, P/2, P, 2P; ``neck=None`` for
a hierarchical backbone), fuses it FPN-style down to the output stride (4 by default, P/4 for
P = 16) and predicts, per output cell:

  heatmap  [B, H/s, W/s, K]  class-centre logits (sigmoid -> peak score), the last bias at
                             -log((1 - 0.1) / 0.1) ~ -2.19, CenterNet's prior: every cell
                             starts at p = 0.1, so the focal loss of the many background
                             cells does not swamp the first steps
  size     [B, H/s, W/s, 2]  box (w, h) in output cells (multiply by s for pixels)
  offset   [B, H/s, W/s, 2]  sub-cell (dx, dy) of the centre, in output cells

each through CenterNet's branch: 3x3 conv + ReLU + 1x1 conv. Returns float32 maps and
"stride": s, a Python int inside the traced program (returned out of ``jax.jit`` it becomes an
array: read ``head.out_stride`` for a static value). Decoding into boxes is
``tasks.centernet.decode``.

FPN fusion: 1x1 ConvNormAct laterals of the pyramid levels at strides >= s, top-down bilinear
upsample-add from the deepest, then a 3x3 ConvNormAct on the stride-s map. Levels finer than s
(the P/4 level when P = 8) are not used: the detector needs nothing finer than its output.
Norms are GroupNorm (``norm_groups``), as in ``heads``, so outputs do not depend on the batch.

Sharding: kernels carry the logical axis names of ``heads``: ``embed`` for backbone channels,
``mlp`` for the head's channels, None for the outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from mars_jax.models.heads import (
    CHANNEL_AXIS,
    CLASSIFIER_INIT,
    FEATURE_AXIS,
    BackboneOutput,
    ConvNormAct,
    ViTNeck,
    _scaled,
    backbone_levels,
    checked_pyramid_dims,
    conv,
    group_count,
    resize,
)

PRIOR_PROBABILITY = 0.1  # CenterNet's initial heatmap probability
HEATMAP_BIAS = -math.log((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)  # ~ -2.19


class CenterNetBranch(nnx.Module):
    """CenterNet's output branch: 3x3 conv (with bias) -> ReLU -> 1x1 conv to ``outputs``."""

    def __init__(self, channels: int, head_channels: int, outputs: int, *, bias: float = 0.0,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.hidden = conv(channels, head_channels, 3, (None, CHANNEL_AXIS), **kw)  # as heads
        self.out = conv(head_channels, outputs, 1, (CHANNEL_AXIS, None), init=CLASSIFIER_INIT,
                        **kw)
        if bias:
            self.out.bias[...] = jnp.full_like(self.out.bias[...], bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(x))).astype(jnp.float32)


class CenterNetHead(nnx.Module):
    """CenterNet on backbone features (module docstring).

    ``level_dims``: channels of each backbone level (4 ViT levels, or 1 repeated, with
    ``neck="vit"``; any hierarchy with ``neck=None``). ``channels``: the FPN width;
    ``head_channels``: the branches' hidden width (CenterNet: 64 on DLA, 256 on ResNet);
    ``out_stride``: the output stride, which must be a stride of the pyramid.
    """

    def __init__(self, level_dims: Sequence[int], num_classes: int, *, channels: int = 128,
                 head_channels: int = 64, out_stride: int = 4, norm_groups: int = 32,
                 neck: Literal["vit"] | None = "vit", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        level_dims, pyramid_dims = checked_pyramid_dims(level_dims, neck)
        if min(num_classes, channels, head_channels, out_stride) < 1:
            raise ValueError(f"num_classes, channels, head_channels and out_stride must be "
                             f"positive, got {num_classes}, {channels}, {head_channels}, "
                             f"{out_stride}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.level_dims = level_dims
        self.num_classes = int(num_classes)
        self.out_stride = int(out_stride)
        self.neck = ViTNeck(pyramid_dims, norm_groups=norm_groups, **kw) if neck else None
        groups = group_count(channels, norm_groups)
        # Laterals for every pyramid level; which are used depends on the strides (known at
        # call time), so a level finer than out_stride keeps an unused lateral only if the
        # strides put it there (a ViT with P = 8: the P/4 level).
        self.lateral = nnx.List([ConvNormAct(d, channels, 1, groups=groups,
                                             in_axis=FEATURE_AXIS, **kw) for d in pyramid_dims])
        self.smooth = ConvNormAct(channels, channels, 3, groups=groups, **kw)
        branch = dict(channels=channels, head_channels=head_channels, **kw)
        self.heatmap = CenterNetBranch(outputs=self.num_classes, bias=HEATMAP_BIAS, **branch)
        self.size = CenterNetBranch(outputs=2, **branch)
        self.offset = CenterNetBranch(outputs=2, **branch)

    def pyramid(self, backbone_out: BackboneOutput) -> tuple[tuple[jax.Array, ...],
                                                             tuple[int | float, ...]]:
        """Pyramid levels (finest first) and their strides, the input checked."""
        features, strides = backbone_levels(backbone_out, self.level_dims,
                                            "CenterNetHead input")
        if self.neck is None:
            return features, strides
        if len(set(strides)) > 1 or len({tuple(f.shape[1:3]) for f in features}) > 1:
            raise ValueError(f"the ViT neck needs every level at one stride and grid, got "
                             f"strides {strides}, grids "
                             f"{[tuple(f.shape[1:3]) for f in features]}; build the head "
                             "with neck=None for a hierarchical backbone")
        if len(features) == 1:
            features = features * 4
        return self.neck(features), tuple(_scaled(strides[0], s) for s in ViTNeck.SCALES)

    def __call__(self, backbone_out: BackboneOutput, *,
                 rngs: nnx.Rngs | None = None) -> dict:
        """-> {"heatmap": logits [B, h, w, K], "size": [B, h, w, 2], "offset": [B, h, w, 2],
        "stride": out_stride}, float32, h = H / out_stride (``rngs`` unused: no dropout)."""
        del rngs
        levels, strides = self.pyramid(backbone_out)
        if self.out_stride not in strides:
            raise ValueError(f"CenterNetHead: output stride {self.out_stride} is not a stride "
                             f"of the pyramid {strides} (backbone stride "
                             f"{backbone_out.get('stride')}); choose out_stride among them")
        start = strides.index(self.out_stride)
        x = None
        for i in range(len(levels) - 1, start - 1, -1):
            lateral = self.lateral[i](levels[i])
            x = lateral if x is None else lateral + resize(x, lateral.shape[1:3])
        x = self.smooth(x)
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x),
                "stride": self.out_stride}


class PackedCenterNetHead(CenterNetHead):
    """``CenterNetHead`` as a task head (``heads.build_head``'s "centernet" kind): the three
    maps concatenated into one float32 array ``[B, h, w, K + 4]`` (heatmap logits K, size 2,
    offset 2, in that order; ``unpack`` splits it), so a task model returns one array as every
    other head does. ``image_size`` is ignored: the maps stay at ``out_stride``."""

    def __call__(self, backbone_out: BackboneOutput, *,
                 image_size: tuple[int, int] | None = None,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        del image_size
        out = super().__call__(backbone_out, rngs=rngs)
        return jnp.concatenate([out["heatmap"], out["size"], out["offset"]], axis=-1)


def unpack(packed: jax.Array, num_classes: int) -> dict[str, jax.Array]:
    """``PackedCenterNetHead``'s ``[..., K + 4]`` output -> {"heatmap", "size", "offset"}."""
    if packed.shape[-1] != num_classes + 4:
        raise ValueError(f"packed CenterNet output has {packed.shape[-1]} channels, not "
                         f"num_classes + 4 = {num_classes + 4}")
    return {"heatmap": packed[..., :num_classes],
            "size": packed[..., num_classes:num_classes + 2],
            "offset": packed[..., num_classes + 2:]}
