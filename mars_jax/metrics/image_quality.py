"""Image quality of predicted images (SAR-to-optical translation), streamed over a data set.

Images are float ``[B, H, W, C]`` in [0, 1] (max value 1); ``valid`` ``[B, H, W]`` marks the
pixels that count. PSNR and SSIM are dm-pix's (``pix.psnr``, ``pix.ssim``: an 11 x 11
Gaussian window, sigma 1.5, k1 = 0.01, k2 = 0.03, over each channel and averaged), not
re-implemented here. Per image:

    psnr = -10 log10(mean (p - t)^2)      over the valid pixels and channels (inf: p = t)
    ssim = mean of SSIM's map             over the windows lying wholly on valid pixels
    l1   = sum |p - t| / (valid pixels x channels)   pooled over every image

Masking goes through dm-pix itself: pixels outside ``valid`` become NaN in both images and
dm-pix ignores NaNs (``ignore_nans=True``), so the PSNR's mean is over the valid pixels and
an SSIM window touching an invalid pixel is left out. An image with no valid pixel is not
counted; one whose every SSIM window touches an invalid pixel counts for PSNR and L1 but not
for SSIM (``ssim_images`` < ``images``).

Device side, per batch: ``batch_image_sums(pred, target, valid)`` -> sums of the per-image
PSNR and SSIM, the number of images counted for each, the sum of absolute errors and the
number of values in it. Host side: ``ImageQualitySums`` adds them in float64 / int64 and
computes ``psnr`` and ``ssim`` (means over images), ``l1`` and ``count`` (images). Undefined
means (nothing counted) are NaN; a PSNR mean holding a perfect image is inf.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp

from mars_jax.metrics.common import divide, to_host

SUM_KEYS = ("images", "psnr", "ssim_images", "ssim", "abs_error", "values")


@jax.jit
def batch_image_sums(pred: jax.Array, target: jax.Array, valid: jax.Array | None = None
                     ) -> dict[str, jax.Array]:
    """Per-batch sums (module docstring) of images ``pred``, ``target`` ``[B, H, W, C]`` in
    [0, 1] over ``valid`` ``[B, H, W]`` (None: every pixel). Returns ``images``,
    ``ssim_images``, ``values`` (int32) and ``psnr``, ``ssim``, ``abs_error`` (float32)."""
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"batch_image_sums: pred and target must be [B, H, W, C] of one "
                         f"shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if valid is not None and tuple(valid.shape) != tuple(target.shape[:3]):
        raise ValueError(f"batch_image_sums: valid must be [B, H, W] = "
                         f"{tuple(target.shape[:3])}, got {tuple(valid.shape)}")
    p, t = pred.astype(jnp.float32), target.astype(jnp.float32)
    keep = jnp.ones(t.shape[:3], bool) if valid is None else valid.astype(bool)
    keep4 = jnp.broadcast_to(keep[..., None], t.shape)
    counted = jnp.any(keep, axis=(1, 2))  # [B]: images with a valid pixel
    p_nan, t_nan = jnp.where(keep4, p, jnp.nan), jnp.where(keep4, t, jnp.nan)
    psnr = pix.psnr(p_nan, t_nan, ignore_nans=True)  # [B]; NaN for an image with no pixel
    ssim = pix.ssim(p_nan, t_nan, max_val=1.0, ignore_nans=True)  # [B]; NaN: no whole window
    ssim_counted = counted & ~jnp.isnan(ssim)
    abs_error = jnp.where(keep4, jnp.abs(p - t), 0.0)
    return {"images": jnp.sum(counted, dtype=jnp.int32),
            "psnr": jnp.sum(jnp.where(counted, psnr, 0.0)),
            "ssim_images": jnp.sum(ssim_counted, dtype=jnp.int32),
            "ssim": jnp.sum(jnp.where(ssim_counted, ssim, 0.0)),
            "abs_error": jnp.sum(abs_error),
            "values": jnp.sum(keep4, dtype=jnp.int32)}


class ImageQualitySums:
    """Host accumulator of ``batch_image_sums``; ``compute`` -> psnr, ssim (per-image means),
    l1 (per value) and count (images counted)."""

    kind = "image_quality_sums"

    def __init__(self):
        self.reset()

    def update(self, batch: Mapping[str, Any]) -> None:
        """Adds one ``batch_image_sums`` output (or a ``state_dict``)."""
        missing = set(SUM_KEYS) - set(batch)
        if missing:
            raise ValueError(f"ImageQualitySums: batch statistics lack {sorted(missing)}; got "
                             f"{sorted(batch)}")
        self.images += int(to_host(batch["images"]))
        self.ssim_images += int(to_host(batch["ssim_images"]))
        self.values += int(to_host(batch["values"]))
        self.psnr += float(to_host(batch["psnr"]))
        self.ssim += float(to_host(batch["ssim"]))
        self.abs_error += float(to_host(batch["abs_error"]))

    def merge(self, other: ImageQualitySums) -> ImageQualitySums:
        self.update(other.state_dict())
        return self

    def reset(self) -> None:
        self.images, self.ssim_images, self.values = 0, 0, 0
        self.psnr, self.ssim, self.abs_error = 0.0, 0.0, 0.0

    def compute(self) -> dict[str, float]:
        return {"psnr": float(divide(self.psnr, self.images)),
                "ssim": float(divide(self.ssim, self.ssim_images)),
                "l1": float(divide(self.abs_error, self.values)),
                "count": self.images}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "images": self.images, "psnr": self.psnr,
                "ssim_images": self.ssim_images, "ssim": self.ssim,
                "abs_error": self.abs_error, "values": self.values}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ImageQualitySums:
        out = cls()
        out.update(state)
        return out

    def __repr__(self) -> str:
        return f"ImageQualitySums(images={self.images})"
