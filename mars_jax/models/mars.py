"""MaRS: dual ViT encoders -> (CGCL embeddings) -> Meta-Modality Attention -> MIM decoders."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mars_jax.models import layers
from mars_jax.models.decoder import MIMDecoder
from mars_jax.models.mma import MetaModalityAttention
from mars_jax.models.patches import Masking, no_masking, patchify, random_masking
from mars_jax.models.vit import ViTEncoder, check_image
from mars_jax.typed_config import check_known_keys


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    width: int
    depth: int
    num_heads: int
    mlp_dim: int

    def __post_init__(self):
        for name in ("width", "depth", "num_heads", "mlp_dim"):
            if getattr(self, name) < (0 if name == "depth" else 1):
                raise ValueError(f"transformer {name} must be positive, got {self}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.width % 4:
            raise ValueError(f"width {self.width} must be divisible by 4 (2-D sin-cos positions)")


VIT_B = TransformerSpec(width=768, depth=12, num_heads=12, mlp_dim=3072)
MAE_DECODER = TransformerSpec(width=512, depth=4, num_heads=16, mlp_dim=2048)


@dataclasses.dataclass(frozen=True)
class MaRSConfig:
    """Everything that defines a MaRS model; the model-building half of an experiment config."""

    encoder: TransformerSpec = VIT_B
    decoder: TransformerSpec = MAE_DECODER
    mma_layers: int = 4
    mma_norm: str = "post"
    patch_size: int = 16
    optical_channels: int = 3
    sar_channels: int = 1
    mask_ratio: float = 0.6
    projection_dim: int = 0  # 0: CGCL directly on the encoder outputs
    optical_mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # of optical / 255
    optical_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    sar_db_mean: tuple[float, ...] = (-12.0,)  # per SAR channel, in dB
    sar_db_std: tuple[float, ...] = (6.0,)
    dtype: str = "float32"  # compute dtype ("bfloat16" for mixed precision)
    param_dtype: str = "float32"
    attention_impl: str | None = None  # None (XLA picks), "xla" or "cudnn"
    remat: str = "none"  # per-block activation remat: "none", "full" or "dots" (layers.py)

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"model config: {msg}")

        if self.patch_size < 1:
            fail(f"patch_size must be positive, got {self.patch_size}")
        if self.mma_norm not in ("pre", "post"):
            fail(f"mma_norm must be 'pre' or 'post', got {self.mma_norm!r}")
        if self.mma_layers < 0 or self.projection_dim < 0:
            fail("mma_layers and projection_dim must be >= 0")
        if not 0.0 <= self.mask_ratio < 1.0:
            fail(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for stat, channels in (("optical_mean", self.optical_channels),
                               ("optical_std", self.optical_channels),
                               ("sar_db_mean", self.sar_channels),
                               ("sar_db_std", self.sar_channels)):
            if len(getattr(self, stat)) != channels:
                fail(f"{stat} has {len(getattr(self, stat))} values for {channels} channels")
        if min(self.optical_std + self.sar_db_std) <= 0:
            fail("optical_std and sar_db_std must be positive")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError:
                fail(f"{name} {getattr(self, name)!r} is not a dtype")
        if self.attention_impl not in (None, "xla", "cudnn"):
            fail(f"attention_impl must be None, 'xla' or 'cudnn', got {self.attention_impl!r}")
        if self.remat not in layers.REMAT_POLICIES:
            fail(f"remat must be one of {tuple(layers.REMAT_POLICIES)}, got {self.remat!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MaRSConfig:
        """Builds from a (ConfigDict-derived) mapping; unknown keys are an error, not ignored."""
        values = dict(values)
        check_known_keys(cls, values, "model")
        for name in ("encoder", "decoder"):
            if name in values and not isinstance(values[name], TransformerSpec):
                spec = dict(values[name])
                fields = {f.name for f in dataclasses.fields(TransformerSpec)}
                if set(spec) != fields:
                    raise ValueError(f"model config: {name} needs exactly the keys "
                                     f"{sorted(fields)}, got {sorted(spec)}")
                values[name] = TransformerSpec(**spec)
        for name, value in values.items():
            if isinstance(value, list):
                values[name] = tuple(value)
        return cls(**values)


class InputStatistic(nnx.Variable):
    """Normalisation constants: travel with the checkpoint, never touched by the optimiser."""


class MaRSOutput(NamedTuple):
    z_rgb: jax.Array  # [B, N_vis, D] encoder outputs (visible patches, ids_keep order)
    z_sar: jax.Array
    e_rgb: jax.Array  # [B, N_vis, D_e] CGCL embeddings (projections of z, or z itself)
    e_sar: jax.Array
    f_rgb: jax.Array  # [B, N_vis, D] tokens after Meta-Modality Attention
    f_sar: jax.Array
    pred_rgb: jax.Array  # [B, N, P*P*C_rgb] reconstructed (normalised) pixels, grid order
    pred_sar: jax.Array  # [B, N, P*P*C_sar]
    target_rgb: jax.Array  # [B, N, P*P*C_rgb] normalised input patches
    target_sar: jax.Array
    masking: Masking
    patch_valid: jax.Array  # [B, N] float32, 1 where every pixel of the patch is valid


class MaRS(nnx.Module):
    """The MaRS pretraining model. Pure function of (params, inputs, key) once split by nnx."""

    def __init__(self, config: MaRSConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), rngs=rngs)
        attn = dict(attention_impl=c.attention_impl, remat=c.remat, **kw)
        enc = dict(patch_size=c.patch_size, width=c.encoder.width, depth=c.encoder.depth,
                   num_heads=c.encoder.num_heads, mlp_dim=c.encoder.mlp_dim, **attn)
        dec = dict(in_dim=c.encoder.width, width=c.decoder.width, depth=c.decoder.depth,
                   num_heads=c.decoder.num_heads, mlp_dim=c.decoder.mlp_dim, **attn)
        pp = c.patch_size * c.patch_size

        self.optical_mean = InputStatistic(jnp.asarray(c.optical_mean, jnp.float32))
        self.optical_std = InputStatistic(jnp.asarray(c.optical_std, jnp.float32))
        self.sar_db_mean = InputStatistic(jnp.asarray(c.sar_db_mean, jnp.float32))
        self.sar_db_std = InputStatistic(jnp.asarray(c.sar_db_std, jnp.float32))
        self.optical_encoder = ViTEncoder(in_channels=c.optical_channels, **enc)
        self.sar_encoder = ViTEncoder(in_channels=c.sar_channels, **enc)
        if c.projection_dim:
            self.optical_projection = layers.dense(c.encoder.width, c.projection_dim,
                                                   ("embed", None), **kw)
            self.sar_projection = layers.dense(c.encoder.width, c.projection_dim,
                                               ("embed", None), **kw)
        else:
            self.optical_projection = self.sar_projection = None
        self.mma = MetaModalityAttention(c.mma_layers, c.encoder.width, c.encoder.num_heads,
                                         c.encoder.mlp_dim, norm=c.mma_norm, **attn)
        self.optical_decoder = MIMDecoder(out_dim=pp * c.optical_channels, **dec)
        self.sar_decoder = MIMDecoder(out_dim=pp * c.sar_channels, **dec)

    # -- input stem: normalisation lives in the model so a checkpoint is self-contained -------
    def normalize_optical(self, optical: jax.Array) -> jax.Array:
        """uint8 (or 0-255 float) RGB -> standardised float32."""
        x = optical.astype(jnp.float32) / 255.0
        return (x - self.optical_mean[...]) / self.optical_std[...]

    def normalize_sar(self, sar_db: jax.Array) -> jax.Array:
        """SAR backscatter in dB -> standardised float32."""
        return (sar_db.astype(jnp.float32) - self.sar_db_mean[...]) / self.sar_db_std[...]

    def check_inputs(self, optical: jax.Array, sar: jax.Array,
                     valid: jax.Array | None) -> tuple[int, int]:
        """Shape checks at trace time, before anything compiles. Returns the patch grid."""
        c = self.config
        grid = check_image("optical", optical, c.optical_channels, c.patch_size)
        check_image("sar", sar, c.sar_channels, c.patch_size)
        if optical.shape[:3] != sar.shape[:3]:
            raise ValueError(
                f"optical and sar must cover the same pixels: optical shape {optical.shape}, "
                f"sar shape {sar.shape}")
        if valid is not None and tuple(valid.shape) != tuple(optical.shape[:3]):
            raise ValueError(
                f"valid must be [batch, height, width] = {optical.shape[:3]}, got {valid.shape}")
        return grid

    def __call__(
        self, optical: jax.Array, sar: jax.Array, *, key: jax.Array | None = None,
        mask_ratio: float | None = None, valid: jax.Array | None = None,
    ) -> MaRSOutput:
        """optical: [B, H, W, 3] uint8; sar: [B, H, W, C_sar] dB; valid: optional [B, H, W] bool.

        ``key`` draws the shared random mask; with ``mask_ratio=0`` every patch is visible.
        """
        c = self.config
        grid = self.check_inputs(optical, sar, valid)
        batch, n = optical.shape[0], grid[0] * grid[1]
        ratio = c.mask_ratio if mask_ratio is None else mask_ratio
        if ratio > 0 and key is None:
            raise ValueError(f"a PRNG key is required to draw masks (mask_ratio={ratio})")
        masking = random_masking(key, batch, n, ratio) if ratio > 0 else no_masking(batch, n)

        x_rgb, x_sar = self.normalize_optical(optical), self.normalize_sar(sar)
        pixel_ok = jnp.isfinite(x_sar).all(-1) & jnp.isfinite(x_rgb).all(-1)
        if valid is not None:
            pixel_ok &= valid.astype(bool)
        x_rgb = jnp.where(pixel_ok[..., None], x_rgb, 0.0)  # no-data pixels read as the mean
        x_sar = jnp.where(pixel_ok[..., None], x_sar, 0.0)
        patch_valid = patchify(pixel_ok[..., None], c.patch_size).all(-1).astype(jnp.float32)

        z_rgb = self.optical_encoder(x_rgb, masking.ids_keep)
        z_sar = self.sar_encoder(x_sar, masking.ids_keep)
        e_rgb = self.optical_projection(z_rgb) if self.optical_projection else z_rgb
        e_sar = self.sar_projection(z_sar) if self.sar_projection else z_sar
        f_rgb, f_sar = self.mma(z_rgb, z_sar)
        pred_rgb = self.optical_decoder(f_rgb, masking.ids_restore, grid)
        pred_sar = self.sar_decoder(f_sar, masking.ids_restore, grid)
        return MaRSOutput(
            z_rgb=z_rgb, z_sar=z_sar, e_rgb=e_rgb, e_sar=e_sar, f_rgb=f_rgb, f_sar=f_sar,
            pred_rgb=pred_rgb, pred_sar=pred_sar,
            target_rgb=patchify(x_rgb, c.patch_size), target_sar=patchify(x_sar, c.patch_size),
            masking=masking, patch_valid=patch_valid,
        )
