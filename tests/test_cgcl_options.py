"""CGCL options from the paper: hard negatives and learnable temperatures, in every impl."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax import parallel
from mars_jax.losses import cgcl_loss
from mars_jax.losses.cgcl import HardNegatives
from tests import reference

TEMPS = dict(tau_patch=0.2, tau_global=0.3, tau_cross=0.4)
NAMES = ("patch", "global", "cross")


def pair(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    zr = rng.normal(size=shape)
    zs = 0.3 * zr + rng.normal(size=shape)
    if dtype == np.float64:  # NumPy: jnp would truncate outside jax.enable_x64
        return zr, zs
    return jnp.asarray(zr, dtype), jnp.asarray(zs, dtype)


def grid_positions(b, n, width, seed=0):
    """Distinct random cells of a width x width grid per image, like visible patches."""
    rng = np.random.default_rng(seed)
    cells = np.stack([rng.choice(width * width, n, replace=False) for _ in range(b)])
    return jnp.asarray(np.stack([cells // width, cells % width], -1), jnp.int32)


def mesh8(shape=(8, 1, 1)):
    if jax.device_count() < int(np.prod(shape)):
        pytest.skip("needs 8 devices")
    return parallel.create_mesh(dict(zip(parallel.MESH_AXES, shape, strict=True)),
                                jax.devices()[: int(np.prod(shape))])


# ------------------------------------------------------------------------------------------
# Hard negatives
# ------------------------------------------------------------------------------------------
def test_hard_negatives_match_float64_loop_reference():
    zr, zs = pair((3, 6, 8), seed=1, dtype=np.float64)
    pos = grid_positions(3, 6, 4, seed=1)
    hard = HardNegatives(radius=1.5, weight=3.0)
    with jax.enable_x64(True):
        terms = cgcl_loss(zr, zs, positions=pos, hard_negatives=hard, **TEMPS)[1]
        blockwise = cgcl_loss(zr, zs, positions=pos, hard_negatives=hard, impl="blockwise",
                              chunk_size=5, **TEMPS)[1]
    want = reference.patch_term_hard(zr, zs, np.asarray(pos), 0.2, 1.5, 3.0)
    np.testing.assert_allclose(terms["patch"], want, rtol=1e-12)
    np.testing.assert_allclose(blockwise["patch"], want, rtol=1e-12)
    plain = reference.cgcl(zr, zs, 0.2, 0.3, 0.4)[1]
    assert abs(want - plain["patch"]) > 1e-3  # the weighting changes the loss
    for name in ("global", "cross"):  # hard negatives concern L_patch only
        np.testing.assert_allclose(terms[name], plain[name], rtol=1e-12)


def test_hard_negatives_with_weight_one_change_nothing():
    zr, zs = pair((2, 5, 8), seed=2)
    pos = grid_positions(2, 5, 3)
    got = cgcl_loss(zr, zs, positions=pos, hard_negatives=HardNegatives(2.0, 1.0), **TEMPS)[0]
    np.testing.assert_allclose(got, cgcl_loss(zr, zs, **TEMPS)[0], rtol=1e-6)


@pytest.mark.parametrize("impl,keys,chunk", [("blockwise", None, 7), ("blockwise", None, 64),
                                             ("sharded", "gather", 3), ("sharded", "ring", 3)])
def test_hard_negatives_equal_dense_values_and_gradients(impl, keys, chunk):
    zr, zs = pair((8, 5, 16), seed=3)
    pos = grid_positions(8, 5, 4, seed=3)
    hard = HardNegatives(radius=1.0, weight=4.0)
    extra = {}
    if impl == "sharded":
        mesh = mesh8((2, 4, 1))
        extra = dict(mesh=mesh, keys=keys)
        sharding = parallel.batch_sharding(mesh)
        zr, zs, pos = (jax.device_put(x, sharding) for x in (zr, zs, pos))

    def loss(impl_kw):
        def f(a, b):
            return cgcl_loss(a, b, positions=pos, hard_negatives=hard, alpha=0.7, beta=1.3,
                             gamma=0.9, **TEMPS, **impl_kw)
        return jax.jit(jax.value_and_grad(lambda a, b: f(a, b)[0], argnums=(0, 1)))(zr, zs)

    (want, want_grads) = loss({})
    (got, grads) = loss(dict(impl=impl, chunk_size=chunk, **extra))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_hard_negatives_fail_fast_without_positions():
    z = jnp.ones((2, 3, 8))
    with pytest.raises(ValueError, match="positions"):
        cgcl_loss(z, z, hard_negatives=HardNegatives(1.0, 2.0))
    with pytest.raises(ValueError, match=r"positions must be \[B, N, 2\]"):
        cgcl_loss(z, z, hard_negatives=HardNegatives(1.0, 2.0),
                  positions=jnp.zeros((2, 4, 2), jnp.int32))
    with pytest.raises(ValueError, match="radius"):
        HardNegatives(radius=0.0, weight=2.0)
    with pytest.raises(ValueError, match="weight"):
        HardNegatives(radius=1.0, weight=-1.0)


# ------------------------------------------------------------------------------------------
# Learnable temperatures: gradients with respect to tau
# ------------------------------------------------------------------------------------------
def test_temperature_gradients_match_finite_differences_float64():
    zr, zs = pair((3, 4, 8), seed=4, dtype=np.float64)
    with jax.enable_x64(True):
        taus = jnp.asarray([0.2, 0.3, 0.4], jnp.float64)

        @functools.partial(jax.jit, static_argnums=1)
        def loss(t, impl):
            return cgcl_loss(zr, zs, tau_patch=t[0], tau_global=t[1], tau_cross=t[2],
                             impl=impl, chunk_size=5)[0]

        for impl in ("dense", "blockwise"):
            grad = jax.jit(jax.grad(loss), static_argnums=1)(taus, impl)
            eps = 1e-6
            for i in range(3):
                step = jnp.zeros(3, jnp.float64).at[i].set(eps)
                fd = (loss(taus + step, impl) - loss(taus - step, impl)) / (2 * eps)
                np.testing.assert_allclose(grad[i], fd, rtol=1e-6, err_msg=f"{impl} tau {i}")


@pytest.mark.parametrize("impl,keys", [("blockwise", None), ("sharded", "gather"),
                                       ("sharded", "ring")])
def test_temperature_gradients_equal_dense(impl, keys):
    zr, zs = pair((8, 5, 16), seed=5)
    extra = dict(impl=impl, chunk_size=6)
    if impl == "sharded":
        mesh = mesh8((4, 2, 1))
        extra.update(mesh=mesh, keys=keys)
        zr, zs = (jax.device_put(x, parallel.batch_sharding(mesh)) for x in (zr, zs))
    taus = jnp.asarray([0.05, 0.07, 0.1])

    def loss(t, kw):
        return cgcl_loss(zr, zs, tau_patch=t[0], tau_global=t[1], tau_cross=t[2], **kw)[0]

    want = jax.jit(jax.grad(lambda t: loss(t, {})))(taus)
    got = jax.jit(jax.grad(lambda t: loss(t, extra)))(taus)
    np.testing.assert_allclose(got, want, rtol=1e-5)
