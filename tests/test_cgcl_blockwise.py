"""Blockwise CGCL against the dense ``cgcl_loss`` (values, gradients), float64 loops, memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.losses.cgcl import cgcl_loss
from mars_jax.losses.cgcl.blockwise import blockwise_cgcl_terms
from tests import reference

TEMPS = dict(tau_patch=0.05, tau_global=0.07, tau_cross=0.1)
WEIGHTS = {"patch": 0.7, "global": 1.3, "cross": 0.4}
NAMES = ("patch", "global", "cross")
# (B, N, D, chunk): B = 1, N = 1, M = 42 with chunks that divide it (7, 42), do not (8), exceed
# it (64), and the cross term's B keys in several blocks (chunk < B).
CASES = [(1, 1, 8, 4), (1, 5, 8, 2), (3, 1, 8, 2), (6, 7, 16, 8), (6, 7, 16, 7),
         (6, 7, 16, 42), (6, 7, 16, 64), (5, 3, 32, 4)]
GRAD_CASES = [(1, 1, 8, 4), (3, 1, 8, 2), (6, 7, 16, 8), (6, 7, 16, 7), (6, 7, 16, 64)]


def correlated_pair(shape, seed, dtype=np.float32):
    """SAR features that partly agree with RGB ones, so positives differ from negatives.

    Weakly enough that no term is a tiny difference of large logits (~1/tau), whose float32
    rounding would exceed 1e-5 relative in any implementation.
    """
    rng = np.random.default_rng(seed)
    zr = rng.normal(size=shape)
    zs = 0.3 * zr + rng.normal(size=shape)
    return zr.astype(dtype), zs.astype(dtype)


def blockwise(zr, zs, chunk_size, key_dtype=None, temps=TEMPS):
    return _blockwise(zr, zs, chunk_size, key_dtype, tuple(temps.items()))


def dense(zr, zs, temps=TEMPS):
    return _dense(zr, zs, tuple(temps.items()))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _blockwise(zr, zs, chunk_size, key_dtype, temps):
    return blockwise_cgcl_terms(zr, zs, chunk_size=chunk_size, key_dtype=key_dtype, **dict(temps))


@functools.partial(jax.jit, static_argnums=2)
def _dense(zr, zs, temps):
    return cgcl_loss(zr, zs, **dict(temps))[1]


def weighted(terms):
    return sum(WEIGHTS[name] * terms[name] for name in NAMES)


def assert_grads_close(got, want, rtol):
    """Relative to each gradient's largest entry: tiny entries carry no relative precision.

    An identically zero gradient (one patch, one image) is matched to float32 rounding (1e-6).
    """
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        scale = float(jnp.max(jnp.abs(w)))
        floor = 1e-6 if g.dtype == jnp.float32 else 0.0
        np.testing.assert_allclose(g, w, rtol=rtol, atol=max(rtol * scale, floor))


def case_id(case):
    return "B{}N{}D{}-chunk{}".format(*case)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_terms_match_dense(case):
    *shape, chunk = case
    zr, zs = correlated_pair(tuple(shape), seed=sum(case))
    got, want = blockwise(zr, zs, chunk), dense(zr, zs)
    for name in NAMES:
        assert got[name].dtype == jnp.float32
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", GRAD_CASES, ids=case_id)
def test_gradients_match_dense(case):
    *shape, chunk = case
    zr, zs = correlated_pair(tuple(shape), seed=sum(case) + 1)
    got = jax.jit(jax.grad(lambda a, b: weighted(blockwise(a, b, chunk)), argnums=(0, 1)))(zr, zs)
    want = jax.jit(jax.grad(lambda a, b: weighted(dense(a, b)), argnums=(0, 1)))(zr, zs)
    assert_grads_close(got, want, rtol=1e-5)


def test_float64_matches_loop_reference():
    zr, zs = correlated_pair((2, 5, 8), seed=7, dtype=np.float64)
    temps = dict(tau_patch=0.3, tau_global=0.4, tau_cross=0.5)
    with jax.enable_x64(True):
        got = blockwise(jnp.asarray(zr), jnp.asarray(zs), 3, temps=temps)
        grads = jax.grad(lambda a, b: weighted(blockwise(a, b, 3, temps=temps)),
                         argnums=(0, 1))(jnp.asarray(zr), jnp.asarray(zs))
        want_grads = jax.grad(lambda a, b: weighted(dense(a, b, temps=temps)),
                              argnums=(0, 1))(jnp.asarray(zr), jnp.asarray(zs))
        assert got["patch"].dtype == grads[0].dtype == jnp.float64
        assert_grads_close(grads, want_grads, rtol=1e-12)
    _, want = reference.cgcl(zr, zs, 0.3, 0.4, 0.5)
    for name in NAMES:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)


def test_stable_at_tiny_temperature():
    # Logits reach 1/tau = 500: a log-sum-exp without the running max would overflow.
    zr, zs = correlated_pair((4, 6, 8), seed=8)
    temps = dict(tau_patch=0.002, tau_global=0.002, tau_cross=0.002)
    got, want = blockwise(zr, zs, 5, temps=temps), dense(zr, zs, temps=temps)
    for name in NAMES:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)


def test_bfloat16_keys_stay_close_and_gradients_stay_float32():
    zr, zs = correlated_pair((6, 7, 16), seed=9)
    got = blockwise(zr, zs, 8, key_dtype=jnp.bfloat16)
    want = dense(zr, zs)
    for name in NAMES:
        assert got[name].dtype == jnp.float32
        np.testing.assert_allclose(got[name], want[name], rtol=2e-2, err_msg=name)
    grads = jax.grad(lambda a, b: weighted(blockwise(a, b, 8, key_dtype=jnp.bfloat16)),
                     argnums=(0, 1))(zr, zs)
    want_grads = jax.grad(lambda a, b: weighted(dense(a, b)), argnums=(0, 1))(zr, zs)
    assert_grads_close(grads, want_grads, rtol=5e-2)


def test_patch_memory_is_a_small_fraction_of_dense():
    # M = 64 * 1024 = 65,536 patches, D = 256: compiled only, nothing is allocated.
    spec = jax.ShapeDtypeStruct((64, 1024, 256), jnp.float32)

    def temp_bytes(patch_term):
        step = jax.jit(jax.value_and_grad(patch_term, argnums=(0, 1)))
        return step.lower(spec, spec).compile().memory_analysis().temp_size_in_bytes

    dense_bytes = temp_bytes(lambda a, b: cgcl_loss(a, b, **TEMPS)[1]["patch"])
    block_bytes = temp_bytes(lambda a, b: blockwise_cgcl_terms(a, b, **TEMPS)["patch"])
    assert dense_bytes >= 65_536**2 * 4  # the M x M float32 logits, at least once
    assert block_bytes <= 0.05 * dense_bytes, (block_bytes, dense_bytes)


def test_rejects_bad_arguments():
    z = jnp.ones((2, 3, 8))
    with pytest.raises(ValueError, match=r"\(2, 3, 8\) and \(2, 4, 8\)"):
        blockwise_cgcl_terms(z, jnp.ones((2, 4, 8)), **TEMPS)
    with pytest.raises(ValueError, match="tau_cross"):
        blockwise_cgcl_terms(z, z, **{**TEMPS, "tau_cross": 0.0})
    with pytest.raises(ValueError, match="chunk_size"):
        blockwise_cgcl_terms(z, z, chunk_size=0, **TEMPS)
    with pytest.raises(ValueError, match="key_dtype"):
        blockwise_cgcl_terms(z, z, key_dtype=jnp.int8, **TEMPS)
