"""CenterNet (Zhou et al. 2019, "Objects as Points") targets, decoding and sliding-window
merging: the task-side pieces around ``models.detection.CenterNetHead`` and
``losses.detection.centernet_loss``.

Boxes are pixel-edge ``(x0, y0, x1, y1)`` in input pixels (the convention of SynthVHR's
``boxes`` and ``data.datasets.coco``): a box covering pixels 2..5 is (2, ., 6, .). The output
grid has cells of ``stride`` pixels; cell (i, j) covers pixels [j s, (j + 1) s) x [i s, ...).

``encode_targets`` (NumPy, host side, in the data pipeline's map), per image:

  - boxes are clipped to the image; boxes not ``valid``, non-finite, or empty after clipping
    (zero width or height) are dropped;
  - each remaining box, in output cells: centre c = ((x0 + x1) / 2, (y0 + y1) / 2) / s, size
    (w, h) = (x1 - x0, y1 - y0) / s, centre cell floor(c), offset c - floor(c) in [0, 1);
  - its class channel of the heatmap gets CenterNet's Gaussian, radius
    ``max(0, int(gaussian_radius((ceil(h), ceil(w)), 0.7)))`` (CornerNet's formula as
    CenterNet ships it), sigma = (2 r + 1) / 6, peak 1 at the centre cell, combined over
    objects by max;
  - object slots: the first ``max_objects`` remaining boxes, in input order, fill
    ``indices`` / ``size`` / ``offset`` / ``mask``; the rest are padding (mask 0, zeros).
    More boxes than slots: ``overflow="drop"`` (the default) keeps the first ``max_objects``
    for regression (CenterNet's rule) but still draws every box in the heatmap, so the
    dropped objects are not taught as background; ``overflow="raise"`` raises instead.

``decode`` (jnp, jittable, fixed shapes): sigmoid, 3x3 max-pool peak suppression (a cell is
kept where it equals its 3x3 neighbourhood's max), top-k over every class and cell, box =
(centre +- size / 2) * stride from the size and offset at the peak's cell.

``merge_windows`` (NumPy): detections of overlapping windows of a large scene -> one set in
scene pixels (optionally dropping boxes cut by a window's inner edge when another window
holds them whole), then class-wise NMS (IoU > 0.5 suppressed, torchvision's rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_STRIDE = 4
DEFAULT_MAX_OBJECTS = 128
MIN_OVERLAP = 0.7  # CenterNet's gaussian_radius min_overlap
OVERFLOWS = ("drop", "raise")


# ------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------
def gaussian_radius(det_size: tuple[float, float], min_overlap: float = MIN_OVERLAP) -> float:
    """CenterNet's ``gaussian_radius`` (CornerNet's, with its known deviations from the
    exact solution kept, as every CenterNet port does): the smallest of the three radii
    for which a corner shift keeps IoU >= ``min_overlap``. ``det_size`` = (height, width)."""
    height, width = det_size
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def gaussian_2d(radius: int) -> np.ndarray:
    """CenterNet's ``gaussian2D`` of diameter 2 r + 1, sigma = diameter / 6, peak 1 (values
    below eps * max set to 0)."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    return g


def draw_gaussian(heatmap: np.ndarray, center: tuple[int, int], radius: int) -> None:
    """Max of ``heatmap`` [h, w] and the Gaussian of ``radius`` at cell ``center`` = (x, y),
    in place (CenterNet's ``draw_umich_gaussian``)."""
    g = gaussian_2d(radius)
    x, y = center
    height, width = heatmap.shape
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    region = heatmap[y - top:y + bottom, x - left:x + right]
    patch = g[radius - top:radius + bottom, radius - left:radius + right]
    if min(region.shape) > 0 and min(patch.shape) > 0:
        np.maximum(region, patch, out=region)


def output_grid(image_size: Sequence[int], stride: int) -> tuple[int, int]:
    """(h, w) of the output grid; the image must be a whole number of cells."""
    height, width = (int(s) for s in image_size)
    if stride < 1 or height < 1 or width < 1 or height % stride or width % stride:
        raise ValueError(f"image_size {tuple(image_size)} must be positive multiples of the "
                         f"stride {stride}")
    return height // stride, width // stride


def encode_targets(boxes: np.ndarray, classes: np.ndarray, valid: np.ndarray | None,
                   image_size: Sequence[int], num_classes: int, stride: int = DEFAULT_STRIDE,
                   max_objects: int = DEFAULT_MAX_OBJECTS,
                   overflow: Literal["drop", "raise"] = "drop") -> dict[str, np.ndarray]:
    """Fixed-shape CenterNet targets of one image (module docstring) -> {"heatmap" float32
    [h, w, K], "indices" int32 [M], "size" float32 [M, 2] (w, h in cells), "offset" float32
    [M, 2] (dx, dy), "mask" bool [M]}, h = H / stride, w = W / stride, M = max_objects.

    ``valid``: which boxes are real (None: all), e.g. the mask of a padded box array."""
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {OVERFLOWS}, got {overflow!r}")
    if num_classes < 1 or max_objects < 1:
        raise ValueError(f"num_classes and max_objects must be positive, got {num_classes} "
                         f"and {max_objects}")
    height, width = (int(s) for s in image_size)
    h, w = output_grid((height, width), stride)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    if classes.shape[0] != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {classes.shape[0]} classes")
    keep = (np.ones(len(boxes), bool) if valid is None
            else np.asarray(valid, bool).reshape(-1).copy())
    if keep.shape[0] != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {keep.shape[0]} valid flags")
    keep &= np.isfinite(boxes).all(axis=1)
    clipped = np.where(np.isfinite(boxes), boxes, 0.0)
    clipped = np.clip(clipped, 0.0, [width, height, width, height])
    keep &= (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    bad = keep & ((classes < 0) | (classes >= num_classes))
    if bad.any():
        raise ValueError(f"box classes {sorted(set(classes[bad].tolist()))} are outside "
                         f"[0, {num_classes})")
    kept = np.flatnonzero(keep)
    if len(kept) > max_objects and overflow == "raise":
        raise ValueError(f"{len(kept)} boxes, more than max_objects = {max_objects}")
    heatmap = np.zeros((num_classes, h, w), np.float32)
    indices = np.zeros(max_objects, np.int32)
    size = np.zeros((max_objects, 2), np.float32)
    offset = np.zeros((max_objects, 2), np.float32)
    mask = np.zeros(max_objects, bool)
    for slot, i in enumerate(kept):
        x0, y0, x1, y1 = clipped[i] / stride
        bw, bh = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        col, row = min(int(np.floor(cx)), w - 1), min(int(np.floor(cy)), h - 1)
        radius = max(0, int(gaussian_radius((math.ceil(bh), math.ceil(bw)))))
        draw_gaussian(heatmap[int(classes[i])], (col, row), radius)
        if slot < max_objects:
            indices[slot] = row * w + col
            size[slot] = (bw, bh)
            offset[slot] = (cx - col, cy - row)
            mask[slot] = True
    return {"heatmap": np.ascontiguousarray(heatmap.transpose(1, 2, 0)), "indices": indices,
            "size": size, "offset": offset, "mask": mask}


# ------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------
def peaks(heat: jax.Array, kernel: int = 3) -> jax.Array:
    """``heat`` [B, h, w, K] where it equals its ``kernel x kernel`` neighbourhood's max (per
    class), 0 elsewhere: CenterNet's max-pool NMS."""
    hmax = jax.lax.reduce_window(heat, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1),
                                 (1, 1, 1, 1), "SAME")
    return jnp.where(heat == hmax, heat, 0.0)


def decode(heatmap_logits: jax.Array, size: jax.Array, offset: jax.Array,
           stride: int = DEFAULT_STRIDE, k: int = 100) -> dict[str, jax.Array]:
    """CenterNet's decoding (module docstring) -> {"boxes" float32 [B, k, 4] (x0, y0, x1, y1)
    in input pixels, "scores" float32 [B, k] (descending), "classes" int32 [B, k]}.

    ``heatmap_logits`` [B, h, w, K], ``size`` / ``offset`` [B, h, w, 2] in output cells, as
    ``CenterNetHead`` gives them; ``stride`` and ``k`` are static (k <= h * w * K). Boxes are
    not clipped to the image (neither are CenterNet's)."""
    b, h, w, num_classes = heatmap_logits.shape
    if k < 1 or k > h * w * num_classes:
        raise ValueError(f"k = {k} must be in [1, h * w * K] = [1, {h * w * num_classes}]")
    heat = peaks(jax.nn.sigmoid(heatmap_logits.astype(jnp.float32)))
    scores, flat = jax.lax.top_k(heat.reshape(b, -1), k)
    classes = (flat % num_classes).astype(jnp.int32)
    cells = flat // num_classes
    rows, cols = (cells // w).astype(jnp.float32), (cells % w).astype(jnp.float32)
    at = lambda m: jnp.take_along_axis(m.astype(jnp.float32).reshape(b, h * w, -1),
                                       cells[..., None], axis=1)
    wh, off = at(size), at(offset)
    cx, cy = cols + off[..., 0], rows + off[..., 1]
    half_w, half_h = wh[..., 0] / 2, wh[..., 1] / 2
    boxes = jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1) * stride
    return {"boxes": boxes, "scores": scores, "classes": classes}


# ------------------------------------------------------------------------------------------
# Sliding windows and NMS
# ------------------------------------------------------------------------------------------
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of boxes a [N, 4] and b [M, 4] (x0, y0, x1, y1); 0 where the union is
    empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes by descending score (ties: input order); a box
    is suppressed by a kept higher-scoring box of IoU > ``iou_threshold`` (torchvision's
    rule)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    if order.size == 0:
        return order.astype(np.int64)
    iou = box_iou(boxes[order], boxes[order])
    suppressed = np.zeros(order.size, bool)
    kept = []
    for i in range(order.size):
        if suppressed[i]:
            continue
        kept.append(order[i])
        suppressed |= iou[i] > iou_threshold
    return np.asarray(kept, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                iou_threshold: float = 0.5) -> np.ndarray:
    """NMS within each class; kept indices by descending score."""
    classes = np.asarray(classes)
    kept = [np.flatnonzero(classes == c)[nms(boxes[classes == c], scores[classes == c],
                                             iou_threshold)] for c in np.unique(classes)]
    kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return kept[np.argsort(-np.asarray(scores, np.float64)[kept], kind="stable")]


def _cut_by_inner_edge(box: np.ndarray, window: np.ndarray, scene: tuple[float, float],
                       margin: float) -> bool:
    """Whether ``box`` reaches within ``margin`` of a side of ``window`` (x0, y0, x1, y1) that
    is not on the scene's border."""
    x0, y0, x1, y1 = window
    width, height = scene
    return bool((x0 > 0 and box[0] <= x0 + margin) or (y0 > 0 and box[1] <= y0 + margin)
                or (x1 < width and box[2] >= x1 - margin)
                or (y1 < height and box[3] >= y1 - margin))


def merge_windows(windows: Sequence[Mapping[str, np.ndarray]],
                  origins: Sequence[tuple[float, float]], *,
                  window_size: tuple[int, int] | None = None,
                  scene_size: tuple[int, int] | None = None, iou_threshold: float = 0.5,
                  score_threshold: float = 0.0, max_detections: int | None = None,
                  edge_margin: float = 1.0) -> dict[str, np.ndarray]:
    """Detections of sliding windows -> one set in scene pixels.

    ``windows[i]``: {"boxes" [k, 4], "scores" [k], "classes" [k]} in window pixels (one image
    of ``decode``'s output), ``origins[i]`` = (x, y) of the window's top-left in the scene.
    Boxes scoring <= ``score_threshold`` are dropped; then, if ``window_size`` = (height,
    width) is given, a box that reaches within ``edge_margin`` pixels of an inner side of its
    window (a side not on the scene border; the scene is ``scene_size`` = (height, width), by
    default the windows' union) is dropped when another window contains it whole, that
    window seeing the object uncut; then class-wise NMS and the ``max_detections`` best.
    -> {"boxes" float32 [n, 4], "scores" float32 [n] descending, "classes" int32 [n]}."""
    if len(windows) != len(origins):
        raise ValueError(f"{len(windows)} windows but {len(origins)} origins")
    boxes, scores, classes, owners = [], [], [], []
    for i, (det, (ox, oy)) in enumerate(zip(windows, origins, strict=True)):
        s = np.asarray(det["scores"], np.float64).reshape(-1)
        keep = s > score_threshold
        boxes.append(np.asarray(det["boxes"], np.float64).reshape(-1, 4)[keep]
                     + [ox, oy, ox, oy])
        scores.append(s[keep])
        classes.append(np.asarray(det["classes"]).reshape(-1)[keep].astype(np.int32))
        owners.append(np.full(int(keep.sum()), i))
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    scores = np.concatenate(scores) if scores else np.zeros(0)
    classes = np.concatenate(classes) if classes else np.zeros(0, np.int32)
    owners = np.concatenate(owners) if owners else np.zeros(0, int)
    if window_size is not None and len(boxes):
        wh, ww = window_size
        extents = np.asarray([[ox, oy, ox + ww, oy + wh] for ox, oy in origins], np.float64)
        if scene_size is None:
            scene = (float(extents[:, 2].max()), float(extents[:, 3].max()))
        else:
            scene = (float(scene_size[1]), float(scene_size[0]))
        drop = np.zeros(len(boxes), bool)
        for n, (box, owner) in enumerate(zip(boxes, owners, strict=True)):
            if not _cut_by_inner_edge(box, extents[owner], scene, edge_margin):
                continue
            inside = ((extents[:, 0] <= box[0]) & (extents[:, 1] <= box[1])
                      & (extents[:, 2] >= box[2]) & (extents[:, 3] >= box[3]))
            inside[owner] = False
            drop[n] = inside.any()
        boxes, scores, classes = boxes[~drop], scores[~drop], classes[~drop]
    kept = batched_nms(boxes, scores, classes, iou_threshold)
    if max_detections is not None:
        kept = kept[:max_detections]
    return {"boxes": boxes[kept].astype(np.float32), "scores": scores[kept].astype(np.float32),
            "classes": classes[kept].astype(np.int32)}
