"""grain input pipelines: source -> process slice -> shuffle -> paired augmentation -> batches.

Every pipeline is a ``grain.IterDataset`` of dicts of numpy arrays with a leading per-process
batch axis, ready for ``jax.make_array_from_process_local_data``. Its iterator's state
(``get_state`` / ``set_state``) is small and exact: a restored iterator yields exactly the
batches the original would have yielded next, with any number of worker processes.

Sources are anything with ``__len__`` and ``__getitem__(int) -> dict``: :class:`SynthSource`
(SynthVHR rendered on the fly, no preparation step), :class:`~mars_jax.data.records.ShardSource`
(ingested shards) or a TFDS ``data_source``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grain
import numpy as np

PRETRAIN_KEYS = ("optical", "sar", "valid")


class Source(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class SynthSource:
    """SynthVHR scenes rendered on demand: example ``i`` is ``render_pair(seed, i, size)``.

    ``length`` is the (virtual) number of distinct scenes; any value works, nothing is stored.
    """

    seed: int = 0
    size: int = 512
    length: int = 1_000_000
    options: tuple[tuple[str, Any], ...] = (("with_t2", False), ("with_registration", False))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        from mars_jax.data.synth import render_pair

        if not 0 <= index < self.length:
            raise IndexError(f"SynthSource index {index} out of range [0, {self.length})")
        return render_pair(self.seed, int(index), self.size, **dict(self.options))


def check_pretraining_example(example: Mapping[str, Any]) -> None:
    """The data contract of DESIGN.md; raises naming the key, the shape and the dtype."""
    missing = [k for k in PRETRAIN_KEYS if k not in example]
    if missing:
        raise KeyError(f"example lacks keys {missing}; it has {sorted(example)}")
    optical, sar, valid = (np.asarray(example[k]) for k in PRETRAIN_KEYS)
    if optical.dtype != np.uint8 or optical.ndim != 3 or optical.shape[-1] != 3:
        raise ValueError(f"'optical' must be uint8 [H, W, 3], got {optical.dtype} "
                         f"{optical.shape}")
    if sar.dtype != np.float32 or sar.ndim != 3:
        raise ValueError(f"'sar' must be float32 [H, W, C] in dB, got {sar.dtype} {sar.shape}")
    if valid.dtype != np.bool_ or valid.shape != optical.shape[:2]:
        raise ValueError(f"'valid' must be bool {optical.shape[:2]}, got {valid.dtype} "
                         f"{valid.shape}")
    if sar.shape[:2] != optical.shape[:2]:
        raise ValueError(f"'optical' {optical.shape} and 'sar' {sar.shape} differ in size")


@dataclasses.dataclass(frozen=True)
class PairedAugment(grain.transforms.RandomMap):
    """One random square crop, flip and 90-degree rotation, applied to every spatial array.

    Spatial arrays are those whose first two axes equal the optical image's (H, W): both
    modalities and any dense label move together, so patch j still covers the same ground.
    Other entries (ids, scalars, transforms) pass through unchanged.
    """

    crop_size: int | None = None
    flips: bool = True
    rotations: bool = True

    def random_map(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        h, w = np.shape(example["optical"])[:2]
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

        return {k: transform(v) if _is_spatial(v, (h, w)) else v for k, v in example.items()}


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
    read_threads: int = 16, check_contract: bool = True,
) -> grain.IterDataset:
    """The training input pipeline for this process.

    One global example stream (shuffled per epoch with ``seed``, ``num_epochs=None`` repeats
    forever, augmented with randomness keyed on the seed and the stream position) is cut into
    global batches; each process reads and decodes only its own rows of each batch. Batches
    therefore depend neither on ``process_count`` nor on ``worker_count``. Incomplete global
    batches at the end of the stream are dropped. ``read_threads`` threads per process (or
    worker) read and transform elements ahead of use.
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
    ds = ProcessRows(ds, global_batch_size, process_index, process_count)
    ds = ds.batch(batch_size, drop_remainder=True)
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads))
    if worker_count > 0:
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
    return iter_ds
