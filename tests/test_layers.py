"""Transformer block (attention + MLP, pre- and post-norm) and stacks of them against the
float64 reference."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mars_jax.models.layers import TransformerBlock
from mars_jax.models.stack import TransformerStack, pattern_period
from tests import reference
from tests.helpers import block_params, perturb_params, stack_params


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("dim,heads,tokens", [(16, 2, 5), (24, 3, 1), (8, 1, 7)])
def test_block_matches_reference(norm, dim, heads, tokens):
    block = TransformerBlock(dim, heads, 2 * dim, norm=norm, rngs=nnx.Rngs(0))
    perturb_params(block, seed=dim)
    x = np.random.default_rng(1).normal(size=(3, tokens, dim)).astype(np.float32)
    got = nnx.jit(lambda m, v: m(v))(block, jnp.asarray(x))
    p = block_params(block)
    want = np.stack([reference.block(x[i].astype(np.float64), p, norm) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_pre_and_post_norm_differ():
    pre = TransformerBlock(16, 2, 32, norm="pre", rngs=nnx.Rngs(0))
    post = TransformerBlock(16, 2, 32, norm="post", rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 16)), jnp.float32)
    assert not np.allclose(pre(x), post(x), atol=1e-3)
    # Post-norm ends in a LayerNorm with unit scale, zero bias: each token is standardised.
    np.testing.assert_allclose(np.asarray(post(x)).mean(-1), 0.0, atol=1e-5)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        TransformerBlock(10, 3, 20, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'pre' or 'post'"):
        TransformerBlock(8, 2, 16, norm="sandwich", rngs=nnx.Rngs(0))


def test_parameters_carry_logical_axes():
    block = TransformerBlock(8, 2, 16, rngs=nnx.Rngs(0))
    specs = nnx.get_partition_spec(nnx.state(block, nnx.Param))
    assert tuple(specs["attn"]["qkv"]["kernel"].get_value()) == ("embed", None, "heads", "kv")
    assert tuple(specs["mlp"]["fc1"]["kernel"].get_value()) == ("embed", "mlp")
    assert tuple(specs["mlp"]["fc2"]["kernel"].get_value()) == ("mlp", "embed")


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("pattern", [("full",) * 3, ("intra", "full") * 2])
def test_stack_matches_reference_blocks_in_order(pattern, scan_layers):
    depth, dim, b, t = len(pattern), 16, 2, 6
    stack = TransformerStack(depth, dim, 2, 32, norm="post", pattern=pattern,
                             scan_layers=scan_layers, rngs=nnx.Rngs(0))
    perturb_params(stack, seed=depth)
    x = np.random.default_rng(1).normal(size=(b, t, dim)).astype(np.float32)
    got = nnx.jit(lambda m, v: m(v))(stack, jnp.asarray(x))
    want = x.astype(np.float64)
    for scope, p in zip(pattern, stack_params(stack), strict=True):
        rows = want if scope == "full" else want.reshape(2 * b, t // 2, dim)  # halves apart
        want = np.stack([reference.block(r, p, "post") for r in rows]).reshape(b, t, dim)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_stack_layouts_and_periods():
    assert pattern_period(("full",) * 4) == 1
    assert pattern_period(("intra", "full") * 2) == 2
    assert pattern_period(("intra", "full", "intra")) == 3
    unscanned = TransformerStack(4, 8, 2, 16, pattern=("intra", "full") * 2, rngs=nnx.Rngs(0))
    scanned = TransformerStack(4, 8, 2, 16, pattern=("intra", "full") * 2, scan_layers=True,
                               rngs=nnx.Rngs(0))
    assert len(unscanned.layers) == 4 and unscanned.stacked is None
    assert scanned.layers is None and len(scanned.stacked) == 2  # one member per scope
    # Member j holds layers j, j + 2: the same draws as the unscanned layers.
    kernel = scanned.stacked[1].mlp.fc1.kernel[...]
    assert kernel.shape == (2, 8, 16)
    np.testing.assert_array_equal(kernel[1], unscanned.layers[3].mlp.fc1.kernel[...])
    specs = nnx.get_partition_spec(nnx.state(scanned, nnx.Param))
    assert tuple(specs["stacked"][0]["attn"]["qkv"]["kernel"].get_value()) == (
        "layers", "embed", None, "heads", "kv")


def test_stack_rejects_bad_arguments():
    with pytest.raises(ValueError, match="has 2 layers, the stack 3"):
        TransformerStack(3, 8, 2, 16, pattern=("full", "full"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"attention scopes must be in .*\['cross'\]"):
        TransformerStack(2, 8, 2, 16, pattern=("full", "cross"), rngs=nnx.Rngs(0))
    stack = TransformerStack(1, 8, 2, 16, pattern=("intra",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="two halves of tokens, got 3 tokens"):
        stack(jnp.zeros((1, 3, 8)))
    with pytest.raises(ValueError, match="attention scope must be in"):
        stack(jnp.zeros((1, 4, 8)), scope="meta")
