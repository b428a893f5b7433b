"""Typed sections of a fine-tuning config (configs/finetune.py), checked at once.

A fine-tuning experiment shares pretraining's ``model``, ``input``, ``checkpoint``, ``log``
and ``mesh`` sections (``train.config``) and adds:

  task   which task (``tasks.TASKS``), the protocol, label fraction, modality dropout
  head   the decoder head (``models.heads.HeadConfig``)
  optim  pretraining's AdamW plus the fine-tuning schedule and layer-wise lr decay
  data   where labelled examples come from (SynthVHR, a real-layout folder, shards, TFDS)
  eval   held-out evaluation: modality sets, scenes, sliding window, panels
  init   the pretraining checkpoint the encoder starts from ("" = random initialisation)

Protocols (``task.protocol``):

  full    every parameter trains; ``optim.layer_decay`` < 1 scales the learning rate of
          encoder layer l by ``layer_decay ** (L + 1 - l)`` (BEiT / MAE fine-tuning)
  frozen  PANGAEA's: the encoder is frozen (bit-identical after training), a UPerNet head
          trains with AdamW 1e-4, weight decay 0.05, the rate cut 10x at 60% and 90%
  linear  a linear probe on the frozen encoder's fused tokens (not for ``change``, which
          has no bi-temporal probe, nor ``translation``: a 1x1 probe cannot decode an image,
          nor ``registration``, nor the detection tasks: a probe has no box branches)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from mars_jax.models import MaRSConfig
from mars_jax.models.heads import HeadConfig
from mars_jax.train.config import CheckpointConfig, InputConfig, LogConfig, MeshConfig
from mars_jax.train.optim import OptimConfig
from mars_jax.typed_config import ConfigError, Section, unknown_keys_message

PROTOCOLS = ("full", "frozen", "linear")
MODALITY_SETS = ("both", "optical", "sar")  # "both": every modality the run trained with
TASK_SOURCES = ("synth", "dataset", "shards", "tfds")
SCHEDULES = ("cosine", "multistep")
CLASS_WEIGHTINGS = ("none", "median_frequency")


@dataclasses.dataclass(frozen=True)
class TaskConfig(Section):
    """What to learn and how (module docstring). ``modalities``: the inputs the model is
    trained with; ``modality_dropout``: the probability that an example loses one of them
    (which one: even odds), so one model serves either alone; ``levels``: the encoder blocks
    the head reads besides the fused tokens (empty: ``tasks.model.default_levels``)."""

    SECTION = "task"
    name: str = "landcover"
    protocol: str = "full"
    label_fraction: float = 1.0  # of the labelled training set, a fixed seeded subset
    modalities: tuple[str, ...] = ("optical", "sar")
    modality_dropout: float = 0.0
    levels: tuple[int, ...] = ()
    # "median_frequency": cross-entropy weighted by median-frequency balancing of the training
    # labels (train.evaluate.LabelStatistics), for rare classes such as damaged buildings
    class_weighting: str = "none"
    # translation only: the loss adds ssim_weight * (1 - SSIM) to the L1 (0: L1 alone)
    ssim_weight: float = 0.0

    def validate(self) -> None:
        from mars_jax.tasks import TASKS

        self.require_one_of("name", tuple(TASKS))
        self.require_one_of("protocol", PROTOCOLS)
        self.require(isinstance(self.label_fraction, int | float)
                     and 0 < self.label_fraction <= 1, "label_fraction", "in (0, 1]")
        self.require(len(self.modalities) > 0 and len(set(self.modalities)) == len(
            self.modalities) and set(self.modalities) <= {"optical", "sar"}, "modalities",
            "a non-empty tuple of distinct 'optical' / 'sar'")
        self.require(isinstance(self.modality_dropout, int | float)
                     and 0 <= self.modality_dropout <= 1, "modality_dropout", "in [0, 1]")
        self.require(not self.modality_dropout or len(self.modalities) == 2,
                     "modality_dropout", "0 when training with one modality")
        self.require(all(isinstance(i, int) and i >= 0 for i in self.levels), "levels",
                     "encoder block indices >= 0")
        self.require_one_of("class_weighting", CLASS_WEIGHTINGS)
        task = TASKS[self.name]
        self.require(self.class_weighting == "none" or task.kind not in (
            "regression", "translation", "detection"),
                     "class_weighting", f"'none' for a {task.kind} task")
        self.require(set(self.modalities) <= set(task.roles), "modalities",
                     f"among {list(task.roles)}: task {self.name!r} reads only those")
        self.require(isinstance(self.ssim_weight, int | float) and not isinstance(
            self.ssim_weight, bool) and self.ssim_weight >= 0, "ssim_weight", ">= 0")
        self.require(not self.ssim_weight or task.kind == "translation", "ssim_weight",
                     f"0 for task {self.name!r}: the SSIM term is for 'translation' only")


@dataclasses.dataclass(frozen=True)
class FinetuneOptimConfig(OptimConfig):
    """``schedule``: "cosine" (warmup + cosine) or "multistep" (warmup, then the rate times
    ``gamma`` at each fraction of ``milestones`` of the run: PANGAEA's 0.6, 0.9).
    ``layer_decay`` (protocol "full"): layer-wise learning-rate decay, 1 = none."""

    SECTION = "optim"
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.6, 0.9)
    gamma: float = 0.1
    layer_decay: float = 1.0

    def validate(self) -> None:
        super().validate()
        self.require_one_of("schedule", SCHEDULES)
        self.require(all(0 < m < 1 for m in self.milestones) and list(self.milestones)
                     == sorted(self.milestones), "milestones", "increasing fractions in (0, 1)")
        self.require(0 < self.gamma <= 1, "gamma", "in (0, 1]")
        self.require(0 < self.layer_decay <= 1, "layer_decay", "in (0, 1]")


@dataclasses.dataclass(frozen=True)
class TaskDataConfig(Section):
    """Labelled examples: "synth" renders SynthVHR scenes of ``synth_size`` (data set
    ``synth_seed``, ``synth_scenes`` of them; nothing prepared), "dataset" a real-layout
    folder (``dataset`` one of ``data.datasets.DATASETS``, under ``root``, split ``split``),
    "shards" ingested shards with a label raster (``shards_dir``), "tfds" a prepared TFDS
    dataset."""

    SECTION = "data"
    source: str = "synth"
    synth_size: int = 128
    synth_seed: int = 1  # pretraining streams data set 0: fine-tuning data are other scenes
    synth_scenes: int = 512
    dataset: str = ""
    root: str = ""
    split: str = "train"
    shards_dir: str = ""
    tfds_name: str = ""
    tfds_data_dir: str = ""
    flips: bool = True
    rotations: bool = True
    workers: int = 0

    def validate(self) -> None:
        self.require_one_of("source", TASK_SOURCES)
        self.require_positive("synth_size", "synth_scenes")
        self.require_non_negative("synth_seed", "workers")
        if self.source == "dataset":
            from mars_jax.data.datasets import DATASETS

            self.require_one_of("dataset", tuple(DATASETS))
            self.require(bool(self.root), "root", "set for source='dataset'")
        if self.source == "shards":
            self.require(bool(self.shards_dir), "shards_dir", "set for source='shards'")
        if self.source == "tfds":
            self.require(bool(self.tfds_name), "tfds_name", "set for source='tfds'")


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """Held-out evaluation, streamed scene by scene with sliding windows of the training crop
    (``overlap`` pixels; -1: a quarter of the window). ``modalities``: the sets scored, each
    "both" (the trained modalities), "optical" or "sar". Synth: ``scenes`` scenes of
    ``synth_size`` from data set ``synth_seed``; dataset / tfds: split ``split``; shards:
    ``shards_dir``. ``scenes`` = 0: every scene of the split. ``every_steps`` = 0: at the end
    only. ``panels``: examples in the prediction panels (0: none)."""

    SECTION = "eval"
    modalities: tuple[str, ...] = ("both",)
    every_steps: int = 0
    scenes: int = 16
    synth_size: int = 256
    synth_seed: int = 2
    split: str = "val"
    shards_dir: str = ""
    overlap: int = -1
    batch_windows: int = 8
    weighting: str = "uniform"
    panels: int = 4
    progress: bool = True

    def validate(self) -> None:
        from mars_jax.tasks.sliding import WEIGHTINGS

        self.require(len(self.modalities) > 0 and set(self.modalities) <= set(MODALITY_SETS),
                     "modalities", f"a non-empty tuple of {MODALITY_SETS}")
        self.require_non_negative("every_steps", "scenes", "synth_seed", "panels")
        self.require_positive("synth_size", "batch_windows")
        self.require(self.overlap >= -1, "overlap", ">= 0 pixels, or -1 (a quarter window)")
        self.require_one_of("weighting", WEIGHTINGS)


@dataclasses.dataclass(frozen=True)
class InitConfig(Section):
    """``checkpoint``: a pretraining workdir, its checkpoints/ folder or a step folder; empty:
    random initialisation. ``step``: that checkpoint step (None: the newest)."""

    SECTION = "init"
    checkpoint: str = ""
    step: int | None = None

    def validate(self) -> None:
        self.require(self.step is None or (isinstance(self.step, int) and self.step >= 0),
                     "step", "None or a step >= 0")


SECTIONS: dict[str, type[Section]] = {
    "model": MaRSConfig, "task": TaskConfig, "head": HeadConfig, "optim": FinetuneOptimConfig,
    "input": InputConfig, "data": TaskDataConfig, "eval": EvalConfig, "init": InitConfig,
    "checkpoint": CheckpointConfig, "log": LogConfig, "mesh": MeshConfig,
}
TOP_LEVEL = ("variant", "seed", "total_steps", "sharding_rules")


@dataclasses.dataclass(frozen=True)
class FinetuneExperiment:
    """Every section of a fine-tuning config, typed and validated."""

    model: MaRSConfig
    task: TaskConfig
    head: HeadConfig
    optim: FinetuneOptimConfig
    input: InputConfig
    data: TaskDataConfig
    eval: EvalConfig
    init: InitConfig
    checkpoint: CheckpointConfig
    log: LogConfig
    mesh: MeshConfig
    seed: int
    total_steps: int
    sharding_rules: tuple[tuple[str, Any], ...]
    variant: str = ""

    @property
    def trains_encoder(self) -> bool:
        return self.task.protocol == "full"

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]
                    ) -> FinetuneExperiment:
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
        if sections["task"].protocol == "linear" and sections["head"].kind != "linear":
            raise ConfigError("head config: kind must be 'linear' for task.protocol='linear' "
                              f"(a linear probe), got {sections['head'].kind!r}")
        from mars_jax.tasks import TASKS

        task_section = sections["task"]
        problem = TASKS[task_section.name].setup_problem(
            task_section.protocol, tuple(task_section.modalities), task_section.modality_dropout)
        if problem:
            raise ConfigError(f"task config: {problem}")
        fixed = TASKS[sections["task"].name].activation
        if fixed and sections["head"].activation not in (None, fixed):
            raise ConfigError(f"head config: activation must be {fixed!r} (or None) for task "
                              f"{sections['task'].name!r}, got {sections['head'].activation!r}")
        rules = tuple((str(name), axes if axes is None or isinstance(axes, str)
                       else tuple(axes)) for name, axes in values.get("sharding_rules", ()))
        return cls(**sections, seed=int(values.get("seed", 0)), total_steps=total,
                   sharding_rules=rules, variant=str(values.get("variant", "")))
