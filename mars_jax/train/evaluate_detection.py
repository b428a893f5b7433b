"""Held-out evaluation of a detection model: whole scenes by sliding windows, COCO box mAP.

Each scene (larger than the training crop) is cut into windows of the crop
(``tasks.sliding.window_starts``, the configured overlap; a scene smaller than a window is
padded bottom / right with no-data), predicted in batches of ``batch_windows`` (the last
batch filled with repeats that are not kept), each window decoded into its ``top_k`` peaks
(``tasks.centernet.decode``), the windows merged into scene pixels (``merge_windows``: boxes
cut by a window's inner edge dropped where another window holds them whole, then class-wise
NMS, the 100 best kept), and scored with ``metrics.coco.CocoDetections`` against the scene's
ground-truth boxes of the task's classes, once per modality set.

The trivial baseline is no box at all, scored by the same metric on the same scenes: 0 for
every AP / AR where the scenes hold ground truth, NaN (null in results.json) where none.
Panels: the first scenes' inputs with the predicted boxes (score >= ``PANEL_SCORE``) in green
and the ground truth in red.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
import tqdm

from mars_jax.metrics.coco import CocoDetections
from mars_jax.tasks.centernet import decode, merge_windows
from mars_jax.tasks.detection import DetectionTask
from mars_jax.tasks.sliding import window_starts
from mars_jax.train.evaluate import EvalResult

MAX_DETECTIONS = 100  # per scene, COCO's maxDets
PANEL_SCORE = 0.3  # predicted boxes drawn at or above this score
GREEN, RED = (0, 255, 0), (255, 0, 0)


def window_origins(height: int, width: int, window: int, overlap: int
                   ) -> list[tuple[int, int]]:
    """(x, y) top-left corners of the windows covering a scene."""
    return [(x, y) for y in window_starts(height, window, overlap)
            for x in window_starts(width, window, overlap)]


def _pad(inputs: Mapping[str, np.ndarray], window: int) -> dict[str, np.ndarray]:
    """Role inputs [1, H, W, ...] padded bottom / right to at least the window (no-data)."""
    height, width = np.shape(inputs["valid"])[1:3]
    rows, cols = max(0, window - height), max(0, window - width)
    if not rows and not cols:
        return dict(inputs)
    return {key: np.pad(value, [(0, 0), (0, rows), (0, cols)] + [(0, 0)] * (value.ndim - 3))
            for key, value in inputs.items()}


def predict_scene(task: DetectionTask, predict: Callable[[dict[str, Any]], Any],
                  inputs: Mapping[str, np.ndarray], *, window: int, overlap: int,
                  batch_windows: int, decoder: Callable | None = None) -> dict[str, np.ndarray]:
    """One scene's merged detections {"boxes" [n, 4], "scores" [n], "classes" [n]} in scene
    pixels; ``inputs``: role -> [1, H, W, ...] (with ``valid``)."""
    height, width = np.shape(inputs["valid"])[1:3]
    padded = _pad({k: np.asarray(v) for k, v in inputs.items()}, window)
    origins = window_origins(*np.shape(padded["valid"])[1:3], window, overlap)
    decoder = decoder or jax.jit(decode, static_argnums=(3, 4))
    windows = []
    for start in range(0, len(origins), batch_windows):
        group = origins[start:start + batch_windows]
        rows = group + [group[-1]] * (batch_windows - len(group))
        batch = {key: np.stack([value[0, y:y + window, x:x + window] for x, y in rows])
                 for key, value in padded.items()}
        maps = task.split(np.asarray(predict(batch)))
        cells = maps["heatmap"].shape[1] * maps["heatmap"].shape[2] * task.num_outputs
        out = decoder(maps["heatmap"], maps["size"], maps["offset"], task.stride,
                      min(task.top_k, cells))
        out = {key: np.asarray(value) for key, value in out.items()}
        windows += [{key: value[i] for key, value in out.items()} for i in range(len(group))]
    merged = merge_windows(windows, origins, window_size=(window, window),
                           scene_size=(height, width), max_detections=MAX_DETECTIONS)
    boxes = merged["boxes"]
    if len(boxes):  # boxes are not clipped by decode: clip to the scene
        boxes = np.clip(boxes, 0.0, [width, height, width, height]).astype(np.float32)
    return merged | {"boxes": boxes}


def evaluate_detection(task: DetectionTask, predict: Callable[[dict[str, Any]], Any],
                       scenes: Iterable[Mapping[str, Any]], sets: Mapping[str, tuple[str, ...]],
                       *, window: int, overlap: int, batch_windows: int, panels: int = 0,
                       total: int | None = None, progress: bool = False) -> EvalResult:
    """``predict``: role inputs of ``batch_windows`` windows -> the packed head output
    ``[N, window / s, window / s, K + 4]``; ``sets``: modality set name -> modalities."""
    metrics = {name: CocoDetections(task.num_outputs) for name in sets}
    reference = CocoDetections(task.num_outputs)
    decoder = jax.jit(decode, static_argnums=(3, 4))
    kept: dict[str, list] = {name: [] for name in sets}
    count = 0
    for scene in tqdm.tqdm(scenes, total=total, desc="detecting", unit="scene",
                           disable=not progress):
        batch = {key: np.asarray(value)[None] for key, value in scene.items()
                 if np.ndim(value) >= 2 and key in task.keys(("optical", "sar"))}
        size = tuple(int(s) for s in np.shape(scene["valid"])[:2])
        gt_boxes, gt_classes = task.task_boxes(scene[task.label], scene[task.extra])
        for name, modalities in sets.items():
            inputs = task.model_inputs(batch, modalities)
            found = predict_scene(task, predict, inputs, window=window, overlap=overlap,
                                  batch_windows=batch_windows, decoder=decoder)
            metrics[name].add(count, found["boxes"], found["scores"], found["classes"],
                              gt_boxes, gt_classes, size)
            if count < panels:
                kept[name].append(detection_panel(
                    {role: value[0] for role, value in inputs.items()}, found, gt_boxes))
        reference.add(count, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int32), gt_boxes,
                      gt_classes, size)
        count += 1
    if not count:
        raise ValueError("evaluation got no scenes")
    return EvalResult({name: m.compute() for name, m in metrics.items()}, reference.compute(),
                      count, {name: _stack(rows) for name, rows in kept.items() if rows})


def detection_panel(inputs: Mapping[str, np.ndarray], found: Mapping[str, np.ndarray],
                    gt_boxes: np.ndarray, score: float = PANEL_SCORE) -> np.ndarray:
    """One scene's inputs (optical, SAR as grey; ``valid`` left out) side by side, each with
    the ground truth in red and the predictions scoring >= ``score`` in green."""
    import cv2

    from mars_jax.train.task_images import _optical_tile, _sar_tile

    tiles = []
    for role in ("optical", "sar"):
        if inputs.get(role) is None:
            continue
        image = np.asarray(inputs[role])[None]
        tile = np.ascontiguousarray((_optical_tile if role == "optical" else _sar_tile)(
            image)[0][..., :3])
        for boxes, colour in ((gt_boxes, RED),
                              (np.asarray(found["boxes"])[np.asarray(found["scores"]) >= score],
                               GREEN)):
            for x0, y0, x1, y1 in np.rint(np.asarray(boxes, np.float64)).astype(int).reshape(
                    -1, 4).tolist():
                cv2.rectangle(tile, (x0, y0), (max(x1 - 1, 0), max(y1 - 1, 0)), colour, 1)
        tiles.append(tile)
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Scene panels one under the other (white gaps; narrower ones padded white)."""
    width = max(row.shape[1] for row in rows)
    parts = []
    for row in rows:
        padded = np.full((row.shape[0], width, 3), 255, np.uint8)
        padded[:, :row.shape[1]] = row
        parts += [padded, np.full((4, width, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=0)
