"""CGCL terms and MAS against the float64 loop references in tests/reference.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.losses import cgcl_loss, modality_alignment_score
from tests import reference

SHAPES = [(1, 1, 4), (1, 5, 8), (3, 1, 8), (2, 7, 16), (4, 6, 3), (5, 3, 32)]


def correlated_pair(shape, seed, dtype=np.float64):
    """SAR features that partly agree with RGB ones, so positives differ from negatives."""
    rng = np.random.default_rng(seed)
    zr = rng.normal(size=shape)
    zs = 0.6 * zr + rng.normal(size=shape)
    return zr.astype(dtype), zs.astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, dtype):
    zr, zs = correlated_pair(shape, seed=sum(shape))
    zr, zs = jnp.asarray(zr, dtype), jnp.asarray(zs, dtype)
    temps = dict(tau_patch=0.05, tau_global=0.07, tau_cross=0.1)
    total, terms = jax.jit(lambda a, b: cgcl_loss(a, b, **temps))(zr, zs)
    # The reference sees exactly the values the loss saw (bf16 rounding included).
    ref_total, ref_terms = reference.cgcl(np.asarray(zr.astype(jnp.float32), np.float64),
                                          np.asarray(zs.astype(jnp.float32), np.float64),
                                          0.05, 0.07, 0.1)
    assert total.dtype == jnp.float32
    for name in ("patch", "global", "cross"):
        np.testing.assert_allclose(terms[name], ref_terms[name], rtol=2e-5, atol=2e-6,
                                   err_msg=name)
    np.testing.assert_allclose(total, ref_total, rtol=2e-5, atol=2e-6)


def test_weights_and_temperatures_reach_each_term():
    zr, zs = correlated_pair((3, 4, 8), seed=1)
    kw = dict(tau_patch=0.03, tau_global=0.2, tau_cross=0.5)
    total, terms = cgcl_loss(jnp.asarray(zr, jnp.float32), jnp.asarray(zs, jnp.float32),
                             alpha=0.7, beta=1.3, gamma=0.4, **kw)
    ref_total, ref_terms = reference.cgcl(zr.astype(np.float32), zs.astype(np.float32),
                                          0.03, 0.2, 0.5, 0.7, 1.3, 0.4)
    np.testing.assert_allclose(total, ref_total, rtol=2e-5)
    for name in terms:
        np.testing.assert_allclose(terms[name], ref_terms[name], rtol=2e-5, err_msg=name)


def test_closed_form_for_orthonormal_features():
    # z^R = z^S = distinct one-hot vectors: s = 1 for positives and 0 for every negative.
    b, n, tau = 2, 3, 0.05
    z = jnp.eye(b * n, 8, dtype=jnp.float32).reshape(b, n, 8)
    _, terms = cgcl_loss(z, z, tau_patch=tau)
    expected = math.log(1 + (b * n - 1) * math.exp(-1 / tau))
    np.testing.assert_allclose(terms["patch"], expected, rtol=1e-5, atol=1e-7)


def test_single_image_has_zero_global_and_cross_terms():
    zr, zs = correlated_pair((1, 5, 8), seed=2)
    _, terms = cgcl_loss(jnp.asarray(zr, jnp.float32), jnp.asarray(zs, jnp.float32))
    assert float(terms["global"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["cross"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["patch"]) > 0.1


@pytest.mark.parametrize("scale", [1e-3, 7.5])
def test_invariant_to_feature_scale(scale):
    zr, zs = correlated_pair((3, 4, 16), seed=3, dtype=np.float32)
    base_total, base = cgcl_loss(jnp.asarray(zr), jnp.asarray(zs))
    total, scaled = cgcl_loss(jnp.asarray(zr * scale), jnp.asarray(zs * scale))
    np.testing.assert_allclose(total, base_total, rtol=1e-5)
    for name in base:
        np.testing.assert_allclose(scaled[name], base[name], rtol=1e-5, err_msg=name)


def test_patch_term_invariant_to_per_patch_scale():
    zr, zs = correlated_pair((3, 4, 16), seed=4, dtype=np.float32)
    scales = np.random.default_rng(0).uniform(0.1, 10, size=(3, 4, 1)).astype(np.float32)
    _, base = cgcl_loss(jnp.asarray(zr), jnp.asarray(zs))
    _, scaled = cgcl_loss(jnp.asarray(zr * scales), jnp.asarray(zs))
    np.testing.assert_allclose(scaled["patch"], base["patch"], rtol=1e-5)
    # g_i is the mean of the raw features, so the global term does see the scales.
    assert abs(float(scaled["global"]) - float(base["global"])) > 1e-4


def test_gradients_match_finite_differences_float64():
    zr, zs = correlated_pair((2, 3, 4), seed=5)
    temps = dict(tau_patch=0.3, tau_global=0.4, tau_cross=0.5)
    with jax.enable_x64(True):
        def loss(a, b):
            return cgcl_loss(a, b, alpha=0.8, beta=1.1, gamma=0.9, **temps)[0]

        grads = jax.grad(loss, argnums=(0, 1))(jnp.asarray(zr), jnp.asarray(zs))
        assert grads[0].dtype == jnp.float64
        f = jax.jit(loss)
        h = 1e-6
        for which, (x, g) in enumerate(zip((zr, zs), grads, strict=True)):
            numeric = np.zeros_like(x)
            for idx in np.ndindex(x.shape):
                plus, minus = x.copy(), x.copy()
                plus[idx] += h
                minus[idx] -= h
                args_p = (plus, zs) if which == 0 else (zr, plus)
                args_m = (minus, zs) if which == 0 else (zr, minus)
                numeric[idx] = (float(f(*args_p)) - float(f(*args_m))) / (2 * h)
            np.testing.assert_allclose(np.asarray(g), numeric, rtol=1e-6, atol=1e-8)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 8\) and \(2, 4, 8\)"):
        cgcl_loss(jnp.zeros((2, 3, 8)), jnp.zeros((2, 4, 8)))
    with pytest.raises(ValueError, match="tau_patch"):
        cgcl_loss(jnp.ones((2, 3, 8)), jnp.ones((2, 3, 8)), tau_patch=0.0)


@pytest.mark.parametrize("shape", [(1, 2, 4), (3, 4, 8), (2, 5, 3)])
def test_mas_matches_reference(shape):
    zr, zs = correlated_pair(shape, seed=6)
    got = modality_alignment_score(jnp.asarray(zr, jnp.float32), jnp.asarray(zs, jnp.float32))
    np.testing.assert_allclose(got, reference.mas(zr.astype(np.float32), zs.astype(np.float32)),
                               rtol=1e-5, atol=1e-6)


def test_mas_extremes():
    z = jnp.eye(6, 8, dtype=jnp.float32).reshape(2, 3, 8)
    assert float(modality_alignment_score(z, z)) == pytest.approx(1.0, abs=1e-6)
    collapsed = jnp.ones((2, 3, 8))
    assert float(modality_alignment_score(collapsed, collapsed)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 patches"):
        modality_alignment_score(jnp.ones((1, 1, 8)), jnp.ones((1, 1, 8)))


@pytest.mark.parametrize("chunk", [5, 12, 64])
def test_blockwise_impl_equals_dense(chunk):
    zr, zs = correlated_pair((3, 4, 8), seed=7, dtype=np.float32)
    kw = dict(tau_patch=0.2, tau_global=0.3, tau_cross=0.4, alpha=0.5, beta=1.5, gamma=0.7)
    dense_total, dense = cgcl_loss(jnp.asarray(zr), jnp.asarray(zs), **kw)
    total, terms = cgcl_loss(jnp.asarray(zr), jnp.asarray(zs), impl="blockwise",
                             chunk_size=chunk, **kw)
    np.testing.assert_allclose(total, dense_total, rtol=1e-5)
    for name in dense:
        np.testing.assert_allclose(terms[name], dense[name], rtol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="'dense', 'blockwise' or 'sharded'"):
        cgcl_loss(jnp.asarray(zr), jnp.asarray(zs), impl="ring")


@pytest.mark.parametrize("impl", ["dense", "blockwise", "sharded"])
def test_every_impl_gets_every_argument_checked(impl):
    """cgcl_loss checks all arguments before dispatching, whichever impl would use them."""
    z = jnp.ones((2, 3, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        cgcl_loss(z, z, impl=impl, chunk_size=0)
    with pytest.raises(ValueError, match="key_dtype"):
        cgcl_loss(z, z, impl=impl, key_dtype=jnp.int8)
    with pytest.raises(ValueError, match="keys must be 'gather' or 'ring'"):
        cgcl_loss(z, z, impl=impl, keys="broadcast")
    with pytest.raises(ValueError, match="tau_global"):
        cgcl_loss(z, z, impl=impl, tau_global=-1.0)
    with pytest.raises(ValueError, match="empty embedding batch"):
        cgcl_loss(jnp.ones((0, 3, 8)), jnp.ones((0, 3, 8)), impl=impl)
