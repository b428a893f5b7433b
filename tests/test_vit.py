"""2-D sin-cos positions, patchify, and the ViT encoder's handling of visible subsets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mars_jax.models.patches import patchify, unpatchify
from mars_jax.models.vit import ViTEncoder, check_image, sincos_2d_position_embedding
from tests import reference


@pytest.mark.parametrize("grid,dim", [((3, 5), 16), ((4, 4), 8), ((1, 7), 32)])
def test_sincos_matches_formula_for_any_grid(grid, dim):
    got = sincos_2d_position_embedding(*grid, dim)
    assert got.shape == (grid[0] * grid[1], dim)
    np.testing.assert_allclose(got, reference.sincos_2d(*grid, dim), atol=1e-6)
    assert len(np.unique(got.round(5), axis=0)) == grid[0] * grid[1]  # every position distinct


def test_sincos_rejects_dim_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_position_embedding(2, 2, 10)


def test_patchify_order_and_roundtrip():
    images = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    patches = np.asarray(patchify(jnp.asarray(images), 2))
    assert patches.shape == (2, 2 * 3, 2 * 2 * 3)
    for b in range(2):
        for gy in range(2):
            for gx in range(3):
                want = images[b, 2 * gy:2 * gy + 2, 2 * gx:2 * gx + 2, :].reshape(-1)
                np.testing.assert_array_equal(patches[b, gy * 3 + gx], want)
    np.testing.assert_array_equal(unpatchify(jnp.asarray(patches), 2, (2, 3)), images)


def small_encoder(channels=3):
    enc = ViTEncoder(patch_size=4, in_channels=channels, width=16, depth=2, num_heads=2,
                     mlp_dim=32, rngs=nnx.Rngs(0))
    return enc


def test_encoder_visible_subset_follows_its_patches():
    enc = small_encoder()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 12, 3)), jnp.float32)
    n = 4 * 3
    full = enc(x)
    assert full.shape == (2, n, 16)
    np.testing.assert_allclose(enc(x, jnp.tile(jnp.arange(n), (2, 1))), full, atol=1e-5)
    # Attention is permutation-equivariant, so a permuted visible set must give permuted
    # outputs: only true if each patch keeps its own position embedding.
    ids = jnp.asarray([[5, 0, 7, 2], [11, 3, 4, 9]])
    perm = jnp.asarray([2, 0, 3, 1])
    np.testing.assert_allclose(enc(x, ids[:, perm]), enc(x, ids)[:, perm], atol=1e-5)
    # ... and dropping patches changes the context, hence the features.
    assert not np.allclose(enc(x, ids), jax.vmap(lambda f, i: f[i])(full, ids), atol=1e-3)


def test_check_image_names_the_shape():
    with pytest.raises(ValueError, match=r"4 channels \(shape \(1, 8, 8, 4\)\)"):
        check_image("optical", jnp.zeros((1, 8, 8, 4)), 3, 4)
    with pytest.raises(ValueError, match=r"10x8 \(shape \(1, 10, 8, 3\)\).*patch size 4"):
        check_image("optical", jnp.zeros((1, 10, 8, 3)), 3, 4)
    with pytest.raises(ValueError, match=r"got shape \(8, 8, 3\)"):
        check_image("optical", jnp.zeros((8, 8, 3)), 3, 4)


def test_scanned_encoder_equals_unscanned():
    # Same draws in the same order: the scanned blocks are the unscanned ones, stacked.
    enc = small_encoder()
    scanned = ViTEncoder(patch_size=4, in_channels=3, width=16, depth=2, num_heads=2,
                         mlp_dim=32, scan_layers=True, rngs=nnx.Rngs(0))
    assert len(enc.blocks.layers) == 2 and enc.blocks.stacked is None
    assert scanned.blocks.layers is None and len(scanned.blocks.stacked) == 1
    np.testing.assert_array_equal(scanned.blocks.stacked[0].attn.qkv.kernel[...][1],
                                  enc.blocks.layers[1].attn.qkv.kernel[...])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 12, 3)), jnp.float32)
    ids = jnp.asarray([[5, 0, 7, 2], [11, 3, 4, 9]])
    np.testing.assert_allclose(scanned(x), enc(x), atol=1e-5)
    np.testing.assert_allclose(scanned(x, ids), enc(x, ids), atol=1e-5)
