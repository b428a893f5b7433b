"""Activation remat (``model.remat``): same numbers and parameters, recomputation in the grad."""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jex_core

from mars_jax.models import MaRS, MaRSConfig
from mars_jax.models.layers import REMAT_POLICIES, TransformerBlock
from mars_jax.models.mars import TransformerSpec
from mars_jax.train.forward import random_batch
from tests.helpers import perturb_params

POLICIES = tuple(REMAT_POLICIES)
CONFIG = MaRSConfig(encoder=TransformerSpec(width=32, depth=2, num_heads=2, mlp_dim=64),
                    decoder=TransformerSpec(width=16, depth=1, num_heads=2, mlp_dim=32),
                    mma_layers=2, patch_size=8)
BLOCKS = 2 * CONFIG.encoder.depth + CONFIG.mma_layers + 2 * CONFIG.decoder.depth
BATCH = random_batch(jax.random.key(0), 2, 32, 1)
KEY = jax.random.key(1)


def model_and_loss(remat: str, *, abstract: bool = False):
    """(state, loss(state, batch, key)) for CONFIG with ``remat``; the loss uses every output."""
    config = dataclasses.replace(CONFIG, remat=remat)

    def create():
        model = MaRS(config, rngs=nnx.Rngs(0))
        perturb_params(model, seed=0)
        return model

    graphdef, state = nnx.split(nnx.eval_shape(create) if abstract else create())

    def loss(state, batch, key):
        out = nnx.merge(graphdef, state)(batch["optical"], batch["sar"], key=key,
                                        valid=batch["valid"])
        mim = (jnp.mean((out.pred_rgb - out.target_rgb) ** 2)
               + jnp.mean((out.pred_sar - out.target_sar) ** 2))
        return mim + jnp.mean(out.e_rgb * out.e_sar)

    return state, loss


@pytest.fixture(scope="module")
def reference():
    state, loss = model_and_loss("none")
    return jax.jit(jax.value_and_grad(loss))(state, BATCH, KEY)


@pytest.mark.parametrize("remat", [p for p in POLICIES if p != "none"])
def test_loss_and_gradients_match_no_remat(remat, reference):
    state, loss = model_and_loss(remat)
    value, grads = jax.jit(jax.value_and_grad(loss))(state, BATCH, KEY)
    want_value, want_grads = reference
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    got, want = jax.tree.leaves_with_path(grads), jax.tree.leaves_with_path(want_grads)
    assert [p for p, _ in got] == [p for p, _ in want]
    for (path, g), (_, w) in zip(got, want, strict=True):
        # Relative error of each parameter's gradient tensor. Recomputed blocks fuse
        # differently, so float32 rounding differs: measured at most 5e-7 on this model.
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        err = np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)
        assert err <= 1e-6, (jax.tree_util.keystr(path), err)


def test_parameter_tree_is_the_same_for_every_policy():
    def tree(remat):
        state, _ = model_and_loss(remat, abstract=True)
        return [(jax.tree_util.keystr(p), v.shape, v.dtype)
                for p, v in jax.tree.leaves_with_path(state)]

    want = tree("none")
    assert any("optical_encoder" in path and "blocks" in path for path, _, _ in want)
    for remat in POLICIES[1:]:
        assert tree(remat) == want, remat


def primitive_counts(jaxpr: jex_core.Jaxpr, counts: collections.Counter) -> collections.Counter:
    """Matmuls (split by whether they have batch dimensions) and remat regions, recursively."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (_, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
            counts["batched_dot" if lhs_batch else "dot"] += 1
        elif eqn.primitive.name in ("checkpoint", "remat2", "remat"):
            counts["remat"] += 1
        for sub in jex_core.jaxprs_in_params(eqn.params):
            primitive_counts(sub, counts)
    return counts


@pytest.fixture(scope="module")
def traced_counts():
    """{policy: (forward counts, value_and_grad counts)}, traced only (nothing compiles)."""
    result = {}
    for remat in POLICIES:
        state, loss = model_and_loss(remat, abstract=True)
        forward = jax.make_jaxpr(loss)(state, BATCH, KEY).jaxpr
        grad = jax.make_jaxpr(jax.value_and_grad(loss))(state, BATCH, KEY).jaxpr
        result[remat] = (primitive_counts(forward, collections.Counter()),
                         primitive_counts(grad, collections.Counter()))
    return result


def test_forward_matmuls_are_unchanged(traced_counts):
    # The analytic FLOPs (mars_jax.train.flops) count the forward's matmuls: remat adds none.
    none_forward = traced_counts["none"][0]
    for remat in POLICIES[1:]:
        forward = traced_counts[remat][0]
        assert forward["dot"] == none_forward["dot"] and forward["remat"] == BLOCKS, remat
        assert forward["batched_dot"] == none_forward["batched_dot"]


def test_backward_recomputes_what_the_policy_does_not_save(traced_counts):
    none_grad = traced_counts["none"][1]
    full, dots = traced_counts["full"][1], traced_counts["dots"][1]
    assert none_grad["remat"] == 0
    assert full["remat"] == dots["remat"] == BLOCKS  # one remat region per block
    # The attention core (scores, weighted values: the 2 batched matmuls of a block) is
    # recomputed in every block by both policies ...
    assert full["batched_dot"] - none_grad["batched_dot"] == 2 * BLOCKS
    assert dots["batched_dot"] - none_grad["batched_dot"] == 2 * BLOCKS
    # ... "full" also recomputes the weight matmuls (qkv, out, fc1, and fc2 where the
    # post-norm MMA's LayerNorm needs its output): 3 per pre-norm block, 4 per post-norm one.
    pre_norm_blocks = BLOCKS - CONFIG.mma_layers
    assert full["dot"] - none_grad["dot"] == 3 * pre_norm_blocks + 4 * CONFIG.mma_layers
    # ... while "dots" saves their outputs and recomputes none of them.
    assert dots["dot"] == none_grad["dot"]


def test_bad_remat_is_rejected():
    allowed = r"\('none', 'full', 'dots'\)"
    with pytest.raises(ValueError, match=rf"model config: remat must be one of {allowed}, "
                                         r"got 'everything'"):
        MaRSConfig(remat="everything")
    with pytest.raises(ValueError, match="remat must be one of"):
        MaRSConfig.from_dict({"remat": "Full"})
    with pytest.raises(ValueError, match=rf"remat must be one of {allowed}"):
        TransformerBlock(8, 2, 16, remat="dots_saveable", rngs=nnx.Rngs(0))
