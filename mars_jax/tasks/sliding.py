"""Sliding-window prediction over scenes larger than the model's crop.

``sliding_window_predict(predict, scene, window=..., overlap=...)`` cuts every spatial input
of ``scene`` into ``window x window`` windows whose starts are ``window_starts`` along each
axis (stride ``window - overlap``, the last window moved back to end on the edge), calls
``predict`` on fixed-size batches of windows and blends the window outputs back into the
scene with a weighted average:

    out[p] = sum_w a_w(p) * predict_w[p] / sum_w a_w(p)     over the windows w covering p

with ``a_w = 1`` ("uniform": the plain mean of the overlapping windows) or, "gaussian", the
window-centred Gaussian of nnU-Net and MONAI,

    a(i, j) = exp(-((i - c)^2 + (j - c)^2) / (2 sigma^2)),  c = (window - 1) / 2,
    sigma = window / 8,

normalised to 1 at the centre, so pixels near a window's border, where a network sees the
least context, count less than the same pixels near another window's centre. (Its minimum,
at the corners, is exp(-16) ~ 1e-7: a pixel covered by one window alone keeps that window's
value.)

A scene smaller than the window is padded bottom/right up to it (value ``pad_values[key]``,
default 0; ``valid`` with False) and the result is cropped back. Blending runs on the host in
NumPy into float32 accumulators of the scene's size, one batch of windows at a time, so host
memory is O(B * H * W * K), not O(windows); the next batch is dispatched before the previous
one is copied back, so a jitted ``predict`` on an accelerator keeps running while the host
blends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tqdm

WEIGHTINGS = ("uniform", "gaussian")
GAUSSIAN_SIGMA_SCALE = 1.0 / 8.0  # sigma = window / 8, as nnU-Net and MONAI


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Starts of windows covering ``[0, length)``, stride ``window - overlap``; the last one
    ends on the edge. A length up to the window gives ``[0]`` (the caller pads)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window) = [0, {window}), got {overlap}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if length <= window:
        return [0]
    starts = list(range(0, length - window, window - overlap))
    return [*starts, length - window]


def blend_weights(window: int, weighting: str) -> np.ndarray:
    """The float32 ``[window, window]`` weight of each pixel of a window (module docstring)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "uniform":
        return np.ones((window, window), np.float32)
    sigma = window * GAUSSIAN_SIGMA_SCALE
    offset = np.arange(window, dtype=np.float64) - (window - 1) / 2
    profile = np.exp(-np.square(offset) / (2 * sigma**2))
    weights = np.outer(profile, profile)
    return (weights / weights.max()).astype(np.float32)


def _spatial_keys(scene: Mapping[str, Any], spatial_keys: Sequence[str] | None) -> list[str]:
    if spatial_keys is None:
        keys = [key for key, value in scene.items() if np.ndim(value) >= 3]
    else:
        keys = list(spatial_keys)
        missing = [key for key in keys if key not in scene]
        if missing:
            raise ValueError(f"spatial_keys {missing} are not in the scene {sorted(scene)}")
    if not keys:
        shapes = {key: np.shape(value) for key, value in scene.items()}
        raise ValueError(f"the scene has no spatial input ([B, H, W, ...]): {shapes}")
    shapes = {key: tuple(np.shape(scene[key])) for key in keys}
    reference = shapes[keys[0]][:3]
    wrong = {key: shape for key, shape in shapes.items()
             if len(shape) < 3 or shape[:3] != reference}
    if wrong:
        raise ValueError(f"spatial inputs must share [B, H, W] = {reference} (from "
                         f"{keys[0]!r}), got {wrong}; pass spatial_keys to name the spatial "
                         f"inputs when another value has 3 or more axes")
    return keys


def _pad_to(array: np.ndarray, height: int, width: int, value: float) -> np.ndarray:
    pad_h, pad_w = height - array.shape[1], width - array.shape[2]
    if not pad_h and not pad_w:
        return array
    widths = [(0, 0), (0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 3)
    return np.pad(array, widths, constant_values=np.asarray(value).astype(array.dtype))


def sliding_window_predict(
    predict: Callable[[dict[str, Any]], Any], scene: Mapping[str, Any], *, window: int,
    overlap: int, batch_windows: int = 8, weighting: str = "uniform",
    pad_values: Mapping[str, float] | None = None, spatial_keys: Sequence[str] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``predict`` over the whole scene, window by window, blended (see the module docstring).

    predict: a dict of inputs -> output ``[N, window, window, ...]`` (K logits, ``[..., 1]``
      regression, or no channel axis); called with every spatial input cut to windows and
      stacked along the batch axis, ``N = batch_windows * B``, window-major (row ``w * B + b``
      is window w of example b), and every non-spatial input as given. Every call gets the
      same shapes (the last batch is filled with repeats of its last window, whose outputs are
      dropped), so a jitted ``predict`` compiles once, for every scene size.
    scene: key -> ``[B, H, W, ...]`` spatial input (numpy or jax), or any other value, passed
      through unchanged. Spatial inputs are the values with 3 or more axes, or ``spatial_keys``.
    window, overlap: the window side and the overlap of neighbouring windows, in pixels.
    pad_values: key -> fill of the bottom/right padding of a scene smaller than the window
      (default 0; ``valid``: False).
    progress: show a tqdm bar (windows done) on stderr.

    Returns float32 ``[B, H, W, ...]`` (the output's trailing axes), a numpy array.
    """
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    weights = blend_weights(window, weighting)
    keys = _spatial_keys(scene, spatial_keys)
    pad_values = dict(pad_values or {})
    unknown = sorted(set(pad_values) - set(keys))
    if unknown:
        raise ValueError(f"pad_values names {unknown}, not spatial inputs of the scene {keys}")
    pad_values.setdefault("valid", False)

    batch, height, width = np.shape(scene[keys[0]])[:3]
    padded_h, padded_w = max(height, window), max(width, window)
    spatial = {key: _pad_to(np.asarray(scene[key]), padded_h, padded_w,
                            pad_values.get(key, 0)) for key in keys}
    passed = {key: value for key, value in scene.items() if key not in spatial}
    rows = window_starts(padded_h, window, overlap)
    cols = window_starts(padded_w, window, overlap)
    origins = [(row, col) for row in rows for col in cols]

    accumulator: np.ndarray | None = None
    weight_sum = np.zeros((padded_h, padded_w), np.float32)

    def blend(output: Any, batch_origins: list[tuple[int, int]]) -> None:
        nonlocal accumulator
        output = np.asarray(output)
        expected = (batch_windows * batch, window, window)
        if tuple(output.shape[:3]) != expected:
            raise ValueError(f"predict must return [batch_windows * B, window, window, ...] "
                             f"= {expected + tuple(output.shape[3:])}, got {output.shape}")
        output = output.astype(np.float32).reshape(batch_windows, batch, *output.shape[1:])
        if accumulator is None:
            accumulator = np.zeros((batch, padded_h, padded_w, *output.shape[4:]), np.float32)
        scale = weights.reshape(window, window, *([1] * (output.ndim - 4)))
        for index, (row, col) in enumerate(batch_origins):
            accumulator[:, row:row + window, col:col + window] += output[index] * scale
            weight_sum[row:row + window, col:col + window] += weights

    pending = None
    with tqdm.tqdm(total=len(origins), unit="window", desc="sliding window",
                   disable=not progress) as bar:
        for first in range(0, len(origins), batch_windows):
            batch_origins = origins[first:first + batch_windows]
            filled = batch_origins + [batch_origins[-1]] * (batch_windows - len(batch_origins))
            inputs = {key: np.concatenate([value[:, row:row + window, col:col + window]
                                           for row, col in filled])
                      for key, value in spatial.items()}
            output = predict({**passed, **inputs})  # dispatched; blend the previous meanwhile
            if pending is not None:
                blend(*pending)
                bar.update(len(pending[1]))
            pending = (output, batch_origins)
        blend(*pending)
        bar.update(len(pending[1]))

    weight_sum = weight_sum.reshape(padded_h, padded_w, *([1] * (accumulator.ndim - 3)))
    return (accumulator / weight_sum)[:, :height, :width]
