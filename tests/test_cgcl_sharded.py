"""Sharded CGCL (shard_map, gathered keys) equals the single-device loss on the global batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax import parallel
from mars_jax.losses import cgcl_loss
from mars_jax.losses.cgcl.sharded import sharded_cgcl_terms

TEMPS = dict(tau_patch=0.2, tau_global=0.3, tau_cross=0.4)
WEIGHTS = {"patch": 0.7, "global": 1.3, "cross": 0.9}


def inputs(shape=(8, 5, 16)):
    rng = np.random.default_rng(0)
    zr = rng.normal(size=shape)
    zs = 0.3 * zr + rng.normal(size=shape)
    return jnp.asarray(zr, jnp.float32), jnp.asarray(zs, jnp.float32)


def weighted(terms):
    return sum(WEIGHTS[k] * terms[k] for k in WEIGHTS)


@pytest.mark.parametrize("keys", ["gather", "ring"])
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 1)])
def test_equals_single_device_loss_and_gradients(mesh_shape, keys):
    size = int(np.prod(mesh_shape))
    if jax.device_count() < size:
        pytest.skip(f"needs {size} devices")
    mesh = parallel.create_mesh(dict(zip(parallel.MESH_AXES, mesh_shape, strict=True)),
                                jax.devices()[:size])
    zr, zs = inputs()
    dense_terms = cgcl_loss(zr, zs, **TEMPS)[1]
    dense_grads = jax.grad(lambda a, b: weighted(cgcl_loss(a, b, **TEMPS)[1]),
                           argnums=(0, 1))(zr, zs)
    sharding = parallel.batch_sharding(mesh)
    zr_s, zs_s = jax.device_put(zr, sharding), jax.device_put(zs, sharding)

    def sharded(a, b):
        return sharded_cgcl_terms(a, b, mesh, chunk_size=7, keys=keys, **TEMPS)

    terms = jax.jit(sharded)(zr_s, zs_s)
    for name in dense_terms:
        np.testing.assert_allclose(terms[name], dense_terms[name], rtol=1e-5, err_msg=name)
    grads = jax.jit(jax.grad(lambda a, b: weighted(sharded(a, b)), argnums=(0, 1)))(zr_s, zs_s)
    for got, want in zip(grads, dense_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_bf16_keys_stay_close():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = parallel.create_mesh({"data": 8})
    zr, zs = inputs()
    dense = cgcl_loss(zr, zs, **TEMPS)[1]
    sharding = parallel.batch_sharding(mesh)
    terms = jax.jit(lambda a, b: sharded_cgcl_terms(a, b, mesh, key_dtype=jnp.bfloat16, **TEMPS))(
        jax.device_put(zr, sharding), jax.device_put(zs, sharding))
    for name in dense:
        np.testing.assert_allclose(terms[name], dense[name], rtol=2e-2, err_msg=name)


def test_batch_must_divide():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = parallel.create_mesh({"data": 8})
    zr, zs = inputs((6, 5, 16))
    with pytest.raises(ValueError, match="batch 6 does not divide over mesh axes"):
        sharded_cgcl_terms(zr, zs, mesh)


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_million_patches_over_8_devices_fit_in_1_gib_per_device(masked):
    # M = 2048 images x 512 patches = 1,048,576, D = 256, float32 embeddings and keys (every
    # buffer 4 bytes: no bfloat16 halving), keys passed around the ring, chunk 2048. The
    # forward + backward pass is compiled, not run: memory_analysis() of the CPU executable.
    # A patch mask (as the trainer always passes) must not copy the embeddings.
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = parallel.create_mesh({"data": 8})
    spec = jax.ShapeDtypeStruct((2048, 512, 256), jnp.float32,
                                sharding=parallel.batch_sharding(mesh))
    valid = jax.ShapeDtypeStruct((2048, 512), jnp.bool_, sharding=parallel.batch_sharding(mesh))

    def total(a, b, v):
        terms = sharded_cgcl_terms(a, b, mesh, keys="ring", chunk_size=2048,
                                   valid=v if masked else None)
        return terms["patch"] + terms["global"] + terms["cross"]

    compiled = jax.jit(jax.value_and_grad(total, argnums=(0, 1))).lower(spec, spec,
                                                                        valid).compile()
    memory = compiled.memory_analysis()
    local_embeddings = 2048 * 512 * 256 * 4 // 8  # one [M/8, D] float32 array: 128 MiB
    mask_bytes = 2048 * 512 // 8 if masked else 0  # the local [B/8, N] bool mask
    assert memory.argument_size_in_bytes == 2 * local_embeddings + mask_bytes
    assert memory.temp_size_in_bytes < 2**30, memory.temp_size_in_bytes / 2**20


@pytest.mark.parametrize("keys", ["gather", "ring"])
def test_replicated_axis_when_the_batch_does_not_cover_every_device(keys):
    # B = 4 on mesh (2, 2, 2): split over data x fsdp, replicated over tensor. Gradients for
    # the embeddings and the (learnable) temperatures must not be counted once per replica.
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = parallel.create_mesh(dict(data=2, fsdp=2, tensor=2))
    zr, zs = inputs((4, 5, 16))
    taus = jnp.asarray([0.05, 0.07, 0.1])

    def loss(t, a, b, **kw):
        return cgcl_loss(a, b, tau_patch=t[0], tau_global=t[1], tau_cross=t[2], alpha=0.7,
                         beta=1.3, gamma=0.9, **kw)[0]

    want = jax.grad(loss, argnums=(0, 1, 2))(taus, zr, zs)
    sharding = parallel.batch_sharding(mesh)
    got = jax.jit(jax.grad(
        lambda t, a, b: loss(t, a, b, impl="sharded", mesh=mesh, keys=keys, chunk_size=3),
        argnums=(0, 1, 2)))(taus, jax.device_put(zr, sharding), jax.device_put(zs, sharding))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(w))))
