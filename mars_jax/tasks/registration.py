"""Optical-SAR registration: dense descriptors, their training loss, and a pair registered.

The task reads an optical image and a SAR image on another grid (SynthVHR's ``sar_warped``;
a GUSO pair) and the ground-truth transform ``affine`` (optical pixel (x, y, 1) -> SAR pixel).
Its model is the backbone run once per modality (optical alone, then SAR alone, as the two
dates of a bi-temporal task) and a ``DescriptorHead`` shared by both; the "logits" are the two
descriptor maps concatenated, ``[B, H/s, W/s, 2 * dim]`` at the head's stride s = P / 4.

Training (``descriptor_loss``): query cells on the optical descriptor grid are mapped through
the affine into the SAR grid and classified over every SAR cell, the target the bilinear
weights of the twin's 4 cells (a dense cross-entropy, as the fine matcher's nearest
neighbour search); then SAR queries through the inverse into the optical grid. Every cell
beside the twin is a negative, the one at the query's own grid position too: descriptors
that matched by position (both encoders add the same position embedding) would not pay.

Registration (``register``): coarse-to-fine matching of the two descriptor maps
(``tasks.matching``), OpenCV's RANSAC, GUSO's scores (``metrics.registration``). Zero-shot,
the descriptors are the pretrained encoders' CGCL embeddings of each patch, which CGCL
trained to agree across the modalities patch by patch (``encoder_descriptors``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.metrics.registration import PairScore, RegistrationScores, score_pair
from mars_jax.models.descriptors import normalize
from mars_jax.tasks.matching import Fit, MatchSettings, fit_transform, match_descriptors
from mars_jax.tasks.registry import ExampleError, Task

FINE_TUNED = MatchSettings(pool=4, radius=4)  # the descriptor head: P / 4 cells, 4 a patch
ZERO_SHOT = MatchSettings(pool=1, radius=1)  # encoder tokens: one cell a patch
TEMPERATURE = 0.1  # InfoNCE temperature of the descriptor loss
MAX_POINTS = 256  # query points per image in the loss (a regular subsample of the grid)


def query_step(rows: int, cols: int, max_points: int = MAX_POINTS) -> int:
    """Grid subsampling step that leaves at most ``max_points`` query cells."""
    return max(1, math.ceil(math.sqrt(rows * cols / max_points)))


def _grid_cross_entropy(d_query: jax.Array, d_key: jax.Array, transform: jax.Array,
                        v_query: jax.Array, v_key: jax.Array, r: jax.Array, c: jax.Array,
                        stride: float, temperature: float) -> tuple[jax.Array, jax.Array]:
    """One image, one direction: the query cells (r, c) of ``d_query`` against every cell of
    ``d_key``; the target is the bilinear weights of the query's twin (``transform``: query
    px -> key px) over its 4 key cells, those without data dropped. (sum, count)."""
    rows, cols, dim = d_key.shape
    height, width = v_query.shape
    pixels = (jnp.stack([c, r], -1).astype(jnp.float32) + 0.5) * stride - 0.5
    cells = ((pixels @ transform[:, :2].T + transform[:, 2]) + 0.5) / stride - 0.5
    inside = ((cells[:, 0] >= 0) & (cells[:, 0] <= cols - 1) & (cells[:, 1] >= 0)
              & (cells[:, 1] <= rows - 1))
    x = jnp.clip(cells[:, 0], 0, cols - 1)
    y = jnp.clip(cells[:, 1], 0, rows - 1)
    x0 = jnp.clip(jnp.floor(x), 0, cols - 2).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor(y), 0, rows - 2).astype(jnp.int32)
    fx, fy = x - x0, y - y0
    centre_rows = jnp.clip(jnp.round((jnp.arange(rows) + 0.5) * stride - 0.5), 0, height - 1)
    centre_cols = jnp.clip(jnp.round((jnp.arange(cols) + 0.5) * stride - 0.5), 0, width - 1)
    key_ok = v_key[centre_rows.astype(jnp.int32)][:, centre_cols.astype(jnp.int32)].reshape(-1)
    target = jnp.zeros((len(r), rows * cols), jnp.float32)
    for dy, dx, weight in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)),
                           (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        target = target + weight[:, None] * jax.nn.one_hot((y0 + dy) * cols + x0 + dx,
                                                           rows * cols)
    target = jnp.where(key_ok[None, :], target, 0.0)
    on_data = jnp.sum(target, axis=1)
    own = v_query[jnp.clip(jnp.round(pixels[:, 1]).astype(jnp.int32), 0, height - 1),
                  jnp.clip(jnp.round(pixels[:, 0]).astype(jnp.int32), 0, width - 1)]
    counted = inside & own & (on_data >= 0.5)  # at least half the twin on data
    target = target / jnp.maximum(on_data, 1e-6)[:, None]
    logits = (d_query[r, c] @ d_key.reshape(-1, dim).T) / temperature
    logits = jnp.where(key_ok[None, :], logits, -1e9)
    per_query = -jnp.sum(target * jax.nn.log_softmax(logits, axis=1), axis=1)
    return jnp.sum(jnp.where(counted, per_query, 0.0)), jnp.sum(counted)


def _inverse_affine(affine: jax.Array) -> jax.Array:
    linear_inv = jnp.linalg.inv(affine[:, :2])
    return jnp.concatenate([linear_inv, -(linear_inv @ affine[:, 2:])], axis=1)


def descriptor_loss(desc_optical: jax.Array, desc_sar: jax.Array, affine: jax.Array,
                    valid: jax.Array, valid_sar: jax.Array, *, temperature: float = TEMPERATURE,
                    max_points: int = MAX_POINTS) -> tuple[jax.Array, jax.Array]:
    """Dense cross-entropy of query cells against every cell of the other image, both ways
    (module docstring).

    desc_*: [B, h, w, D] unit descriptors at stride s = H / h; affine [B, 2, 3] optical px ->
    SAR px; valid [B, H, W] (optical data), valid_sar [B, H, W] (SAR data). Queries are a
    regular subsample of at most ``max_points`` cells of each grid; every key cell with data is
    a candidate, the twin's own 4 cells (bilinear weights) the target, so a cell beside the
    twin, the same grid position included, is a negative: matching by position alone does
    not pay. A query counts when its pixel has data and at least half its twin's weight falls
    on cells with data. Returns (mean over counted queries of both directions, their
    number)."""
    _, rows, cols, _ = desc_optical.shape
    stride = valid.shape[1] / rows
    step = query_step(rows, cols, max_points)
    r, c = jnp.meshgrid(jnp.arange(step // 2, rows, step), jnp.arange(step // 2, cols, step),
                        indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)

    def one(d_opt, d_sar, a, v, v_sar):
        forward = _grid_cross_entropy(d_opt, d_sar, a, v, v_sar, r, c, stride, temperature)
        backward = _grid_cross_entropy(d_sar, d_opt, _inverse_affine(a), v_sar, v, r, c,
                                       stride, temperature)
        return forward[0] + backward[0], forward[1] + backward[1]

    total, count = jax.vmap(one)(desc_optical, desc_sar, affine.astype(jnp.float32),
                                 valid.astype(bool), valid_sar.astype(bool))
    count = jnp.sum(count)
    return jnp.sum(total) / jnp.maximum(count, 1), count


@dataclasses.dataclass(frozen=True)
class RegistrationTask(Task):
    """The ``registration`` task (module docstring); ``dim`` is the descriptor width."""

    dim: int = 64
    max_shift: int = 0  # training augmentation (``augment``), pixels

    @property
    def num_outputs(self) -> int:
        return self.dim

    def setup_problem(self, protocol: str, modalities: tuple[str, ...],
                      modality_dropout: float) -> str | None:
        if protocol == "linear":
            return ("protocol 'linear' has no registration form; use 'frozen' (a frozen "
                    "encoder with the descriptor head)")
        if tuple(modalities) != ("optical", "sar"):
            return ("registration matches an optical image to a SAR image: task.modalities "
                    f"must be ('optical', 'sar'), got {tuple(modalities)}")
        if modality_dropout:
            return "registration needs both images of every pair: task.modality_dropout must be 0"
        return None

    @property
    def head_kind(self) -> str:
        return "descriptor"

    def check_example(self, example: Mapping[str, Any], modalities: tuple[str, ...],
                      where: str = "example") -> None:
        missing = [key for key in self.keys(modalities) if key not in example]
        if missing:
            raise ExampleError(f"{where} lacks {missing} for task {self.name!r}; it has "
                               f"{sorted(example)} (SynthVHR writes them with "
                               "with_registration=True)")
        affine = np.asarray(example[self.label])
        if affine.shape != (2, 3):
            raise ExampleError(f"{where}: {self.label!r} must be a 2x3 affine (optical pixel "
                               f"-> SAR pixel), got shape {affine.shape}")
        shape = np.shape(example[self.inputs["optical"]])[:2]
        for key in self.keys(modalities):
            if key != self.label and np.shape(example[key])[:2] != shape:
                raise ExampleError(f"{where}: {key!r} has shape {np.shape(example[key])}, "
                                   f"the optical image {shape}: they must share [H, W]")

    def target_mask(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return batch["valid"].astype(bool)

    def split(self, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The head's output -> (optical, SAR) descriptor maps."""
        return logits[..., :self.dim], logits[..., self.dim:]

    def loss(self, logits: jax.Array, batch: Mapping[str, jax.Array], *,
             class_weights: jax.Array | None = None, ssim_weight: float = 0.0) -> jax.Array:
        del class_weights, ssim_weight  # class / image-quality terms of other kinds
        optical, sar = self.split(logits)
        value, _ = descriptor_loss(optical, sar, batch[self.label], batch["valid"],
                                   batch[self.mask])
        return value

    def batch_stats(self, logits: jax.Array, batch: Mapping[str, jax.Array]):
        raise NotImplementedError("registration is scored per pair on the host (matching and "
                                  "RANSAC): train.evaluate_registration, not batch_stats")

    def new_metric(self) -> RegistrationScores:
        return RegistrationScores()

    def augment(self, batch: Mapping[str, jax.Array], key: jax.Array
                ) -> Mapping[str, jax.Array]:
        """Shifts each SAR image by a random whole-pixel offset of up to ``max_shift`` px
        (the affine follows; pixels shifted in are no-data). SynthVHR's misregistrations are
        a few pixels, under a patch, so without it a descriptor could match by position
        alone (both encoders add the same position embedding to patch j)."""
        if not self.max_shift:
            return batch
        sar_key, mask_key = self.inputs["sar_t2"], self.mask
        size = batch[sar_key].shape[0]
        shifts = jax.random.randint(key, (size, 2), -self.max_shift, self.max_shift + 1)
        sar, valid = jax.vmap(_shift_image)(batch[sar_key], batch[mask_key], shifts)
        affine = batch[self.label].at[:, :, 2].add(shifts.astype(batch[self.label].dtype))
        return dict(batch) | {sar_key: sar, mask_key: valid, self.label: affine}

    def trivial_prediction(self, labels, mask):
        """No registration at all: the identity transform."""
        del labels, mask
        return np.eye(3)[:2]


REGISTRATION = RegistrationTask(
    "registration", "registration", "affine",
    {"optical": "optical", "sar_t2": "sar_warped"}, mask="valid_warped",
    headline="corner_error", higher_is_better=False)


def _shift_image(image: jax.Array, valid: jax.Array, shift: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """``out[y, x] = image[y - dy, x - dx]`` for shift (dx, dy); pixels from outside are
    no-data (edge values, ``valid`` False)."""
    height, width = valid.shape
    ys = jnp.arange(height) - shift[1]
    xs = jnp.arange(width) - shift[0]
    inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
    ys, xs = jnp.clip(ys, 0, height - 1), jnp.clip(xs, 0, width - 1)
    return image[ys][:, xs], valid[ys][:, xs] & inside


# ------------------------------------------------------------------------------------------
# Descriptors of one image, and a pair registered
# ------------------------------------------------------------------------------------------
def model_descriptors(model, image: jax.Array, modality: str,
                      valid: jax.Array | None = None) -> jax.Array:
    """A registration ``TaskModel``'s descriptors [B, H/s, W/s, D] of one modality's images
    ([B, H, W, C]; H, W divisible by the patch size), the model in eval mode."""
    out = model.backbone(image if modality == "optical" else None,
                         image if modality == "sar" else None, valid=valid)
    return model.head.describe(out)


def encoder_descriptors(encoder, image: jax.Array, modality: str,
                        valid: jax.Array | None = None) -> jax.Array:
    """Zero-shot descriptors [B, H/P, W/P, D_e]: the encoder's CGCL embeddings per patch."""
    out = encoder.encode(image if modality == "optical" else None,
                         image if modality == "sar" else None, valid=valid, fuse=False)
    tokens = out.e_rgb if modality == "optical" else out.e_sar
    rows, cols = out.grid if out.grid is not None else (
        image.shape[1] // encoder.config.patch_size, image.shape[2] // encoder.config.patch_size)
    return normalize(tokens.reshape(tokens.shape[0], rows, cols, tokens.shape[-1]))


@dataclasses.dataclass(frozen=True)
class Registered:
    """One pair: the matches (optical px -> SAR px), the fit, and (with a truth) its scores."""

    src: np.ndarray
    dst: np.ndarray
    scores: np.ndarray
    fit: Fit
    score: PairScore | None = None

    @property
    def transform(self) -> np.ndarray | None:
        return self.fit.transform


def cell_valid(valid: np.ndarray | None, rows: int, cols: int) -> np.ndarray | None:
    """[H, W] pixel validity -> [rows, cols] cells whose pixels all have data."""
    if valid is None:
        return None
    valid = np.asarray(valid, bool)
    h, w = valid.shape
    return valid.reshape(rows, h // rows, cols, w // cols).all(axis=(1, 3))


def register_descriptors(desc_optical: np.ndarray, desc_sar: np.ndarray, stride: float, *,
                         settings: MatchSettings = FINE_TUNED, model: str = "affine",
                         threshold: float = 5.0, valid_optical: np.ndarray | None = None,
                         valid_sar: np.ndarray | None = None, truth: np.ndarray | None = None,
                         image_size: tuple[int, int] | None = None,
                         matcher=None) -> Registered:
    """Matches two [h, w, D] descriptor maps of ``stride`` px per cell, fits ``model`` by
    RANSAC and scores the pair against ``truth`` when given. ``matcher``: a jitted
    ``match_descriptors`` to reuse (one compile per size)."""
    rows_a, cols_a = desc_optical.shape[:2]
    rows_b, cols_b = desc_sar.shape[:2]
    va, vb = cell_valid(valid_optical, rows_a, cols_a), cell_valid(valid_sar, rows_b, cols_b)
    match = matcher or jax.jit(match_descriptors, static_argnums=(2, 3))
    src, dst, score, mask = (np.asarray(x) for x in match(
        jnp.asarray(desc_optical), jnp.asarray(desc_sar), float(stride), settings,
        None if va is None else jnp.asarray(va), None if vb is None else jnp.asarray(vb)))
    src, dst, score = src[mask], dst[mask], score[mask]
    fit = fit_transform(src, dst, model, threshold=threshold)
    pair = None
    if truth is not None:
        pair = score_pair(truth, src, dst, fit.inliers, estimate=fit.transform,
                          image_size=image_size)
    return Registered(src, dst, score, fit, pair)
