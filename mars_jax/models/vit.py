"""ViT encoder for one modality: patch embedding, 2-D sin-cos positions, pre-norm blocks."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mars_jax.models import layers
from mars_jax.models.patches import patchify, take_tokens
from mars_jax.models.stack import TransformerStack


def _sincos_frequencies(dim: int) -> np.ndarray:
    """``w_k = 10000 ** (-k / (dim / 4))`` for k < dim / 4, float64: each of the two position
    axes (row, column) takes ``[sin(pos * w), cos(pos * w)]``, half of the channels."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    return 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)


@functools.lru_cache(maxsize=64)
def sincos_2d_position_embedding(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """Fixed 2-D sin-cos embedding, ``[grid_h * grid_w, dim]`` in row-major grid order.

    The first half of the channels encodes the row, the second half the column; each half is
    ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000 ** (-k / (dim / 4))``. Computed for
    any grid, so one model runs on any image size divisible by the patch size.
    """
    omega = _sincos_frequencies(dim)
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = pos.reshape(-1, 1).astype(np.float64) * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(rows), encode(cols)], axis=1).astype(np.float32)
    table.flags.writeable = False
    return table


def sincos_2d_position_embedding_at(rows: jax.Array, cols: jax.Array, dim: int) -> jax.Array:
    """``sincos_2d_position_embedding`` at arbitrary grid positions: rows, cols [...] ->
    [..., dim] float32 (equal to the table's rows at integer positions on its grid)."""
    omega = jnp.asarray(_sincos_frequencies(dim), jnp.float32)

    def encode(pos: jax.Array) -> jax.Array:
        angles = pos.astype(jnp.float32)[..., None] * omega
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)

    return jnp.concatenate([encode(rows), encode(cols)], axis=-1)


def check_image(name: str, images: jax.Array, channels: int, patch_size: int) -> tuple[int, int]:
    """Fails fast (at trace time) on a malformed image batch; returns the patch grid."""
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ValueError(f"{name} must be [batch, height, width, {channels}], got shape {shape}")
    _, h, w, c = shape
    if c != channels:
        raise ValueError(
            f"{name} has {c} channels (shape {shape}), the model expects {channels}")
    if h % patch_size or w % patch_size or h == 0 or w == 0:
        raise ValueError(
            f"{name} size {h}x{w} (shape {shape}) is not a positive multiple of the patch "
            f"size {patch_size}")
    return h // patch_size, w // patch_size


class ViTEncoder(nnx.Module):
    """Encodes the visible patches of one modality (all patches when ``ids_keep`` is None)."""

    def __init__(
        self, *, patch_size: int, in_channels: int, width: int, depth: int, num_heads: int,
        mlp_dim: int, dtype=jnp.float32, param_dtype=jnp.float32,
        attention_impl: Literal["xla", "cudnn"] | None = None, remat: layers.Remat = "none",
        scan_layers: bool = False, rngs: nnx.Rngs,
    ):
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.width = width
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_embed = layers.dense(patch_size * patch_size * in_channels, width,
                                        ("patch", "embed"), **kw)
        self.blocks = TransformerStack(depth, width, num_heads, mlp_dim, norm="pre",
                                       attention_impl=attention_impl, remat=remat,
                                       scan_layers=scan_layers, **kw)
        self.norm = layers.layer_norm(width, **kw)

    def __call__(self, images: jax.Array, ids_keep: jax.Array | None = None, *,
                 collect: Sequence[int] | None = None,
                 position_offset: jax.Array | None = None):
        """images: [B, H, W, C], already normalised. Returns [B, N_vis, width].

        ``collect``: block indices (0-based, negative from the end) whose outputs are also
        returned, as ``(out, tuple of [B, N_vis, width])``, each through the final LayerNorm
        (a residual stream grows with depth; the shared norm keeps levels on one scale for a
        multi-level head, as BEiT / PANGAEA's ViT wrappers do).
        ``position_offset``: [B, 2] (rows, columns) in patches added to every patch's grid
        position before its sin-cos embedding, per image (pretraining's position jitter);
        None: the grid as it is.
        """
        grid = check_image("images", images, self.in_channels, self.patch_size)
        patches = patchify(images, self.patch_size)
        if position_offset is None:
            pos = jnp.asarray(sincos_2d_position_embedding(*grid, self.width))
        else:
            if tuple(position_offset.shape) != (images.shape[0], 2):
                raise ValueError(f"position_offset must be [batch, 2] = "
                                 f"{(images.shape[0], 2)}, got {tuple(position_offset.shape)}")
            rows, cols = jnp.meshgrid(jnp.arange(grid[0]), jnp.arange(grid[1]), indexing="ij")
            pos = sincos_2d_position_embedding_at(
                rows.reshape(1, -1) + position_offset[:, :1],
                cols.reshape(1, -1) + position_offset[:, 1:], self.width)  # [B, N, width]
        if ids_keep is not None:
            patches = take_tokens(patches, ids_keep)
            pos = (jnp.take(pos, ids_keep, axis=0) if pos.ndim == 2
                   else take_tokens(pos, ids_keep))
        x = self.patch_embed(patches)
        x = x + pos.astype(x.dtype)
        if collect is None:
            return self.norm(self.blocks(x))
        x, hidden = self.blocks(x, collect=collect)
        return self.norm(x), tuple(self.norm(h) for h in hidden)
