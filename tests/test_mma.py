"""Meta-Modality Attention: layer parity, information flow, float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mars_jax import parallel
from mars_jax.models.mma import MetaModalityAttention, layer_kind
from tests import reference
from tests.helpers import block_params, perturb_params

B, N, D = 3, 5, 16


def tokens(seed):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(B, N, D)), jnp.float32),
            jnp.asarray(rng.normal(size=(B, N, D)), jnp.float32))


def mma(layers, norm="post"):
    module = MetaModalityAttention(layers, D, 2, 32, norm=norm, rngs=nnx.Rngs(layers))
    perturb_params(module, seed=layers)
    return module


def test_layer_parity_follows_the_paper():
    assert mma(4).kinds == ("intra", "meta", "intra", "meta")
    assert mma(3).kinds == ("intra", "meta", "intra")
    assert [layer_kind(i) for i in range(2)] == ["intra", "meta"]


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_intra_layer_keeps_modalities_apart(norm):
    module = mma(1, norm)
    z_rgb, z_sar = tokens(0)
    rgb, sar = module(z_rgb, z_sar)
    rgb2, sar2 = module(z_rgb, z_sar + 3.0 * jnp.asarray(np.random.default_rng(9).normal(
        size=z_sar.shape), jnp.float32))
    np.testing.assert_allclose(rgb2, rgb, rtol=0, atol=1e-6)  # no SAR -> RGB information
    assert np.abs(np.asarray(sar2 - sar)).max() > 1e-2


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_meta_layer_mixes_modalities_within_an_example(norm):
    module = mma(2, norm)
    z_rgb, z_sar = tokens(1)
    rgb, _ = module(z_rgb, z_sar)
    # Perturb the SAR tokens of example 0 only (randomly: LayerNorm erases a constant shift).
    noise = np.random.default_rng(8).normal(size=(N, D))
    z_sar2 = z_sar.at[0].add(3.0 * jnp.asarray(noise, jnp.float32))
    rgb2, _ = module(z_rgb, z_sar2)
    assert np.abs(np.asarray(rgb2[0] - rgb[0])).max() > 1e-2  # SAR reached RGB
    np.testing.assert_allclose(rgb2[1:], rgb[1:], atol=1e-6)  # other examples untouched


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_matches_reference(norm):
    module = mma(3, norm)
    z_rgb, z_sar = tokens(2)
    rgb, sar = nnx.jit(lambda m, a, b: m(a, b))(module, z_rgb, z_sar)
    params = [block_params(layer) for layer in module.layers]
    want_rgb, want_sar = reference.mma(np.asarray(z_rgb), np.asarray(z_sar), params, norm)
    np.testing.assert_allclose(rgb, want_rgb, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sar, want_sar, rtol=1e-4, atol=1e-4)


def test_rejects_mismatched_token_sets():
    with pytest.raises(ValueError, match=r"\(3, 5, 16\) and \(3, 4, 16\)"):
        mma(2)(jnp.zeros((3, 5, 16)), jnp.zeros((3, 4, 16)))


def test_batch_sharded_mma_moves_no_activations_between_devices():
    # Intra layers regroup [B, 2N, D] as [2B, N, D] by a reshape, so each device keeps its own
    # examples: the compiled forward + backward has no collective-permute or all-to-all.
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = parallel.create_mesh({"data": 8})
    graphdef, state = nnx.split(mma(4))

    def loss(state, z_rgb, z_sar):
        f_rgb, f_sar = nnx.merge(graphdef, state)(z_rgb, z_sar)
        return jnp.sum(f_rgb * f_sar)

    spec = jax.ShapeDtypeStruct((16, 5, D), jnp.float32, sharding=parallel.batch_sharding(mesh))
    hlo = jax.jit(jax.grad(loss)).lower(state, spec, spec).compile().as_text()
    for collective in ("collective-permute", "all-to-all"):
        assert f" {collective}(" not in hlo and f" {collective}-start(" not in hlo, collective
