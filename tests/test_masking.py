"""Shared MAE masking: visible counts, shared positions, restoring grid order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mars_jax.models.decoder import MIMDecoder
from mars_jax.models.patches import (
    masking_from_noise,
    no_masking,
    num_visible,
    random_masking,
    restore_grid,
    take_tokens,
)
from mars_jax.models.vit import sincos_2d_position_embedding


@pytest.mark.parametrize("n,ratio", [(1024, 0.6), (64, 0.6), (16, 0.75), (10, 0.25),
                                     (7, 0.5), (196, 0.9), (5, 0.0)])
def test_visible_count(n, ratio):
    assert num_visible(n, ratio) == round((1 - ratio) * n)
    m = random_masking(jax.random.key(0), 3, n, ratio)
    assert m.ids_keep.shape == (3, round((1 - ratio) * n))
    np.testing.assert_array_equal(m.mask.sum(1), n - round((1 - ratio) * n))


def test_bad_ratios():
    for ratio in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="mask_ratio"):
            num_visible(16, ratio)
    with pytest.raises(ValueError, match="no visible patch"):
        num_visible(4, 0.9)


def test_mask_structure():
    m = random_masking(jax.random.key(1), 4, 50, 0.6)
    keep, mask = np.asarray(m.ids_keep), np.asarray(m.mask)
    for b in range(4):
        assert (np.diff(keep[b]) > 0).all() and keep[b].min() >= 0 and keep[b].max() < 50
        assert (mask[b, keep[b]] == 0).all()
        assert mask[b].sum() == 50 - len(keep[b])
    assert len({tuple(row) for row in keep}) == 4  # one independent mask per example
    again = random_masking(jax.random.key(1), 4, 50, 0.6)
    np.testing.assert_array_equal(again.ids_keep, keep)


def test_masking_from_noise_is_random_masking_of_that_noise():
    key = jax.random.key(4)
    m = random_masking(key, 3, 20, 0.6)
    noise = jax.random.uniform(key, (3, 20))
    from_noise = masking_from_noise(noise, 0.6)
    for got, want in zip(from_noise, m, strict=True):
        np.testing.assert_array_equal(got, want)
    # The patches with the smallest noise are the visible ones.
    smallest = np.sort(np.argsort(np.asarray(noise), axis=1)[:, :8], axis=1)
    np.testing.assert_array_equal(from_noise.ids_keep, smallest)
    # Cutting a batch's noise gives each micro-batch the masks of the whole batch.
    half = masking_from_noise(noise[1:], 0.6)
    np.testing.assert_array_equal(half.ids_keep, m.ids_keep[1:])


def test_restore_grid_puts_tokens_back_in_grid_order():
    m = random_masking(jax.random.key(2), 3, 20, 0.6)
    grid_ids = jnp.tile(jnp.arange(20, dtype=jnp.float32)[:, None], (3, 1, 1))  # [3, 20, 1]
    visible = take_tokens(grid_ids, m.ids_keep)
    restored = restore_grid(visible, jnp.asarray([-1.0]), m.ids_restore)[..., 0]
    want = np.where(np.asarray(m.mask) > 0, -1.0, np.arange(20.0))
    np.testing.assert_array_equal(restored, want)


def test_no_masking_is_identity():
    m = no_masking(2, 6)
    np.testing.assert_array_equal(m.ids_keep, np.tile(np.arange(6), (2, 1)))
    np.testing.assert_array_equal(m.ids_restore, m.ids_keep)
    assert float(m.mask.sum()) == 0


def test_decoder_outputs_in_grid_order():
    # With no blocks the decoder is per-token: head(LN(embed(token) + pos)) at visible places,
    # head(LN(mask_token + pos)) elsewhere. Recompute that per grid position by hand.
    dec = MIMDecoder(in_dim=8, width=16, depth=0, num_heads=2, mlp_dim=32, out_dim=5,
                     rngs=nnx.Rngs(0))
    assert dec.blocks.depth == 0 and len(dec.blocks.layers) == 0
    grid = (3, 4)
    m = random_masking(jax.random.key(3), 2, 12, 0.5)
    tokens = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 8)), jnp.float32)
    out = np.asarray(dec(tokens, m.ids_restore, grid))
    pos = sincos_2d_position_embedding(*grid, 16)
    for b in range(2):
        visible = dict(zip(np.asarray(m.ids_keep[b]).tolist(), range(6), strict=True))
        for p in range(12):
            x = dec.embed(tokens[b, visible[p]]) if p in visible else dec.mask_token[...]
            want = dec.head(dec.norm(x + pos[p]))
            np.testing.assert_allclose(out[b, p], want, atol=1e-5, err_msg=f"b={b} p={p}")
