"""Position jitter (``loss.position_jitter``): each modality's patch positions offset by its
own random whole number of patches, so CGCL cannot pair patch j with patch j by the shared
position embedding alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from mars_jax.data.contract import random_batch
from mars_jax.models.vit import (
    ViTEncoder,
    sincos_2d_position_embedding,
    sincos_2d_position_embedding_at,
)
from mars_jax.train.config import Experiment
from mars_jax.train.pretrain import position_offsets
from mars_jax.typed_config import ConfigError


def test_the_embedding_at_grid_positions_is_the_table_and_offsets_move_along_it():
    table = sincos_2d_position_embedding(7, 9, 16)  # rows of a 7 x 9 grid
    rows, cols = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    at = np.asarray(sincos_2d_position_embedding_at(jnp.asarray(rows), jnp.asarray(cols), 16))
    np.testing.assert_allclose(at.reshape(20, 16), table.reshape(7, 9, 16)[:4, :5].reshape(20, 16),
                               atol=1e-6)
    moved = np.asarray(sincos_2d_position_embedding_at(jnp.asarray(rows + 3),
                                                       jnp.asarray(cols + 2), 16))
    np.testing.assert_allclose(moved, table.reshape(7, 9, 16)[3:7, 2:7], atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_position_embedding_at(jnp.zeros(2), jnp.zeros(2), 6)


@pytest.fixture(scope="module")
def vit():
    return ViTEncoder(patch_size=4, in_channels=2, width=16, depth=2, num_heads=2, mlp_dim=32,
                      rngs=nnx.Rngs(0))


def test_an_offset_image_is_encoded_as_that_window_of_a_larger_canvas(vit):
    """Independent of the offset code: the 3 x 4 patch window at (2, 1) of a 5 x 6 canvas,
    encoded alone with ``ids_keep`` (attention sees only those patches), equals the window
    cut out and encoded with position_offset (2, 1); offset (0, 0) is no offset."""
    canvas = jax.random.normal(jax.random.key(1), (2, 20, 24, 2))
    window = canvas[:, 8:20, 4:20]  # patch rows 2..4, columns 1..4
    rows, cols = np.meshgrid(np.arange(2, 5), np.arange(1, 5), indexing="ij")
    ids = jnp.asarray(np.tile((rows * 6 + cols).reshape(1, -1), (2, 1)))
    want = vit(canvas, ids)
    got = vit(window, position_offset=jnp.asarray([[2, 1], [2, 1]]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
    np.testing.assert_allclose(np.asarray(vit(window, position_offset=jnp.zeros((2, 2), int))),
                               np.asarray(vit(window)), atol=1e-6)
    # Per example: the second image offset differently gives a different encoding.
    mixed = vit(window, position_offset=jnp.asarray([[2, 1], [0, 0]]))
    np.testing.assert_allclose(np.asarray(mixed[0]), np.asarray(want[0]), atol=2e-5)
    assert not np.allclose(np.asarray(mixed[1]), np.asarray(want[1]), atol=1e-3)
    with pytest.raises(ValueError, match=r"position_offset must be \[batch, 2\]"):
        vit(window, position_offset=jnp.zeros((2, 3), int))


def test_the_pretrainer_offsets_each_modality_on_its_own():
    from mars_jax.train.forward import build_model

    config = pretrain.get_config("tiny")
    config.model.encoder.depth = 1
    model = build_model(config)
    batch = random_batch(jax.random.key(0), 2, 32, 1)
    run = lambda offsets: model(batch["optical"], batch["sar"], key=jax.random.key(3),
                                position_offsets=offsets)
    plain = run(None)
    zero = run(jnp.zeros((2, 2, 2), jnp.int32))
    np.testing.assert_allclose(np.asarray(zero.z_sar), np.asarray(plain.z_sar), atol=1e-6)
    sar_only = run(jnp.asarray([[[0, 0], [1, 2]], [[0, 0], [3, 0]]], jnp.int32))
    np.testing.assert_allclose(np.asarray(sar_only.z_rgb), np.asarray(plain.z_rgb), atol=1e-6)
    assert not np.allclose(np.asarray(sar_only.z_sar), np.asarray(plain.z_sar), atol=1e-3)


def test_offsets_are_drawn_per_pair_and_modality_within_the_jitter():
    offsets = np.asarray(position_offsets(3, seed=0, step=jnp.asarray(5), batch_size=64))
    assert offsets.shape == (64, 2, 2) and offsets.min() == 0 and offsets.max() == 3
    assert np.mean(offsets[:, 0] != offsets[:, 1]) > 0.5  # the modalities' offsets differ
    again = np.asarray(position_offsets(3, seed=0, step=jnp.asarray(5), batch_size=64))
    np.testing.assert_array_equal(offsets, again)  # a function of (seed, step): resumable
    other = np.asarray(position_offsets(3, seed=0, step=jnp.asarray(6), batch_size=64))
    assert not np.array_equal(offsets, other)


@pytest.mark.parametrize("value", [-1, True])
def test_a_bad_jitter_is_named(value):
    config = pretrain.get_config("tiny")
    config.loss.position_jitter = value
    with pytest.raises(ConfigError, match="loss config: position_jitter must be a "
                                          "non-negative int"):
        Experiment.from_config(config)


@pytest.mark.slow  # two whole runs (50 s on 2 cores); the pieces are tested above
def test_a_jittered_training_run_trains_and_differs_from_an_unjittered_one(tmp_path):
    """``loss.position_jitter`` through the real loop, with accumulated gradients (the offsets
    are cut into micro-batches with the batch)."""
    from mars_jax.train.pretrain import train
    from tests.helpers import tiny_run_config

    losses = {}
    for jitter in (0, 2):
        config = tiny_run_config(2, loss={"position_jitter": jitter},
                                 optim={"grad_accum_steps": 2})
        last = train(config, tmp_path / f"jitter{jitter}", log=lambda _: None,
                     devices=jax.devices()[:1])
        assert np.isfinite(last["loss"])
        losses[jitter] = last["cgcl"]
    assert losses[0] != losses[2]
