"""Typed sections of an experiment config, and the whole experiment checked at once.

``Experiment.from_config(config)`` turns an ``ml_collections`` config (configs/pretrain.py)
into frozen, validated sections before anything touches a device: an unknown key or a bad
value anywhere is an error naming the section and the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from mars_jax.models import MaRSConfig
from mars_jax.train.objective import LossConfig
from mars_jax.train.optim import OptimConfig
from mars_jax.typed_config import ConfigError, Section, unknown_keys_message

DATA_SOURCES = ("synth", "shards", "tfds")


@dataclasses.dataclass(frozen=True)
class InputConfig(Section):
    SECTION = "input"
    image_size: int = 512  # crop fed to the model
    batch_size: int = 1024  # global batch, pairs per step

    def validate(self) -> None:
        self.require_positive("image_size", "batch_size")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Where examples come from: "synth" renders SynthVHR on the fly, "shards" reads
    ingested ArrayRecord shards, "tfds" a prepared TFDS dataset."""

    SECTION = "data"
    source: str = "synth"
    synth_size: int = 512
    shards_dir: str = ""
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_data_dir: str = ""
    flips: bool = True
    rotations: bool = True
    workers: int = 0  # grain worker processes (0: in the main process)
    # source="shards": a record that fails to read or decode is replaced by the next readable
    # one, warned about and counted (metric data/corrupt_skipped) instead of stopping the run
    skip_corrupt: bool = False

    def validate(self) -> None:
        self.require_one_of("source", DATA_SOURCES)
        self.require_positive("synth_size")
        self.require_non_negative("workers")
        if self.source == "shards":
            self.require(bool(self.shards_dir), "shards_dir", "set for source='shards'")
        if self.source == "tfds":
            self.require(bool(self.tfds_name), "tfds_name", "set for source='tfds'")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
    SECTION = "checkpoint"
    every_steps: int = 1000  # and at the end; 0: only at the end and on preemption
    keep: int = 3
    async_save: bool = True
    strict_resume: bool = False  # True: a damaged latest checkpoint stops the run (named)

    def validate(self) -> None:
        self.require_non_negative("every_steps")
        self.require_positive("keep")


@dataclasses.dataclass(frozen=True)
class LogConfig(Section):
    SECTION = "log"
    every_steps: int = 50
    images_every_steps: int = 1000  # 0: no reconstruction panels
    progress: bool = True  # a progress bar; False: one console line per log step
    tensorboard: bool = True

    def validate(self) -> None:
        self.require_positive("every_steps")
        self.require_non_negative("images_every_steps")


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    """Device mesh sizes per axis; -1: all remaining devices (one axis at most)."""

    SECTION = "mesh"
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def validate(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for name, size in sizes.items():
            self.require(size == -1 or size >= 1, name, "a positive size or -1")
        self.require(list(sizes.values()).count(-1) <= 1, "data", "the only -1 axis (at most "
                     "one axis may take the remaining devices)")

    def sizes(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


SECTIONS: dict[str, type[Section]] = {
    "model": MaRSConfig, "loss": LossConfig, "optim": OptimConfig, "input": InputConfig,
    "data": DataConfig, "checkpoint": CheckpointConfig, "log": LogConfig, "mesh": MeshConfig,
}
TOP_LEVEL = ("variant", "seed", "total_steps", "sharding_rules")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Every section of a pretraining config, typed and validated."""

    model: MaRSConfig
    loss: LossConfig
    optim: OptimConfig
    input: InputConfig
    data: DataConfig
    checkpoint: CheckpointConfig
    log: LogConfig
    mesh: MeshConfig
    seed: int
    total_steps: int
    sharding_rules: tuple[tuple[str, Any], ...]
    variant: str = ""

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> Experiment:
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(
            config)
        unknown = set(values) - set(SECTIONS) - set(TOP_LEVEL)
        if unknown:
            raise ConfigError(unknown_keys_message("top-level", unknown,
                                                   set(SECTIONS) | set(TOP_LEVEL)))
        sections = {name: section.from_dict(values.get(name, {}))
                    for name, section in SECTIONS.items()}
        total = values.get("total_steps", 1)
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ConfigError(f"top-level config: total_steps must be a positive int, got "
                              f"{total!r}")
        rules = tuple((str(name), axes if axes is None or isinstance(axes, str)
                       else tuple(axes)) for name, axes in values.get("sharding_rules", ()))
        return cls(**sections, seed=int(values.get("seed", 0)), total_steps=total,
                   sharding_rules=rules, variant=str(values.get("variant", "")))
