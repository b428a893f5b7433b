"""Damaged ArrayRecord shards: named on open (truncated, empty), corrupt records named by shard
and index mid-read, or skipped and counted with skip_corrupt (also in a training run's metrics);
the files on disk are never touched."""

import json
import logging
import pickle
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from mars_jax.data.pipeline import PRETRAIN_KEYS, make_pipeline
from mars_jax.data.records import (
    CORRUPT_KEY,
    CorruptRecordError,
    CorruptShardError,
    ShardSource,
    ShardWriter,
    list_shards,
)
from mars_jax.data.synth import SynthSource
from mars_jax.train.metrics import CORRUPT_METRIC, MetricAccumulator

PER_SHARD = 4


def example(i: int) -> dict[str, np.ndarray]:
    """Incompressible (stored raw), so each record is a sizeable chunk of its shard."""
    rng = np.random.default_rng(i)
    return {"x": rng.normal(size=(16, 16)).astype(np.float32), "i": np.int32(i)}


def pair(i: int) -> dict[str, np.ndarray]:
    """A 32x32 pretraining pair (the contract's keys only)."""
    example = SynthSource(seed=0, size=32)[i]
    return {key: example[key] for key in PRETRAIN_KEYS}


def write_shards(folder: Path, count: int = 12, make=example) -> list[Path]:
    with ShardWriter(folder / "s", shard_size=PER_SHARD) as writer:
        for i in range(count):
            writer.write(make(i))
    return list_shards(folder)


def snapshot(paths) -> dict[str, tuple[bytes, int]]:
    return {str(p): (Path(p).read_bytes(), Path(p).stat().st_mtime_ns) for p in paths}


def corrupt_middle(path: Path) -> None:
    """Overwrites 16 bytes 40% into the records (before the footer): one record's chunk."""
    data = bytearray(path.read_bytes())
    first_block = np.frombuffer(bytes(data[:65536]), np.uint8)
    offset = int(0.4 * np.flatnonzero(first_block).max())
    data[offset:offset + 16] = b"\xab" * 16
    path.write_bytes(bytes(data))


def test_truncated_and_empty_shards_are_all_named_on_open(tmp_path):
    shards = write_shards(tmp_path)
    shards[1].write_bytes(shards[1].read_bytes()[:-10])
    shards[2].write_bytes(b"")
    before = snapshot(shards)
    with pytest.raises(CorruptShardError) as info:
        ShardSource(shards)
    message = str(info.value)
    assert message.startswith("2 of 3 shards cannot be read:")
    assert f"{shards[1]}: truncated or not an ArrayRecord file" in message
    assert "RiegeliPostscript" in message  # Riegeli's own reason is kept
    assert f"{shards[2]}: empty file (0 bytes)" in message
    assert str(shards[0]) not in message
    assert "--overwrite" in message and "remove the damaged files" in message
    assert snapshot(shards) == before  # nothing deleted or rewritten
    good = ShardSource(shards[:1])  # the intact shard still reads in full
    assert [int(good[i]["i"]) for i in range(len(good))] == list(range(PER_SHARD))


def test_not_an_array_record_file_and_empty_shards(tmp_path, caplog):
    shards = write_shards(tmp_path, count=PER_SHARD)
    junk = tmp_path / "junk.array_record"
    junk.write_bytes(b"not a riegeli file" * 100)
    with pytest.raises(CorruptShardError, match=re.escape(
            f"{junk}: truncated or not an ArrayRecord file (1,800 bytes)")):
        ShardSource([*shards, junk])
    empty = tmp_path / "empty.array_record"
    ArrayRecordWriter(str(empty), "group_size:1").close()  # valid, zero records
    with caplog.at_level(logging.WARNING):
        source = ShardSource([empty, *shards])
    assert len(source) == PER_SHARD and int(source[0]["i"]) == 0
    assert "hold no records and are left out" in caplog.text and str(empty) in caplog.text
    with pytest.raises(ValueError, match="the 1 shards hold no records"):
        ShardSource([empty])


def test_mid_file_corruption_names_shard_and_record(tmp_path):
    shards = write_shards(tmp_path)
    corrupt_middle(shards[1])
    before = snapshot(shards)
    source = ShardSource(shards)  # the footer is intact: opening succeeds
    bad = {}
    for key in range(len(source)):
        try:
            assert int(source[key]["i"]) == key
            np.testing.assert_array_equal(source[key]["x"], example(key)["x"])
        except CorruptRecordError as error:
            bad[key] = error
    assert bad and all(PER_SHARD <= key < 2 * PER_SHARD for key in bad)  # only in shard 1
    key, error = next(iter(bad.items()))
    assert (error.path, error.index, error.key) == (str(shards[1]), key - PER_SHARD, key)
    assert str(error).startswith(f"corrupt record {key - PER_SHARD} of shard {shards[1]} "
                                 f"(example {key} of the source): Corrupted Riegeli/records file")
    assert "skip_corrupt=True" in str(error)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # crosses grain workers
    assert snapshot(shards) == before


def test_undecodable_record_names_shard_and_record(tmp_path):
    shards = write_shards(tmp_path, count=PER_SHARD)
    odd = tmp_path / "t-00000.array_record"
    writer = ArrayRecordWriter(str(odd), "group_size:1")
    writer.write(b"\x93not msgpack of an example")
    writer.close()
    source = ShardSource([*shards, odd])
    with pytest.raises(CorruptRecordError, match=re.escape(
            f"corrupt record 0 of shard {odd} (example {PER_SHARD} of the source): cannot "
            "decode")):
        source[PER_SHARD]


def test_skip_corrupt_replaces_warns_once_and_marks(tmp_path, caplog):
    shards = write_shards(tmp_path)
    corrupt_middle(shards[1])
    before = snapshot(shards)
    bad = set()
    for key in range(len(ShardSource(shards))):
        try:
            ShardSource(shards)[key]
        except CorruptRecordError:
            bad.add(key)
    source = ShardSource(shards, skip_corrupt=True)
    assert source.extra_keys == (CORRUPT_KEY,)
    with caplog.at_level(logging.WARNING):
        first = [source[key] for key in range(len(source))]
        again = [source[key] for key in range(len(source))]  # a second epoch
    for key, got in enumerate(first):
        replacement = key
        while replacement in bad:  # the next readable record, deterministically
            replacement += 1
        assert int(got["i"]) == replacement
        assert got[CORRUPT_KEY] == np.int32(key in bad) and got[CORRUPT_KEY].dtype == np.int32
        assert int(again[key]["i"]) == replacement
    assert caplog.text.count("skipping corrupt record") == len(bad)  # once per record
    assert f"of shard {shards[1]}" in caplog.text
    assert snapshot(shards) == before


def test_all_corrupt_finds_no_replacement(tmp_path):
    shards = write_shards(tmp_path, count=2, make=example)
    data = bytearray(shards[0].read_bytes())
    end = int(np.flatnonzero(np.frombuffer(bytes(data[:65536]), np.uint8)).max())
    data[64:int(0.8 * end)] = b"\xab" * (int(0.8 * end) - 64)  # both records, not the footer
    shards[0].write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match=r"the 1 records after it are all corrupt.*"
                                                 r"badly damaged"):
        ShardSource(shards, skip_corrupt=True)[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_pipeline_batches_carry_the_skip_count(tmp_path, workers):
    """The count travels in the examples, so it also comes back from grain worker processes."""
    shards = write_shards(tmp_path, count=8, make=pair)
    corrupt_middle(shards[1])
    source = ShardSource(shards, skip_corrupt=True)
    bad = sum(int(source[key][CORRUPT_KEY]) for key in range(len(source)))
    assert bad >= 1
    batches = list(make_pipeline(source, global_batch_size=4, keys=PRETRAIN_KEYS +
                                 source.extra_keys, crop_size=16, num_epochs=1, read_threads=1,
                                 worker_count=workers))
    assert [b[CORRUPT_KEY].shape for b in batches] == [(4,), (4,)]
    assert sum(int(b[CORRUPT_KEY].sum()) for b in batches) == bad


def test_corrupt_count_is_summed_over_the_log_interval():
    acc = MetricAccumulator()
    for loss, skipped in [(1.0, 0), (3.0, 2), (2.0, 1)]:
        acc.update({"loss": loss, CORRUPT_METRIC: skipped})
    assert acc.compute() == {"loss": 2.0, CORRUPT_METRIC: 3.0}


@pytest.mark.slow  # one short run, compiling: 15-22 s on 2 shared cores
def test_training_from_damaged_shards_reports_the_skips(tmp_path):
    from mars_jax.train.pretrain import train
    from tests.helpers import tiny_run_config

    shards = write_shards(tmp_path / "shards", count=16, make=pair)
    corrupt_middle(shards[1])
    source = ShardSource(shards, skip_corrupt=True)
    bad = sum(int(source[key][CORRUPT_KEY]) for key in range(len(source)))
    config = tiny_run_config(2, data={"source": "shards", "shards_dir": str(tmp_path / "shards"),
                                      "skip_corrupt": True},
                             checkpoint={"every_steps": 0, "async_save": False})
    workdir = tmp_path / "run"
    train(config, workdir, log=lambda _: None, devices=jax.devices()[:1])
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    # Two global batches of 8 are exactly the first epoch: each corrupt record is met once.
    assert sum(row[CORRUPT_METRIC] for row in rows) == bad >= 1
