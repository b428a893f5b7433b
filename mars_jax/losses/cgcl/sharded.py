"""CGCL over a batch sharded on data-parallel mesh axes, equal to the single-device loss.

Inside ``jax.shard_map`` each device normalises its own patches and streams its local queries
against every key of the global batch (blockwise log-sum-exp, blockwise.py). The SAR patch
keys of L_patch reach it in one of two ways:

  keys="gather": one all-gather (in the key dtype, e.g. bf16); simple, but every device holds
                 all M keys and, in the backward pass, their float32 gradient: O(M D) memory;
  keys="ring":   the key shards travel around a ring of ``ppermute``s, one shard per step, and
                 in the backward pass each shard's gradient travels with it and arrives home
                 complete after a full turn: O(M D / devices) memory per device.

The image embeddings (B x D, small) are all-gathered. A patch mask is split like the
embeddings and its key part reaches every device with the keys (gathered, or travelling the
ring with them). Each device returns partial sums; the means over the global batch (counting
the valid patches and images of the whole batch) are taken outside the shard_map, so no psum
needs a transpose rule and gradients flow back through the collectives.

``sharded_terms`` assumes valid arguments (``cgcl_loss`` checks them) but for the mesh, which
only it resolves; ``sharded_cgcl_terms`` is the same with the checks, for calling it directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from mars_jax.losses.cgcl.blockwise import Layout, local_cgcl_sums, term_means
from mars_jax.losses.cgcl.common import (
    HardNegatives,
    as_mask,
    compute_dtype,
    inverse_temperatures,
    patch_metadata,
    validate,
)


def context_mesh() -> Mesh | jax.sharding.AbstractMesh:
    """The mesh set with ``jax.set_mesh``; a clear error when there is none."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        raise ValueError("sharded CGCL needs a device mesh: pass mesh= or call it under "
                         "jax.set_mesh(mesh)")
    return mesh


def _split_axes(mesh, axes: tuple[str, ...], batch: int) -> tuple[str, ...]:
    """The mesh axes the batch is split over: ``axes``, widened to every mesh axis when the
    batch divides over all devices. Replicas (e.g. over "tensor") then share the work instead
    of repeating it, and no input is left replicated, whose cotangent would need a psum."""
    axes = tuple(a for a in axes if a in mesh.shape)
    shards = int(np.prod([mesh.shape[a] for a in axes]))
    if batch % shards:
        raise ValueError(f"batch {batch} does not divide over mesh axes {axes} ({shards} "
                         "shards)")
    others = tuple(a for a in mesh.axis_names if a not in axes)
    if batch % (shards * int(np.prod([mesh.shape[a] for a in others]))) == 0:
        return axes + others
    return axes + tuple(a for a in others if mesh.shape[a] == 1)


def sharded_terms(
    z_rgb: jax.Array, z_sar: jax.Array, mesh: Mesh | None, *, axes: Sequence[str], tau_patch,
    tau_global, tau_cross, chunk_size: int, key_dtype, keys: str,
    positions: jax.Array | None, hard_negatives: HardNegatives | None,
    valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """``sharded_cgcl_terms`` without the argument checks (the mesh is still checked)."""
    mesh = context_mesh() if mesh is None else mesh
    axes = _split_axes(mesh, tuple(axes), z_rgb.shape[0])
    b, n, _ = z_rgb.shape
    operand = jnp.dtype(compute_dtype(z_rgb) if key_dtype is None else key_dtype)
    scales = inverse_temperatures(tau_patch, tau_global, tau_cross)
    meta = None
    if hard_negatives is not None:  # global image ids: hard negatives never cross images
        meta = patch_metadata(positions).reshape(b, n, 3)

    shards = int(np.prod([mesh.shape[a] for a in axes]))
    layout = Layout(chunk_size, operand, hard_negatives, axes, shards, keys == "ring")

    def local(zr, zs, meta, valid, scales):
        local_meta = None if meta is None else meta.reshape(-1, 3)
        return local_cgcl_sums(zr, zs, scales, local_meta, valid, layout)[None]  # [1, 3] each

    batch = PartitionSpec(axes)
    scales = tuple(jnp.asarray(c, compute_dtype(z_rgb)) for c in scales)
    valid = as_mask(valid)
    partial = jax.shard_map(
        local, mesh=mesh, in_specs=(batch, batch, batch, batch, PartitionSpec()),
        out_specs=batch, check_vma=False)(z_rgb, z_sar, meta, valid, scales)
    return term_means(jnp.sum(partial, axis=0), z_rgb.shape, valid)


def sharded_cgcl_terms(
    z_rgb: jax.Array, z_sar: jax.Array, mesh: Mesh | None = None, *,
    axes: Sequence[str] = ("data", "fsdp"), tau_patch=0.05, tau_global=0.07, tau_cross=0.1,
    chunk_size: int = 2048, key_dtype=None, keys: str = "gather",
    positions: jax.Array | None = None, hard_negatives: HardNegatives | None = None,
    valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """``{"patch", "global", "cross"}`` of ``cgcl_loss`` for [B, N, D] inputs whose batch is
    split over ``axes`` of ``mesh`` (other axes replicate; axes the mesh lacks are ignored).
    B must divide over ``axes``. mesh=None: the mesh set with ``jax.set_mesh``. valid: an
    optional [B, N] patch mask (see ``cgcl_loss``), split like the embeddings."""
    validate(z_rgb, z_sar, impl="sharded", tau_patch=tau_patch, tau_global=tau_global,
             tau_cross=tau_cross, chunk_size=chunk_size, key_dtype=key_dtype,
             positions=positions, hard_negatives=hard_negatives, keys=keys, valid=valid)
    return sharded_terms(z_rgb, z_sar, mesh, axes=axes, tau_patch=tau_patch,
                         tau_global=tau_global, tau_cross=tau_cross, chunk_size=chunk_size,
                         key_dtype=key_dtype, keys=keys, positions=positions,
                         hard_negatives=hard_negatives, valid=valid)
