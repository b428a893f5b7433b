"""``synth_vhr``: SynthVHR scenes as a TFDS dataset, one config per task of the MaRS paper.

Each config stores only the keys its task needs (plus the scene parameters). Scenes are
``render_pair(seed, index, size)``; the test split uses ``seed + 1``, so no scene is shared.
Users can build their own sizes: ``SynthVhr(config=SynthVhrConfig(name="landcover_256",
task="landcover", size=256, train_examples=10_000), data_dir=...)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from mars_jax.data.contract import PRETRAIN_KEYS, SCENE_PARAMETERS
from mars_jax.data.tfds_builders.features import OBJECT_FEATURES, spatial_features

# The paper's downstream tasks, and what each needs from a scene. Building and SAR object
# detection share `detection` (box_classes tells them apart); translation uses `pretrain` pairs.
TASK_KEYS: dict[str, tuple[str, ...]] = {
    "pretrain": PRETRAIN_KEYS,
    "landcover": (*PRETRAIN_KEYS, "landcover"),
    "damage": (*PRETRAIN_KEYS, "optical_t2", "sar_t2", "damage"),
    "change": (*PRETRAIN_KEYS, "optical_t2", "sar_t2", "change"),
    "detection": (*PRETRAIN_KEYS, "instances", "boxes", "box_classes", "object_heights"),
    "building_height": (*PRETRAIN_KEYS, "height", "instances"),
    "roads": (*PRETRAIN_KEYS, "road"),
    "registration": (*PRETRAIN_KEYS, "sar_warped", "valid_warped", "affine"),
}


def _render_options(task: str) -> dict[str, bool]:
    """Only skips the extras a task does not store: scene ``i`` is the same in every config."""
    return {"with_t2": task in ("damage", "change"),
            "with_registration": task == "registration"}


@dataclasses.dataclass
class SynthVhrConfig(tfds.core.BuilderConfig):
    task: str = "pretrain"
    size: int = 512
    train_examples: int = 2000
    test_examples: int = 200
    seed: int = 0

    def __post_init__(self):
        if self.task not in TASK_KEYS:
            raise ValueError(f"unknown SynthVHR task {self.task!r}; choose from "
                             f"{sorted(TASK_KEYS)}")


class SynthVhr(tfds.core.GeneratorBasedBuilder):
    """Procedural VHR optical + SAR scenes with ground truth for every downstream task."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    BUILDER_CONFIGS: ClassVar[list[SynthVhrConfig]] = [
        SynthVhrConfig(name=task, task=task) for task in TASK_KEYS]
    DEFAULT_CONFIG_NAME = "pretrain"

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        available = {**spatial_features(cfg.size, 1), **OBJECT_FEATURES}
        features = {k: available[k] for k in TASK_KEYS[cfg.task]}
        features.update({k: tfds.features.Scalar(dtype=np.float32) for k in SCENE_PARAMETERS})
        features["index"] = tfds.features.Scalar(dtype=np.int64)
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {"train": self._generate_examples(cfg.seed, cfg.train_examples),
                "test": self._generate_examples(cfg.seed + 1, cfg.test_examples)}

    def _generate_examples(self, seed: int, count: int):
        from mars_jax.data.synth import render_pair

        cfg = self.builder_config
        keys = TASK_KEYS[cfg.task] + SCENE_PARAMETERS
        for index in range(count):
            scene = render_pair(seed, index, cfg.size, **_render_options(cfg.task))
            yield index, {**{k: scene[k] for k in keys}, "index": index}
