"""TransformerStack: scanned and unscanned layouts give the same model, converted both ways."""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jex_core

from mars_jax import parallel
from mars_jax.data.contract import random_batch
from mars_jax.models import MaRSConfig, MaRSPretrainer, TransformerSpec, convert_layers
from mars_jax.models.stack import TransformerStack, pattern_period
from tests.helpers import perturb_params

CONFIG = MaRSConfig(encoder=TransformerSpec(width=32, depth=3, num_heads=2, mlp_dim=64),
                    decoder=TransformerSpec(width=16, depth=2, num_heads=2, mlp_dim=32),
                    mma_layers=4, patch_size=8, projection_dim=8)
BATCH = random_batch(jax.random.key(0), 2, 32, 1)


def test_pattern_period():
    assert pattern_period(("full",) * 12) == 1
    assert pattern_period(("intra", "full") * 3) == 2
    assert pattern_period(("intra", "full", "intra")) == 3  # odd MMA depth: one group
    assert pattern_period(()) == 1


def build(scan: bool, mma_layers: int = 4):
    config = dataclasses.replace(CONFIG, scan_layers=scan, mma_layers=mma_layers)
    model = MaRSPretrainer(config, rngs=nnx.Rngs(0))
    perturb_params(model, seed=1)  # after the layout: each layout gets its own noise
    return model


def loss_and_grads(model):
    graphdef, state = nnx.split(model)

    def loss(state):
        out = nnx.merge(graphdef, state)(BATCH["optical"], BATCH["sar"], key=jax.random.key(2),
                                        valid=BATCH["valid"])
        return (jnp.mean((out.pred_rgb - out.target_rgb) ** 2)
                + jnp.mean((out.pred_sar - out.target_sar) ** 2)
                + jnp.mean(out.e_rgb * out.e_sar) + jnp.mean(out.f_rgb * out.f_sar))

    return jax.jit(jax.value_and_grad(loss))(state)


@pytest.mark.parametrize("mma_layers", [4, 3])
def test_scanned_equals_unscanned_in_values_and_gradients(mma_layers):
    unscanned, scanned = build(False, mma_layers), build(True, mma_layers)
    # Same initialisation: before perturbation both layouts draw the same parameters.
    fresh = {scan: nnx.to_pure_dict(nnx.state(MaRSPretrainer(
        dataclasses.replace(CONFIG, scan_layers=scan, mma_layers=mma_layers),
        rngs=nnx.Rngs(0)))) for scan in (False, True)}
    jax.tree.map(np.testing.assert_array_equal, convert_layers(fresh[False], fresh[True]),
                 fresh[True])
    # Give the scanned model the unscanned one's (perturbed) parameters.
    nnx.update(scanned, convert_layers(nnx.to_pure_dict(nnx.state(unscanned)),
                                       nnx.to_pure_dict(nnx.state(scanned))))
    (want, want_grads), (got, got_grads) = loss_and_grads(unscanned), loss_and_grads(scanned)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got_grads = convert_layers(nnx.to_pure_dict(got_grads), nnx.to_pure_dict(want_grads))
    want_grads = nnx.to_pure_dict(want_grads)
    for (path, g), (_, w) in zip(jax.tree.leaves_with_path(got_grads),
                                 jax.tree.leaves_with_path(want_grads), strict=True):
        err = np.linalg.norm(np.asarray(g, np.float64) - w) / max(np.linalg.norm(w), 1e-30)
        assert err < 1e-5, (jax.tree_util.keystr(path), err)


def test_conversion_round_trips_and_covers_mirrored_trees():
    unscanned, scanned = build(False), build(True)
    u = nnx.to_pure_dict(nnx.state(unscanned))
    s = nnx.to_pure_dict(nnx.state(scanned))
    back = convert_layers(convert_layers(u, s), u)
    jax.tree.map(np.testing.assert_array_equal, back, u)
    mma = convert_layers(u, s)["encoder"]["mma"]["blocks"]["stacked"]
    assert sorted(mma) == [0, 1]  # intra / meta, two groups each
    np.testing.assert_array_equal(
        mma[1]["mlp"]["fc1"]["kernel"][1],  # member 1 (meta) of group 1 = layer 3
        u["encoder"]["mma"]["blocks"]["layers"][3]["mlp"]["fc1"]["kernel"])
    # An optimiser-moment-like tree nested under other keys converts the same way.
    nested = {"opt_state": {"mu": u}}
    converted = convert_layers(nested, {"opt_state": {"mu": s}})
    jax.tree.map(np.testing.assert_array_equal, converted["opt_state"]["mu"],
                 convert_layers(u, s))
    with pytest.raises(ValueError, match="do not make"):
        convert_layers(s, convert_layers(nnx.to_pure_dict(nnx.state(build(False, 2))), u))


def dots(jaxpr: jex_core.Jaxpr, counts: collections.Counter) -> collections.Counter:
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name == "dot_general"] += 1
        for sub in jex_core.jaxprs_in_params(eqn.params):
            dots(sub, counts)
    return counts


def test_scanned_program_holds_one_block_whatever_the_depth():
    def matmuls(depth: int, scan: bool) -> int:
        stack = TransformerStack(depth, 16, 2, 32, scan_layers=scan, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(stack)
        jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(
            state, jnp.ones((2, 4, 16))).jaxpr
        return dots(jaxpr, collections.Counter())[True]

    per_block = matmuls(1, False)
    assert matmuls(6, False) == 6 * per_block
    assert matmuls(6, True) == matmuls(2, True) == per_block


def test_scanned_parameters_shard_with_a_replicated_layers_axis():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    model = nnx.eval_shape(lambda: build(True))
    state = nnx.state(model)
    mesh = parallel.create_mesh(dict(data=2, fsdp=2, tensor=2))
    rules = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv", None),
             ("patch", None), ("layers", None))
    shardings = parallel.state_shardings(state, mesh, rules)
    qkv = shardings["encoder"]["optical_vit"]["blocks"]["stacked"][0]["attn"]["qkv"]["kernel"]
    assert qkv.spec == jax.sharding.PartitionSpec(None, "fsdp", None, "tensor", None)
    with pytest.raises(ValueError, match="no rule for logical axis 'layers'"):
        parallel.state_shardings(state, mesh, rules[:-1])


def test_bad_patterns_are_rejected():
    with pytest.raises(ValueError, match="has 1 layers, the stack 2"):
        TransformerStack(2, 16, 2, 32, pattern=("full",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="attention scopes must be in"):
        TransformerStack(1, 16, 2, 32, pattern=("cross",), rngs=nnx.Rngs(0))
    stack = TransformerStack(1, 16, 2, 32, pattern=("intra",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="two halves"):
        stack(jnp.ones((1, 3, 16)))
