"""Cross-Granularity Contrastive Learning (CGCL), the MaRS paper's three InfoNCE terms.

With s = cosine similarity, z^R, z^S in R^{B x N x D} the (visible) patch embeddings of the
two modalities, g_i = mean_j z_ij the image embeddings and M = B*N:

  L_patch  = -1/M sum_{ij} log softmax_{kl}( s(z^R_ij, z^S_kl) / tau_p )  at (k, l) = (i, j)
  L_global = -1/B sum_i    log softmax_k   ( s(g^R_i,  g^S_k)  / tau_g )  at k = i
  L_cross  = 1/(2M) sum_{ij} [ -log softmax_k s(z^R_ij, g^S_k)/tau_c  - log softmax_k
                               s(z^S_ij, g^R_k)/tau_c ]                    at k = i

Negatives span the whole batch given (all M SAR patches for L_patch).

With a patch mask v in {0, 1}^{B x N} (``valid``; None: every patch valid, and the numbers are
exactly the unmasked ones), P = {(i, j): v_ij = 1} are the valid patches, M = |P|, and
I = {i: some v_ij = 1} the images with a valid patch, B' = |I|:

  g_i      = mean_{j: v_ij = 1} z_ij                       (i in I; other images have none)
  L_patch  = -1/M  sum_{(ij) in P} log softmax_{(kl) in P}( s(z^R_ij, z^S_kl) / tau_p ) at (i, j)
  L_global = -1/B' sum_{i in I}    log softmax_{k in I}   ( s(g^R_i,  g^S_k)  / tau_g ) at k = i
  L_cross  = 1/(2M) sum_{(ij) in P} [ -log softmax_{k in I} s(z^R_ij, g^S_k)/tau_c
                                      -log softmax_{k in I} s(z^S_ij, g^R_k)/tau_c ]  at k = i

so invalid patches are neither queries nor keys, and their embeddings (even non-finite ones)
affect nothing: their gradient is exactly 0. A term whose mean is empty is 0 (M = 0: all three;
B' = 1 gives L_global = 0 as without a mask); values and gradients stay finite. Excluded keys
get a finite, very negative logit (``common.MASKED_LOGIT``), never -inf. Hard negatives (below)
weight valid keys only.

``cgcl_loss`` is the one entry point; it checks its arguments (common.validate) and dispatches
to an implementation: ``impl="dense"`` (dense.py) materialises the M x M patch logits;
``impl="blockwise"`` (blockwise.py) streams them with memory linear in M, and
``impl="sharded"`` (sharded.py) does so for a batch split over the data axes of a device mesh,
equal to the single-device loss.

Options from the paper, off by default:
  hard negatives  L_patch's denominator weights the query's own-image patches within a radius
                  (on the patch grid) ``weight`` times: sum_kl w_ij,kl exp(s/tau_p), positive
                  weight 1 (``HardNegatives``; needs each patch's grid position);
  temperatures    may be traced arrays (learnable temperatures get gradients in every impl).

Modules, each importing only those before it: common.py (shared helpers and the argument
checks), dense.py, blockwise.py, sharded.py (blockwise.py's kernel under ``shard_map``),
alignment.py (the Modality Alignment Score) and this file (tests/test_cgcl_imports.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import Mesh

from mars_jax.losses.cgcl.alignment import modality_alignment_score
from mars_jax.losses.cgcl.blockwise import blockwise_cgcl_terms, blockwise_terms
from mars_jax.losses.cgcl.common import (
    CGCL_IMPLS,
    CGCL_KEYS,
    HIGHEST,
    HardNegatives,
    validate,
)
from mars_jax.losses.cgcl.dense import dense_terms
from mars_jax.losses.cgcl.sharded import sharded_cgcl_terms, sharded_terms

__all__ = [
    "CGCL_IMPLS",
    "CGCL_KEYS",
    "HardNegatives",
    "blockwise_cgcl_terms",
    "cgcl_loss",
    "modality_alignment_score",
    "sharded_cgcl_terms",
    "validate",
]


def cgcl_loss(
    z_rgb: jax.Array, z_sar: jax.Array, *, tau_patch=0.05, tau_global=0.07, tau_cross=0.1,
    alpha=1.0, beta=1.0, gamma=1.0, precision=HIGHEST, impl: str = "dense",
    chunk_size: int = 2048, key_dtype=None, positions: jax.Array | None = None,
    hard_negatives: HardNegatives | None = None, mesh: Mesh | None = None,
    axes: Sequence[str] = ("data", "fsdp"), keys: str = "gather",
    valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(alpha*patch + beta*global + gamma*cross, {"patch", "global", "cross"})``.

    z_rgb, z_sar: [B, N, D], any float dtype; computed in float32 (float64 stays float64).
    Temperatures and weights may be arrays (learnable temperatures, adaptive weights).
    impl: "dense" materialises the logits (``precision`` applies to it); "blockwise" streams
      them in ``chunk_size`` blocks with recomputation in the backward pass (memory linear in
      B*N), with ``key_dtype`` (e.g. bfloat16) matmul operands; "sharded" does the same for a
      batch split over ``axes`` of ``mesh`` (default: the mesh set by ``jax.set_mesh``), with
      the SAR patch keys all-gathered (``keys="gather"``) or passed around a ring ("ring").
    positions, hard_negatives: [B, N, 2] grid (row, col) of each patch and ``HardNegatives``
      for L_patch; both None by default.
    valid: [B, N] bool or 0/1 patch mask (e.g. patches with data in both modalities); None:
      all valid. Masked formulas above; split like the embeddings in the sharded impl.
    Every argument is checked here, whatever the impl (ValueError); the mesh by the sharded
    implementation, which resolves it.
    """
    validate(z_rgb, z_sar, impl=impl, tau_patch=tau_patch, tau_global=tau_global,
             tau_cross=tau_cross, chunk_size=chunk_size, key_dtype=key_dtype,
             positions=positions, hard_negatives=hard_negatives, keys=keys, valid=valid)
    taus = dict(tau_patch=tau_patch, tau_global=tau_global, tau_cross=tau_cross)
    options = dict(positions=positions, hard_negatives=hard_negatives, valid=valid)
    if impl == "dense":
        terms = dense_terms(z_rgb, z_sar, **taus, precision=precision, **options)
    elif impl == "blockwise":
        terms = blockwise_terms(z_rgb, z_sar, **taus, chunk_size=chunk_size,
                                key_dtype=key_dtype, **options)
    else:  # "sharded": validate admits only CGCL_IMPLS
        terms = sharded_terms(z_rgb, z_sar, mesh, axes=axes, keys=keys, **taus,
                              chunk_size=chunk_size, key_dtype=key_dtype, **options)
    total = alpha * terms["patch"] + beta * terms["global"] + gamma * terms["cross"]
    return total, terms
