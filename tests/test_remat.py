"""Activation remat (``model.remat``): same numbers and parameters, recomputation in the grad,
in the unscanned and the scanned (``model.scan_layers``) layouts."""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jex_core

from mars_jax.data.contract import random_batch
from mars_jax.models import (
    MaRSConfig,
    MaRSPretrainer,
    TransformerSpec,
    TransformerStack,
    convert_layers,
)
from mars_jax.models.layers import REMAT_POLICIES
from tests.helpers import perturb_params

POLICIES = tuple(REMAT_POLICIES)
CONFIG = MaRSConfig(encoder=TransformerSpec(width=32, depth=2, num_heads=2, mlp_dim=64),
                    decoder=TransformerSpec(width=16, depth=1, num_heads=2, mlp_dim=32),
                    mma_layers=2, patch_size=8)
BLOCKS = 2 * CONFIG.encoder.depth + CONFIG.mma_layers + 2 * CONFIG.decoder.depth
STACKS = 5  # two ViTs, MMA, two decoders
BATCH = random_batch(jax.random.key(0), 2, 32, 1)
KEY = jax.random.key(1)


def legacy_path(path: tuple) -> tuple:
    """A parameter's path before the encoder / pretrainer split (``encoder/optical_vit/
    blocks/layers/0`` was ``optical_encoder/blocks/0``, ``encoder/mma/blocks/layers/0`` was
    ``mma/layers/0``). Drawing the perturbation in that order keeps this the very model on
    which the remat tolerance below was measured: the worst relative gradient error is a
    float32 rounding effect (float64 matches exactly), about 6.5e-7 here but up to ~1.1e-6
    for other perturbations of the same weights."""
    if path[:2] == ("encoder", "mma"):
        path = ("mma", *path[2:])
    elif path[0] == "encoder":
        path = (path[1].replace("_vit", "_encoder"), *path[2:])
    if "blocks" in path and path[path.index("blocks") + 1] == "layers":
        i = path.index("blocks")
        path = (*path[:i + 1], *path[i + 2:]) if path[0] != "mma" else (
            *path[:i], "layers", *path[i + 2:])
    return path


def model_and_loss(remat: str, *, abstract: bool = False, scan_layers: bool = False):
    """(state, loss(state, batch, key)) for CONFIG with ``remat``; the loss uses every output."""
    config = dataclasses.replace(CONFIG, remat=remat, scan_layers=scan_layers)

    def create():
        model = MaRSPretrainer(dataclasses.replace(config, scan_layers=False), rngs=nnx.Rngs(0))
        perturb_params(model, seed=0, order=legacy_path)
        if not scan_layers:
            return model
        # perturb_params draws noise leaf by leaf, so it would perturb the scanned layout
        # differently: perturb the unscanned model and stack its parameters instead.
        scanned = MaRSPretrainer(config, rngs=nnx.Rngs(0))
        if abstract:  # shapes only
            return scanned
        state = nnx.state(scanned)
        nnx.replace_by_pure_dict(state, convert_layers(nnx.to_pure_dict(nnx.state(model)),
                                                       nnx.to_pure_dict(state)))
        nnx.update(scanned, state)
        return scanned

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


@pytest.mark.parametrize("remat, scan_layers", [
    *((p, False) for p in POLICIES if p != "none"),  # (none, unscanned) is the reference
    *((p, True) for p in POLICIES),
], ids=lambda v: ("scanned" if v else "unscanned") if isinstance(v, bool) else v)
def test_loss_and_gradients_match_no_remat(remat, scan_layers, reference):
    state, loss = model_and_loss(remat, scan_layers=scan_layers)
    value, grads = jax.jit(jax.value_and_grad(loss))(state, BATCH, KEY)
    want_value, want_grads = reference
    want_grads = nnx.to_pure_dict(want_grads)
    # Scanned gradients come stacked per layer group: compare them in the unscanned layout.
    grads = convert_layers(nnx.to_pure_dict(grads), want_grads)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    got, want = jax.tree.leaves_with_path(grads), jax.tree.leaves_with_path(want_grads)
    assert [p for p, _ in got] == [p for p, _ in want]
    for (path, g), (_, w) in zip(got, want, strict=True):
        # Relative error of each parameter's gradient tensor. Recomputed blocks fuse
        # differently, so float32 rounding differs: measured at most 6.5e-7 on this model
        # (unscanned and scanned; float64 gradients agree exactly).
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        err = np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)
        assert err <= 1e-6, (jax.tree_util.keystr(path), err)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])
def test_parameter_tree_is_the_same_for_every_policy(scan_layers):
    def tree(remat):
        state, _ = model_and_loss(remat, abstract=True, scan_layers=scan_layers)
        return [(jax.tree_util.keystr(p), v.shape, v.dtype)
                for p, v in jax.tree.leaves_with_path(state)]

    want = tree("none")
    layout = "'stacked'" if scan_layers else "'layers'"
    assert any("'optical_vit'" in path and "'blocks'" in path and layout in path
               for path, _, _ in want)
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


def trace_counts(scan_layers: bool) -> dict:
    """{policy: (forward counts, value_and_grad counts)}, traced only (nothing compiles)."""
    result = {}
    for remat in POLICIES:
        state, loss = model_and_loss(remat, abstract=True, scan_layers=scan_layers)
        forward = jax.make_jaxpr(loss)(state, BATCH, KEY).jaxpr
        grad = jax.make_jaxpr(jax.value_and_grad(loss))(state, BATCH, KEY).jaxpr
        result[remat] = (primitive_counts(forward, collections.Counter()),
                         primitive_counts(grad, collections.Counter()))
    return result


@pytest.fixture(scope="module")
def traced_counts():
    return trace_counts(scan_layers=False)


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


def test_scanned_stacks_remat_one_group_each():
    # Scanned, each stack's layer group is one remat region inside its scan body (traced
    # once, whatever the depth), and remat adds no forward matmul there either.
    counts = trace_counts(scan_layers=True)
    none_forward, none_grad = counts["none"]
    assert none_forward["remat"] == none_grad["remat"] == 0
    for remat in POLICIES[1:]:
        forward, grad = counts[remat]
        assert forward["remat"] == grad["remat"] == STACKS, remat
        assert forward["dot"] == none_forward["dot"], remat
        assert forward["batched_dot"] == none_forward["batched_dot"], remat
        assert grad["batched_dot"] > none_grad["batched_dot"], remat  # attention recomputed


def test_bad_remat_is_rejected():
    allowed = r"\('none', 'full', 'dots'\)"
    with pytest.raises(ValueError, match=rf"model config: remat must be one of {allowed}, "
                                         r"got 'everything'"):
        MaRSConfig(remat="everything")
    with pytest.raises(ValueError, match="remat must be one of"):
        MaRSConfig.from_dict({"remat": "Full"})
    with pytest.raises(ValueError, match=rf"remat must be one of {allowed}, "
                                         r"got 'dots_saveable'"):
        TransformerStack(2, 8, 2, 16, remat="dots_saveable", rngs=nnx.Rngs(0))
