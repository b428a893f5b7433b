"""Transformer block (attention + MLP, pre- and post-norm) against the float64 reference."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mars_jax.models.layers import TransformerBlock
from tests import reference
from tests.helpers import block_params, perturb_params


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
