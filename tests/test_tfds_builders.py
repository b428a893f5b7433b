"""TFDS builders, built and read back without TensorFlow (array_record + data_source)."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mars_jax.data.ingest import IngestConfig, ingest
from mars_jax.data.pipeline import make_pipeline
from mars_jax.data.records import ShardSource, list_shards
from mars_jax.data.synth import render_pair
from mars_jax.data.tfds_builders import IngestedPairs, IngestedPairsConfig, SynthVhr, SynthVhrConfig
from mars_jax.data.tfds_builders.ingested_pairs import is_validation_scene
from mars_jax.data.tfds_builders.synth_vhr import TASK_KEYS


def test_tensorflow_is_not_needed():
    assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("task", ["pretrain", "damage", "detection", "registration"])
def test_synth_vhr_tasks_round_trip(tmp_path, task):
    config = SynthVhrConfig(name=f"{task}_64", task=task, size=64, train_examples=3,
                            test_examples=2, seed=4)
    builder = SynthVhr(config=config, data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    sources = builder.as_data_source()
    assert len(sources["train"]) == 3 and len(sources["test"]) == 2
    for split, seed in (("train", 4), ("test", 5)):
        for i in range(len(sources[split])):
            example = sources[split][i]
            scene = render_pair(seed, int(example["index"]), 64)
            assert set(TASK_KEYS[task]) <= set(example)
            for key in TASK_KEYS[task]:
                np.testing.assert_array_equal(example[key], scene[key], err_msg=key)
    # reopened from its directory, as a user does later
    reopened = tfds.builder_from_directory(builder.data_dir).as_data_source()
    assert len(reopened["train"]) == 3


def test_synth_vhr_feeds_the_pipeline(tmp_path):
    config = SynthVhrConfig(name="pretrain_64", task="pretrain", size=64, train_examples=4,
                            test_examples=1)
    builder = SynthVhr(config=config, data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    batch = next(iter(make_pipeline(builder.as_data_source()["train"], global_batch_size=2,
                                    crop_size=32)))
    assert batch["optical"].shape == (2, 32, 32, 3) and batch["sar"].dtype == np.float32


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown SynthVHR task 'segmentation'"):
        SynthVhrConfig(name="x", task="segmentation")


def test_ingested_pairs_from_real_geotiffs(tmp_path, terramesh_dir):
    fixtures = terramesh_dir
    out = tmp_path / "shards"
    summary = ingest(IngestConfig(optical=fixtures / "S2RGB", sar=fixtures / "S1RTC",
                                  labels=fixtures / "LULC", out=out, tile=112, overlap=16,
                                  progress=False))
    config = IngestedPairsConfig(name="terramesh", ingest_dir=str(out),
                                 validation_fraction=0.4)
    builder = IngestedPairs(config=config, data_dir=str(tmp_path / "tfds"),
                            file_format="array_record")
    builder.download_and_prepare()
    sources = builder.as_data_source()
    train, validation = sources["train"], sources["validation"]
    assert len(train) + len(validation) == summary.tiles_written
    shards = ShardSource(list_shards(out))
    originals = {(str(e["id"]), tuple(e["tile_origin"])): e
                 for e in (shards[i] for i in range(len(shards)))}
    scenes = {"train": set(), "validation": set()}
    for split, source in sources.items():
        for i in range(len(source)):
            example = source[i]
            scene = example["id"].decode()
            scenes[split].add(scene)
            assert is_validation_scene(scene, 0.4) == (split == "validation")
            original = originals[(scene, tuple(example["tile_origin"]))]
            for key in ("optical", "sar", "valid", "landcover", "transform"):
                np.testing.assert_array_equal(example[key], original[key], err_msg=key)
    assert scenes["train"].isdisjoint(scenes["validation"])


def test_ingested_pairs_needs_an_ingest_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ingest_summary\.json not found"):
        IngestedPairs(config=IngestedPairsConfig(name="x", ingest_dir=str(tmp_path)),
                      data_dir=str(tmp_path / "tfds"))
