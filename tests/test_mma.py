"""Meta-Modality Attention: layer parity, information flow, float64 reference, layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mars_jax import parallel
from mars_jax.models import convert_layers
from mars_jax.models.mma import MetaModalityAttention, attention_pattern, layer_kind
from tests import reference
from tests.helpers import perturb_params, stack_params

B, N, D = 3, 5, 16
LAYOUTS = pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])


def tokens(seed):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(B, N, D)), jnp.float32),
            jnp.asarray(rng.normal(size=(B, N, D)), jnp.float32))


def mma(layers, norm="post", scan_layers=False):
    """A perturbed MMA; scanned, it holds the very weights of the unscanned one."""
    module = MetaModalityAttention(layers, D, 2, 32, norm=norm, rngs=nnx.Rngs(layers))
    perturb_params(module, seed=layers)
    if not scan_layers:
        return module
    scanned = MetaModalityAttention(layers, D, 2, 32, norm=norm, scan_layers=True,
                                    rngs=nnx.Rngs(layers))
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, convert_layers(nnx.to_pure_dict(nnx.state(module)),
                                                   nnx.to_pure_dict(state)))
    nnx.update(scanned, state)
    return scanned


def test_layer_parity_follows_the_paper():
    assert mma(4).kinds == ("intra", "meta", "intra", "meta")
    assert mma(3).kinds == ("intra", "meta", "intra")
    assert mma(4, scan_layers=True).kinds == ("intra", "meta", "intra", "meta")
    assert [layer_kind(i) for i in range(2)] == ["intra", "meta"]
    # The stack's attention scopes: intra layers within each modality, meta layers over all.
    assert mma(3).blocks.pattern == attention_pattern(3) == ("intra", "full", "intra")
    assert len(mma(3).blocks.layers) == 3


@LAYOUTS
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_intra_layer_keeps_modalities_apart(norm, scan_layers):
    module = mma(1, norm, scan_layers)
    z_rgb, z_sar = tokens(0)
    rgb, sar = module(z_rgb, z_sar)
    rgb2, sar2 = module(z_rgb, z_sar + 3.0 * jnp.asarray(np.random.default_rng(9).normal(
        size=z_sar.shape), jnp.float32))
    np.testing.assert_allclose(rgb2, rgb, rtol=0, atol=1e-6)  # no SAR -> RGB information
    assert np.abs(np.asarray(sar2 - sar)).max() > 1e-2


@LAYOUTS
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_meta_layer_mixes_modalities_within_an_example(norm, scan_layers):
    module = mma(2, norm, scan_layers)
    z_rgb, z_sar = tokens(1)
    rgb, _ = module(z_rgb, z_sar)
    # Perturb the SAR tokens of example 0 only (randomly: LayerNorm erases a constant shift).
    noise = np.random.default_rng(8).normal(size=(N, D))
    z_sar2 = z_sar.at[0].add(3.0 * jnp.asarray(noise, jnp.float32))
    rgb2, _ = module(z_rgb, z_sar2)
    assert np.abs(np.asarray(rgb2[0] - rgb[0])).max() > 1e-2  # SAR reached RGB
    np.testing.assert_allclose(rgb2[1:], rgb[1:], atol=1e-6)  # other examples untouched


@LAYOUTS
@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("layers", [3, 4])  # scanned: one group of 3, two groups of 2
def test_matches_reference(norm, layers, scan_layers):
    module = mma(layers, norm, scan_layers)
    z_rgb, z_sar = tokens(2)
    rgb, sar = nnx.jit(lambda m, a, b: m(a, b))(module, z_rgb, z_sar)
    params = stack_params(module.blocks)
    assert len(params) == layers
    want_rgb, want_sar = reference.mma(np.asarray(z_rgb), np.asarray(z_sar), params, norm)
    np.testing.assert_allclose(rgb, want_rgb, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sar, want_sar, rtol=1e-4, atol=1e-4)


@LAYOUTS
def test_single_modality_is_every_layer_within_it(scan_layers):
    # With one modality missing, every layer (intra or meta) attends over that modality's
    # tokens alone: the reference's blocks applied in turn.
    module = mma(3, "post", scan_layers)
    z, _ = tokens(3)
    got = nnx.jit(lambda m, a: m.single(a))(module, z)
    params = stack_params(module.blocks)
    want = np.asarray(z, np.float64)
    for p in params:
        want = np.stack([reference.block(want[i], p, "post") for i in range(B)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_rejects_mismatched_token_sets():
    with pytest.raises(ValueError, match=r"\(3, 5, 16\) and \(3, 4, 16\)"):
        mma(2)(jnp.zeros((3, 5, 16)), jnp.zeros((3, 4, 16)))


@LAYOUTS
def test_batch_sharded_mma_moves_no_activations_between_devices(scan_layers):
    # Intra layers regroup [B, 2N, D] as [2B, N, D] by a reshape, so each device keeps its own
    # examples: the compiled forward + backward has no collective-permute or all-to-all.
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = parallel.create_mesh({"data": 8})
    graphdef, state = nnx.split(mma(4, scan_layers=scan_layers))

    def loss(state, z_rgb, z_sar):
        f_rgb, f_sar = nnx.merge(graphdef, state)(z_rgb, z_sar)
        return jnp.sum(f_rgb * f_sar)

    spec = jax.ShapeDtypeStruct((16, 5, D), jnp.float32, sharding=parallel.batch_sharding(mesh))
    hlo = jax.jit(jax.grad(loss)).lower(state, spec, spec).compile().as_text()
    for collective in ("collective-permute", "all-to-all"):
        assert f" {collective}(" not in hlo and f" {collective}-start(" not in hlo, collective
