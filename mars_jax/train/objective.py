"""The pretraining objective: L = L_mim_rgb + L_mim_sar + lambda * L_cgcl.

L_cgcl = alpha L_patch + beta L_global + gamma L_cross over the visible patches that have data in
both modalities (``visible_validity``; the others are neither queries nor keys), with the
paper's options:
  - sharded CGCL (default): the blockwise loss under ``jax.shard_map`` over the data axes of the
    mesh set with ``jax.set_mesh`` (all-gathered or ring-passed keys), equal to the
    single-device loss; without a mesh it is the blockwise loss (the same numbers);
  - hard negatives for L_patch (own-image patches within a grid radius weighted up);
  - learnable temperatures (``models.CGCLTemperatures``, trained with the model);
  - adaptive weights: (alpha, beta, gamma) = softmax(||dL_t / de|| / adaptive_tau), the
    per-term gradient norms with respect to the CGCL embeddings e (the last activations all
    three terms share), recomputed every step and treated as constants. Cost: three extra
    backward passes of the CGCL loss alone, small next to the encoders'.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from absl import logging

from mars_jax.losses import cgcl_loss, mim_loss, modality_alignment_score
from mars_jax.losses.cgcl import CGCL_IMPLS, CGCL_KEYS, HardNegatives
from mars_jax.models import MaRSOutput
from mars_jax.models.pretrainer import MAX_TEMPERATURE, MIN_TEMPERATURE
from mars_jax.typed_config import Section

TERMS = ("patch", "global", "cross")


@dataclasses.dataclass(frozen=True)
class LossConfig(Section):
    SECTION = "loss"
    cgcl_weight: float = 1.0  # lambda
    tau_patch: float = 0.05  # tau_patch < tau_global < tau_cross, as in the paper
    tau_global: float = 0.07
    tau_cross: float = 0.1
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    mim_type: str = "l2"
    norm_pix: bool = True
    cgcl_impl: str = "sharded"  # "blockwise" (one device) or "dense" (M x M logits)
    cgcl_chunk_size: int = 2048
    cgcl_keys: str = "gather"  # sharded: "ring" passes key shards instead of gathering them
    cgcl_key_dtype: str | None = None  # matmul operands; None: the embeddings' dtype
    hard_negative_radius: float = 0.0  # > 0: L_patch hard negatives within this grid radius
    hard_negative_weight: float = 2.0
    learnable_temperatures: bool = False  # the tau_* above are then initial values
    adaptive_weights: bool = False  # (alpha, beta, gamma) from per-term gradient norms
    adaptive_tau: float = 1.0
    # > 0: each modality's patch positions are offset by its own random 0..position_jitter
    # patches per pair, so CGCL cannot match patch j to patch j by their shared position
    # embedding alone (it must match content); 0: off
    position_jitter: int = 0

    def validate(self) -> None:
        self.require_one_of("cgcl_impl", CGCL_IMPLS)
        self.require_one_of("cgcl_keys", CGCL_KEYS)
        self.require_one_of("mim_type", ("l1", "l2"))
        self.require_positive("tau_patch", "tau_global", "tau_cross", "adaptive_tau",
                              "cgcl_chunk_size", "hard_negative_weight")
        self.require_non_negative("hard_negative_radius", "cgcl_weight")
        self.require(isinstance(self.position_jitter, int) and not isinstance(
            self.position_jitter, bool) and self.position_jitter >= 0, "position_jitter",
            "a non-negative int (patches; 0: off)")
        self.require_dtype("cgcl_key_dtype", optional=True)
        if self.learnable_temperatures:
            for name in ("tau_patch", "tau_global", "tau_cross"):
                self.require(MIN_TEMPERATURE <= getattr(self, name) <= MAX_TEMPERATURE, name,
                             f"in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}] (the learnable "
                             "temperatures' range)")
        if not self.tau_patch < self.tau_global < self.tau_cross:
            logging.warning("loss config: the paper orders tau_patch < tau_global < tau_cross; "
                            "got %s, %s, %s", self.tau_patch, self.tau_global, self.tau_cross)

    @property
    def hard_negatives(self) -> HardNegatives | None:
        if self.hard_negative_radius == 0:
            return None
        return HardNegatives(self.hard_negative_radius, self.hard_negative_weight)

    @property
    def temperatures(self) -> tuple[float, float, float]:
        return self.tau_patch, self.tau_global, self.tau_cross


def visible_positions(ids_keep: jax.Array, grid_width: int) -> jax.Array:
    """[B, N_vis] grid indices -> [B, N_vis, 2] (row, col): where each CGCL patch sits."""
    return jnp.stack([ids_keep // grid_width, ids_keep % grid_width], axis=-1)


def visible_validity(out: MaRSOutput) -> jax.Array:
    """[B, N_vis] bool: which visible patches (``ids_keep`` order, as the CGCL embeddings) have
    data in both modalities, from the full grid's ``patch_valid``."""
    return jnp.take_along_axis(out.patch_valid, out.masking.ids_keep, axis=1) > 0


def _resolved_impl(impl: str) -> str:
    """The sharded loss needs a mesh; on one device without one it is the blockwise loss."""
    if impl == "sharded" and jax.sharding.get_abstract_mesh().empty:
        return "blockwise"
    return impl


def cgcl_objective(out: MaRSOutput, cfg: LossConfig, *, temperatures: jax.Array | None = None,
                   grid_width: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """alpha L_patch + beta L_global + gamma L_cross and its terms (weights, temperatures)."""
    taus = cfg.temperatures if temperatures is None else tuple(temperatures)
    hard = cfg.hard_negatives
    positions = None
    if hard is not None:
        if grid_width is None:
            raise ValueError("loss config: hard negatives need the patch grid width")
        positions = visible_positions(out.masking.ids_keep, grid_width)
    key_dtype = cfg.cgcl_key_dtype or out.e_rgb.dtype
    valid = visible_validity(out)

    def terms_of(e_rgb, e_sar):
        _, terms = cgcl_loss(e_rgb, e_sar, tau_patch=taus[0], tau_global=taus[1],
                             tau_cross=taus[2], impl=_resolved_impl(cfg.cgcl_impl),
                             chunk_size=cfg.cgcl_chunk_size, key_dtype=key_dtype,
                             positions=positions, hard_negatives=hard, keys=cfg.cgcl_keys,
                             valid=valid)
        return jnp.stack([terms[t] for t in TERMS])

    if cfg.adaptive_weights:
        values, vjp = jax.vjp(terms_of, out.e_rgb, out.e_sar)
        norms = jnp.stack([
            jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                         for g in vjp(jnp.zeros(3, values.dtype).at[t].set(1.0))))
            for t in range(3)])
        weights = jax.lax.stop_gradient(jax.nn.softmax(norms / cfg.adaptive_tau))
    else:
        values = terms_of(out.e_rgb, out.e_sar)
        weights = jnp.asarray([cfg.alpha, cfg.beta, cfg.gamma], values.dtype)
    metrics = {f"cgcl_{t}": values[i] for i, t in enumerate(TERMS)}
    if cfg.adaptive_weights:
        metrics.update({f"cgcl_weight_{t}": weights[i] for i, t in enumerate(TERMS)})
    if temperatures is not None:
        metrics.update({f"tau_{t}": temperatures[i] for i, t in enumerate(TERMS)})
    return jnp.sum(weights * values), metrics


def pretraining_loss(out: MaRSOutput, cfg: LossConfig, *, temperatures: jax.Array | None = None,
                     grid_width: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss and every term (plus the Modality Alignment Score) for logging.

    temperatures: learnable (tau_patch, tau_global, tau_cross), else the config's.
    grid_width: patches per image row, for hard negatives' grid distances.
    """
    weights = out.masking.mask * out.patch_valid  # masked patches with data in both modalities
    mim = dict(norm_pix=cfg.norm_pix, loss_type=cfg.mim_type)
    mim_rgb = mim_loss(out.pred_rgb, out.target_rgb, weights, **mim)
    mim_sar = mim_loss(out.pred_sar, out.target_sar, weights, **mim)
    cgcl, cgcl_metrics = cgcl_objective(out, cfg, temperatures=temperatures,
                                        grid_width=grid_width)
    total = mim_rgb + mim_sar + cfg.cgcl_weight * cgcl
    metrics = {"loss": total, "mim_rgb": mim_rgb, "mim_sar": mim_sar, "cgcl": cgcl,
               **cgcl_metrics}
    b, n, _ = out.z_rgb.shape
    if b * n >= 2:
        metrics["mas"] = modality_alignment_score(out.e_rgb, out.e_sar,
                                                  valid=visible_validity(out))
    return total, metrics

