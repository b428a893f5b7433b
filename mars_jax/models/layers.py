"""Transformer building blocks shared by the encoders, MMA and the MIM decoders.

Every parameter carries logical axis names (``nnx.with_partitioning``) so that a mesh and a
set of rules, chosen by the trainer, decide how it is sharded. Eager sharding is off: the
modules can be built anywhere (CPU, under ``jax.eval_shape``, inside ``jax.jit``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

Norm = Literal["pre", "post"]
LN_EPS = 1e-6  # ViT / MAE value

# Activation rematerialisation of each transformer block (stack.py) in the backward pass,
# keyed by the config's ``model.remat``; the value is the jax.checkpoint policy (None: save
# nothing).
#   none  keep every activation (fastest; memory grows with depth x tokens x width, and the
#         attention probabilities, heads x tokens^2 per sequence)
#   full  keep only the block's input and recompute the whole block (one extra forward per
#         block, ~+33% step FLOPs; activation memory ~ one block)
#   dots  keep the outputs of the weight matmuls (qkv, out projection, fc1, fc2: 5 x width +
#         mlp_dim per token), recompute norms, GELU and the attention core (the batched dots:
#         scores, softmax, weighted values), so nothing quadratic in tokens is stored
# XLA:CPU strips jax.checkpoint's optimisation barriers early in its pipeline (GPU keeps them
# until after scheduling), so on CPU the recomputation of unscanned blocks is merged back by
# CSE and compiled memory does not show remat; inside a scan (model.scan_layers) it cannot
# be merged, and CPU figures show the saving (base, batch 64: 27.7 GiB none, 6.9 dots, 3.4
# full). tests/test_remat.py checks the traced program.
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
Remat = Literal["none", "full", "dots"]


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {remat!r}")


def partitioned(init: nnx.Initializer, axes: tuple[str | None, ...]) -> nnx.Initializer:
    """Wraps ``init`` with logical axis names, applied later by the trainer's rules."""
    return nnx.with_partitioning(init, axes, eager_sharding=False)


KERNEL_INIT = nnx.initializers.xavier_uniform()  # MAE's init for every linear layer
ZEROS = nnx.initializers.zeros_init()
ONES = nnx.initializers.ones_init()


def param(init: nnx.Initializer, shape: tuple[int, ...], axes: tuple[str | None, ...], *,
          param_dtype, rngs: nnx.Rngs) -> nnx.Param:
    """A free-standing parameter (mask token, projection) with logical axis names."""
    return nnx.Param(init(rngs.params(), shape, param_dtype), out_sharding=axes,
                     eager_sharding=False)


def layer_norm(dim: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        dim,
        epsilon=LN_EPS,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=partitioned(ONES, ("embed",)),
        bias_init=partitioned(ZEROS, ("embed",)),
        rngs=rngs,
    )


def dense(
    in_dim: int, out_dim: int, axes: tuple[str | None, str | None], *, dtype, param_dtype,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    return nnx.Linear(
        in_dim,
        out_dim,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(KERNEL_INIT, axes),
        bias_init=partitioned(ZEROS, (axes[1],)),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head self-attention over ``[batch, tokens, dim]``.

    No padding exists, so no mask by default; ``key_mask`` [batch, tokens] (True: attend)
    leaves keys out, which is how MMA drops a modality per example (modality dropout).
    """

    def __init__(
        self, dim: int, num_heads: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
        implementation: Literal["xla", "cudnn"] | None = None, rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        head_dim = dim // num_heads
        self.implementation = implementation
        self.qkv = nnx.LinearGeneral(
            dim, (3, num_heads, head_dim), dtype=dtype, param_dtype=param_dtype,
            kernel_init=partitioned(KERNEL_INIT, ("embed", None, "heads", "kv")),
            bias_init=partitioned(ZEROS, (None, "heads", "kv")), rngs=rngs,
        )
        self.out = nnx.LinearGeneral(
            (num_heads, head_dim), dim, axis=(-2, -1), dtype=dtype, param_dtype=param_dtype,
            kernel_init=partitioned(KERNEL_INIT, ("heads", "kv", "embed")),
            bias_init=partitioned(ZEROS, ("embed",)), rngs=rngs,
        )

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        qkv = self.qkv(x)  # [B, T, 3, H, Dh]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
        y = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
        return self.out(y)


class Mlp(nnx.Module):
    """Two-layer GELU MLP (exact GELU, as in ViT / MAE)."""

    def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype,
                         rngs=rngs)
        self.fc2 = dense(hidden, dim, ("mlp", "embed"), dtype=dtype, param_dtype=param_dtype,
                         rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class TransformerBlock(nnx.Module):
    """One attention + MLP layer.

    ``norm="pre"``:  x = x + H(LN(x));  x = x + MLP(LN(x))      (ViT / MAE encoders, decoders)
    ``norm="post"``: x = LN(H(x) + x);  x = LN(MLP(x) + x)      (the MaRS paper's MMA formulas)

    Blocks are applied (and rematerialised) by ``stack.TransformerStack``.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, *, norm: Norm = "pre",
        dtype=jnp.float32, param_dtype=jnp.float32,
        attention_impl: Literal["xla", "cudnn"] | None = None, rngs: nnx.Rngs,
    ):
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.norm = norm
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln1 = layer_norm(dim, **kw)
        self.attn = Attention(dim, num_heads, implementation=attention_impl, **kw)
        self.ln2 = layer_norm(dim, **kw)
        self.mlp = Mlp(dim, mlp_dim, **kw)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        if self.norm == "pre":
            x = x + self.attn(self.ln1(x), key_mask)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(self.attn(x, key_mask) + x)
        return self.ln2(self.mlp(x) + x)
