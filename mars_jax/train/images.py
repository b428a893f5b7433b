"""Images for the logs: masked-image-modelling reconstruction panels, written as PNG.

A panel has one row per example and six tiles per row: optical masked input (masked patches
grey), optical reconstruction (visible patches from the input, masked ones predicted),
optical target; then the same three for SAR (its first channel, in grey).

The model predicts per-patch-normalised pixels (MAE ``norm_pix``): each predicted patch is
mapped back with the mean and standard deviation of its own target patch, as the loss
normalised it. Normalised values are shown with a per-image 2-98 percentile stretch per
channel, taken from the target and applied to all three tiles of a modality, so the tiles are
comparable and no dataset statistics are needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from mars_jax.models import MaRSOutput
from mars_jax.models.patches import unpatchify

MASKED_GREY = 128  # display value of masked patches in the "masked input" tiles
GAP_VALUE = 255  # white lines between tiles
STRETCH_PERCENTILES = (2.0, 98.0)
NORM_PIX_EPS = 1e-6  # as mars_jax.losses.mim.normalize_patches


def _host(array, count: int) -> np.ndarray:
    """The first ``count`` examples as float32 NumPy (slicing first: less to transfer)."""
    return np.asarray(jax.device_get(array[:count]), np.float32)


def denormalize_patches(pred: np.ndarray, target: np.ndarray,
                        eps: float = NORM_PIX_EPS) -> np.ndarray:
    """Per-patch-normalised predictions back to the targets' scale: ``pred * std + mean``.

    pred, target: ``[..., K]`` with K = P*P*C; mean and std over each target patch's K values.
    """
    mean = target.mean(-1, keepdims=True)
    std = np.sqrt(target.var(-1, keepdims=True) + eps)
    return pred * std + mean


def percentile_stretch(images: np.ndarray, reference: np.ndarray,
                       percentiles: tuple[float, float] = STRETCH_PERCENTILES) -> np.ndarray:
    """Maps each image's channels to [0, 1] between the reference's percentiles, clipped.

    images, reference: ``[B, H, W, C]``; the range is per example and channel.
    """
    low, high = np.percentile(reference, percentiles, axis=(1, 2), keepdims=True)
    scale = np.where(high > low, high - low, 1.0)  # flat images: shown at their level
    return np.clip((images - low) / scale, 0.0, 1.0)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.round(unit * 255.0).astype(np.uint8)


def _modality_tiles(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, *, patch_size: int,
                    grid: tuple[int, int], norm_pix: bool, grey: bool) -> list[np.ndarray]:
    """[masked input, reconstruction, target] as uint8 ``[B, H, W, 3]`` for one modality."""
    if norm_pix:
        pred = denormalize_patches(pred, target)
    hidden = mask[..., None] > 0.5
    reconstruction = np.where(hidden, pred, target)
    to_image = lambda patches: unpatchify(patches, patch_size, grid)
    target_image, reconstruction_image = to_image(target), to_image(reconstruction)
    hidden_image = to_image(np.broadcast_to(hidden, target.shape))[..., :1]
    if grey:
        target_image, reconstruction_image = target_image[..., :1], reconstruction_image[..., :1]
    stretch = lambda image: _to_uint8(percentile_stretch(image, target_image))
    target_tile, reconstruction_tile = stretch(target_image), stretch(reconstruction_image)
    masked_tile = np.where(hidden_image, np.uint8(MASKED_GREY), target_tile)
    tiles = [masked_tile, reconstruction_tile, target_tile]
    return [np.repeat(tile, 3, axis=-1) if grey else tile for tile in tiles]


def _grid_layout(tiles: list[np.ndarray], gap: int) -> np.ndarray:
    """Tiles ``[B, H, W, 3]`` (one per column) -> ``[B*H + gaps, cols*W + gaps, 3]``."""
    rows, height, width, _ = tiles[0].shape
    cols = len(tiles)
    panel = np.full((rows * height + (rows - 1) * gap, cols * width + (cols - 1) * gap, 3),
                    GAP_VALUE, np.uint8)
    for col, tile in enumerate(tiles):
        for row in range(rows):
            y, x = row * (height + gap), col * (width + gap)
            panel[y:y + height, x:x + width] = tile[row]
    return panel


def reconstruction_panel(out: MaRSOutput, *, patch_size: int, grid: tuple[int, int],
                         max_examples: int = 4, norm_pix: bool = True,
                         gap: int = 2) -> np.ndarray:
    """uint8 ``[H', W', 3]`` panel of up to ``max_examples`` examples (layout: module doc).

    ``out`` may hold device or NumPy arrays (e.g. ``jax.device_get`` of a preview step);
    ``norm_pix=False`` for a model trained on unnormalised targets.
    """
    num_patches = grid[0] * grid[1]
    if out.target_rgb.shape[1] != num_patches:
        raise ValueError(f"grid {grid} has {num_patches} patches, the output "
                         f"{out.target_rgb.shape[1]}")
    count = min(out.target_rgb.shape[0], max_examples)
    if count < 1:
        raise ValueError("reconstruction_panel needs at least one example")
    mask = _host(out.masking.mask, count)
    tile = dict(patch_size=patch_size, grid=grid, norm_pix=norm_pix)
    optical = _modality_tiles(_host(out.pred_rgb, count), _host(out.target_rgb, count), mask,
                              grey=False, **tile)
    sar = _modality_tiles(_host(out.pred_sar, count), _host(out.target_sar, count), mask,
                          grey=True, **tile)
    return _grid_layout(optical + sar, gap)


def save_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Writes a uint8 ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` image as PNG.

    Written to a temporary name and renamed, so a killed run never leaves a truncated PNG.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"save_png needs a uint8 [H, W(, 1|3|4)] image, got {image.dtype} "
                         f"{image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image).save(
        scratch, format="PNG")
    os.replace(scratch, path)
