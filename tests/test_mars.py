"""The MaRS encoder and pretrainer: output shapes, parameter counts, shared masking, single
modalities, layouts, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from mars_jax.data.contract import random_batch
from mars_jax.models import MaRSConfig, MaRSEncoder, MaRSPretrainer, convert_layers
from mars_jax.train.forward import build_model, count_parameters


def block_params(d, mlp):
    return 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)


def expected_parameters(cfg: MaRSConfig, *, temperatures: bool = False) -> dict[str, int]:
    """Parameter counts written out from the architecture, independently of the code."""
    e, dec, p2 = cfg.encoder, cfg.decoder, cfg.patch_size ** 2

    def vit(channels):
        return (p2 * channels * e.width + e.width) + e.depth * block_params(
            e.width, e.mlp_dim) + 2 * e.width

    def decoder(channels):
        return ((e.width * dec.width + dec.width) + dec.width  # embed + mask token
                + dec.depth * block_params(dec.width, dec.mlp_dim) + 2 * dec.width
                + dec.width * p2 * channels + p2 * channels)

    counts = {
        "encoder/optical_vit": vit(cfg.optical_channels),
        "encoder/sar_vit": vit(cfg.sar_channels),
        "encoder/mma": cfg.mma_layers * block_params(e.width, e.mlp_dim),
        "optical_decoder": decoder(cfg.optical_channels),
        "sar_decoder": decoder(cfg.sar_channels),
    }
    if cfg.projection_dim:
        counts["encoder/optical_projection"] = counts["encoder/sar_projection"] = (
            e.width * cfg.projection_dim + cfg.projection_dim)
    if temperatures:
        counts["temperatures"] = 3  # log (tau_patch, tau_global, tau_cross)
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
    x_rgb = model.encoder.normalize_optical(batch["optical"])
    x_sar = model.encoder.normalize_sar(batch["sar"])
    np.testing.assert_allclose(out.z_rgb, model.encoder.optical_vit(x_rgb, keep), atol=1e-5)
    np.testing.assert_allclose(out.z_sar, model.encoder.sar_vit(x_sar, keep), atol=1e-5)
    # and the MIM targets are the normalised input patches in grid order
    np.testing.assert_allclose(out.target_sar[:, 3], x_sar[:, :8, 24:32].reshape(2, -1),
                               atol=1e-6)


def test_tiny_parameter_count(tiny):
    _, model, _, _ = tiny
    assert count_parameters(model) == expected_parameters(model.config)
    paths = {"/".join(map(str, path))
             for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    for path in ("encoder/optical_vit/blocks/layers/0/attn/qkv/kernel",
                 "encoder/sar_vit/blocks/layers/1/mlp/fc2/bias",
                 "encoder/mma/blocks/layers/1/mlp/fc1/kernel",
                 "optical_decoder/blocks/layers/0/attn/out/kernel",
                 "sar_decoder/mask_token"):
        assert path in paths, path
    assert model.temperatures is None


def test_projection_adds_its_parameters():
    config = pretrain.get_config("tiny")
    config.model.projection_dim = 48
    model = build_model(config)
    assert count_parameters(model) == expected_parameters(model.config)
    batch = random_batch(jax.random.key(0), 2, 64, 1)
    out = model(batch["optical"], batch["sar"], key=jax.random.key(0))
    assert out.e_rgb.shape == out.e_sar.shape == (2, 26, 48)
    np.testing.assert_allclose(out.e_sar, model.encoder.sar_projection(out.z_sar), atol=1e-5)
    # The encoder alone, on the pretrainer's visible patches, gives the same projections.
    enc = model.encoder.encode(batch["optical"], batch["sar"], ids_keep=out.masking.ids_keep)
    np.testing.assert_allclose(enc.e_rgb, out.e_rgb, atol=1e-5)
    np.testing.assert_allclose(enc.e_sar, out.e_sar, atol=1e-5)


def test_learnable_temperatures_add_their_parameters():
    config = pretrain.get_config("tiny")
    config.loss.learnable_temperatures = True
    model = build_model(config)
    assert count_parameters(model) == expected_parameters(model.config, temperatures=True)
    np.testing.assert_allclose(model.temperatures(), (config.loss.tau_patch,
                                                      config.loss.tau_global,
                                                      config.loss.tau_cross), rtol=1e-6)


@pytest.mark.parametrize("variant", ["base", "large"])
def test_big_models_built_abstractly(variant):
    config = pretrain.get_config(variant)
    model = nnx.eval_shape(lambda: build_model(config))
    counts = count_parameters(model)
    assert counts == expected_parameters(model.config)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)  # nothing allocated
    if variant == "base":  # ViT-B/16 encoders: about 86M parameters each
        assert 85e6 < counts["encoder/optical_vit"] < 87e6
        assert 85e6 < counts["encoder/sar_vit"] < 87e6


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


def assert_trees_close(got, want, atol):
    got_leaves, want_leaves = jax.tree.leaves_with_path(got), jax.tree.leaves_with_path(want)
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
    for (path, g), (_, w) in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(g, w, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_encoder_alone_equals_the_pretrainers_features(tiny):
    _, model, out, batch = tiny
    assert isinstance(model.encoder, MaRSEncoder)
    enc = model.encoder.encode(batch["optical"], batch["sar"], valid=batch["valid"],
                               ids_keep=out.masking.ids_keep)
    for name in ("z_rgb", "z_sar", "e_rgb", "e_sar", "f_rgb", "f_sar", "patch_valid"):
        np.testing.assert_allclose(getattr(enc, name), getattr(out, name), atol=1e-5,
                                   err_msg=name)
    # Without ids_keep every patch is encoded, in grid order: the pretrainer at mask_ratio 0.
    full = model(batch["optical"], batch["sar"], mask_ratio=0.0, valid=batch["valid"])
    enc_all = model.encoder.encode(batch["optical"], batch["sar"], valid=batch["valid"])
    for name in ("z_rgb", "z_sar", "e_rgb", "e_sar", "f_rgb", "f_sar"):
        assert getattr(enc_all, name).shape == (2, 64, 64), name
        np.testing.assert_allclose(getattr(enc_all, name), getattr(full, name), atol=1e-5,
                                   err_msg=name)
    unfused = model.encoder.encode(batch["optical"], batch["sar"], fuse=False)
    assert unfused.f_rgb is None and unfused.f_sar is None
    np.testing.assert_allclose(unfused.z_sar, enc_all.z_sar, atol=1e-5)


def test_encoder_runs_on_sar_alone(tiny):
    _, model, _, batch = tiny
    encoder, sar, valid = model.encoder, batch["sar"], batch["valid"]
    keep = jnp.asarray([[0, 5, 9, 63], [1, 2, 40, 41]])
    alone = encoder.encode(sar=sar, valid=valid, ids_keep=keep)
    assert alone.z_rgb is None and alone.e_rgb is None and alone.f_rgb is None
    assert alone.z_sar.shape == alone.e_sar.shape == alone.f_sar.shape == (2, 4, 64)
    assert alone.patch_valid.shape == (2, 64)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(alone))
    # The SAR ViT features do not depend on the optical input (whichever is given, or none)...
    other = jnp.asarray(255 - batch["optical"], jnp.uint8)
    for optical in (batch["optical"], other):
        both = encoder.encode(optical, sar, valid=valid, ids_keep=keep)
        np.testing.assert_allclose(alone.z_sar, both.z_sar, atol=1e-5)
        np.testing.assert_allclose(alone.e_sar, both.e_sar, atol=1e-5)
    # ... and fused with no optical half, MMA attends within SAR alone: no optical input
    # enters, while the two-modality fusion does depend on the optical image.
    x_sar = encoder.normalize_sar(sar)
    np.testing.assert_allclose(alone.f_sar, encoder.mma.single(encoder.sar_vit(x_sar, keep)),
                               atol=1e-5)
    fused = encoder.encode(batch["optical"], sar, valid=valid, ids_keep=keep).f_sar
    fused_other = encoder.encode(other, sar, valid=valid, ids_keep=keep).f_sar
    assert np.abs(np.asarray(fused - fused_other)).max() > 1e-3
    assert np.abs(np.asarray(alone.f_sar - fused)).max() > 1e-3
    # SAR-only validity: no-data SAR pixels mark their patch, whatever the optical image.
    holes = encoder.encode(sar=sar.at[:, :8, :8].set(jnp.nan))
    assert float(holes.patch_valid[0, 0]) == 0.0 and float(holes.patch_valid[0, 1]) == 1.0
    assert np.isfinite(np.asarray(holes.f_sar)).all()


def test_encoder_runs_on_optical_alone(tiny):
    _, model, _, batch = tiny
    alone = model.encoder.encode(batch["optical"])
    assert alone.z_sar is None and alone.e_sar is None and alone.f_sar is None
    both = model.encoder.encode(batch["optical"], batch["sar"])
    np.testing.assert_allclose(alone.z_rgb, both.z_rgb, atol=1e-5)
    np.testing.assert_allclose(alone.f_rgb, model.encoder.mma.single(alone.z_rgb), atol=1e-5)


def test_mask_noise_equals_the_key_it_was_drawn_with(tiny):
    _, model, out, batch = tiny
    key = jax.random.key(1)  # the key of the fixture's forward
    noise = jax.random.uniform(key, (2, 64))
    from_noise = model(batch["optical"], batch["sar"], mask_noise=noise, valid=batch["valid"])
    np.testing.assert_array_equal(from_noise.masking.ids_keep, out.masking.ids_keep)
    np.testing.assert_array_equal(from_noise.masking.ids_restore, out.masking.ids_restore)
    assert_trees_close(from_noise, out, atol=1e-5)
    from_key = model(batch["optical"], batch["sar"], key=key, valid=batch["valid"])
    assert_trees_close(from_noise, from_key, atol=1e-5)


def test_scanned_layout_has_the_same_parameters_and_outputs():
    config = pretrain.get_config("tiny")
    unscanned = build_model(config)
    config.model.scan_layers = True
    scanned = build_model(config)
    assert count_parameters(scanned) == count_parameters(unscanned)
    assert scanned.encoder.optical_vit.blocks.layers is None
    params = nnx.to_pure_dict(nnx.state(unscanned, nnx.Param))
    scanned_params = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))
    # Same initial draws: the scanned parameters are the unscanned ones, stacked.
    assert_trees_close(convert_layers(scanned_params, params), params, atol=0)
    assert_trees_close(convert_layers(params, scanned_params), scanned_params, atol=0)
    batch = random_batch(jax.random.key(0), 2, 64, 1)
    run = lambda m: nnx.jit(lambda m, b: m(b["optical"], b["sar"], key=jax.random.key(1),
                                            valid=b["valid"]))(m, batch)
    assert_trees_close(run(scanned), run(unscanned), atol=1e-5)


@pytest.fixture(scope="module")
def model():
    return MaRSPretrainer(MaRSConfig.from_dict(pretrain.get_config("tiny").model.to_dict()),
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
        with pytest.raises(ValueError, match="PRNG key or mask_noise is required"):
            model(jnp.zeros((2, 64, 64, 3), jnp.uint8), jnp.zeros((2, 64, 64, 1)))
        with pytest.raises(ValueError, match=r"mask_noise must be \[batch, patches\] = "
                                             r"\(2, 64\), got \(2, 32\)"):
            model(jnp.zeros((2, 64, 64, 3), jnp.uint8), jnp.zeros((2, 64, 64, 1)),
                  mask_noise=jnp.zeros((2, 32)))

    def test_pretraining_needs_both_modalities(self, model):
        with pytest.raises(ValueError, match="pretraining needs both optical and sar"):
            model(None, jnp.zeros((2, 64, 64, 1)), key=jax.random.key(0))

    def test_encode_needs_a_modality(self, model):
        with pytest.raises(ValueError, match="encode needs optical, sar or both; got neither"):
            model.encoder.encode()
        with pytest.raises(ValueError, match=r"valid must be \[batch, height, width\]"):
            model.encoder.encode(sar=jnp.zeros((2, 64, 64, 1)),
                                 valid=jnp.ones((2, 32, 32), bool))

    def test_errors_come_before_compilation(self, model):
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda s, o, r: nnx.merge(graphdef, s)(o, r, key=jax.random.key(0)))
        with pytest.raises(ValueError, match="optical has 4 channels"):
            fn.trace(state, jnp.zeros((1, 64, 64, 4), jnp.uint8), jnp.zeros((1, 64, 64, 1)))
