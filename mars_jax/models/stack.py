"""One stack of transformer blocks for the encoders, the MIM decoders and MMA.

A stack is ``depth`` blocks applied in order, layer ``i`` attending over the scope
``pattern[i]``:

  "full"   every token of a sequence attends to every other (ViT, decoders, MMA's meta layers);
  "intra"  the sequence is two halves (MMA's [Z_RGB; Z_SAR]) and each attends within itself:
           ``[B, 2N, D]`` is reshaped to ``[2B, N, D]`` (rows 2i, 2i+1 are example i's halves,
           so a batch-sharded mesh moves no activation) and back.

Layouts (``scan_layers``), equal in value and gradient:

  unscanned  ``layers/<i>/...``: a Python loop over ``depth`` blocks (each its own program
             region; long compiles for deep models);
  scanned    ``stacked/<j>/...``: the pattern's period ``p`` (1 for a ViT, 2 for MMA's
             intra/meta alternation) as one group of ``p`` blocks whose parameters carry a
             leading ``layers`` axis of ``depth / p``; ``nnx.scan`` runs the group
             ``depth / p`` times, so the program holds ``p`` blocks whatever the depth.

Both layouts are initialised from the same random draws (blocks are created in order and
stacked), so a scanned model equals the unscanned one built from the same seed, and
``convert_layers`` moves parameters (or optimiser moments) between the two.

``remat`` (a key of ``layers.REMAT_POLICIES``) wraps each block (unscanned) or each scanned
group in ``nnx.remat`` with that policy; the parameter tree does not depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mars_jax.models import layers

Scope = Literal["full", "intra"]
SCOPES = ("full", "intra")
LAYERS_AXIS = "layers"  # logical axis of the scanned parameters' leading dimension


def pattern_period(pattern: Sequence[str]) -> int:
    """Smallest ``p`` dividing ``len(pattern)`` with ``pattern[i] == pattern[i % p]``."""
    depth = len(pattern)
    for p in range(1, depth + 1):
        if depth % p == 0 and all(pattern[i] == pattern[i % p] for i in range(depth)):
            return p
    return max(depth, 1)


def _stack_blocks(blocks: Sequence[nnx.Module]) -> nnx.Module:
    """Blocks of one structure -> one block whose variables carry a leading ``layers`` axis."""
    graphdef, first = nnx.split(blocks[0])
    states = [first] + [nnx.state(b) for b in blocks[1:]]

    def stack(*variables: nnx.Variable) -> nnx.Variable:
        value = jnp.stack([v.get_value() for v in variables])
        names = variables[0].get_metadata().get("out_sharding")
        if names is None:
            return variables[0].replace(value)
        return variables[0].replace(value, out_sharding=(LAYERS_AXIS, *names))

    stacked = jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, stacked)


def _block_fn(scope: str):
    """``block(x)`` in ``scope`` as a function of (block, x, key_mask) only, for
    ``nnx.remat``."""

    def apply(block: layers.TransformerBlock, x: jax.Array,
              key_mask: jax.Array | None) -> jax.Array:
        return TransformerStack._apply(block, x, scope, key_mask)

    return apply


class TransformerStack(nnx.Module):
    """``depth`` transformer blocks with per-layer attention scopes, optionally scanned."""

    def __init__(
        self, depth: int, dim: int, num_heads: int, mlp_dim: int, *,
        norm: layers.Norm = "pre", pattern: Sequence[str] | None = None,
        scan_layers: bool = False, remat: layers.Remat = "none", dtype=jnp.float32,
        param_dtype=jnp.float32, attention_impl: Literal["xla", "cudnn"] | None = None,
        rngs: nnx.Rngs,
    ):
        pattern = ("full",) * depth if pattern is None else tuple(pattern)
        if len(pattern) != depth:
            raise ValueError(f"attention pattern {pattern} has {len(pattern)} layers, the stack "
                             f"{depth}")
        bad = sorted(set(pattern) - set(SCOPES))
        if bad:
            raise ValueError(f"attention scopes must be in {SCOPES}, got {bad}")
        layers.check_remat(remat)
        self.pattern = pattern
        self.period = pattern_period(pattern)
        self.scan_layers = bool(scan_layers)
        self.remat = remat
        blocks = [layers.TransformerBlock(dim, num_heads, mlp_dim, norm=norm, dtype=dtype,
                                          param_dtype=param_dtype,
                                          attention_impl=attention_impl, rngs=rngs)
                  for _ in range(depth)]
        if self.scan_layers and depth:
            # Group member j holds layers j, j + p, j + 2p, ...: scan step g runs layers
            # g p .. g p + p - 1, in order.
            self.stacked = nnx.List([_stack_blocks(blocks[j::self.period])
                                     for j in range(self.period)])
            self.layers = None
        else:
            self.layers = nnx.List(blocks)
            self.stacked = None

    @property
    def depth(self) -> int:
        return len(self.pattern)

    @staticmethod
    def _apply(block: layers.TransformerBlock, x: jax.Array, scope: str,
               key_mask: jax.Array | None = None) -> jax.Array:
        if scope == "full":
            return block(x, key_mask)
        b, t, d = x.shape
        if t % 2:
            raise ValueError(f"an intra layer needs two halves of tokens, got {t} tokens")
        return block(x.reshape(2 * b, t // 2, d)).reshape(b, t, d)

    def check_collect(self, collect: Sequence[int]) -> tuple[int, ...]:
        """Layer indices (0-based, negative from the end) -> sorted, checked, non-negative."""
        depth = self.depth
        indices = sorted({i + depth if i < 0 else i for i in collect})
        bad = [i for i in indices if not 0 <= i < depth]
        if bad:
            raise ValueError(f"layers {list(collect)} out of range for a stack of {depth}")
        if self.stacked is not None:
            inside = [i for i in indices if (i + 1) % self.period]
            if inside:
                raise ValueError(f"a scanned stack of period {self.period} yields the output "
                                 f"of every {self.period}-th layer only, not layers {inside}")
        return tuple(indices)

    def __call__(self, x: jax.Array, *, scope: Scope | None = None,
                 key_mask: jax.Array | None = None, collect: Sequence[int] | None = None):
        """[B, T, D] -> [B, T, D]. ``scope`` (optional) overrides every layer's pattern;
        ``key_mask`` [B, T] leaves keys out of the "full" layers' attention (intra layers
        attend within one half, which a caller masking a whole half does not need to mask).

        ``collect``: layer indices whose outputs are also returned, as
        ``(x, tuple of [B, T, D])``. Scanned, the scan yields every group's output (memory:
        one activation per group, besides what the backward pass keeps anyway).
        """
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"attention scope must be in {SCOPES}, got {scope!r}")
        wanted = None if collect is None else self.check_collect(collect)
        pattern = self.pattern if scope is None else (scope,) * self.depth
        policy = layers.REMAT_POLICIES[self.remat]
        if self.stacked is None:
            hidden = []
            for index, (block, scope) in enumerate(zip(self.layers, pattern, strict=True)):
                if self.remat == "none":
                    x = self._apply(block, x, scope, key_mask)
                else:  # prevent_cse on (default): a loop, not a scan, so CSE could undo it
                    x = nnx.remat(_block_fn(scope), policy=policy)(block, x, key_mask)
                if wanted is not None and index in wanted:
                    hidden.append(x)
            return x if wanted is None else (x, tuple(hidden))
        scopes = pattern[:self.period]

        def group(x: jax.Array, members: nnx.List, key_mask: jax.Array | None) -> jax.Array:
            for block, scope in zip(members, scopes, strict=True):
                x = self._apply(block, x, scope, key_mask)
            return x

        if self.remat != "none":  # inside a scan no CSE can merge the recomputation back
            group = nnx.remat(group, policy=policy, prevent_cse=False)

        def body(x: jax.Array, members: nnx.List):
            x = group(x, members, key_mask)
            return x, (x if wanted is not None else None)

        x, outputs = nnx.scan(body)(x, self.stacked)
        if wanted is None:
            return x
        return x, tuple(outputs[(i + 1) // self.period - 1] for i in wanted)


# ------------------------------------------------------------------------------------------
# Layout conversion: unscanned <-> scanned parameters (or optimiser moments, any pure dict)
# ------------------------------------------------------------------------------------------
def _is_unscanned(node: Any) -> bool:
    return isinstance(node, Mapping) and "layers" in node and "stacked" not in node


def _is_scanned(node: Any) -> bool:
    return isinstance(node, Mapping) and "stacked" in node and "layers" not in node


def _leaves(tree: Any) -> list:
    return jax.tree.leaves(tree)


def _stack_to(unscanned: Mapping, template: Mapping) -> dict:
    """``layers/<i>`` -> ``stacked/<j>`` [depth/p] following the template's period."""
    period = len(template["stacked"])
    blocks = [unscanned["layers"][i] for i in sorted(unscanned["layers"], key=int)]
    if len(blocks) % period:
        raise ValueError(f"{len(blocks)} layers do not group by the scanned period {period}")
    stacked = {j: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                               *blocks[j::period]) for j in range(period)}
    return {k: v for k, v in unscanned.items() if k != "layers"} | {"stacked": stacked}


def _unstack_to(scanned: Mapping, template: Mapping) -> dict:
    """``stacked/<j>`` [depth/p] -> ``layers/<i>``, i = g p + j."""
    members = [scanned["stacked"][j] for j in sorted(scanned["stacked"], key=int)]
    period = len(members)
    groups = _leaves(members[0])[0].shape[0] if _leaves(members[0]) else 0
    depth = len(template["layers"])
    if period * groups != depth:
        raise ValueError(f"scanned layers ({groups} groups of {period}) do not make the "
                         f"template's {depth} layers")
    unstacked = {g * period + j: jax.tree.map(lambda x, g=g: np.asarray(x)[g], members[j])
                 for g in range(groups) for j in range(period)}
    return {k: v for k, v in scanned.items() if k != "stacked"} | {
        "layers": {i: unstacked[i] for i in range(depth)}}


def convert_layers(tree: Any, template: Any) -> Any:
    """``tree`` (a pure dict of a model's parameters, or of anything that mirrors them, such
    as Adam moments) in the stack layout of ``template`` (the same structure built with the
    other ``scan_layers``; shapes only are read). Stacks already in the template's layout and
    every other entry are returned unchanged."""
    if not isinstance(tree, Mapping) or not isinstance(template, Mapping):
        return tree
    if _is_unscanned(tree) and _is_scanned(template):
        tree = _stack_to(tree, template)
    elif _is_scanned(tree) and _is_unscanned(template):
        tree = _unstack_to(tree, template)
    return {k: convert_layers(v, template[k]) if k in template else v for k, v in tree.items()}
