"""MaRSPretrainer: a MaRSEncoder, the two MIM decoders and the CGCL temperatures.

Parameter tree: ``encoder/...`` (what downstream tasks restore), ``optical_decoder/...``,
``sar_decoder/...`` and, with learnable temperatures, ``temperatures/log_tau``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mars_jax.models.config import MaRSConfig
from mars_jax.models.decoder import MIMDecoder
from mars_jax.models.encoder import MaRSEncoder
from mars_jax.models.patches import Masking, masking_from_noise, no_masking, patchify

# Learnable temperatures stay within CLIP's clamp (logit scale <= 100) and below 1.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0


class CGCLTemperatures(nnx.Module):
    """Learnable (tau_patch, tau_global, tau_cross), stored as logs and clipped when used."""

    def __init__(self, initial: tuple[float, float, float]):
        if len(initial) != 3 or not all(MIN_TEMPERATURE <= t <= MAX_TEMPERATURE
                                        for t in initial):
            raise ValueError(f"learnable temperatures need 3 initial values in "
                             f"[{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {initial}")
        self.log_tau = nnx.Param(jnp.log(jnp.asarray(initial, jnp.float32)))

    def __call__(self) -> jax.Array:
        return jnp.clip(jnp.exp(self.log_tau[...]), MIN_TEMPERATURE, MAX_TEMPERATURE)


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


class MaRSPretrainer(nnx.Module):
    """The MaRS pretraining model. Pure function of (params, inputs, mask) once split by nnx.

    ``temperatures``: initial (tau_patch, tau_global, tau_cross) of learnable temperatures,
    or None (the loss config's constants are used).
    """

    def __init__(self, config: MaRSConfig, *,
                 temperatures: tuple[float, float, float] | None = None, rngs: nnx.Rngs):
        self.config = config
        c = config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                  attention_impl=c.attention_impl, remat=c.remat, scan_layers=c.scan_layers,
                  rngs=rngs)
        dec = dict(in_dim=c.encoder.width, width=c.decoder.width, depth=c.decoder.depth,
                   num_heads=c.decoder.num_heads, mlp_dim=c.decoder.mlp_dim, **kw)
        pp = c.patch_size * c.patch_size
        self.encoder = MaRSEncoder(config, rngs=rngs)
        self.optical_decoder = MIMDecoder(out_dim=pp * c.optical_channels, **dec)
        self.sar_decoder = MIMDecoder(out_dim=pp * c.sar_channels, **dec)
        self.temperatures = None if temperatures is None else CGCLTemperatures(temperatures)

    def masking(self, batch: int, num_patches: int, *, key: jax.Array | None,
                mask_noise: jax.Array | None, mask_ratio: float) -> Masking:
        if mask_ratio == 0:
            return no_masking(batch, num_patches)
        if mask_noise is None:
            if key is None:
                raise ValueError(f"a PRNG key or mask_noise is required to draw masks "
                                 f"(mask_ratio={mask_ratio})")
            mask_noise = jax.random.uniform(key, (batch, num_patches))
        if tuple(mask_noise.shape) != (batch, num_patches):
            raise ValueError(f"mask_noise must be [batch, patches] = {(batch, num_patches)}, "
                             f"got {tuple(mask_noise.shape)}")
        return masking_from_noise(mask_noise, mask_ratio)

    def __call__(
        self, optical: jax.Array, sar: jax.Array, *, key: jax.Array | None = None,
        mask_noise: jax.Array | None = None, mask_ratio: float | None = None,
        valid: jax.Array | None = None, position_offsets: jax.Array | None = None,
    ) -> MaRSOutput:
        """optical: [B, H, W, 3] uint8; sar: [B, H, W, C_sar] dB; valid: optional [B, H, W].

        The shared random mask comes from ``key`` or from ``mask_noise`` [B, N] (the patches
        with the smallest noise are visible); with ``mask_ratio=0`` every patch is visible.
        ``position_offsets`` [B, 2, 2]: each modality's patch-position offsets (see
        ``MaRSEncoder.encode_prepared``; the trainer's ``loss.position_jitter``).
        """
        c = self.config
        if optical is None or sar is None:
            raise ValueError("pretraining needs both optical and sar")
        grid = self.encoder.check_inputs(optical, sar, valid)
        batch, n = optical.shape[0], grid[0] * grid[1]
        ratio = c.mask_ratio if mask_ratio is None else mask_ratio
        masking = self.masking(batch, n, key=key, mask_noise=mask_noise, mask_ratio=ratio)

        inputs = self.encoder.prepare(optical, sar, valid)
        enc = self.encoder.encode_prepared(inputs, masking.ids_keep,
                                           position_offsets=position_offsets)
        pred_rgb = self.optical_decoder(enc.f_rgb, masking.ids_restore, grid)
        pred_sar = self.sar_decoder(enc.f_sar, masking.ids_restore, grid)
        return MaRSOutput(
            z_rgb=enc.z_rgb, z_sar=enc.z_sar, e_rgb=enc.e_rgb, e_sar=enc.e_sar,
            f_rgb=enc.f_rgb, f_sar=enc.f_sar, pred_rgb=pred_rgb, pred_sar=pred_sar,
            target_rgb=patchify(inputs.x_rgb, c.patch_size),
            target_sar=patchify(inputs.x_sar, c.patch_size),
            masking=masking, patch_valid=inputs.patch_valid,
        )
