"""grain input pipelines: source -> process slice -> shuffle -> paired augmentation -> batches.

Every pipeline is a ``grain.IterDataset`` of dicts of numpy arrays with a leading per-process
batch axis, ready for ``jax.make_array_from_process_local_data``. Its iterator's state
(``get_state`` / ``set_state``) is small and exact: a restored iterator yields exactly the
batches the original would have yielded next, with any number of worker processes.

Sources are anything with ``__len__`` and ``__getitem__(int) -> dict``:
:class:`~mars_jax.data.synth.SynthSource` (SynthVHR rendered on the fly, no preparation
step), :class:`~mars_jax.data.records.ShardSource` (ingested shards) or a TFDS
``data_source``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from mars_jax.data.contract import PRETRAIN_KEYS, check_pretraining_example
from mars_jax.data.synth import SynthSource

__all__ = [
    "PRETRAIN_KEYS", "CheckPretraining", "PairedAugment", "ProcessRows", "SelectKeys", "Source",
    "SynthSource", "check_pretraining_example", "grid_transform", "make_pipeline",
    "per_process_batch_size", "transform_affine", "transform_azimuth", "transform_boxes",
]


class Source(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class PairedAugment(grain.transforms.RandomMap):
    """One random square crop, flip and 90-degree rotation, applied to every spatial array,
    and the same pixel transform applied to the geometric labels.

    Spatial arrays are those whose first two axes equal the optical image's (H, W) (without
    one, e.g. a SAR-only task's examples, the SAR image's, else ``valid``'s): both
    modalities and any dense label (``sar_warped``, ``instances``, ...) move together, so patch
    j still covers the same ground. Geometric labels follow (see ``grid_transform``):

    * ``boxes`` float32 [K, 4], pixel-edge (x0, y0, x1, y1) in the optical grid, are mapped
      through the transform and clipped to the crop. A box that leaves the crop entirely
      becomes zero-area (x0 == x1 or y0 == y1, on the crop's border): K stays fixed and the
      per-box arrays (``box_classes``, ``object_heights``) are unchanged, so consumers drop
      boxes of zero area. Boxes partly outside are clipped to the visible part of the box.
    * ``affine`` float32 [2, 3] (optical pixel -> ``sar_warped`` pixel; both grids get the same
      transform T) becomes T A T^-1.
    * ``sun_azimuth`` and ``look_azimuth`` (degrees clockwise from image-up) turn with the image:
      a flip mirrors them (a -> -a), each 90-degree turn subtracts 90.

    Other entries (ids, scalars such as ``gsd``) pass through unchanged.
    """

    crop_size: int | None = None
    flips: bool = True
    rotations: bool = True

    def random_map(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        h, w = np.shape(example[next((k for k in _REFERENCE_KEYS if k in example),
                                     "optical")])[:2]
        crop_h, crop_w = (h, w) if self.crop_size is None else (self.crop_size, self.crop_size)
        if crop_h > h or crop_w > w:
            raise ValueError(f"crop_size {self.crop_size} exceeds the example size {h}x{w}")
        top = int(rng.integers(0, h - crop_h + 1))
        left = int(rng.integers(0, w - crop_w + 1))
        flip = bool(self.flips and rng.random() < 0.5)
        turns = int(rng.integers(0, 4)) if self.rotations and crop_h == crop_w else 0

        def transform(value: np.ndarray) -> np.ndarray:
            value = value[top:top + crop_h, left:left + crop_w]
            if flip:
                value = value[:, ::-1]
            return np.rot90(value, turns, axes=(0, 1))  # a view: batching makes the copy

        matrix = grid_transform(top, left, (crop_h, crop_w), flip, turns)
        out_hw = (crop_w, crop_h) if turns % 2 else (crop_h, crop_w)
        out = {}
        for key, value in example.items():
            if key == "boxes":
                value = transform_boxes(value, matrix, out_hw)
            elif key == "affine":
                value = transform_affine(value, matrix)
            elif key in _AZIMUTHS and (flip or turns):
                value = transform_azimuth(value, flip, turns)
            elif _is_spatial(value, (h, w)):
                value = transform(value)
            out[key] = value
        return out


_AZIMUTHS = ("sun_azimuth", "look_azimuth")
_REFERENCE_KEYS = ("optical", "sar", "valid")  # the grid: the first of these present


def grid_transform(top: int, left: int, crop_hw: tuple[int, int], flip: bool, turns: int
                   ) -> np.ndarray:
    """The 3x3 matrix T taking a pixel centre (x, y, 1) of the input grid (x = column, y = row)
    to its place after ``PairedAugment``'s steps: the crop ``[top:top + h, left:left + w]``,
    then (``flip``) ``[:, ::-1]``, then ``np.rot90(., turns, axes=(0, 1))``.

    Pixel centres: a flip maps column i to w - 1 - i, one turn maps (x, y) to (y, w - 1 - x)
    and swaps the sizes. Pixel edges (boxes) are centres + 0.5, see ``transform_boxes``.
    """
    height, width = crop_hw
    matrix = np.array([[1.0, 0.0, -left], [0.0, 1.0, -top], [0.0, 0.0, 1.0]])
    if flip:
        matrix = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ matrix
    for _ in range(turns % 4):
        matrix = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, width - 1.0], [0.0, 0.0, 1.0]]) @ matrix
        height, width = width, height
    return matrix


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]
                    ) -> np.ndarray:
    """Pixel-edge boxes (x0, y0, x1, y1) [K, 4] mapped through a ``grid_transform`` matrix and
    clipped to the output grid of ``out_hw`` pixels. Edges are pixel centres + 0.5 (a box edge
    x maps to w - x under a horizontal flip); a box outside the output becomes zero-area."""
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return boxes
    corners = boxes.astype(np.float64).reshape(-1, 2, 2) - 0.5  # (K, corner, xy) as centres
    mapped = corners @ matrix[:2, :2].T + matrix[:2, 2] + 0.5
    low, high = mapped.min(axis=1), mapped.max(axis=1)  # (K, xy)
    limit = np.array([out_hw[1], out_hw[0]], np.float64)
    low, high = np.clip(low, 0.0, limit), np.clip(high, 0.0, limit)
    return np.concatenate([low, high], axis=1).astype(boxes.dtype)


def transform_affine(affine: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """An affine [2, 3] between two grids (pixel (x, y, 1) -> pixel) after the same
    ``grid_transform`` T is applied to both: T A T^-1."""
    affine = np.asarray(affine)
    full = np.vstack([affine.astype(np.float64), [0.0, 0.0, 1.0]])
    return (matrix @ full @ np.linalg.inv(matrix))[:2].astype(affine.dtype)


def transform_azimuth(azimuth: Any, flip: bool, turns: int) -> np.ndarray:
    """An azimuth (degrees clockwise from image-up) after a horizontal flip (a -> -a) and
    ``turns`` rotations by ``np.rot90`` (each a quarter turn anticlockwise: a -> a - 90)."""
    value = np.asarray(azimuth)
    degrees = value.astype(np.float64)
    return np.asarray(((-degrees if flip else degrees) - 90.0 * turns) % 360.0, value.dtype)


def _is_spatial(value: Any, hw: tuple[int, int]) -> bool:
    return isinstance(value, np.ndarray) and value.ndim >= 2 and value.shape[:2] == hw


@dataclasses.dataclass(frozen=True)
class SelectKeys(grain.transforms.Map):
    keys: tuple[str, ...]

    def map(self, example: Mapping[str, Any]) -> dict[str, Any]:
        missing = [k for k in self.keys if k not in example]
        if missing:
            raise KeyError(f"example lacks keys {missing}; it has {sorted(example)}")
        return {k: np.asarray(example[k]) for k in self.keys}


class CheckPretraining(grain.transforms.Map):
    def map(self, example: dict[str, Any]) -> dict[str, Any]:
        check_pretraining_example(example)
        return example


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} does not divide across "
                         f"{process_count} processes")
    return global_batch_size // process_count


class ProcessRows(grain.MapDataset):
    """This process's rows of each global batch of a (shuffled, augmented) example stream.

    Global batch ``k`` is stream elements ``[k B, (k + 1) B)``; process ``p`` of ``P`` takes
    rows ``[p B/P, (p + 1) B/P)`` of it. The global batch is therefore the same for any
    process count, and ``jax.make_array_from_process_local_data`` reassembles it in order.
    """

    def __init__(self, parent: grain.MapDataset, global_batch_size: int, process_index: int,
                 process_count: int):
        super().__init__(parent)
        self._global = global_batch_size
        self._local = per_process_batch_size(global_batch_size, process_count)
        self._offset = process_index * self._local
        self._length = (len(parent) // global_batch_size) * self._local

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, index: int) -> int:
        batch, row = divmod(index, self._local)
        return batch * self._global + self._offset + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def _getitems(self, indices):
        return self._parent._getitems([self._parent_index(i) for i in indices])

    def __str__(self) -> str:
        return f"ProcessRows(offset={self._offset}, local={self._local}, global={self._global})"


def make_pipeline(
    source: Source, *, global_batch_size: int, seed: int = 0, keys: Sequence[str] = PRETRAIN_KEYS,
    crop_size: int | None = None, flips: bool = True, rotations: bool = True,
    shuffle: bool = True, num_epochs: int | None = None, process_index: int = 0,
    process_count: int = 1, worker_count: int = 0, worker_buffer_size: int = 2,
    read_threads: int = 16, check_contract: bool = True, map_fn: Any = None,
) -> grain.IterDataset:
    """The training input pipeline for this process.

    One global example stream (shuffled per epoch with ``seed``, ``num_epochs=None`` repeats
    forever, augmented with randomness keyed on the seed and the stream position) is cut into
    global batches; each process reads and decodes only its own rows of each batch. Batches
    therefore depend neither on ``process_count`` nor on ``worker_count``. Incomplete global
    batches at the end of the stream are dropped. ``read_threads`` threads per process (or
    worker) read and transform elements ahead of use. ``map_fn`` (example dict -> example
    dict, e.g. a task's ``prepare``), when given, maps each example after the augmentation,
    before batching.
    """
    batch_size = per_process_batch_size(global_batch_size, process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if len(source) < global_batch_size:
        raise ValueError(f"source of {len(source)} examples cannot fill a global batch of "
                         f"{global_batch_size}")
    ds = grain.MapDataset.source(source).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    ds = ds.map(SelectKeys(tuple(keys)))
    if check_contract:
        ds = ds.map(CheckPretraining())
    if crop_size is not None or flips or rotations:
        ds = ds.random_map(PairedAugment(crop_size, flips, rotations))
    if map_fn is not None:
        ds = ds.map(map_fn)
    ds = ProcessRows(ds, global_batch_size, process_index, process_count)
    ds = ds.batch(batch_size, drop_remainder=True)
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads))
    if worker_count > 0:
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
    return iter_ds
