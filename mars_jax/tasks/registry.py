"""The downstream tasks of the MaRS paper's dense evaluation: what each reads, predicts and
is scored by.

A ``Task`` names the example keys its model reads (by role: ``optical``, ``sar``, and for
bi-temporal tasks ``optical_t2`` / ``sar_t2``), the label key, the head it needs, the loss and
the metrics. Datasets follow the key names of the data contract (SynthVHR, the real-layout
loaders in ``mars_jax.data.datasets``, ingested shards), so a task reads any of them.

    task             kind          inputs (role: key)                 label      headline
    landcover        segmentation  optical, sar                       landcover  miou
    damage           segmentation  optical (pre), sar: sar_t2 (post)  damage     miou
    change           change        optical, sar | optical_t2, sar_t2  change     f1 (change)
    building_height  regression    optical, sar                       height     rmse (buildings)
    roads            binary        optical, sar                       road       iou (road)
    translation      translation   sar                                optical    psnr

Translation (SAR -> optical) reads SAR only and predicts the optical image: its target is
``optical / 255`` (float32 [H, W, 3] in [0, 1]), its head the regression UPerNet with 3
outputs and a sigmoid (``activation``), its loss a masked L1 over the valid pixels plus,
with ``ssim_weight`` > 0, ``ssim_weight * (1 - SSIM)`` (dm-pix's SSIM, per image, averaged
over the images holding a valid pixel), its metrics PSNR, SSIM and L1
(``metrics.image_quality``) and its baseline a constant image of the training mean colour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mars_jax.data.synth.constants import CLASS_NAMES, DAMAGE_NAMES
from mars_jax.losses.pixelwise import masked_cross_entropy, masked_regression_loss
from mars_jax.metrics import (
    BinaryCounts,
    ConfusionMatrix,
    ImageQualitySums,
    RegressionSums,
    batch_confusion,
    batch_counts,
    batch_image_sums,
    batch_sums,
)

IGNORE_INDEX = 255
KINDS = ("segmentation", "binary", "change", "regression", "translation", "detection")
MODALITIES = ("optical", "sar")


class ExampleError(ValueError):
    """An example cannot feed a task: a key missing, shapes that differ, a bad label."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One downstream task (module docstring). ``inputs`` maps a model role to the example
    key holding it; ``dates`` is 2 for bi-temporal tasks (roles ``*_t2`` for the second)."""

    name: str
    kind: str
    label: str
    inputs: Mapping[str, str]
    classes: tuple[str, ...] = ()
    mask: str | None = None  # regression: the key of the pixels scored (None: label > 0)
    headline: str = "miou"
    higher_is_better: bool = True
    activation: str | None = None  # the head's output activation, when the task fixes it
    # Why a linear probe cannot serve the task and what to use instead (None: it can).
    no_linear_probe: str | None = None

    def setup_problem(self, protocol: str, modalities: tuple[str, ...],
                      modality_dropout: float) -> str | None:
        """What makes a fine-tuning setup wrong for this task, said to the user (None:
        nothing); checked with the config, before anything is built."""
        del modalities, modality_dropout  # every modality set serves the dense tasks
        if protocol == "linear" and self.no_linear_probe:
            return f"protocol 'linear' {self.no_linear_probe}"
        return None

    @property
    def dates(self) -> int:
        return 2 if any(role.endswith("_t2") for role in self.inputs) else 1

    @property
    def num_outputs(self) -> int:
        if self.kind == "translation":
            return 3  # RGB
        return 1 if self.kind == "regression" else (
            2 if self.kind in ("binary", "change") else len(self.classes))

    @property
    def head_kind(self) -> str:
        return {"regression": "regression", "change": "change",
                "translation": "regression"}.get(self.kind, "upernet")

    @property
    def roles(self) -> tuple[str, ...]:
        """The modalities this task's model can read (``optical``, ``sar``)."""
        return tuple(m for m in MODALITIES if any(role.removesuffix("_t2") == m
                                                  for role in self.inputs))

    def keys(self, modalities: tuple[str, ...]) -> tuple[str, ...]:
        """Example keys a batch needs with these modalities."""
        keys = [key for role, key in self.inputs.items() if role.removesuffix("_t2")
                in modalities]
        keys += [self.label, "valid"] + ([self.mask] if self.mask else [])
        return tuple(dict.fromkeys(keys))

    def model_inputs(self, batch: Mapping[str, jax.Array], modalities: tuple[str, ...]
                     ) -> dict[str, jax.Array]:
        """Role -> array of ``TaskModel``'s input for these modalities (and ``valid``)."""
        roles = {role: batch[key] for role, key in self.inputs.items()
                 if role.removesuffix("_t2") in modalities}
        return roles | {"valid": batch["valid"]}

    def check_example(self, example: Mapping[str, Any], modalities: tuple[str, ...],
                      where: str = "example") -> None:
        """Raises naming the key, shape and dtype when ``example`` (one unbatched example)
        cannot feed this task with these modalities."""
        import numpy as np

        missing = [key for key in self.keys(modalities) if key not in example]
        if missing:
            hint = ("; train on the modalities the data has with --config.task.modalities="
                    "optical" if "optical" in self.roles and any(
                        self.inputs.get(r) in missing for r in ("sar", "sar_t2")) else "")
            raise ExampleError(f"{where} lacks {missing} for task {self.name!r} with modalities "
                           f"{list(modalities)}; it has {sorted(example)}{hint}")
        label = np.asarray(example[self.label])
        height, width = label.shape[:2] if label.ndim >= 2 else (None, None)
        for key in self.keys(modalities):
            value = np.asarray(example[key])
            if value.ndim < 2 or value.shape[:2] != (height, width):
                raise ExampleError(f"{where}: {key!r} has shape {value.shape}, the label "
                                 f"{self.label!r} {label.shape}: they must share [H, W]")
        if self.kind == "translation":
            if label.shape[2:] != (3,) or label.dtype != np.uint8:
                raise ExampleError(f"{where}: label {self.label!r} must be a uint8 [H, W, 3] "
                                   f"optical image, got {label.dtype} {label.shape}")
        elif self.kind != "regression" and not (np.issubdtype(label.dtype, np.integer)
                                                or label.dtype == bool):
            raise ExampleError(f"{where}: label {self.label!r} must hold integer class ids, "
                             f"got {label.dtype}")
        if self.kind == "segmentation":
            kept = label[label != IGNORE_INDEX]
            if kept.size and int(kept.max()) >= self.num_outputs:
                raise ExampleError(f"{where}: label {self.label!r} holds class {int(kept.max())}"
                                 f" but task {self.name!r} has {self.num_outputs} classes "
                                 f"{list(self.classes)}")

    # -- targets ---------------------------------------------------------------------------
    def target_mask(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Pixels that count: valid data, and for regression the scored pixels."""
        valid = batch["valid"].astype(bool)
        if self.kind != "regression":
            return valid
        scored = batch[self.mask].astype(bool) if self.mask else batch[self.label] > 0
        return valid & scored

    def labels(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        label = batch[self.label]
        if self.kind == "translation":  # uint8 optical -> [0, 1]
            return label.astype(jnp.float32) / 255.0
        return label.astype(jnp.float32) if self.kind == "regression" else label.astype(
            jnp.int32)

    # -- loss and metrics ------------------------------------------------------------------
    def loss(self, logits: jax.Array, batch: Mapping[str, jax.Array], *,
             class_weights: jax.Array | None = None, ssim_weight: float = 0.0) -> jax.Array:
        """Masked L1 (regression, translation) or cross-entropy, optionally class-weighted
        ([K]); translation adds ``ssim_weight * (1 - SSIM)`` when ``ssim_weight`` > 0."""
        if ssim_weight < 0 or (ssim_weight and self.kind != "translation"):
            raise ValueError(f"ssim_weight {ssim_weight} for task {self.name!r}: it must be "
                             ">= 0, and 0 for every kind but translation")
        mask = self.target_mask(batch)
        if self.kind == "translation":
            return translation_loss(logits, self.labels(batch), mask, ssim_weight)
        if self.kind == "regression":
            value, _ = masked_regression_loss(logits[..., 0], self.labels(batch), mask,
                                              kind="l1")
        else:
            value, _ = masked_cross_entropy(logits, self.labels(batch), valid=mask,
                                            ignore_index=IGNORE_INDEX,
                                            class_weights=class_weights)
        return value

    def batch_stats(self, logits: jax.Array, batch: Mapping[str, jax.Array]):
        """Device-side sufficient statistics of one batch for ``new_metric``."""
        mask = self.target_mask(batch)
        if self.kind == "translation":
            return batch_image_sums(jnp.clip(logits.astype(jnp.float32), 0.0, 1.0),
                                    self.labels(batch), mask)
        if self.kind == "regression":
            return batch_sums(logits[..., 0].astype(jnp.float32), self.labels(batch), mask)
        labels = self.labels(batch)
        pred = jnp.argmax(logits, axis=-1)
        if self.kind == "segmentation":
            return batch_confusion(pred, labels, self.num_outputs, valid=mask,
                                   ignore_index=IGNORE_INDEX)
        kept = mask & (labels != IGNORE_INDEX)
        return batch_counts(pred == 1, labels == 1, valid=kept)

    def new_metric(self):
        """The host accumulator of this task's metrics."""
        if self.kind == "translation":
            return ImageQualitySums()
        if self.kind == "regression":
            return RegressionSums()
        if self.kind == "segmentation":
            return ConfusionMatrix(self.num_outputs, class_names=self.classes)
        return BinaryCounts()

    def prepare(self, example: dict[str, Any]) -> dict[str, Any]:
        """A task's own host-side map of one training example after the pipeline's crop,
        flips and turns, before batching (default: none; detection pads its boxes and encodes
        its CenterNet targets to fixed shapes there)."""
        return example

    def augment(self, batch: Mapping[str, jax.Array], key: jax.Array
                ) -> Mapping[str, jax.Array]:
        """A task's own device-side training augmentation of a batch (default: none; the
        pipeline's crops, flips and turns already apply to every task)."""
        del key
        return batch

    def trivial_prediction(self, labels, mask):
        """The baseline a model must beat: the majority class, or the mean target
        (translation: the mean colour in [0, 1], a tuple of 3 floats; mid-grey when no pixel
        counts)."""
        import numpy as np

        labels, mask = np.asarray(labels), np.asarray(mask, bool)
        if self.kind == "translation":
            kept = labels[mask].astype(np.float64) / 255.0  # [N, 3]
            return tuple(float(v) for v in kept.mean(0)) if kept.size else (0.5,) * 3
        kept = labels[mask & (labels != IGNORE_INDEX)] if self.kind != "regression" else \
            labels[mask]
        if self.kind == "regression":
            return float(kept.mean()) if kept.size else 0.0
        return int(np.bincount(kept.astype(np.int64)).argmax()) if kept.size else 0


def translation_loss(pred: jax.Array, target: jax.Array, mask: jax.Array,
                     ssim_weight: float = 0.0) -> jax.Array:
    """Masked L1 of images ``pred``, ``target`` ``[B, H, W, C]`` in [0, 1] over ``mask``
    ``[B, H, W]`` (mean over the valid pixels and channels), plus ``ssim_weight * (1 - SSIM)``
    when ``ssim_weight`` > 0: dm-pix's SSIM per image, the prediction taking the target's
    values outside ``mask`` (no gradient there), averaged over the images with a valid pixel."""
    import dm_pix as pix

    mask4 = jnp.broadcast_to(mask.astype(bool)[..., None], target.shape)
    value, _ = masked_regression_loss(pred, target, mask4, kind="l1")
    if not ssim_weight:
        return value
    filled = jnp.where(mask4, pred.astype(jnp.float32), jax.lax.stop_gradient(target))
    ssim = pix.ssim(filled, target.astype(jnp.float32), max_val=1.0)  # [B]
    counted = jnp.any(mask, axis=(1, 2)).astype(jnp.float32)
    dissimilarity = jnp.sum(counted * (1.0 - ssim)) / jnp.maximum(jnp.sum(counted), 1.0)
    return value + ssim_weight * dissimilarity


def _one_date(label: str, **extra) -> dict:
    return {"optical": "optical", "sar": "sar"} | extra


TASKS: dict[str, Task] = {
    "landcover": Task("landcover", "segmentation", "landcover", _one_date("landcover"),
                      classes=CLASS_NAMES, headline="miou"),
    "damage": Task("damage", "segmentation", "damage", {"optical": "optical", "sar": "sar_t2"},
                   classes=DAMAGE_NAMES, headline="miou"),
    "change": Task("change", "change", "change",
                   {"optical": "optical", "sar": "sar", "optical_t2": "optical_t2",
                    "sar_t2": "sar_t2"}, classes=("no change", "change"), headline="f1",
                   no_linear_probe="has no bi-temporal form; use 'frozen' (a frozen encoder "
                   "with the change head) for 'change'"),
    "building_height": Task("building_height", "regression", "height", _one_date("height"),
                            headline="rmse", higher_is_better=False),
    "roads": Task("roads", "binary", "road", _one_date("road"),
                  classes=("background", "road"), headline="iou"),
    "translation": Task("translation", "translation", label="optical", inputs={"sar": "sar"},
                        headline="psnr", activation="sigmoid",
                        no_linear_probe="cannot decode an image (a 1x1 probe of patch tokens, "
                        "upsampled); use 'frozen' (a frozen encoder with the UPerNet decoder) "
                        "for 'translation'"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks are {sorted(TASKS)}")
    return TASKS[name]
