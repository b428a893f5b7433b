"""The MaRS model: output shapes, parameter counts, shared masking, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from mars_jax.models import MaRS, MaRSConfig
from mars_jax.train.forward import build_model, count_parameters, random_batch


def block_params(d, mlp):
    return 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)


def expected_parameters(cfg: MaRSConfig) -> dict[str, int]:
    """Parameter counts written out from the architecture, independently of the code."""
    e, dec, p2 = cfg.encoder, cfg.decoder, cfg.patch_size ** 2

    def encoder(channels):
        return (p2 * channels * e.width + e.width) + e.depth * block_params(
            e.width, e.mlp_dim) + 2 * e.width

    def decoder(channels):
        return ((e.width * dec.width + dec.width) + dec.width  # embed + mask token
                + dec.depth * block_params(dec.width, dec.mlp_dim) + 2 * dec.width
                + dec.width * p2 * channels + p2 * channels)

    counts = {
        "optical_encoder": encoder(cfg.optical_channels),
        "sar_encoder": encoder(cfg.sar_channels),
        "mma": cfg.mma_layers * block_params(e.width, e.mlp_dim),
        "optical_decoder": decoder(cfg.optical_channels),
        "sar_decoder": decoder(cfg.sar_channels),
    }
    if cfg.projection_dim:
        counts["optical_projection"] = counts["sar_projection"] = (
            e.width * cfg.projection_dim + cfg.projection_dim)
    counts["total"] = sum(counts.values())
    return counts


@pytest.fixture(scope="module")
def tiny():
    config = pretrain.get_config("tiny")
    model = build_model(config)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, batch, key):
        return nnx.merge(graphdef, state)(batch["optical"], batch["sar"], key=key,
                                          valid=batch["valid"])

    batch = random_batch(jax.random.key(0), 2, 64, 1)
    return config, model, forward(state, batch, jax.random.key(1)), batch


def test_tiny_output_shapes(tiny):
    config, _model, out, _ = tiny
    b, n, n_vis, d = 2, 64, round(0.4 * 64), config.model.encoder.width
    for name in ("z_rgb", "z_sar", "e_rgb", "e_sar", "f_rgb", "f_sar"):
        assert getattr(out, name).shape == (b, n_vis, d), name
    assert out.pred_rgb.shape == out.target_rgb.shape == (b, n, 8 * 8 * 3)
    assert out.pred_sar.shape == out.target_sar.shape == (b, n, 8 * 8 * 1)
    assert out.masking.mask.shape == out.patch_valid.shape == (b, n)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(out))


def test_both_modalities_encode_the_same_visible_patches(tiny):
    _, model, out, batch = tiny
    keep = out.masking.ids_keep
    x_rgb = model.normalize_optical(batch["optical"])
    x_sar = model.normalize_sar(batch["sar"])
    np.testing.assert_allclose(out.z_rgb, model.optical_encoder(x_rgb, keep), atol=1e-5)
    np.testing.assert_allclose(out.z_sar, model.sar_encoder(x_sar, keep), atol=1e-5)
    # and the MIM targets are the normalised input patches in grid order
    np.testing.assert_allclose(out.target_sar[:, 3], x_sar[:, :8, 24:32].reshape(2, -1),
                               atol=1e-6)


def test_tiny_parameter_count(tiny):
    _, model, _, _ = tiny
    assert count_parameters(model) == expected_parameters(model.config)


def test_projection_adds_its_parameters():
    config = pretrain.get_config("tiny")
    config.model.projection_dim = 48
    model = build_model(config)
    assert count_parameters(model) == expected_parameters(model.config)
    batch = random_batch(jax.random.key(0), 2, 64, 1)
    out = model(batch["optical"], batch["sar"], key=jax.random.key(0))
    assert out.e_rgb.shape == out.e_sar.shape == (2, 26, 48)
    np.testing.assert_allclose(out.e_sar, model.sar_projection(out.z_sar), atol=1e-5)


@pytest.mark.parametrize("variant", ["base", "large"])
def test_big_models_built_abstractly(variant):
    config = pretrain.get_config(variant)
    model = nnx.eval_shape(lambda: build_model(config))
    counts = count_parameters(model)
    assert counts == expected_parameters(model.config)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)  # nothing allocated
    if variant == "base":  # ViT-B/16 encoders: about 86M parameters each
        assert 85e6 < counts["optical_encoder"] < 87e6
        assert 85e6 < counts["sar_encoder"] < 87e6


def test_base_forward_shapes_abstractly():
    config = pretrain.get_config("base")
    model = nnx.eval_shape(lambda: build_model(config))
    graphdef, state = nnx.split(model)
    optical = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.uint8)
    sar = jax.ShapeDtypeStruct((2, 512, 512, 1), jnp.float32)
    out = jax.eval_shape(lambda s, o, r: nnx.merge(graphdef, s)(o, r, key=jax.random.key(0)),
                         state, optical, sar)
    assert out.z_rgb.shape == (2, 410, 768)  # round(0.4 * 1024) visible patches
    assert out.f_sar.shape == (2, 410, 768)
    assert out.pred_rgb.shape == (2, 1024, 16 * 16 * 3)


def test_bf16_compute_keeps_float32_parameters():
    config = pretrain.get_config("tiny")
    config.model.dtype = "bfloat16"
    model = build_model(config)
    batch = random_batch(jax.random.key(0), 2, 64, 1)
    out = model(batch["optical"], batch["sar"], key=jax.random.key(0))
    assert out.z_rgb.dtype == jnp.bfloat16 and out.pred_sar.dtype == jnp.bfloat16
    param_dtypes = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))}
    assert param_dtypes == {jnp.dtype(jnp.float32)}
    assert np.isfinite(np.asarray(out.pred_rgb, np.float32)).all()


def test_no_data_pixels_are_neutralised(tiny):
    _, model, _, batch = tiny
    sar = batch["sar"].at[:, :8, :8].set(jnp.nan)  # e.g. SAR zeros converted to dB / NaN
    valid = batch["valid"].at[:, :8, :8].set(False)
    out = model(batch["optical"], sar, key=jax.random.key(1), valid=valid)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(out))
    assert float(out.patch_valid[0, 0]) == 0.0 and float(out.patch_valid[0, 1]) == 1.0


def test_same_key_same_output_and_ratio_zero_sees_everything(tiny):
    _, model, out, batch = tiny
    again = model(batch["optical"], batch["sar"], key=jax.random.key(1), valid=batch["valid"])
    np.testing.assert_allclose(again.pred_rgb, out.pred_rgb, atol=1e-5)
    full = model(batch["optical"], batch["sar"], mask_ratio=0.0)
    assert full.z_rgb.shape == (2, 64, 64) and float(full.masking.mask.sum()) == 0.0


@pytest.fixture(scope="module")
def model():
    return MaRS(MaRSConfig.from_dict(pretrain.get_config("tiny").model.to_dict()),
                rngs=nnx.Rngs(0))


class TestBadInput:
    def call(self, model, optical_shape, sar_shape, **kw):
        return model(jnp.zeros(optical_shape, jnp.uint8), jnp.zeros(sar_shape),
                     key=jax.random.key(0), **kw)

    def test_wrong_channel_count(self, model):
        with pytest.raises(ValueError, match=r"optical has 4 channels \(shape \(2, 64, 64, 4\)\)"):
            self.call(model, (2, 64, 64, 4), (2, 64, 64, 1))
        with pytest.raises(ValueError, match=r"sar has 2 channels \(shape \(2, 64, 64, 2\)\)"):
            self.call(model, (2, 64, 64, 3), (2, 64, 64, 2))

    def test_size_not_divisible_by_patch(self, model):
        with pytest.raises(ValueError, match=r"60x60 \(shape \(2, 60, 60, 3\)\).*patch size 8"):
            self.call(model, (2, 60, 60, 3), (2, 60, 60, 1))

    def test_rgb_and_sar_of_different_sizes(self, model):
        with pytest.raises(ValueError, match=r"optical shape \(2, 64, 64, 3\), sar shape "
                                             r"\(2, 32, 32, 1\)"):
            self.call(model, (2, 64, 64, 3), (2, 32, 32, 1))
        with pytest.raises(ValueError, match=r"optical shape \(2, 64, 64, 3\), sar shape "
                                             r"\(3, 64, 64, 1\)"):
            self.call(model, (2, 64, 64, 3), (3, 64, 64, 1))

    def test_valid_of_wrong_shape_and_missing_key(self, model):
        with pytest.raises(ValueError, match=r"valid must be \[batch, height, width\]"):
            self.call(model, (2, 64, 64, 3), (2, 64, 64, 1), valid=jnp.ones((2, 32, 32), bool))
        with pytest.raises(ValueError, match="PRNG key is required"):
            model(jnp.zeros((2, 64, 64, 3), jnp.uint8), jnp.zeros((2, 64, 64, 1)))

    def test_errors_come_before_compilation(self, model):
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda s, o, r: nnx.merge(graphdef, s)(o, r, key=jax.random.key(0)))
        with pytest.raises(ValueError, match="optical has 4 channels"):
            fn.trace(state, jnp.zeros((1, 64, 64, 4), jnp.uint8), jnp.zeros((1, 64, 64, 1)))
