"""Images <-> patch sequences, and MAE-style random masking shared by both modalities."""

from __future__ import annotations

from typing import NamedTuple

import einops
import jax
import jax.numpy as jnp


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """``[B, H, W, C] -> [B, (H/P)*(W/P), P*P*C]``, patches in row-major grid order."""
    return einops.rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)", p=patch_size,
                            q=patch_size)


def unpatchify(patches: jax.Array, patch_size: int, grid: tuple[int, int]) -> jax.Array:
    """Inverse of :func:`patchify` for a ``(grid_h, grid_w)`` grid."""
    return einops.rearrange(patches, "b (h w) (p q c) -> b (h p) (w q) c", h=grid[0],
                            w=grid[1], p=patch_size, q=patch_size)


class Masking(NamedTuple):
    """Which patches the encoders see. One mask per example, shared by both modalities.

    ids_keep:    [B, N_vis] grid indices of the visible patches, ascending.
    ids_restore: [B, N] for each grid patch, its position in ``[visible; masked]`` order.
    mask:        [B, N] float32, 1 where the patch is masked (hidden from the encoders).
    """

    ids_keep: jax.Array
    ids_restore: jax.Array
    mask: jax.Array


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """``round((1 - mask_ratio) * num_patches)``, at least one patch."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n = round((1.0 - mask_ratio) * num_patches)
    if n < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} leaves no visible patch out of {num_patches}")
    return n


def random_masking(key: jax.Array, batch: int, num_patches: int, mask_ratio: float) -> Masking:
    """Uniformly random visible set per example (the MAE recipe: argsort of uniform noise)."""
    return masking_from_noise(jax.random.uniform(key, (batch, num_patches)), mask_ratio)


def masking_from_noise(noise: jax.Array, mask_ratio: float) -> Masking:
    """The patches with the smallest ``noise`` [B, N] are visible. Drawing the noise for a
    whole batch and cutting it with the batch gives every micro-batch the masks it would
    have had in one large step (gradient accumulation)."""
    num_patches = noise.shape[1]
    n_vis = num_visible(num_patches, mask_ratio)
    shuffle = jnp.argsort(noise, axis=1)
    keep = jnp.sort(shuffle[:, :n_vis], axis=1)
    hidden = jnp.sort(shuffle[:, n_vis:], axis=1)
    ids_restore = jnp.argsort(jnp.concatenate([keep, hidden], axis=1), axis=1)
    mask = (ids_restore >= n_vis).astype(jnp.float32)
    return Masking(keep.astype(jnp.int32), ids_restore.astype(jnp.int32), mask)


def no_masking(batch: int, num_patches: int) -> Masking:
    """Every patch visible, in grid order (fine-tuning and inference)."""
    ids = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (batch, num_patches))
    return Masking(ids, ids, jnp.zeros((batch, num_patches), jnp.float32))


def take_tokens(x: jax.Array, ids: jax.Array) -> jax.Array:
    """Per-example gather along the token axis: ``x[b, ids[b]]`` for ``x`` of ``[B, N, ...]``."""
    return jax.vmap(lambda xb, ib: jnp.take(xb, ib, axis=0))(x, ids)


def restore_grid(visible: jax.Array, mask_token: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """Puts visible tokens back on the full grid, ``mask_token`` everywhere else.

    visible: [B, N_vis, D] in ``ids_keep`` order; mask_token: [D]; ids_restore: [B, N].
    """
    b, n_vis, d = visible.shape
    n = ids_restore.shape[1]
    fill = jnp.broadcast_to(mask_token.astype(visible.dtype), (b, n - n_vis, d))
    return take_tokens(jnp.concatenate([visible, fill], axis=1), ids_restore)
