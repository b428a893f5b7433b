"""``ingested_pairs``: a user's own ingested tiles (``python -m mars_jax.data.ingest``) as TFDS.

The features follow the ``ingest_summary.json`` written next to the shards, so any tile size,
SAR channel count or label set works. Tiles are split by scene: a scene's id hashes either to
``validation`` (``validation_fraction`` of scenes) or to ``train``, never both.

    builder = IngestedPairs(config=IngestedPairsConfig(name="haiti", ingest_dir="/data/haiti"),
                            data_dir="/data/tfds", file_format="array_record")
    builder.download_and_prepare()
    train = builder.as_data_source()["train"]   # later: tfds.builder_from_directory(...)
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from mars_jax.data.ingest import SUMMARY_FILE, read_ingest_summary
from mars_jax.data.records import ShardSource
from mars_jax.data.tfds_builders.features import dense

_MISSING = {"crs": "", "transform": np.full(6, np.nan)}  # non-georeferenced scenes


@dataclasses.dataclass
class IngestedPairsConfig(tfds.core.BuilderConfig):
    ingest_dir: str = ""
    validation_fraction: float = 0.1


def read_summary(ingest_dir: str | Path) -> dict[str, Any]:
    path = Path(ingest_dir) / SUMMARY_FILE
    summary = read_ingest_summary(ingest_dir)
    if summary is None:
        raise FileNotFoundError(f"{path} not found: is {ingest_dir} the --out folder of "
                                "python -m mars_jax.data.ingest?")
    if summary.get("num_examples", 0) < 1:
        raise ValueError(f"{path}: the ingest wrote no tiles")
    return summary


def _feature(spec: dict[str, Any]) -> tfds.features.FeatureConnector:
    if spec["dtype"] == "str":
        return tfds.features.Text()
    # Always byte-encoded: tf.train.Example float lists would round float64 (e.g. UTM
    # transforms) to float32.
    return dense(tuple(spec["shape"]), np.dtype(spec["dtype"]))


def is_validation_scene(scene_id: str, fraction: float) -> bool:
    return zlib.crc32(scene_id.encode()) % 10_000 < round(fraction * 10_000)


class IngestedPairs(tfds.core.GeneratorBasedBuilder):
    """Co-registered optical/SAR tiles ingested from the user's own scenes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    BUILDER_CONFIGS: ClassVar[list[IngestedPairsConfig]] = []

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        if not cfg.ingest_dir:
            raise ValueError("IngestedPairs needs config=IngestedPairsConfig(name=..., "
                             "ingest_dir=<the ingest --out folder>)")
        summary = read_summary(cfg.ingest_dir)
        features = {k: _feature(spec) for k, spec in summary["keys"].items()}
        return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                     features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(validation=False),
                "validation": self._generate_examples(validation=True)}

    def _generate_examples(self, validation: bool):
        cfg = self.builder_config
        summary = read_summary(cfg.ingest_dir)
        source = ShardSource([Path(cfg.ingest_dir) / name for name in summary["shards"]])
        keys = list(summary["keys"])
        for index in range(len(source)):
            example = source[index]
            scene = str(example["id"])
            if is_validation_scene(scene, cfg.validation_fraction) != validation:
                continue
            record = {k: example[k] if k in example else _MISSING[k] for k in keys}
            yield f"{scene}/{int(example['tile_origin'][0])}/{int(example['tile_origin'][1])}", {
                k: str(v) if summary["keys"][k]["dtype"] == "str" else v
                for k, v in record.items()}
