"""Images for the fine-tuning logs: downstream-task prediction panels (input, prediction, truth).

A panel has one row per example. Its tiles, left to right: each image input present, in role
order ``optical, sar, optical_t2, sar_t2`` (optical RGB as is; SAR its first channel in dB,
percentile-stretched to grey per image as in ``images``), then the prediction, then the truth.
Tiles are separated by white lines (``GAP_VALUE``), as in the reconstruction panels, so a
panel is a uint8 ``[H', W', 3]`` array that ``MetricLogger.write_images`` writes to
``W/images/`` and TensorBoard (``images.save_png`` writes one PNG on its own).

How predictions and truths are drawn, by task kind:

    segmentation     class c in ``class_palette(K)[c]``
    binary, change   0 black, 1 white
    regression       a viridis-like ramp from 0 to the row's maximum of truth and prediction,
                     shared by the two tiles so equal values have equal colours
    translation      images: SAR input | predicted optical | true optical (RGB as is; the
                     prediction in [0, 1] shown x 255)

Black (``IGNORE_COLOUR``) marks pixels that do not count: in the truth tile, pixels outside
``mask`` and labels ``IGNORE_INDEX`` (or outside the task's classes); in the prediction tile,
ids outside the classes. Class predictions are drawn everywhere (what the model does on
unscored pixels is worth seeing); regression pixels outside ``mask`` are black in both tiles,
and the row's scale is taken over the pixels inside it, so unscored predictions cannot wash
out the scale. For binary tasks ignored pixels are as black as class 0; the mask decides.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mars_jax.tasks.registry import IGNORE_INDEX, Task
from mars_jax.train.images import GAP_VALUE, _grid_layout, _to_uint8, percentile_stretch

__all__ = ["GAP_VALUE", "IGNORE_COLOUR", "IMAGE_ROLES", "class_palette", "height_colours",
           "prediction_panel"]

IMAGE_ROLES = ("optical", "sar", "optical_t2", "sar_t2")  # tile order of the inputs
IGNORE_COLOUR = (0, 0, 0)
PANEL_GAP = 2  # pixels between tiles, as images.reconstruction_panel

# tab20's colours, its ten strong ones first and then their light partners, so a task with
# few classes gets clearly different hues. None is black, which marks ignored pixels.
_TAB20 = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], np.uint8)
_BINARY = np.array([(0, 0, 0), (255, 255, 255)], np.uint8)
# viridis at 0, 1/8, ..., 1: perceptually ordered, and its low end (dark purple) differs from
# the black of unscored pixels, so a height of 0 is not mistaken for "not scored".
_RAMP = np.array([
    (68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37),
], np.float32)


def class_palette(num_classes: int) -> np.ndarray:
    """uint8 ``[K, 3]`` fixed class colours, the same in every panel so runs compare at a
    glance: tab20's, distinct for K <= 20, cycling beyond. No class is black (ignored)."""
    if num_classes < 1:
        raise ValueError(f"class_palette needs at least one class, got {num_classes}")
    return _TAB20[np.arange(num_classes) % len(_TAB20)]


def height_colours(values: np.ndarray, top: np.ndarray | float) -> np.ndarray:
    """uint8 ``[..., 3]`` ramp colours of ``values`` scaled from 0 to ``top`` (clipped), so
    tiles given the same ``top`` share one scale. ``top`` broadcasts against ``values``."""
    top = np.asarray(top, np.float32)
    unit = np.clip(np.asarray(values, np.float32) / np.where(top > 0, top, 1.0), 0.0, 1.0)
    position = np.nan_to_num(unit) * (len(_RAMP) - 1)
    low = np.minimum(np.floor(position).astype(np.int64), len(_RAMP) - 2)
    frac = (position - low)[..., None]
    colours = _RAMP[low] * (1.0 - frac) + _RAMP[low + 1] * frac
    return np.round(colours).astype(np.uint8)


def _palette(task: Task) -> np.ndarray:
    if task.kind in ("binary", "change"):
        return _BINARY
    return class_palette(len(task.classes))


def _class_tile(ids: np.ndarray, palette: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Class ids ``[B, H, W]`` -> uint8 ``[B, H, W, 3]``; ids not drawn (outside ``keep``,
    ``IGNORE_INDEX``, not a class) in ``IGNORE_COLOUR``."""
    ids = ids.astype(np.int64)
    drawn = keep & (ids >= 0) & (ids < len(palette)) & (ids != IGNORE_INDEX)
    tile = np.empty((*ids.shape, 3), np.uint8)
    tile[...] = IGNORE_COLOUR
    tile[drawn] = palette[ids[drawn]]
    return tile


def _regression_tiles(prediction: np.ndarray, truth: np.ndarray, keep: np.ndarray
                      ) -> list[np.ndarray]:
    """[prediction, truth] on one ramp per row: 0 to the row's max of both inside ``keep``."""
    prediction, truth = prediction.astype(np.float32), truth.astype(np.float32)
    drawn = [keep & np.isfinite(prediction), keep & np.isfinite(truth)]
    tops = [np.where(ok, values, 0.0).max(axis=(1, 2)) for values, ok in
            zip((prediction, truth), drawn, strict=True)]
    top = np.maximum(*tops)[:, None, None]
    tiles = []
    for values, ok in zip((prediction, truth), drawn, strict=True):
        tile = height_colours(np.where(ok, values, 0.0), top)
        tile[~ok] = IGNORE_COLOUR
        tiles.append(tile)
    return tiles


def _optical_tile(optical: np.ndarray) -> np.ndarray:
    """RGB as is; a non-uint8 array is taken to be on the 0-255 scale (e.g. a float cast)."""
    if optical.dtype == np.uint8:
        return optical
    return np.round(np.clip(np.nan_to_num(optical.astype(np.float32)), 0, 255)).astype(np.uint8)


def _sar_tile(sar: np.ndarray) -> np.ndarray:
    """First channel in dB, stretched per image to grey; non-finite pixels (log of 0) black."""
    first = sar[..., :1].astype(np.float32)
    finite = np.isfinite(first)
    floor = np.where(finite, first, np.inf).min(axis=(1, 2, 3), keepdims=True)
    filled = np.where(finite, first, np.where(np.isfinite(floor), floor, 0.0))
    grey = np.where(finite, _to_uint8(percentile_stretch(filled, filled)), np.uint8(0))
    return np.repeat(grey, 3, axis=-1)


def _check(key: str, array, shape: tuple[int, ...], channels: int | None = None) -> None:
    """Raises naming ``key`` unless ``array`` is ``[B, H, W]`` = ``shape``, or for an image
    (``channels`` given; 0: any number) ``[B, H, W, channels]``."""
    got = tuple(np.shape(array))
    if channels is None:
        good, expected = got == shape, "[B, H, W]"
    else:
        good = len(got) == 4 and got[:3] == shape and (channels == 0 or got[3] == channels)
        expected = f"[B, H, W, {channels or 'C'}]"
    if not good:
        raise ValueError(f"{key!r} has shape {got}; expected {expected} with [B, H, W] = "
                         f"{list(shape)} (the prediction's)")


def prediction_panel(task: Task, inputs: Mapping[str, np.ndarray], prediction: np.ndarray,
                     truth: np.ndarray, mask: np.ndarray | None = None,
                     max_examples: int = 4) -> np.ndarray:
    """uint8 ``[H', W', 3]`` panel of up to ``max_examples`` examples (layout: module doc).

    inputs: role -> ``[B, H, W, C]`` (``Task.model_inputs``'s mapping; its ``valid`` is
    ignored); roles missing (modality not given) get no tile, but one image role of the task
    must be there. prediction, truth: ``[B, H, W]`` class ids (segmentation, binary, change)
    or heights (regression); translation: ``[B, H, W, 3]`` images, the prediction in [0, 1]
    and the truth uint8 optical; mask: bool ``[B, H, W]``, the pixels that count (None:
    all; translation: black in the truth tile outside it).
    Arrays may live on a device: only the first examples are fetched.
    """
    roles = [role for role in IMAGE_ROLES if role in task.inputs]
    unknown = sorted(set(inputs) - set(roles) - {"valid"})
    if unknown:
        raise ValueError(f"inputs {unknown} are not image roles of task {task.name!r}; "
                         f"its roles are {roles}")
    present = [role for role in roles if role in inputs]
    if not present:
        raise ValueError(f"prediction_panel for task {task.name!r} needs at least one image "
                         f"input of roles {roles}; got {sorted(inputs)}")
    if max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, got {max_examples}")
    shape = tuple(np.shape(prediction))
    if task.kind == "translation":
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"'prediction' has shape {shape}; expected [B, H, W, 3] (an RGB "
                             f"image in [0, 1] for translation)")
        shape = shape[:3]
        _check("truth", truth, shape, 3)
    elif len(shape) != 3:
        raise ValueError(f"'prediction' has shape {shape}; expected [B, H, W] (class ids, or "
                         f"heights for regression)")
    else:
        _check("truth", truth, shape)
    if mask is not None:
        _check("mask", mask, shape)
    for role in present:
        _check(role, inputs[role], shape, 3 if role.startswith("optical") else 0)
    count = min(shape[0], max_examples)
    if count < 1:
        raise ValueError("prediction_panel needs at least one example")
    host = lambda array: np.asarray(array[:count])  # slice first: less to fetch from a device
    prediction, truth = host(prediction), host(truth)
    shape = prediction.shape[:3]
    keep = np.ones(shape, bool) if mask is None else host(mask).astype(bool)

    if task.kind == "translation":
        predicted = np.clip(np.nan_to_num(prediction.astype(np.float32)), 0.0, 1.0) * 255.0
        true = _optical_tile(truth).copy()
        true[~keep] = IGNORE_COLOUR
        outputs = [_optical_tile(predicted), true]
    elif task.kind == "regression":
        outputs = _regression_tiles(prediction, truth, keep)
    else:
        for key, array in (("prediction", prediction), ("truth", truth)):
            if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
                raise ValueError(f"{key!r} of {task.kind} task {task.name!r} must hold integer "
                                 f"class ids, got {array.dtype}")
        palette = _palette(task)
        outputs = [_class_tile(prediction, palette, np.ones(shape, bool)),
                   _class_tile(truth, palette, keep)]
    images = [(_optical_tile if role.startswith("optical") else _sar_tile)(host(inputs[role]))
              for role in present]
    return _grid_layout(images + outputs, PANEL_GAP)
