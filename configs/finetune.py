r"""Fine-tuning configs: ``--config=configs/finetune.py:TASK,SIZE[,PROTOCOL]``.

  TASK      landcover, damage, change, building_height, roads, translation, registration,
            sar_detection, building_detection (mars_jax.tasks.TASKS)
  SIZE      tiny, small, base, large: the encoder of configs/pretrain.py's variant of that
            name (a pretraining checkpoint of that variant loads into it)
  PROTOCOL  full (default: everything trains, layer-wise lr decay), frozen (PANGAEA: frozen
            encoder + UPerNet, AdamW 1e-4, weight decay 0.05, rate / 10 at 60% and 90%),
            linear (a linear probe of the fused tokens on the frozen encoder; not for
            change, nor translation: a 1x1 probe cannot decode an image, nor registration,
            nor the detection tasks: a probe has no box branches)

  python -m mars_jax.main --mode=finetune --config=configs/finetune.py:landcover,tiny \
      --workdir=/tmp/ft --config.init.checkpoint=/tmp/mars_tiny

``init.checkpoint`` empty: random initialisation. Land cover follows the missing-modality
protocol: trained with both modalities (a third of the examples lose one, modality dropout),
evaluated with both, optical only and SAR only. Translation (SAR -> optical) trains and is
scored with SAR alone (``task.modalities`` and ``eval.modalities`` ``("sar",)``): a sigmoid
UPerNet predicts the optical image in [0, 1], trained with L1 (plus ``task.ssim_weight *
(1 - SSIM)`` when > 0), scored by PSNR, SSIM and L1 against a constant image of the training
mean colour. Detection (CenterNet boxes, ``tasks.detection``): ``sar_detection`` finds
SynthVHR's small objects (vehicles, ships) in SAR alone (``task.modalities`` and
``eval.modalities`` ``("sar",)``), ``building_detection`` buildings in optical + SAR; both are
scored by COCO box mAP (``map``, ``ap50``, ...) on whole held-out scenes (sliding windows,
merged with NMS) against no box at all. ``tiny`` runs on a laptop CPU in about a minute;
its learning rates are 10x the larger sizes' (a few hundred steps from a 2-layer encoder), the
frozen protocol's included.
"""

import dataclasses
import importlib.util
from pathlib import Path

import ml_collections


def _load_pretrain():
    """configs/pretrain.py by path, so this file loads from any working directory."""
    spec = importlib.util.spec_from_file_location(
        "_mars_pretrain_config", Path(__file__).with_name("pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pretrain = _load_pretrain()

TASK_NAMES = ("landcover", "damage", "change", "building_height", "roads", "translation",
              "registration", "sar_detection", "building_detection")
SAR_ONLY = ("translation", "sar_detection")  # tasks that read SAR alone
PROTOCOLS = ("full", "frozen", "linear")


@dataclasses.dataclass(frozen=True)
class Size:
    image_size: int  # training crop (and sliding window)
    synth_size: int  # SynthVHR scene side the crops are cut from
    batch_size: int
    total_steps: int
    warmup_steps: int
    learning_rate: float  # full fine-tuning; frozen / linear below
    frozen_learning_rate: float
    linear_learning_rate: float
    layer_decay: float
    head_channels: int
    norm_groups: int
    eval_scenes: int
    eval_size: int
    log_every: int
    checkpoint_every: int


SIZES = {
    "tiny": Size(image_size=64, synth_size=128, batch_size=8, total_steps=150, warmup_steps=10,
                 learning_rate=1e-3, frozen_learning_rate=1e-3, linear_learning_rate=1e-2,
                 layer_decay=0.9, head_channels=32, norm_groups=8, eval_scenes=8,
                 eval_size=128, log_every=25, checkpoint_every=75),
    "small": Size(image_size=256, synth_size=512, batch_size=16, total_steps=20_000,
                  warmup_steps=500, learning_rate=1e-4, frozen_learning_rate=1e-4,
                  linear_learning_rate=1e-3, layer_decay=0.75, head_channels=256,
                  norm_groups=32, eval_scenes=64, eval_size=1024, log_every=50,
                  checkpoint_every=1000),
    "base": Size(image_size=512, synth_size=512, batch_size=16, total_steps=20_000,
                 warmup_steps=500, learning_rate=1e-4, frozen_learning_rate=1e-4,
                 linear_learning_rate=1e-3, layer_decay=0.65, head_channels=512,
                 norm_groups=32, eval_scenes=64, eval_size=1024, log_every=50,
                 checkpoint_every=1000),
    "large": Size(image_size=512, synth_size=512, batch_size=16, total_steps=20_000,
                  warmup_steps=500, learning_rate=5e-5, frozen_learning_rate=1e-4,
                  linear_learning_rate=1e-3, layer_decay=0.75, head_channels=512,
                  norm_groups=32, eval_scenes=64, eval_size=1024, log_every=50,
                  checkpoint_every=1000),
}


def parse_arg(arg: str | None) -> tuple[str, str, str]:
    parts = [p.strip() for p in (arg or "landcover,tiny").split(",")]
    if len(parts) not in (2, 3):
        raise ValueError(f"finetune config {arg!r}: expected TASK,SIZE[,PROTOCOL], e.g. "
                         "'landcover,tiny' or 'roads,base,frozen'")
    task, size = parts[:2]
    protocol = parts[2] if len(parts) == 3 else "full"
    for value, choices, what in ((task, TASK_NAMES, "task"), (size, tuple(SIZES), "size"),
                                 (protocol, PROTOCOLS, "protocol")):
        if value not in choices:
            raise ValueError(f"finetune config {arg!r}: unknown {what} {value!r}; choose "
                             f"from {choices}")
    return task, size, protocol


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    task, size, protocol = parse_arg(arg)
    s = SIZES[size]
    pre = pretrain.get_config(size)

    config = ml_collections.ConfigDict()
    config.variant = f"{task},{size},{protocol}"
    config.seed = 0
    config.total_steps = s.total_steps

    # The encoder of the pretraining variant (its decoder settings are unused here).
    config.model = pre.model
    config.sharding_rules = pre.sharding_rules
    config.mesh = pre.mesh

    config.task = ml_collections.ConfigDict()
    config.task.name = task
    config.task.protocol = protocol
    config.task.label_fraction = 1.0  # < 1: a fixed seeded subset of the labelled examples
    # one only for optical-only datasets; translation reads SAR alone
    config.task.modalities = ("sar",) if task in SAR_ONLY else ("optical", "sar")
    config.task.modality_dropout = 0.3 if task == "landcover" else 0.0
    config.task.levels = ()  # encoder blocks for the head; (): spread over the depth
    # "median_frequency": class-weighted cross-entropy, for the rare classes of damage
    # (damaged buildings), change (changed pixels) and roads
    config.task.class_weighting = "median_frequency" if task in ("damage", "change",
                                                                 "roads") else "none"
    config.task.ssim_weight = 0.0  # translation: the loss adds ssim_weight * (1 - SSIM)

    # Fields of mars_jax.models.heads.HeadConfig; the task sets the kind (UPerNet,
    # regression, change, descriptor, centernet) unless the protocol is a linear probe.
    # Detection's CenterNet head uses channels (FPN and branch width), norm_groups and neck
    # (no dropout, no pool_scales).
    config.head = ml_collections.ConfigDict()
    config.head.kind = "linear" if protocol == "linear" else "upernet"
    config.head.channels = s.head_channels
    config.head.pool_scales = (1, 2, 3, 6)
    config.head.dropout = 0.0 if task == "registration" else 0.1  # descriptors: no noise
    config.head.norm_groups = s.norm_groups
    config.head.neck = "vit"
    config.head.levels = (-1,)  # linear probe: the fused MMA tokens
    config.head.activation = {"building_height": "softplus",
                              "translation": "sigmoid"}.get(task)
    config.head.fusion = "diff_concat"
    config.head.symmetric = False

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = {"full": s.learning_rate, "frozen": s.frozen_learning_rate,
                                  "linear": s.linear_learning_rate}[protocol]
    config.optim.end_learning_rate_fraction = 0.0
    config.optim.warmup_steps = s.warmup_steps if protocol == "full" else 0
    config.optim.weight_decay = 0.05
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.clip_norm = 1.0
    config.optim.grad_accum_steps = 1
    config.optim.schedule = "cosine" if protocol == "full" else "multistep"
    config.optim.milestones = (0.6, 0.9)
    config.optim.gamma = 0.1
    config.optim.layer_decay = s.layer_decay if protocol == "full" else 1.0

    config.input = ml_collections.ConfigDict()
    config.input.image_size = s.image_size
    config.input.batch_size = s.batch_size

    # "synth" renders labelled SynthVHR scenes (nothing to prepare), "dataset" reads a
    # real-layout folder (data.dataset in earthmiss, bright, dfc23_t2, whu_cd, deepglobe_roads,
    # coco for the detection tasks; data.root), "shards" ingested shards with a label
    # raster, "tfds" a prepared dataset.
    config.data = ml_collections.ConfigDict()
    config.data.source = "synth"
    config.data.synth_size = s.synth_size
    config.data.synth_seed = 1  # pretraining streams data set 0
    config.data.synth_scenes = 512
    config.data.dataset = ""
    config.data.root = ""
    config.data.split = "train"
    config.data.shards_dir = ""
    config.data.tfds_name = ""
    config.data.tfds_data_dir = ""
    config.data.flips = True
    config.data.rotations = True
    config.data.workers = 0

    config.eval = ml_collections.ConfigDict()
    config.eval.modalities = {"landcover": ("both", "optical", "sar"), "translation": ("sar",),
                              "sar_detection": ("sar",)}.get(task, ("both",))
    config.eval.every_steps = 0  # and at the end
    config.eval.scenes = s.eval_scenes  # 0: the whole split (datasets)
    config.eval.synth_size = s.eval_size  # held-out scenes, larger than the crop
    config.eval.synth_seed = 2
    config.eval.split = "val"
    config.eval.shards_dir = ""
    config.eval.overlap = -1  # pixels between sliding windows; -1: a quarter window
    config.eval.batch_windows = 16 if size == "tiny" else 8  # tiny: a 128 scene's 9 windows
    config.eval.weighting = "uniform"  # or "gaussian"
    config.eval.panels = 4
    config.eval.progress = True

    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = ""  # pretraining workdir (or checkpoints/ or a step folder)
    config.init.step = ml_collections.config_dict.placeholder(int)  # None: the newest

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = s.checkpoint_every
    config.checkpoint.keep = 2
    config.checkpoint.async_save = True
    config.checkpoint.strict_resume = False

    config.log = ml_collections.ConfigDict()
    config.log.every_steps = s.log_every
    config.log.images_every_steps = 0  # pretraining's reconstructions; unused here
    config.log.progress = True
    config.log.tensorboard = True
    return config
