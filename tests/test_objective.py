"""The pretraining objective's CGCL options: sharded default, adaptive weights, hard
negatives from the masking, learnable temperatures in the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pretrain
from mars_jax import parallel
from mars_jax.data.contract import random_batch
from mars_jax.losses import cgcl_loss, modality_alignment_score
from mars_jax.losses.cgcl import HardNegatives
from mars_jax.models import MaRSOutput
from mars_jax.models.patches import Masking
from mars_jax.train.objective import LossConfig, pretraining_loss
from mars_jax.train.pretrain import initial_state, make_plan, make_train_step, model_and_optimizer

TEMPS = dict(tau_patch=0.2, tau_global=0.3, tau_cross=0.4)


def fake_output(b=8, grid=4, visible=6, dim=16, seed=0) -> MaRSOutput:
    """A MaRSOutput of random arrays with a real random masking of a grid x grid patch grid."""
    rng = np.random.default_rng(seed)
    n = grid * grid
    ids_keep = np.sort(np.stack([rng.choice(n, visible, replace=False) for _ in range(b)]), 1)
    mask = np.ones((b, n), np.float32)
    np.put_along_axis(mask, ids_keep, 0.0, axis=1)
    order = np.concatenate([ids_keep, np.stack([np.flatnonzero(m) for m in mask])], 1)
    masking = Masking(jnp.asarray(ids_keep, jnp.int32),
                      jnp.asarray(np.argsort(order, 1), jnp.int32), jnp.asarray(mask))
    z = rng.normal(size=(b, visible, dim))
    e_rgb = jnp.asarray(z, jnp.float32)
    e_sar = jnp.asarray(0.3 * z + rng.normal(size=z.shape), jnp.float32)
    pix = jnp.asarray(rng.normal(size=(b, n, 12)), jnp.float32)
    return MaRSOutput(e_rgb, e_sar, e_rgb, e_sar, e_rgb, e_sar, pix, pix * 0.5, pix, pix * 2,
                      masking, jnp.ones((b, n), jnp.float32))


def test_sharded_default_equals_dense_under_a_mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    out = fake_output()
    mesh = parallel.create_mesh(dict(data=4, fsdp=2, tensor=1))
    assert LossConfig().cgcl_impl == "sharded"
    want = pretraining_loss(out, LossConfig(cgcl_impl="dense", **TEMPS))[1]
    with jax.set_mesh(mesh):
        got = jax.jit(lambda o: pretraining_loss(o, LossConfig(cgcl_chunk_size=5, **TEMPS))[1])(
            jax.device_put(out, parallel.batch_sharding(mesh)))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)


def test_adaptive_weights_are_a_softmax_of_per_term_gradient_norms():
    out = fake_output(seed=1)
    cfg = LossConfig(cgcl_impl="dense", adaptive_weights=True, adaptive_tau=0.5, **TEMPS)
    _, metrics = pretraining_loss(out, cfg)

    def term(name):
        return lambda a, b: cgcl_loss(a, b, **TEMPS)[1][name]

    norms = []
    for name in ("patch", "global", "cross"):
        grads = jax.grad(term(name), argnums=(0, 1))(out.e_rgb, out.e_sar)
        norms.append(np.sqrt(sum(float(jnp.sum(g.astype(jnp.float64) ** 2)) for g in grads)))
    weights = np.exp(np.asarray(norms) / 0.5)
    weights /= weights.sum()
    for i, name in enumerate(("patch", "global", "cross")):
        np.testing.assert_allclose(metrics[f"cgcl_weight_{name}"], weights[i], rtol=1e-5)
    cgcl = sum(weights[i] * metrics[f"cgcl_{n}"] for i, n in enumerate(("patch", "global",
                                                                         "cross")))
    np.testing.assert_allclose(metrics["cgcl"], cgcl, rtol=1e-5)

    # The weights are constants of the step: the gradient is the weighted sum of the terms'.
    def cgcl_of(e_rgb):
        return pretraining_loss(out._replace(e_rgb=e_rgb), cfg)[1]["cgcl"]

    got = jax.grad(cgcl_of)(out.e_rgb)
    want = sum(weights[i] * jax.grad(term(n))(out.e_rgb, out.e_sar)
               for i, n in enumerate(("patch", "global", "cross")))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_hard_negatives_use_the_visible_patches_grid_positions():
    out = fake_output(seed=2)
    cfg = LossConfig(cgcl_impl="blockwise", cgcl_chunk_size=7, hard_negative_radius=1.5,
                     hard_negative_weight=3.0, **TEMPS)
    got = pretraining_loss(out, cfg, grid_width=4)[1]["cgcl_patch"]
    ids = np.asarray(out.masking.ids_keep)
    positions = jnp.asarray(np.stack([ids // 4, ids % 4], -1))
    want = cgcl_loss(out.e_rgb, out.e_sar, positions=positions,
                     hard_negatives=HardNegatives(1.5, 3.0), **TEMPS)[1]["patch"]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    plain = pretraining_loss(out, LossConfig(cgcl_impl="blockwise", **TEMPS))[1]["cgcl_patch"]
    assert abs(float(got) - float(plain)) > 1e-3
    with pytest.raises(ValueError, match="grid width"):
        pretraining_loss(out, cfg)


def test_cgcl_sees_only_the_valid_visible_patches():
    out = fake_output(seed=3)
    cfg = LossConfig(cgcl_impl="blockwise", cgcl_chunk_size=7, **TEMPS)
    metrics = jax.jit(lambda o: pretraining_loss(o, cfg)[1])
    base = metrics(out)
    ids = np.asarray(out.masking.ids_keep)
    hidden = np.setdiff1d(np.arange(16), ids[1])[0]
    patch_valid = np.ones(out.patch_valid.shape, np.float32)
    patch_valid[1, hidden] = 0.0  # a masked patch without data: MIM's business only
    got = metrics(out._replace(patch_valid=jnp.asarray(patch_valid)))
    for name in ("cgcl_patch", "cgcl_global", "cgcl_cross", "mas"):
        np.testing.assert_allclose(got[name], base[name], rtol=1e-6, err_msg=name)

    patch_valid[0, ids[0, 2]] = 0.0  # a visible patch without data: out of CGCL and MAS
    masked = out._replace(patch_valid=jnp.asarray(patch_valid))
    got = metrics(masked)
    valid = np.take_along_axis(patch_valid, ids, axis=1) > 0  # [B, N_vis], ids_keep order
    assert valid.sum() == valid.size - 1 and not valid[0, 2]
    want = cgcl_loss(out.e_rgb, out.e_sar, valid=jnp.asarray(valid), **TEMPS)[1]
    for t in ("patch", "global", "cross"):
        np.testing.assert_allclose(got[f"cgcl_{t}"], want[t], rtol=1e-5, err_msg=t)
        assert abs(float(got[f"cgcl_{t}"]) - float(base[f"cgcl_{t}"])) > 1e-4, t
    np.testing.assert_allclose(got["mas"], modality_alignment_score(out.e_rgb, out.e_sar,
                                                                    valid=valid), rtol=1e-5)
    grad = jax.jit(jax.grad(lambda e: metrics(masked._replace(e_rgb=e))["cgcl"]))(out.e_rgb)
    assert np.all(np.asarray(grad[0, 2]) == 0) and np.all(np.asarray(grad[0, 3]) != 0)


def test_loss_config_rejects_bad_options():
    with pytest.raises(ValueError, match="cgcl_impl"):
        LossConfig(cgcl_impl="flash")
    with pytest.raises(ValueError, match="cgcl_keys"):
        LossConfig(cgcl_keys="tree")
    with pytest.raises(ValueError, match="hard_negative_weight"):
        LossConfig(hard_negative_radius=1.0, hard_negative_weight=0.0)
    with pytest.raises(ValueError, match=r"tau_patch must be in \[0.01, 1.0\]"):
        LossConfig(learnable_temperatures=True, tau_patch=0.001)
    with pytest.raises(ValueError, match="cgcl_key_dtype"):
        LossConfig(cgcl_key_dtype="bfloat17")


def test_learnable_temperatures_train_with_the_model():
    config = pretrain.get_config("tiny")
    config.input.image_size = 32
    config.input.batch_size = 4
    config.model.encoder.depth = 1
    config.loss.learnable_temperatures = True
    config.optim.warmup_steps = 0
    config.optim.learning_rate = 1e-2
    plan = make_plan(config, devices=jax.devices()[:1])
    graphdef, _, shardings, create = model_and_optimizer(plan, 0, 10)
    state = initial_state(plan, shardings, create)
    log_tau = state[0]["temperatures"]["log_tau"][...]
    np.testing.assert_allclose(np.exp(log_tau), [0.05, 0.07, 0.1], rtol=1e-6)
    step = jax.jit(make_train_step(graphdef, plan, seed=0))
    batch = random_batch(jax.random.key(0), 4, 32, 1)
    with jax.set_mesh(plan.mesh):
        new_state, metrics = step(state, batch, jnp.asarray(0))
    np.testing.assert_allclose([metrics[f"tau_{t}"] for t in ("patch", "global", "cross")],
                               [0.05, 0.07, 0.1], rtol=1e-6)
    new_log_tau = new_state[0]["temperatures"]["log_tau"][...]
    assert np.all(np.abs(new_log_tau - log_tau) > 1e-4)  # each temperature got a gradient
