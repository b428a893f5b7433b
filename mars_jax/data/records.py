"""Example <-> bytes, and ArrayRecord shards of examples.

An example is a flat ``dict[str, np.ndarray]`` (scalars become 0-d arrays, strings 0-d unicode
arrays). Each record is a msgpack map ``{key: [dtype, shape, codec, bytes]}``: no TensorFlow,
exact round trip of dtype and shape, fast to decode. ``codec`` is ``"zlib"`` where compression
saves at least a quarter of the bytes (RGB, masks, labels) and ``"raw"`` otherwise: speckled SAR
in float32 barely compresses (~10%) and would cost more to inflate than to read. Shards are
written under a temporary name and renamed when closed, so a crash never leaves a half-written
shard under a final name.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

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


class ShardSource:
    """Random-access source of decoded examples over shards (a grain ``RandomAccessDataSource``)."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        import grain

        paths = [str(p) for p in paths]
        if not paths:
            raise ValueError("no shards given")
        self._source = grain.sources.ArrayRecordDataSource(paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return decode_example(self._source[index])

    def __repr__(self) -> str:
        return f"ShardSource({len(self)} examples)"
