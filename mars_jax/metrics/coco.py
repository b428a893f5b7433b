"""COCO box mAP of a detector, with ``faster_coco_eval`` (the C++ port of pycocotools'
COCOeval, same numbers).

Host accumulator only: detection metrics match boxes across a whole image set, so there is no
device half; the device's part is ``tasks.centernet.decode`` (fixed-shape top-k boxes). Per
image, ``add`` keeps the predicted boxes (x0, y0, x1, y1 pixel edges), scores and classes and
the ground truth; ``compute`` builds the COCO ground-truth dict in memory (boxes to x, y, w,
h; ``area`` = w h, the box area, which sets small / medium / large at 32^2 / 96^2 pixels;
``iscrowd`` 0; category id = class + 1) and runs the standard evaluation (IoU 0.50:0.95,
up to 100 detections per image, the best-scoring ones):

    map        AP @ IoU 0.50:0.95     ap50 / ap75  AP @ IoU 0.5 / 0.75
    ap_small   AP of areas < 32^2     ap_medium / ap_large  32^2..96^2 / > 96^2
    ar100      AR with 100 detections per image

Undefined values are NaN: no ground-truth box at all (every metric; COCOeval would give -1),
or no ground truth in an area range (COCOeval's -1 there). No predictions at all with ground
truth present is a defined miss: 0. Classes with no ground truth box are left out of the
class means (COCOeval's rule). Predictions with score <= 0 (``decode``'s padding) are dropped.

``state_dict`` / ``from_state_dict``: plain lists, JSON-ready (float boxes round-trip
exactly through JSON).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

METRICS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100")
_STATS_INDEX = {"map": 0, "ap50": 1, "ap75": 2, "ap_small": 3, "ap_medium": 4, "ap_large": 5,
                "ar100": 8}


def _boxes(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.size == 0:
        return np.zeros((0, 4))
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"{name} must be [n, 4] (x0, y0, x1, y1), got shape {a.shape}")
    return a


def _vector(x: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    a = np.asarray(x, dtype).reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries for {n} boxes")
    return a


def to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) -> COCO's (x, y, w, h)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


class CocoDetections:
    """Streams detections and ground truth per image; COCO metrics at the end (module
    docstring). ``num_classes``: categories 0..K-1 (None: the classes seen)."""

    kind = "coco_detections"

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.images: dict[Any, dict[str, Any]] = {}

    def add(self, image_id: Any, boxes: Any, scores: Any, classes: Any, gt_boxes: Any,
            gt_classes: Any, image_size: Sequence[int]) -> None:
        """One image: predictions (boxes [n, 4], scores [n], classes [n]), ground truth
        (gt_boxes [m, 4], gt_classes [m]), ``image_size`` = (height, width). ``image_id``:
        any hashable, JSON-able id (an int or str), once per image."""
        if image_id in self.images:
            raise ValueError(f"image {image_id!r} was added twice")
        boxes = _boxes(boxes, "boxes")
        scores = _vector(scores, len(boxes), "scores", np.float64)
        classes = _vector(classes, len(boxes), "classes", np.int64)
        gt_boxes = _boxes(gt_boxes, "gt_boxes")
        gt_classes = _vector(gt_classes, len(gt_boxes), "gt_classes", np.int64)
        keep = scores > 0
        height, width = (int(s) for s in image_size)
        self.images[image_id] = {
            "size": [height, width], "boxes": boxes[keep].tolist(),
            "scores": scores[keep].tolist(), "classes": classes[keep].tolist(),
            "gt_boxes": gt_boxes.tolist(), "gt_classes": gt_classes.tolist()}

    def update(self, batch: Mapping[str, Any]) -> None:
        """A batch of images: ``boxes`` [B, k, 4], ``scores`` [B, k], ``classes`` [B, k]
        (``decode``'s output), ``gt_boxes`` [B, m, 4], ``gt_classes`` [B, m], optional
        ``gt_valid`` [B, m] (padding mask), ``image_size`` (H, W), optional ``image_ids``
        [B] (default: consecutive ints after the images held)."""
        boxes = np.asarray(batch["boxes"])
        ids = batch.get("image_ids")
        ids = (list(range(len(self.images), len(self.images) + len(boxes))) if ids is None
               else [x.item() if hasattr(x, "item") else x for x in np.asarray(ids)])
        gt_valid = batch.get("gt_valid")
        for b, image_id in enumerate(ids):
            gt_boxes, gt_classes = np.asarray(batch["gt_boxes"][b]), np.asarray(
                batch["gt_classes"][b])
            if gt_valid is not None:
                keep = np.asarray(gt_valid[b], bool)
                gt_boxes, gt_classes = gt_boxes[keep], gt_classes[keep]
            self.add(image_id, boxes[b], np.asarray(batch["scores"][b]),
                     np.asarray(batch["classes"][b]), gt_boxes, gt_classes,
                     batch["image_size"])

    def merge(self, other: CocoDetections) -> CocoDetections:
        for image_id, image in other.images.items():
            if image_id in self.images:
                raise ValueError(f"image {image_id!r} is in both accumulators")
            self.images[image_id] = image
        return self

    def coco_inputs(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The ground-truth COCO dict and the detection list ``COCO.loadRes`` takes."""
        classes = set()
        for image in self.images.values():
            classes.update(image["gt_classes"])
            classes.update(image["classes"])
        count = self.num_classes if self.num_classes is not None else (
            max(classes) + 1 if classes else 0)
        bad = sorted(c for c in classes if not 0 <= c < count)
        if bad:
            raise ValueError(f"classes {bad} are outside [0, {count})")
        images, annotations, detections = [], [], []
        for n, image in enumerate(self.images.values(), start=1):
            height, width = image["size"]
            images.append({"id": n, "width": width, "height": height})
            for box, c in zip(to_xywh(np.asarray(image["gt_boxes"])).tolist(),
                              image["gt_classes"], strict=True):
                annotations.append({"id": len(annotations) + 1, "image_id": n,
                                    "category_id": int(c) + 1, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0})
            for box, s, c in zip(to_xywh(np.asarray(image["boxes"])).tolist(),
                                 image["scores"], image["classes"], strict=True):
                detections.append({"image_id": n, "category_id": int(c) + 1, "bbox": box,
                                   "score": float(s)})
        gt = {"images": images, "annotations": annotations,
              "categories": [{"id": c + 1, "name": str(c)} for c in range(count)]}
        return gt, detections

    def compute(self) -> dict[str, float]:
        gt, detections = self.coco_inputs()
        if not gt["annotations"]:
            return dict.fromkeys(METRICS, float("nan"))
        return evaluate_coco(gt, detections)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes,
                "images": [{"id": image_id, **image} for image_id, image in self.images.items()]}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> CocoDetections:
        out = cls(state.get("num_classes"))
        for image in state["images"]:
            image = dict(image)
            out.images[image.pop("id")] = image
        return out

    def __repr__(self) -> str:
        return f"CocoDetections({len(self.images)} images)"


def evaluate_coco(gt: Mapping[str, Any], detections: list[dict[str, Any]]) -> dict[str, float]:
    """Standard COCO box evaluation of ``detections`` (loadRes format) against ``gt`` ->
    ``METRICS`` (COCOeval's -1 "undefined" as NaN)."""
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(dict(gt))
        coco_dt = coco_gt.loadRes(list(detections))
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, np.float64)
    return {name: float(stats[i]) if stats[i] >= 0 else float("nan")
            for name, i in _STATS_INDEX.items()}
