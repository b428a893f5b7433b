"""MaRSEncoder: input statistics, the two ViTs, optional CGCL projections and MMA fusion.

This is the part of MaRS that downstream tasks keep: checkpoints store it as the ``encoder``
subtree of the pretrainer, so fine-tuning restores it alone and runs it without masking or
decoders. Either modality may be missing (disaster response often has SAR only):
``encode(sar=...)`` encodes SAR alone, and MMA then attends within the one modality present.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mars_jax.models import layers
from mars_jax.models.config import MaRSConfig
from mars_jax.models.mma import MetaModalityAttention
from mars_jax.models.patches import patchify
from mars_jax.models.vit import ViTEncoder, check_image


class InputStatistic(nnx.Variable):
    """Normalisation constants: travel with the checkpoint, never touched by the optimiser."""


class PreparedInputs(NamedTuple):
    """Standardised images (no-data pixels set to 0, the mean) and patch validity."""

    x_rgb: jax.Array | None  # [B, H, W, 3] float32
    x_sar: jax.Array | None  # [B, H, W, C_sar] float32
    patch_valid: jax.Array  # [B, N] float32, 1 where every pixel of the patch is valid


class EncoderOutput(NamedTuple):
    """Per-modality features of the (visible) patches; None for a missing modality."""

    z_rgb: jax.Array | None  # [B, N_vis, D] ViT outputs
    z_sar: jax.Array | None
    e_rgb: jax.Array | None  # [B, N_vis, D_e] CGCL embeddings (projections of z, or z)
    e_sar: jax.Array | None
    f_rgb: jax.Array | None  # [B, N_vis, D] after Meta-Modality Attention (None: fuse=False)
    f_sar: jax.Array | None
    patch_valid: jax.Array  # [B, N] (the full grid)
    levels_rgb: tuple[jax.Array, ...] | None = None  # [B, N_vis, D] per requested layer
    levels_sar: tuple[jax.Array, ...] | None = None
    grid: tuple[int, int] | None = None  # (rows, cols) of the patch grid


class MaRSEncoder(nnx.Module):
    """Optical and SAR ViT encoders with their input stems, projections and MMA."""

    def __init__(self, config: MaRSConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), rngs=rngs)
        stack = dict(attention_impl=c.attention_impl, remat=c.remat, scan_layers=c.scan_layers,
                     **kw)
        vit = dict(patch_size=c.patch_size, width=c.encoder.width, depth=c.encoder.depth,
                   num_heads=c.encoder.num_heads, mlp_dim=c.encoder.mlp_dim, **stack)
        self.optical_mean = InputStatistic(jnp.asarray(c.optical_mean, jnp.float32))
        self.optical_std = InputStatistic(jnp.asarray(c.optical_std, jnp.float32))
        self.sar_db_mean = InputStatistic(jnp.asarray(c.sar_db_mean, jnp.float32))
        self.sar_db_std = InputStatistic(jnp.asarray(c.sar_db_std, jnp.float32))
        self.optical_vit = ViTEncoder(in_channels=c.optical_channels, **vit)
        self.sar_vit = ViTEncoder(in_channels=c.sar_channels, **vit)
        if c.projection_dim:
            self.optical_projection = layers.dense(c.encoder.width, c.projection_dim,
                                                   ("embed", None), **kw)
            self.sar_projection = layers.dense(c.encoder.width, c.projection_dim,
                                               ("embed", None), **kw)
        else:
            self.optical_projection = self.sar_projection = None
        self.mma = MetaModalityAttention(c.mma_layers, c.encoder.width, c.encoder.num_heads,
                                         c.encoder.mlp_dim, norm=c.mma_norm, **stack)

    # -- input stem: normalisation lives in the model so a checkpoint is self-contained -----
    def normalize_optical(self, optical: jax.Array) -> jax.Array:
        """uint8 (or 0-255 float) RGB -> standardised float32."""
        x = optical.astype(jnp.float32) / 255.0
        return (x - self.optical_mean[...]) / self.optical_std[...]

    def normalize_sar(self, sar_db: jax.Array) -> jax.Array:
        """SAR backscatter in dB -> standardised float32."""
        return (sar_db.astype(jnp.float32) - self.sar_db_mean[...]) / self.sar_db_std[...]

    def check_inputs(self, optical: jax.Array | None, sar: jax.Array | None,
                     valid: jax.Array | None = None) -> tuple[int, int]:
        """Shape checks at trace time, before anything compiles. Returns the patch grid."""
        c = self.config
        if optical is None and sar is None:
            raise ValueError("encode needs optical, sar or both; got neither")
        grids = []
        if optical is not None:
            grids.append(check_image("optical", optical, c.optical_channels, c.patch_size))
        if sar is not None:
            grids.append(check_image("sar", sar, c.sar_channels, c.patch_size))
        if optical is not None and sar is not None and optical.shape[:3] != sar.shape[:3]:
            raise ValueError(
                f"optical and sar must cover the same pixels: optical shape {optical.shape}, "
                f"sar shape {sar.shape}")
        pixels = (optical if optical is not None else sar).shape[:3]
        if valid is not None and tuple(valid.shape) != tuple(pixels):
            raise ValueError(
                f"valid must be [batch, height, width] = {pixels}, got {valid.shape}")
        return grids[0]

    def prepare(self, optical: jax.Array | None, sar: jax.Array | None,
                valid: jax.Array | None = None) -> PreparedInputs:
        """Normalises, and neutralises no-data pixels (non-finite values or ``valid`` False):
        they read as the mean, and patches holding any are marked invalid."""
        self.check_inputs(optical, sar, valid)
        x_rgb = None if optical is None else self.normalize_optical(optical)
        x_sar = None if sar is None else self.normalize_sar(sar)
        present = [x for x in (x_rgb, x_sar) if x is not None]
        pixel_ok = jnp.ones(present[0].shape[:3], bool)
        for x in present:
            pixel_ok &= jnp.isfinite(x).all(-1)
        if valid is not None:
            pixel_ok &= valid.astype(bool)
        keep = lambda x: None if x is None else jnp.where(pixel_ok[..., None], x, 0.0)
        patch_valid = patchify(pixel_ok[..., None], self.config.patch_size).all(-1)
        return PreparedInputs(keep(x_rgb), keep(x_sar), patch_valid.astype(jnp.float32))

    def encode_prepared(self, inputs: PreparedInputs, ids_keep: jax.Array | None = None, *,
                        fuse: bool = True, layers: Sequence[int] | None = None,
                        present: jax.Array | None = None,
                        position_offsets: jax.Array | None = None) -> EncoderOutput:
        """Encodes the patches ``ids_keep`` [B, N_vis] (all when None) of prepared inputs.

        ``layers``: encoder block indices whose (normalised) outputs are returned too, per
        modality (``levels_rgb`` / ``levels_sar``), for multi-level heads. ``present`` [B, 2]
        bool: per-example modality presence for MMA (``MetaModalityAttention``), with both
        modalities given. ``position_offsets`` [B, 2, 2]: per example, the optical (index 0)
        and SAR (index 1) (rows, columns) offsets of the patch positions, in patches
        (pretraining's position jitter); None: the grid as it is.
        """
        x = inputs.x_rgb if inputs.x_rgb is not None else inputs.x_sar
        grid = (x.shape[1] // self.config.patch_size, x.shape[2] // self.config.patch_size)

        def run(vit, images, modality):
            if images is None:
                return None, None
            offset = None if position_offsets is None else position_offsets[:, modality]
            if layers is None:
                return vit(images, ids_keep, position_offset=offset), None
            return vit(images, ids_keep, collect=layers, position_offset=offset)

        z_rgb, levels_rgb = run(self.optical_vit, inputs.x_rgb, 0)
        z_sar, levels_sar = run(self.sar_vit, inputs.x_sar, 1)
        e_rgb = z_rgb if z_rgb is None or self.optical_projection is None else (
            self.optical_projection(z_rgb))
        e_sar = z_sar if z_sar is None or self.sar_projection is None else (
            self.sar_projection(z_sar))
        if present is not None and (z_rgb is None or z_sar is None):
            raise ValueError("present (per-example modality presence) needs both optical and "
                             "sar inputs; with one missing, MMA runs on the one given")
        f_rgb = f_sar = None
        if fuse:
            if z_rgb is not None and z_sar is not None:
                f_rgb, f_sar = self.mma(z_rgb, z_sar, present)
            elif z_rgb is not None:
                f_rgb = self.mma.single(z_rgb)
            else:
                f_sar = self.mma.single(z_sar)
        return EncoderOutput(z_rgb, z_sar, e_rgb, e_sar, f_rgb, f_sar, inputs.patch_valid,
                             levels_rgb, levels_sar, grid)

    def encode(self, optical: jax.Array | None = None, sar: jax.Array | None = None, *,
               valid: jax.Array | None = None, ids_keep: jax.Array | None = None,
               fuse: bool = True, layers: Sequence[int] | None = None,
               present: jax.Array | None = None) -> EncoderOutput:
        """optical: [B, H, W, 3] uint8; sar: [B, H, W, C_sar] dB (either may be None);
        valid: optional [B, H, W] bool. No masking unless ``ids_keep`` selects patches.
        ``layers`` / ``present``: see ``encode_prepared`` (the backbone API of downstream
        tasks: multi-level features, per-example modality dropout)."""
        return self.encode_prepared(self.prepare(optical, sar, valid), ids_keep, fuse=fuse,
                                    layers=layers, present=present)

    __call__ = encode
