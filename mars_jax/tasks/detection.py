"""Object detection: CenterNet boxes of one class set, from SAR alone or optical + SAR.

    task                kind       inputs          label (+ extra)        classes
    sar_detection       detection  sar             boxes (+ box_classes)  small object
    building_detection  detection  optical, sar    boxes (+ box_classes)  building

Examples carry ``boxes`` float32 [K, 4] pixel-edge (x0, y0, x1, y1) and ``box_classes`` int32
[K] (SynthVHR: ``BOX_BUILDING`` / ``BOX_SMALL_OBJECT``; a COCO folder: its categories), K
varying per example. ``source_classes`` names the example class ids the task detects, in the
order of its ``classes`` (task class c = ``source_classes[c]``; None: every class as is, a
COCO dataset's own); boxes of other classes are not objects to this task.

Training: the pipeline crops, flips and turns the boxes (``data.pipeline.transform_boxes``),
then ``prepare`` (host-side, per example) keeps the task's boxes of nonzero area, pads them to
``max_objects`` (``boxes`` [M, 4], ``box_classes`` [M] task ids, -1 padding, ``box_valid``
[M]) and encodes CenterNet's targets at the crop size and the head's ``stride``
(``tasks.centernet.encode_targets``: ``target_heatmap`` [h, w, K], ``target_indices`` [M],
``target_size`` / ``target_offset`` [M, 2], ``target_mask`` [M]), so every batch has fixed
shapes. The head (``models.detection.PackedCenterNetHead``) returns the heatmap logits, size
and offset maps packed into one ``[B, h, w, K + 4]`` array, which ``split`` unpacks; the loss
is ``losses.detection.centernet_loss``.

Scoring (``train.evaluate_detection``): held-out scenes by sliding windows of the crop, each
window decoded (top-k peaks), the windows merged with class-wise NMS, COCO box mAP
(``metrics.coco.CocoDetections``); the trivial baseline is no box at all (mAP 0 where the
scenes hold ground truth).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from mars_jax.data.synth.constants import BOX_BUILDING, BOX_SMALL_OBJECT
from mars_jax.losses.detection import centernet_loss
from mars_jax.metrics.coco import CocoDetections
from mars_jax.models.detection import unpack
from mars_jax.tasks.centernet import encode_targets
from mars_jax.tasks.registry import ExampleError, Task

TARGET_KEYS = ("heatmap", "indices", "size", "offset", "mask")  # prefixed "target_"


@dataclasses.dataclass(frozen=True)
class DetectionTask(Task):
    """A CenterNet detection task (module docstring)."""

    extra: str = "box_classes"
    source_classes: tuple[int, ...] | None = None
    stride: int = 4  # the head's output stride (pixels per heatmap cell)
    max_objects: int = 64  # box slots per training crop
    top_k: int = 100  # peaks decoded per window

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    def setup_problem(self, protocol: str, modalities: tuple[str, ...],
                      modality_dropout: float) -> str | None:
        del modalities, modality_dropout
        if protocol == "linear":
            return ("protocol 'linear' has no detection form (a 1x1 probe has no heatmap, size "
                    "and offset branches); use 'frozen' (a frozen encoder with the CenterNet "
                    f"head) for {self.name!r}")
        return None

    @property
    def head_kind(self) -> str:
        return "centernet"

    def keys(self, modalities: tuple[str, ...]) -> tuple[str, ...]:
        keys = [key for role, key in self.inputs.items() if role in modalities]
        return tuple(dict.fromkeys([*keys, self.label, self.extra, "valid"]))

    def check_example(self, example: Mapping[str, Any], modalities: tuple[str, ...],
                      where: str = "example") -> None:
        missing = [key for key in self.keys(modalities) if key not in example]
        if missing:
            raise ExampleError(f"{where} lacks {missing} for task {self.name!r} with modalities "
                               f"{list(modalities)}; it has {sorted(example)}")
        boxes, classes = np.asarray(example[self.label]), np.asarray(example[self.extra])
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype,
                                                                         np.floating):
            raise ExampleError(f"{where}: {self.label!r} must be float [K, 4] boxes (x0, y0, "
                               f"x1, y1), got {boxes.dtype} {boxes.shape}")
        if classes.shape != (boxes.shape[0],) or not np.issubdtype(classes.dtype, np.integer):
            raise ExampleError(f"{where}: {self.extra!r} must be integer [K] = "
                               f"[{boxes.shape[0]}] class ids, got {classes.dtype} "
                               f"{classes.shape}")
        if self.source_classes is None and classes.size and (
                classes.min() < 0 or classes.max() >= self.num_outputs):
            raise ExampleError(f"{where}: {self.extra!r} holds classes outside [0, "
                               f"{self.num_outputs}) of task {self.name!r} "
                               f"{list(self.classes)}")
        shape = np.shape(example["valid"])[:2]
        for key in self.keys(modalities):
            if key not in (self.label, self.extra) and np.shape(example[key])[:2] != shape:
                raise ExampleError(f"{where}: {key!r} has shape {np.shape(example[key])}, "
                                   f"'valid' {shape}: they must share [H, W]")

    # -- boxes and targets ---------------------------------------------------------------------
    def task_boxes(self, boxes: Any, classes: Any) -> tuple[np.ndarray, np.ndarray]:
        """An example's boxes of this task's classes, of nonzero area -> (float32 [n, 4],
        int32 [n] task class ids)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        classes = np.asarray(classes).reshape(-1).astype(np.int64)
        if self.source_classes is None:
            keep = (classes >= 0) & (classes < self.num_outputs)
            mapped = classes
        else:
            lookup = {c: i for i, c in enumerate(self.source_classes)}
            mapped = np.asarray([lookup.get(int(c), -1) for c in classes], np.int64)
            keep = mapped >= 0
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep], mapped[keep].astype(np.int32)

    def prepare(self, example: dict[str, Any]) -> dict[str, Any]:
        """The padded boxes and CenterNet targets of one (cropped) example (module docstring)."""
        boxes, classes = self.task_boxes(example[self.label], example[self.extra])
        size = np.shape(example["valid"])[:2]
        targets = encode_targets(boxes, classes, None, size, self.num_outputs,
                                 stride=self.stride, max_objects=self.max_objects)
        n = min(len(boxes), self.max_objects)
        padded = np.zeros((self.max_objects, 4), np.float32)
        padded[:n] = boxes[:n]
        ids = np.full(self.max_objects, -1, np.int32)
        ids[:n] = classes[:n]
        out = dict(example) | {self.label: padded, self.extra: ids,
                               "box_valid": np.arange(self.max_objects) < n}
        return out | {f"target_{key}": targets[key] for key in TARGET_KEYS}

    # -- model output, loss and metrics --------------------------------------------------------
    def split(self, logits: jax.Array) -> dict[str, jax.Array]:
        """The packed head output -> {"heatmap", "size", "offset"}."""
        return unpack(logits, self.num_outputs)

    def target_mask(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return batch["valid"].astype(bool)

    def loss(self, logits: jax.Array, batch: Mapping[str, jax.Array], *,
             class_weights: jax.Array | None = None, ssim_weight: float = 0.0) -> jax.Array:
        del class_weights, ssim_weight  # terms of other kinds
        targets = {key: batch[f"target_{key}"] for key in TARGET_KEYS}
        return centernet_loss(self.split(logits), targets)["loss"]

    def batch_stats(self, logits: jax.Array, batch: Mapping[str, jax.Array]):
        raise NotImplementedError("detection is scored on the host over whole scenes (decode, "
                                  "merge, COCO mAP): train.evaluate_detection")

    def new_metric(self) -> CocoDetections:
        return CocoDetections(self.num_outputs)

    def trivial_prediction(self, labels, mask):
        """No box at all."""
        del labels, mask
        return ()


SAR_DETECTION = DetectionTask(
    "sar_detection", "detection", "boxes", {"sar": "sar"}, classes=("small object",),
    headline="map", source_classes=(BOX_SMALL_OBJECT,))
BUILDING_DETECTION = DetectionTask(
    "building_detection", "detection", "boxes", {"optical": "optical", "sar": "sar"},
    classes=("building",), headline="map", source_classes=(BOX_BUILDING,))
DETECTION_TASKS = (SAR_DETECTION, BUILDING_DETECTION)
