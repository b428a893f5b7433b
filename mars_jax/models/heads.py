"""Downstream heads: linear probe, UPerNet (segmentation), regression (height), bi-temporal change.

A head never sees raw images. It takes the backbone's output dict

    {"features": (f_0, ..., f_{L-1}),   # [B, h_l, w_l, D_l] feature grids, shallow to deep
     "stride": P,                       # pixels per grid cell (the ViT patch size)
     "strides": (s_0, ..., s_{L-1})}    # optional, per level; default: every level at "stride"

(other keys are ignored), so a hierarchical backbone (a Swin: strides 4..32, growing D_l)
plugs in unchanged, and returns float32 logits ``[B, H, W, K]`` at the input resolution
``image_size = (H, W)`` (bilinear upsampling, half-pixel centres as PyTorch's
``align_corners=False``, in float32, as the last step).

  LinearHead     the linear probe of the frozen protocol: a 1x1 projection of the chosen
                 level(s), concatenated.
  UPerNetHead    UPerNet on ViT features as in PANGAEA (mmseg's UPerHead behind a ViT neck):
                 the 4 ViT levels at stride P become a pyramid at strides P/4, P/2, P, 2P,
                 then a pyramid pooling module (PPM) on the deepest level and an FPN fuse
                 them at the finest level.
  RegressionHead UPerNet with K = 1 (building height) or 3 (translation's RGB) and an
                 optional output activation (softplus, relu, sigmoid).
  ChangeHead     bi-temporal change: the caller runs one shared backbone on both dates, the
                 head fuses the two feature dicts level by level, then runs a UPerNet.
                 K = 2 by default (no change / change), so segmentation losses and metrics
                 are shared with the other tasks.

Deviation from PANGAEA / mmseg: every norm is a GroupNorm (``norm_groups`` groups, at most 32,
at least 2 channels per group), not a BatchNorm. It has no batch statistics to track or sync,
so a head gives the same output whatever the batch and however it is split over devices, and
train and eval differ only by dropout. The PPM's pooled branches use one group (a LayerNorm
over the pooled map): the scale-1 map has a single position, where per-group statistics
would be over a handful of values.

Train / eval: the only stochastic layer is the dropout before UPerNet's classifier (whole
channels dropped, as PyTorch's Dropout2d in mmseg / PANGAEA); it follows NNX's module mode,
``head.train()`` / ``head.eval()`` (a new head is in train mode, as every NNX module), and
``__call__`` takes an optional ``rngs`` for it (default: the stream given at construction).

Strides must be static Python ints (they choose shapes): inside one jitted model the backbone's
dict holds them as such; passing the dict itself through ``jax.jit`` traces them, which the
heads refuse with a ValueError.

Sharding: kernels carry logical axis names mapped by the config's ``sharding_rules``:
``embed`` for the channels of backbone features (D_l), ``mlp`` for the decoder's channels,
None for the K outputs. Eager sharding is off, as in ``layers.py``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mars_jax.models import layers
from mars_jax.models.layers import partitioned
from mars_jax.typed_config import Section

BackboneOutput = Mapping[str, Any]

# mmcv's ConvModule init (kaiming normal, fan_out, ReLU gain) for the hidden convs; mmseg's
# normal(0.01) for the final 1x1 classifiers (and the linear probe, as MAE's).
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
CLASSIFIER_INIT = nnx.initializers.normal(0.01)

FEATURE_AXIS = "embed"  # channels of the backbone's features
CHANNEL_AXIS = "mlp"  # channels of the decoder
FUSIONS = ("diff_concat", "diff", "concat")
ACTIVATIONS = (None, "softplus", "relu", "sigmoid")
NECKS = ("vit", None)


# ------------------------------------------------------------------------------------------
# Functional pieces
# ------------------------------------------------------------------------------------------
def resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of ``[B, h, w, C]`` to ``size``, PyTorch's ``align_corners=False``."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear", antialias=False)


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
    """``[bins, size]`` averaging weights of PyTorch's AdaptiveAvgPool along one axis: bin i
    covers ``floor(i * size / bins) .. ceil((i + 1) * size / bins) - 1`` (bins may overlap, and
    may outnumber the cells)."""
    if size < 1 or bins < 1:
        raise ValueError(f"adaptive pooling needs positive sizes, got {size} cells to {bins} bins")
    m = np.zeros((bins, size), np.float32)
    for i in range(bins):
        start, end = (i * size) // bins, -((-(i + 1) * size) // bins)
        m[i, start:end] = 1.0 / (end - start)
    m.flags.writeable = False
    return m


def adaptive_avg_pool(x: jax.Array, output_size: int | tuple[int, int]) -> jax.Array:
    """``[B, h, w, C]`` -> ``[B, s_h, s_w, C]``, PyTorch's ``AdaptiveAvgPool2d`` for any h, w.

    A bin is a rectangle, so its mean is separable: one averaging matrix per axis."""
    s_h, s_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    mh = jnp.asarray(adaptive_pool_matrix(x.shape[1], s_h), x.dtype)
    mw = jnp.asarray(adaptive_pool_matrix(x.shape[2], s_w), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


def group_count(channels: int, max_groups: int = 32) -> int:
    """Largest number of GroupNorm groups <= ``max_groups`` dividing ``channels`` with at least
    2 channels per group (1 group when ``channels`` < 4)."""
    for groups in range(min(max_groups, channels // 2), 1, -1):
        if channels % groups == 0:
            return groups
    return 1


def check_image_size(image_size: Any) -> tuple[int, int]:
    size = tuple(int(s) for s in image_size) if isinstance(image_size, Sequence) else ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be (height, width) with positive sizes, got "
                         f"{image_size!r}")
    return size  # type: ignore[return-value]


def backbone_levels(backbone_out: BackboneOutput, level_dims: Sequence[int] | None = None,
                    name: str = "backbone output") -> tuple[tuple[jax.Array, ...],
                                                            tuple[int, ...]]:
    """The features and per-level strides of a backbone output dict, checked (at trace time):
    a non-empty tuple of ``[B, h, w, D_l]`` arrays of one batch size, D_l = ``level_dims[l]``
    when given, one positive stride per level."""
    if not isinstance(backbone_out, Mapping) or "features" not in backbone_out:
        raise ValueError(f"{name} must be a dict with 'features' (and 'stride'), got "
                         f"{type(backbone_out).__name__}"
                         + (f" with keys {sorted(backbone_out)}"
                            if isinstance(backbone_out, Mapping) else ""))
    features = tuple(backbone_out["features"])
    if not features:
        raise ValueError(f"{name} has no feature levels")
    for i, f in enumerate(features):
        if len(f.shape) != 4:
            raise ValueError(f"{name}: feature level {i} must be [batch, h, w, channels], got "
                             f"shape {tuple(f.shape)}")
    batches = {f.shape[0] for f in features}
    if len(batches) > 1:
        raise ValueError(f"{name}: feature levels have different batch sizes "
                         f"{[tuple(f.shape) for f in features]}")
    if level_dims is not None:
        if len(features) != len(level_dims):
            raise ValueError(f"{name} has {len(features)} feature levels, the head was built "
                             f"for {len(level_dims)} (level_dims {tuple(level_dims)})")
        for i, (f, dim) in enumerate(zip(features, level_dims, strict=True)):
            if f.shape[-1] != dim:
                raise ValueError(f"{name}: feature level {i} has {f.shape[-1]} channels (shape "
                                 f"{tuple(f.shape)}), the head expects level_dims[{i}] = {dim}")
    if backbone_out.get("strides") is not None:
        strides = tuple(backbone_out["strides"])
    elif "stride" in backbone_out:
        strides = (backbone_out["stride"],) * len(features)
    else:
        raise ValueError(f"{name} needs 'stride' (or 'strides'), got keys {sorted(backbone_out)}")
    if any(isinstance(s, jax.core.Tracer) for s in strides):
        raise ValueError(f"{name}: strides must be static Python ints, got traced values (the "
                         "dict was passed through jax.jit as an argument; close over the "
                         "strides or mark them static)")
    strides = tuple(int(s) for s in strides)
    if len(strides) != len(features) or min(strides) < 1:
        raise ValueError(f"{name}: strides {strides} must be one positive stride per feature "
                         f"level ({len(features)} levels)")
    return features, strides


def _scaled(stride: int, scale: float) -> int | float:
    s = stride / scale
    return int(s) if float(s).is_integer() else s


def upsample_logits(logits: jax.Array, image_size: tuple[int, int]) -> jax.Array:
    """float32 logits at the input resolution."""
    return resize(logits.astype(jnp.float32), image_size)


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------
def conv(in_dim: int, out_dim: int, kernel: int, axes: tuple[str | None, str | None], *,
         use_bias: bool = True, init: nnx.Initializer = CONV_INIT, dtype, param_dtype,
         rngs: nnx.Rngs) -> nnx.Conv:
    """A ``kernel x kernel`` conv (``SAME`` padding: PyTorch's ``padding = kernel // 2``);
    ``axes`` name the input and output channels."""
    return nnx.Conv(in_dim, out_dim, (kernel, kernel), padding="SAME", use_bias=use_bias,
                    dtype=dtype, param_dtype=param_dtype,
                    kernel_init=partitioned(init, (None, None, *axes)),
                    bias_init=partitioned(layers.ZEROS, (axes[1],)), rngs=rngs)


def deconv(dim: int, axis: str | None, *, use_bias: bool, dtype, param_dtype,
           rngs: nnx.Rngs) -> nnx.ConvTranspose:
    """2x2 transposed conv with stride 2 (doubles h and w), ``dim`` -> ``dim`` channels."""
    return nnx.ConvTranspose(dim, dim, (2, 2), strides=(2, 2), padding="VALID",
                             use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                             kernel_init=partitioned(CONV_INIT, (None, None, None, axis)),
                             bias_init=partitioned(layers.ZEROS, (axis,)), rngs=rngs)


def group_norm(dim: int, groups: int, axis: str | None, *, dtype, param_dtype,
               rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(dim, num_groups=groups, epsilon=1e-5, dtype=dtype,
                         param_dtype=param_dtype,
                         scale_init=partitioned(layers.ONES, (axis,)),
                         bias_init=partitioned(layers.ZEROS, (axis,)), rngs=rngs)


class ConvNormAct(nnx.Module):
    """conv (no bias) -> GroupNorm -> ReLU: mmcv's ConvModule with GroupNorm."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, *, groups: int,
                 in_axis: str | None = None, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv = conv(in_dim, out_dim, kernel, (in_axis, CHANNEL_AXIS), use_bias=False, **kw)
        self.norm = group_norm(out_dim, groups, CHANNEL_AXIS, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.norm(self.conv(x)))


class ViTNeck(nnx.Module):
    """Four ViT levels at stride P -> a pyramid at strides P/4, P/2, P, 2P (PANGAEA's and
    mmseg's Feature2Pyramid, rescales 4, 2, 1, 0.5):

      level 0: ConvTranspose 2x2/2 -> GroupNorm -> GELU -> ConvTranspose 2x2/2   (4x)
      level 1: ConvTranspose 2x2/2                                               (2x)
      level 2: identity
      level 3: max-pool 2x2/2 (floor, as PyTorch's)                              (1/2)
    """

    SCALES = (4, 2, 1, 0.5)

    def __init__(self, level_dims: Sequence[int], *, norm_groups: int = 32, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if len(level_dims) != 4:
            raise ValueError(f"the ViT neck takes 4 levels, got level_dims {tuple(level_dims)}")
        d0, d1 = level_dims[0], level_dims[1]
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.up4_a = deconv(d0, FEATURE_AXIS, use_bias=False, **kw)
        self.up4_norm = group_norm(d0, group_count(d0, norm_groups), FEATURE_AXIS, **kw)
        self.up4_b = deconv(d0, FEATURE_AXIS, use_bias=True, **kw)
        self.up2 = deconv(d1, FEATURE_AXIS, use_bias=True, **kw)

    def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
        f0, f1, f2, f3 = features
        if f3.shape[1] < 2 or f3.shape[2] < 2:
            raise ValueError(f"the ViT neck max-pools the deepest level by 2, its grid "
                             f"{tuple(f3.shape[1:3])} is smaller than 2x2")
        p0 = self.up4_b(jax.nn.gelu(self.up4_norm(self.up4_a(f0)), approximate=False))
        p3 = nnx.max_pool(f3, window_shape=(2, 2), strides=(2, 2), padding="VALID")
        return p0, self.up2(f1), f2, p3


class PyramidPooling(nnx.Module):
    """PSPNet's pyramid pooling module, as in mmseg's UPerHead: adaptive average pooling to
    each scale, 1x1 ConvNormAct, bilinear upsampling back, concatenated with the input, then a
    3x3 ConvNormAct bottleneck to ``channels``."""

    def __init__(self, in_dim: int, channels: int, pool_scales: Sequence[int], *,
                 norm_groups: int = 32, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.branches = nnx.List([ConvNormAct(in_dim, channels, 1, groups=1,
                                              in_axis=FEATURE_AXIS, **kw)
                                  for _ in self.pool_scales])
        self.bottleneck = ConvNormAct(in_dim + len(self.pool_scales) * channels, channels, 3,
                                      groups=group_count(channels, norm_groups), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        size = tuple(x.shape[1:3])
        pooled = [resize(branch(adaptive_avg_pool(x, scale)), size)
                  for scale, branch in zip(self.pool_scales, self.branches, strict=True)]
        return self.bottleneck(jnp.concatenate([x, *pooled], axis=-1))


# ------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------
class LinearHead(nnx.Module):
    """The linear probe: a 1x1 projection of the levels ``levels`` (indices into the backbone's
    features, negative from the deepest) concatenated along channels, then bilinear upsampling
    of the logits (the same as projecting upsampled features: both are linear, and bilinear
    weights sum to 1). ``in_features`` is the concatenated width, the sum of the chosen levels'
    D_l. Levels at different strides are resized to the finest chosen grid first."""

    def __init__(self, in_features: int, num_outputs: int, *, levels: Sequence[int] = (-1,),
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if in_features < 1 or num_outputs < 1:
            raise ValueError(f"LinearHead needs positive in_features and num_outputs, got "
                             f"{in_features} and {num_outputs}")
        self.levels = tuple(int(i) for i in levels)
        if not self.levels:
            raise ValueError("LinearHead needs at least one level")
        self.in_features = in_features
        self.num_outputs = num_outputs
        self.proj = nnx.Linear(in_features, num_outputs, dtype=dtype, param_dtype=param_dtype,
                               kernel_init=partitioned(CLASSIFIER_INIT, (FEATURE_AXIS, None)),
                               bias_init=partitioned(layers.ZEROS, (None,)), rngs=rngs)

    def __call__(self, backbone_out: BackboneOutput, *, image_size: tuple[int, int],
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """-> float32 logits [B, H, W, num_outputs] (``rngs`` unused: no dropout)."""
        del rngs
        image_size = check_image_size(image_size)
        features, _ = backbone_levels(backbone_out, name="LinearHead input")
        num = len(features)
        bad = [i for i in self.levels if not -num <= i < num]
        if bad:
            raise ValueError(f"LinearHead levels {self.levels}: {bad} out of range for "
                             f"{num} feature levels")
        chosen = [features[i] for i in self.levels]
        width = sum(f.shape[-1] for f in chosen)
        if width != self.in_features:
            raise ValueError(f"LinearHead: levels {self.levels} have {width} channels together "
                             f"({[f.shape[-1] for f in chosen]}), in_features is "
                             f"{self.in_features}")
        finest = max((tuple(f.shape[1:3]) for f in chosen), key=lambda s: s[0] * s[1])
        x = jnp.concatenate([resize(f, finest) for f in chosen], axis=-1)
        return upsample_logits(self.proj(x), image_size)


def checked_pyramid_dims(level_dims: Sequence[int], neck: str | None
                         ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(level_dims, pyramid_dims)`` for a pyramid head, checked: the ViT neck takes 4
    levels, or 1 repeated at every level; ``neck=None`` any hierarchy."""
    level_dims = tuple(int(d) for d in level_dims)
    if not level_dims or min(level_dims) < 1:
        raise ValueError(f"level_dims must be positive channel counts, got {level_dims}")
    if neck not in NECKS:
        raise ValueError(f"neck must be one of {NECKS}, got {neck!r}")
    if neck == "vit" and len(level_dims) not in (1, 4):
        raise ValueError(f"the ViT neck needs 4 feature levels (or 1, repeated), got "
                         f"{len(level_dims)}: level_dims {level_dims}")
    repeated = neck == "vit" and len(level_dims) == 1
    return level_dims, level_dims * 4 if repeated else level_dims


class UPerNetHead(nnx.Module):
    """UPerNet (Xiao et al. 2018) on backbone features, as mmseg's UPerHead / PANGAEA.

    ``neck="vit"`` (the default; every level at one stride P) builds the pyramid with
    ``ViTNeck`` from 4 levels, or from 1 level used for all four (ViTDet's simple feature
    pyramid, for a backbone that gives only its last layer); other level counts are a
    ValueError. ``neck=None`` takes the levels as they are (a hierarchical backbone, shallow
    to deep, finest first). Then:

      PPM on the deepest level -> ``channels``
      FPN: 1x1 ConvNormAct laterals (all but the deepest), top-down bilinear upsample-add,
           3x3 ConvNormAct on each but the deepest, all upsampled to the finest level,
           concatenated, 3x3 ConvNormAct fuse -> channel dropout (``dropout``) -> 1x1 conv to
           ``num_outputs``
      bilinear upsampling of the logits to ``image_size``, in float32.

    ``channels`` is 256 by default (mmseg's ViT configs use 512, PANGAEA 512); see the
    module docstring for GroupNorm instead of BatchNorm.
    """

    def __init__(self, level_dims: Sequence[int], num_outputs: int, *, channels: int = 256,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 norm_groups: int = 32, neck: Literal["vit"] | None = "vit",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        level_dims, pyramid_dims = checked_pyramid_dims(level_dims, neck)
        if num_outputs < 1 or channels < 1:
            raise ValueError(f"num_outputs and channels must be positive, got {num_outputs} "
                             f"and {channels}")
        if not pool_scales or min(pool_scales) < 1:
            raise ValueError(f"pool_scales must be positive, got {tuple(pool_scales)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.level_dims = level_dims
        self.num_outputs = num_outputs
        self.neck_kind = neck
        if neck == "vit":
            self.neck = ViTNeck(pyramid_dims, norm_groups=norm_groups, **kw)
        else:
            self.neck = None
        groups = group_count(channels, norm_groups)
        self.ppm = PyramidPooling(pyramid_dims[-1], channels, pool_scales,
                                  norm_groups=norm_groups, **kw)
        self.lateral = nnx.List([ConvNormAct(d, channels, 1, groups=groups,
                                             in_axis=FEATURE_AXIS, **kw)
                                 for d in pyramid_dims[:-1]])
        self.fpn = nnx.List([ConvNormAct(channels, channels, 3, groups=groups, **kw)
                             for _ in pyramid_dims[:-1]])
        self.fuse = ConvNormAct(len(pyramid_dims) * channels, channels, 3, groups=groups, **kw)
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2), rngs=rngs)
        self.classifier = conv(channels, num_outputs, 1, (CHANNEL_AXIS, None),
                               init=CLASSIFIER_INIT, **kw)

    def pyramid(self, backbone_out: BackboneOutput) -> tuple[tuple[jax.Array, ...],
                                                             tuple[int | float, ...]]:
        """The levels the decoder runs on and their strides (P/4, P/2, P, 2P behind the ViT
        neck), after checking the input against the head."""
        features, strides = backbone_levels(backbone_out, self.level_dims, "UPerNetHead input")
        if self.neck is None:
            return features, strides
        if len(set(strides)) > 1:
            raise ValueError(f"the ViT neck needs every level at one stride, got strides "
                             f"{strides}; build the head with neck=None for a hierarchical "
                             "backbone")
        if len({tuple(f.shape[1:3]) for f in features}) > 1:
            raise ValueError(f"the ViT neck needs every level on one grid, got "
                             f"{[tuple(f.shape[1:3]) for f in features]}")
        if len(features) == 1:
            features = features * 4
        return self.neck(features), tuple(_scaled(strides[0], s) for s in ViTNeck.SCALES)

    def decode(self, levels: Sequence[jax.Array], *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Pyramid levels (finest first) -> logits [B, h_0, w_0, K] at the finest level."""
        laterals = [lat(x) for lat, x in zip(self.lateral, levels[:-1], strict=True)]
        laterals.append(self.ppm(levels[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[1:3])
        outs = [fpn(x) for fpn, x in zip(self.fpn, laterals[:-1], strict=True)]
        outs.append(laterals[-1])
        finest = tuple(outs[0].shape[1:3])
        x = self.fuse(jnp.concatenate([resize(o, finest) for o in outs], axis=-1))
        if rngs is not None:  # training; without a stream (eval) dropout is the identity
            x = self.dropout(x, rngs=rngs)
        return self.classifier(x)

    def __call__(self, backbone_out: BackboneOutput, *, image_size: tuple[int, int],
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """-> float32 logits [B, H, W, num_outputs]."""
        image_size = check_image_size(image_size)
        levels, _ = self.pyramid(backbone_out)
        return upsample_logits(self.decode(levels, rngs=rngs), image_size)


class RegressionHead(UPerNetHead):
    """UPerNet regressing ``num_outputs`` values per pixel (1: building height; 3: the RGB of
    SAR-to-optical translation), with an optional output activation applied at full
    resolution: None (any real value), "softplus" or "relu" (non-negative, e.g. heights),
    "sigmoid" (in (0, 1), e.g. image intensities)."""

    def __init__(self, level_dims: Sequence[int], num_outputs: int = 1, *,
                 activation: Literal["softplus", "relu", "sigmoid"] | None = None, **kwargs):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        super().__init__(level_dims, num_outputs, **kwargs)
        self.activation = activation

    def start_at(self, value: float | Sequence[float]) -> None:
        """Sets the classifier's bias so that the head starts out predicting about ``value``
        (its 1x1 kernel is drawn at std 0.01): a regression trained with L1 from 0 moves its
        output by about one learning rate per step, so metres-scale targets would take
        thousands of steps to reach; starting at the training mean starts at the baseline.
        ``value``: one number for every output, or one per output (e.g. a mean colour).
        A sigmoid head starts at the logit of ``value`` (which must lie in (0, 1); clipped
        to [1e-3, 1 - 1e-3] so the start is not saturated)."""
        values = np.asarray(value, np.float64)
        shown = float(values) if values.ndim == 0 else values.tolist()
        if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != self.num_outputs):
            raise ValueError(f"start_at takes one value or {self.num_outputs} (one per "
                             f"output), got {shown}")
        if self.activation in ("softplus", "relu") and np.any(values <= 0):
            raise ValueError(f"a non-negative head cannot start at {shown}")
        if self.activation == "sigmoid" and np.any((values <= 0) | (values >= 1)):
            raise ValueError(f"a sigmoid head cannot start at {shown} (outside (0, 1))")
        if self.activation == "softplus":
            bias = np.log(np.expm1(values))
        elif self.activation == "sigmoid":
            clipped = np.clip(values, 1e-3, 1 - 1e-3)
            bias = np.log(clipped / (1 - clipped))
        else:
            bias = values
        current = self.classifier.bias[...]
        self.classifier.bias[...] = jnp.broadcast_to(jnp.asarray(bias, current.dtype),
                                                     current.shape)

    def __call__(self, backbone_out: BackboneOutput, *, image_size: tuple[int, int],
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """-> float32 values [B, H, W, num_outputs]."""
        y = super().__call__(backbone_out, image_size=image_size, rngs=rngs)
        if self.activation == "softplus":
            return jax.nn.softplus(y)
        if self.activation == "relu":
            return jax.nn.relu(y)
        if self.activation == "sigmoid":
            return jax.nn.sigmoid(y)
        return y


class ChangeHead(nnx.Module):
    """Bi-temporal change head: the backbone is shared (the caller runs it on both dates);
    this head fuses the two outputs level by level, then runs a ``UPerNetHead`` on the fused
    levels (same ``level_dims``: every fusion comes back to D_l channels).

    ``fusion``, per level with f1, f2 the two dates' features:
      "diff_concat"  1x1 conv of [f1, f2, |f1 - f2|] back to D_l (the default);
                     ``symmetric=True``: of [(f1 + f2) / 2, |f1 - f2|], so the two dates can be
                     swapped without changing the output
      "concat"       1x1 conv of [f1, f2] back to D_l (no symmetric form)
      "diff"         |f1 - f2| (no parameters; always symmetric)

    ``num_outputs`` is 2 by default: two-class logits (no change / change), so the
    segmentation loss and metrics serve change detection too.
    """

    def __init__(self, level_dims: Sequence[int], num_outputs: int = 2, *,
                 fusion: Literal["diff_concat", "diff", "concat"] = "diff_concat",
                 symmetric: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, **upernet):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if symmetric and fusion == "concat":
            raise ValueError("fusion 'concat' has no symmetric form; use 'diff_concat' with "
                             "symmetric=True, or 'diff'")
        self.fusion = fusion
        self.symmetric = bool(symmetric or fusion == "diff")
        self.decoder = UPerNetHead(level_dims, num_outputs, dtype=dtype,
                                   param_dtype=param_dtype, rngs=rngs, **upernet)
        self.level_dims = self.decoder.level_dims
        self.num_outputs = num_outputs
        if fusion == "diff":
            self.fuse = None
        else:
            parts = {"diff_concat": 2 if symmetric else 3, "concat": 2}[fusion]
            self.fuse = nnx.List([
                conv(parts * d, d, 1, (None, FEATURE_AXIS), init=layers.KERNEL_INIT,
                     dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for d in self.level_dims])

    def fuse_levels(self, out_t1: BackboneOutput, out_t2: BackboneOutput) -> dict[str, Any]:
        """The fused backbone output dict (features at the dates' strides)."""
        f1, s1 = backbone_levels(out_t1, self.level_dims, "ChangeHead date-1 input")
        f2, s2 = backbone_levels(out_t2, self.level_dims, "ChangeHead date-2 input")
        shapes1, shapes2 = [tuple(f.shape) for f in f1], [tuple(f.shape) for f in f2]
        if shapes1 != shapes2 or s1 != s2:
            raise ValueError(f"ChangeHead: the two dates' features differ: shapes {shapes1} "
                             f"strides {s1} vs shapes {shapes2} strides {s2}")
        fused = []
        for i, (a, b) in enumerate(zip(f1, f2, strict=True)):
            diff = jnp.abs(a - b)
            if self.fusion == "diff":
                fused.append(diff)
                continue
            if self.fusion == "concat":
                parts = [a, b]
            elif self.symmetric:
                parts = [(a + b) / 2, diff]
            else:
                parts = [a, b, diff]
            fused.append(self.fuse[i](jnp.concatenate(parts, axis=-1)))
        return {"features": tuple(fused), "strides": s1}

    def __call__(self, out_t1: BackboneOutput, out_t2: BackboneOutput, *,
                 image_size: tuple[int, int], rngs: nnx.Rngs | None = None) -> jax.Array:
        """-> float32 logits [B, H, W, num_outputs]."""
        return self.decoder(self.fuse_levels(out_t1, out_t2), image_size=image_size, rngs=rngs)


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------
HEAD_KINDS = ("linear", "upernet", "regression", "change", "descriptor", "centernet")


@dataclasses.dataclass(frozen=True)
class HeadConfig(Section):
    """Head settings (``config.head``). ``levels`` (linear only) index the backbone output's
    features; the UPerNet kinds take every level the backbone gives. ``activation`` is for
    "regression", ``fusion`` / ``symmetric`` for "change"; ``neck``: "vit" or None
    (hierarchical backbone)."""

    SECTION = "head"
    kind: str = "upernet"
    channels: int = 256
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1
    norm_groups: int = 32
    neck: str | None = "vit"
    levels: tuple[int, ...] = (-1,)
    activation: str | None = None
    fusion: str = "diff_concat"
    symmetric: bool = False

    def validate(self) -> None:
        self.require_one_of("kind", HEAD_KINDS)
        self.require_positive("channels", "norm_groups")
        self.require(len(self.pool_scales) > 0 and all(
            isinstance(s, int) and s > 0 for s in self.pool_scales), "pool_scales",
            "a non-empty tuple of positive ints")
        self.require(isinstance(self.dropout, int | float) and 0.0 <= self.dropout < 1.0,
                     "dropout", "in [0, 1)")
        self.require_one_of("neck", NECKS)
        self.require(len(self.levels) > 0 and all(isinstance(i, int) for i in self.levels),
                     "levels", "a non-empty tuple of level indices")
        self.require_one_of("activation", ACTIVATIONS)
        self.require_one_of("fusion", FUSIONS)
        self.require(isinstance(self.symmetric, bool), "symmetric", "True or False")
        self.require(not (self.symmetric and self.fusion == "concat"), "symmetric",
                     "False with fusion 'concat' (it has no symmetric form)")


def build_head(config: HeadConfig, level_dims: Sequence[int], num_outputs: int, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Module:
    """The head ``config.kind`` for a backbone whose levels have ``level_dims`` channels."""
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    level_dims = tuple(level_dims)
    if config.kind == "linear":
        num = len(level_dims)
        bad = [i for i in config.levels if not -num <= i < num]
        if bad:
            raise ValueError(f"head levels {config.levels}: {bad} out of range for {num} "
                             "feature levels")
        width = sum(level_dims[i] for i in config.levels)
        return LinearHead(width, num_outputs, levels=config.levels, **kw)
    upernet = dict(channels=config.channels, pool_scales=config.pool_scales,
                   dropout=config.dropout, norm_groups=config.norm_groups, neck=config.neck,
                   **kw)
    if config.kind == "upernet":
        return UPerNetHead(level_dims, num_outputs, **upernet)
    if config.kind == "regression":
        return RegressionHead(level_dims, num_outputs, activation=config.activation, **upernet)
    if config.kind == "descriptor":  # registration; its module builds on this one
        from mars_jax.models.descriptors import DescriptorHead

        return DescriptorHead(level_dims, num_outputs, **upernet)
    if config.kind == "centernet":  # detection: heatmap, size, offset packed in one array
        from mars_jax.models.detection import PackedCenterNetHead

        return PackedCenterNetHead(level_dims, num_outputs, channels=config.channels,
                                   head_channels=config.channels,
                                   norm_groups=config.norm_groups, neck=config.neck, **kw)
    return ChangeHead(level_dims, num_outputs, fusion=config.fusion, symmetric=config.symmetric,
                      **upernet)
