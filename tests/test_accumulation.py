"""Gradient accumulation (``optim.grad_accum_steps``): equal to one large-batch step, and every
micro-batch spread over all data-parallel devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from mars_jax.data.contract import batch_spec, random_batch
from mars_jax.train.pretrain import (
    accumulated_gradients,
    jit_train_step,
    make_loss_and_grads,
    make_plan,
    mask_noise,
    micro_batches,
    model_and_optimizer,
)

BATCH, SIZE = 8, 32


def small_config(accum: int, cgcl_weight: float = 1.0, batch: int = BATCH, **mesh):
    config = pretrain.get_config("tiny")
    config.input.image_size = SIZE
    config.input.batch_size = batch
    config.model.encoder.depth = 1
    config.loss.cgcl_weight = cgcl_weight
    config.optim.grad_accum_steps = accum
    config.mesh.update(mesh or dict(data=1, fsdp=1, tensor=1))
    return config


def gradients(accum: int, cgcl_weight: float, batch=None):
    """(grads, metrics) of the step-0 batch through ``accumulated_gradients``, float32."""
    plan = make_plan(small_config(accum, cgcl_weight), devices=jax.devices()[:1])
    model, _ = model_and_optimizer(plan, 0, 10)[3]()
    model_def, params, rest = nnx.split(model, nnx.Param, ...)
    batch = random_batch(jax.random.key(0), BATCH, SIZE, 1) if batch is None else batch
    inputs = dict(batch, mask_noise=mask_noise(plan, 0, jnp.asarray(0), BATCH))
    fn = jax.jit(lambda p, r, x: accumulated_gradients(make_loss_and_grads(plan), p, r,
                                                         model_def, x, accum, plan.mesh))
    with jax.set_mesh(plan.mesh):
        return fn(params, rest, inputs), (plan, model_def, params, rest, inputs)


def relative_error(got, want) -> float:
    diff = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                        got, want)
    norm = lambda t: np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(t)))
    return float(norm(diff) / norm(jax.tree.map(lambda b: np.asarray(b, np.float64), want)))


@pytest.fixture(scope="module")
def mim_reference():
    return gradients(1, cgcl_weight=0.0)[0]


@pytest.mark.parametrize("accum", [1, 2, 4])
def test_mim_objective_equals_one_large_batch_step(accum, mim_reference):
    # Per-patch means over equally many masked patches per example: the mean of the
    # micro-batches' losses and gradients is the large batch's, exactly up to rounding.
    (grads, metrics), _ = gradients(accum, cgcl_weight=0.0)
    want_grads, want_metrics = mim_reference
    assert relative_error(grads, want_grads) < 1e-5
    for key in ("loss", "mim_rgb", "mim_sar"):
        np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulation_is_the_mean_of_the_micro_batches(accum):
    # With CGCL on, each micro-batch's negatives are its own: the accumulated gradient is
    # the mean of the micro-batch gradients, micro-batch i being rows i, i + accum, ...
    (grads, metrics), (plan, model_def, params, rest, inputs) = gradients(accum, 1.0)
    loss_and_grads = jax.jit(make_loss_and_grads(plan), static_argnums=(2,))
    parts = [loss_and_grads(params, rest, model_def,
                            jax.tree.map(lambda x, i=i: x[i::accum], inputs))
             for i in range(accum)]
    want = jax.tree.map(lambda *g: sum(g) / accum, *[g for _, g in parts])
    assert relative_error(grads, want) < 1e-5
    want_loss = np.mean([float(loss) for (loss, _), _ in parts])
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    # ... which is not the large batch's gradient (more negatives there): the test can tell.
    (large, _), _ = gradients(1, 1.0)
    assert relative_error(grads, large) > 1e-4


def count_ops(hlo_text: str, op: str) -> int:
    return sum(f" {op}(" in line or f" {op}-start(" in line for line in hlo_text.splitlines())


def test_micro_batches_stay_spread_over_all_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(8, 1, 1),
                             ("data", "fsdp", "tensor"),
                             axis_types=(jax.sharding.AxisType.Auto,) * 3)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    x = jax.device_put(jnp.arange(32 * 6, dtype=jnp.float32).reshape(32, 6), sharding)

    def step(x, cut):
        micro = cut(x)
        return jax.lax.scan(lambda c, m: (c + jnp.sum(jnp.tanh(m) ** 2, axis=0), None),
                            jnp.zeros(6), micro)[0]

    ours = jax.jit(lambda x: step(x, lambda v: micro_batches(v, 4, mesh)))
    naive = jax.jit(lambda x: step(x, lambda v: jax.lax.with_sharding_constraint(
        v.reshape(4, -1, 6), jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"))))))
    with jax.set_mesh(mesh):
        ours_hlo = ours.lower(x).compile().as_text()
        naive_hlo = naive.lower(x).compile().as_text()
        np.testing.assert_allclose(ours(x), naive(x), rtol=1e-6)
    moves = ("all-gather", "all-to-all", "collective-permute")
    assert sum(count_ops(naive_hlo, op) for op in moves) > 0  # contiguous slices move data
    assert sum(count_ops(ours_hlo, op) for op in moves) == 0


def test_train_step_accumulation_adds_no_all_gather():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    counts = {}
    for accum in (1, 4):
        config = small_config(accum, batch=32, data=8, fsdp=1, tensor=1)
        plan = make_plan(config)
        graphdef, abstract, shardings, _ = model_and_optimizer(plan, 0, 10)
        step = jit_train_step(graphdef, plan, 0, shardings)
        with jax.set_mesh(plan.mesh):
            hlo = step.lower(abstract, batch_spec(32, SIZE, 1),
                             jax.ShapeDtypeStruct((), jnp.int32)).compile().as_text()
        counts[accum] = {op: count_ops(hlo, op)
                         for op in ("all-gather", "all-to-all", "collective-permute")}
    assert counts[4] == counts[1], counts
