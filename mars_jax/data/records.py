"""Example <-> bytes, and ArrayRecord shards of examples.

An example is a flat ``dict[str, np.ndarray]`` (scalars become 0-d arrays, strings 0-d unicode
arrays). Each record is a msgpack map ``{key: [dtype, shape, codec, bytes]}``: no TensorFlow,
exact round trip of dtype and shape, fast to decode. ``codec`` is ``"zlib"`` where compression
saves at least a quarter of the bytes (RGB, masks, labels) and ``"raw"`` otherwise: speckled SAR
in float32 barely compresses (~10%) and would cost more to inflate than to read. Shards are
written under a temporary name and renamed when closed, so a crash never leaves a half-written
shard under a final name.

Damaged shards are named, never read silently: :class:`ShardSource` checks every shard's
Riegeli postscript, footer and record count when it opens them (:class:`CorruptShardError`
lists every bad file), and a record that fails to read or decode later raises
:class:`CorruptRecordError` naming the shard and the record's index in it. With
``skip_corrupt=True`` such a record is replaced by the next readable one and the replacement
is marked (``CORRUPT_KEY``), so the count reaches the trainer's metrics even from grain
worker processes. Files on disk are never modified.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import operator
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from absl import logging
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

SHARD_SUFFIX = ".array_record"
_TMP_SUFFIX = ".tmp"
_COMPRESSION_LEVEL = 1  # decode speed matters more than the last few percent of bytes
_WORTH_COMPRESSING = 0.75  # keep the zlib form only below this fraction of the raw size


def encode_example(example: Mapping[str, Any]) -> bytes:
    out = {}
    for key, value in example.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "O":
            raise TypeError(f"example key {key!r}: object arrays cannot be stored")
        raw = arr.tobytes(order="C")
        packed = zlib.compress(raw, _COMPRESSION_LEVEL)
        codec, payload = (("zlib", packed) if len(packed) < _WORTH_COMPRESSING * len(raw)
                          else ("raw", raw))
        out[key] = [arr.dtype.str, list(arr.shape), codec, payload]
    return msgpack.packb(out, use_bin_type=True)


def decode_example(data: bytes) -> dict[str, np.ndarray]:
    out = {}
    for key, (dtype, shape, codec, payload) in msgpack.unpackb(data, raw=False).items():
        if codec == "zlib":
            payload = zlib.decompress(payload)
        elif codec != "raw":
            raise ValueError(f"record key {key!r}: unknown codec {codec!r}")
        out[key] = np.frombuffer(payload, dtype=np.dtype(dtype)).reshape(tuple(shape))
    return out


class ShardWriter:
    """Writes examples to ``{prefix}-{index:05d}.array_record`` files of ``shard_size`` records.

    A shard becomes visible (renamed from ``*.tmp``) only once complete and closed: whatever
    happens later, finished shards stay valid.
    """

    def __init__(self, prefix: str | os.PathLike, shard_size: int = 1024):
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.finished: list[Path] = []
        self.num_examples = 0
        self.num_bytes = 0
        self._writer: ArrayRecordWriter | None = None
        self._path: Path | None = None
        self._in_shard = 0

    def _open(self) -> None:
        self._path = self.prefix.with_name(
            f"{self.prefix.name}-{len(self.finished):05d}{SHARD_SUFFIX}")
        self._writer = ArrayRecordWriter(str(self._path) + _TMP_SUFFIX, "group_size:1")
        self._in_shard = 0

    def write(self, example: Mapping[str, Any]) -> None:
        if self._writer is None:
            self._open()
        record = encode_example(example)
        self._writer.write(record)
        self.num_examples += 1
        self.num_bytes += len(record)
        self._in_shard += 1
        if self._in_shard >= self.shard_size:
            self._finish_shard()

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        os.replace(str(self._path) + _TMP_SUFFIX, self._path)
        self.finished.append(self._path)
        self._writer = None

    def close(self) -> list[Path]:
        self._finish_shard()
        return self.finished

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """Complete shards in ``directory`` (temporary, unfinished ones are ignored), sorted."""
    return sorted(Path(directory).glob(f"*{SHARD_SUFFIX}"))


CORRUPT_KEY = "corrupt_skipped"  # int32 0-d: 1 where the example replaces a corrupt record
_REPLACEMENT_TRIES = 64  # following records tried in place of a corrupt one
_REMEDY = ("re-run the ingest into that folder with --overwrite (python -m mars_jax.data.ingest "
           "... --overwrite), or remove the damaged files (their examples are then left out)")


class CorruptShardError(ValueError):
    """Shards that cannot be opened as ArrayRecord files (truncated, empty, not ArrayRecord)."""


class CorruptRecordError(CorruptShardError):
    """A record that fails to read (Riegeli chunk corruption) or to decode.

    ``path`` is the shard, ``index`` the record's position in it, ``key`` its index in the
    whole source, ``reason`` what went wrong and ``hint`` what to do (a default one if None).
    """

    def __init__(self, path: str, index: int, key: int, reason: str, hint: str | None = None):
        super().__init__(path, index, key, reason, hint)  # picklable across grain workers
        self.path, self.index, self.key, self.reason = path, index, key, reason
        self.hint = hint or ("Set config.data.skip_corrupt=True to replace corrupt records by "
                             f"the next readable one and count them, or {_REMEDY}")

    def __str__(self) -> str:
        return (f"corrupt record {self.index} of shard {self.path} (example {self.key} of the "
                f"source): {self.reason}. {self.hint}")


def _riegeli_corruption(error: Exception) -> bool:
    """Whether a reader error is Riegeli reporting damaged data (not e.g. a failing disk)."""
    return isinstance(error, RuntimeError) and "Riegeli/records file" in str(error)


def _check_shard(path: str) -> tuple[int, str | None]:
    """(record count, None), or (0, what is wrong): reads the postscript, footer and index,
    never the records."""
    try:
        size = os.path.getsize(path)
    except OSError as error:
        return 0, f"cannot be opened: {error.strerror or error}"
    if size == 0:
        return 0, "empty file (0 bytes): not an ArrayRecord file"
    reader = None
    try:
        reader = ArrayRecordReader(path, "readahead_buffer_size:0,max_parallelism:0")
        if reader.ok():
            return reader.num_records(), None
        reader.read([])  # a reader that failed to open raises its status here
        message = "the ArrayRecord reader failed without a message"
    except RuntimeError as error:
        message = str(error)
    finally:
        if reader is not None:
            try:
                reader.close()
            except RuntimeError:  # a failed reader raises its status again on close
                pass
    return 0, f"truncated or not an ArrayRecord file ({size:,} bytes): {message}"


class ShardSource:
    """Random-access source of decoded examples over shards (a grain ``RandomAccessDataSource``).

    Opening checks every shard (postscript, footer, record count; no record is read) and
    raises :class:`CorruptShardError` listing each bad file. Shards that hold no records are
    left out with a warning. A record that cannot be read or decoded raises
    :class:`CorruptRecordError` naming the shard and the record's index in it; with
    ``skip_corrupt=True`` it is replaced by the next readable record (``index + 1``,
    ``index + 2``, ... wrapping around: deterministic), a warning names it (once per record
    and process), and every example carries ``CORRUPT_KEY``: int32 1 for a replacement, 0
    otherwise (``extra_keys`` lists it for the pipeline). Each time a corrupt record is met
    (every epoch) it counts again. Other read failures (e.g. a failing disk) raise ``OSError``
    naming the shard and record, and are never skipped.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, skip_corrupt: bool = False):
        import grain

        paths = [str(p) for p in paths]
        if not paths:
            raise ValueError("no shards given")
        with concurrent.futures.ThreadPoolExecutor(min(16, len(paths))) as pool:
            checks = list(zip(paths, pool.map(_check_shard, paths), strict=True))
        bad = [(path, problem) for path, (_, problem) in checks if problem]
        if bad:
            lines = "\n".join(f"  {path}: {problem}" for path, problem in bad)
            raise CorruptShardError(
                f"{len(bad)} of {len(paths)} shards cannot be read:\n{lines}\nTo fix: {_REMEDY}")
        empty = [path for path, (count, _) in checks if count == 0]
        if empty:
            logging.warning("%d shard(s) hold no records and are left out: %s", len(empty),
                            ", ".join(empty))
        kept = [(path, count) for path, (count, _) in checks if count]
        if not kept:
            raise ValueError(f"the {len(paths)} shards hold no records: {', '.join(paths)}")
        self.paths = [path for path, _ in kept]
        self.skip_corrupt = skip_corrupt
        self.extra_keys: tuple[str, ...] = (CORRUPT_KEY,) if skip_corrupt else ()
        self._starts = [0]
        for _, count in kept:
            self._starts.append(self._starts[-1] + count)
        self._warned: set[int] = set()
        # "path[start:end]" read instructions: grain does not open the files a second time.
        self._source = grain.sources.ArrayRecordDataSource(
            [f"{path}[0:{count}]" for path, count in kept])

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, key: int) -> tuple[str, int]:
        """(shard path, index in that shard) of example ``key`` of the source."""
        shard = bisect.bisect_right(self._starts, key) - 1
        return self.paths[shard], key - self._starts[shard]

    def _read(self, key: int) -> dict[str, np.ndarray]:
        try:
            data = self._source[key]
        except Exception as error:
            path, index = self.locate(key)
            if _riegeli_corruption(error):
                raise CorruptRecordError(path, index, key, str(error)) from error
            raise OSError(f"reading record {index} of shard {path} failed: {error}") from error
        try:
            return decode_example(data)
        except Exception as error:  # any failure to decode means these bytes are not a record
            path, index = self.locate(key)
            raise CorruptRecordError(path, index, key, f"cannot decode ({type(error).__name__}: "
                                     f"{error})") from error

    def _warn(self, error: CorruptRecordError) -> None:
        if error.key not in self._warned:
            self._warned.add(error.key)
            logging.warning("skipping corrupt record %d of shard %s (example %d): %s",
                            error.index, error.path, error.key, error.reason)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        key = operator.index(index)
        if not 0 <= key < len(self):
            raise IndexError(f"example {key} out of range for {len(self)} examples")
        try:
            example = self._read(key)
        except CorruptRecordError as error:
            if not self.skip_corrupt:
                raise
            self._warn(error)
        else:
            if self.skip_corrupt:
                example[CORRUPT_KEY] = np.int32(0)
            return example
        for step in range(1, min(_REPLACEMENT_TRIES, len(self) - 1) + 1):
            try:
                example = self._read((key + step) % len(self))
            except CorruptRecordError as error:
                self._warn(error)
                continue
            example[CORRUPT_KEY] = np.int32(1)
            return example
        path, index = self.locate(key)
        raise CorruptRecordError(
            path, index, key, f"it and the {min(_REPLACEMENT_TRIES, len(self) - 1)} records "
            "after it are all corrupt, so skip_corrupt found no replacement",
            hint=f"The shard is badly damaged: {_REMEDY}")

    def __repr__(self) -> str:
        return f"ShardSource({len(self)} examples in {len(self.paths)} shards)"
