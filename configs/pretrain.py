r"""MaRS pretraining configs: ``--config=configs/pretrain.py:VARIANT``.

  tiny   laptop CPU in seconds: 64x64 pairs, patch 8, 2-layer 64-d encoders, 2 MMA layers
  small  ViT-S/16 encoders, 256x256
  base   ViT-B/16 encoders (~86M parameters each), 512x512, 4 MMA layers, 60% mask: the
         paper's pretraining shape with ViT encoders
  large  ViT-L/16 encoders, 512x512

Anything can be overridden on the command line, e.g. ``--config.model.mask_ratio=0.75``.
"""

import dataclasses

import ml_collections

from mars_jax.models import DECODER_PRESETS, ENCODER_PRESETS


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named size: model presets (mars_jax.models.ENCODER_PRESETS / DECODER_PRESETS),
    input shape and schedule."""

    encoder: str
    decoder: str
    image_size: int
    patch_size: int
    mma_layers: int
    batch_size: int  # global batch, pairs per step
    total_steps: int
    warmup_steps: int
    log_every: int
    checkpoint_every: int
    scan_layers: bool = False


VARIANTS = {
    "tiny": Variant(encoder="mu", decoder="mu", image_size=64, patch_size=8, mma_layers=2,
                    batch_size=8, total_steps=60, warmup_steps=10, log_every=10,
                    checkpoint_every=30),
    "small": Variant(encoder="S", decoder="S", image_size=256, patch_size=16, mma_layers=4,
                     batch_size=256, total_steps=100_000, warmup_steps=5_000, log_every=50,
                     checkpoint_every=1_000, scan_layers=True),
    "base": Variant(encoder="B", decoder="B", image_size=512, patch_size=16, mma_layers=4,
                    batch_size=1024, total_steps=200_000, warmup_steps=10_000, log_every=50,
                    checkpoint_every=1_000, scan_layers=True),
    "large": Variant(encoder="L", decoder="L", image_size=512, patch_size=16, mma_layers=6,
                     batch_size=1024, total_steps=200_000, warmup_steps=10_000, log_every=50,
                     checkpoint_every=1_000, scan_layers=True),
}


def _transformer(name: str, presets) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(presets[name].to_dict())


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"unknown pretrain config variant {variant!r}; choose from "
                         f"{tuple(VARIANTS)}")
    v = VARIANTS[variant]
    image_size, batch_size = v.image_size, v.batch_size

    config = ml_collections.ConfigDict()
    config.variant = variant
    config.seed = 0

    config.input = ml_collections.ConfigDict()
    config.input.image_size = image_size
    config.input.batch_size = batch_size  # global batch, pairs per step

    # Fields of mars_jax.models.MaRSConfig; unknown keys are rejected when the model is built.
    config.model = ml_collections.ConfigDict()
    config.model.encoder = _transformer(v.encoder, ENCODER_PRESETS)
    config.model.decoder = _transformer(v.decoder, DECODER_PRESETS)
    config.model.mma_layers = v.mma_layers
    config.model.mma_norm = "post"  # the paper's T = LN(H(T) + T); "pre" is the option
    config.model.patch_size = v.patch_size
    config.model.optical_channels = 3
    config.model.sar_channels = 1  # VV or HH
    config.model.mask_ratio = 0.6
    config.model.projection_dim = 0  # >0: per-modality linear projection before CGCL
    config.model.optical_mean = (0.485, 0.456, 0.406)  # of RGB / 255
    config.model.optical_std = (0.229, 0.224, 0.225)
    config.model.sar_db_mean = (-12.0,)  # per SAR channel, dB
    config.model.sar_db_std = (6.0,)
    config.model.dtype = "float32"  # "bfloat16": bf16 compute, float32 parameters
    config.model.param_dtype = "float32"
    config.model.attention_impl = ml_collections.config_dict.placeholder(str)  # None: XLA picks
    config.model.remat = "none"  # per-block activation remat: "none", "full" or "dots" (layers.py)
    # nnx.scan over each stack's layers (models/stack.py): one block in the program, not 12+;
    # the same numbers as unscanned (same initialisation), faster compiles of deep models.
    config.model.scan_layers = v.scan_layers

    # L = L_mim_rgb + L_mim_sar + cgcl_weight * (alpha L_patch + beta L_global + gamma L_cross)
    config.loss = ml_collections.ConfigDict()
    config.loss.cgcl_weight = 1.0
    config.loss.tau_patch = 0.05
    config.loss.tau_global = 0.07
    config.loss.tau_cross = 0.1
    config.loss.alpha = 1.0
    config.loss.beta = 1.0
    config.loss.gamma = 1.0
    config.loss.mim_type = "l2"  # or "l1"
    config.loss.norm_pix = True  # per-patch normalised MIM targets
    # CGCL over the global batch: "sharded" streams the logits in chunk x chunk blocks under
    # shard_map over the data axes (memory linear in B*N), "blockwise" on one device, "dense"
    # materialises them. Keys: "gather" (all-gathered) or "ring" (ppermute, O(B*N*D/devices)).
    config.loss.cgcl_impl = "sharded"
    config.loss.cgcl_chunk_size = 2048
    config.loss.cgcl_keys = "ring" if variant in ("base", "large") else "gather"
    config.loss.cgcl_key_dtype = ml_collections.config_dict.placeholder(str)  # None: as e
    config.loss.hard_negative_radius = 0.0  # > 0: own-image patches within it weighted up
    config.loss.hard_negative_weight = 2.0
    config.loss.learnable_temperatures = False  # tau_* are then initial values
    config.loss.adaptive_weights = False  # (alpha, beta, gamma) = softmax(grad norms / tau)
    config.loss.adaptive_tau = 1.0
    # > 0: each modality's patch positions shifted by its own random 0..N patches per pair,
    # so CGCL's patch terms cannot pair patch j with patch j by position alone
    config.loss.position_jitter = 0

    # Fields of mars_jax.train.optim.OptimConfig. MAE's rule: lr = 1.5e-4 * batch / 256.
    config.total_steps = v.total_steps
    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 1.5e-4 * max(batch_size, 256) / 256
    config.optim.end_learning_rate_fraction = 0.0
    config.optim.warmup_steps = v.warmup_steps
    config.optim.weight_decay = 0.05
    config.optim.b1 = 0.9
    config.optim.b2 = 0.95
    config.optim.eps = 1e-8
    config.optim.clip_norm = 1.0
    config.optim.grad_accum_steps = 1

    # Device mesh (-1: all remaining devices) and logical-axis -> mesh-axis rules. FSDP shards
    # parameters and optimiser state along their `embed` axis; tensor parallelism splits heads
    # and MLP hidden units.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # `layers` is the leading axis of scanned stacks (model.scan_layers): never sharded.
    config.sharding_rules = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                             ("kv", None), ("patch", None), ("layers", None))

    # Input: "synth" streams SynthVHR (no preparation), "shards" reads ingested ArrayRecord
    # shards (python -m mars_jax.data.ingest), "tfds" a prepared TFDS dataset.
    config.data = ml_collections.ConfigDict()
    config.data.source = "synth"
    config.data.synth_size = 2 * image_size if variant == "tiny" else image_size
    config.data.shards_dir = ""
    config.data.tfds_name = ""
    config.data.tfds_split = "train"
    config.data.tfds_data_dir = ""
    config.data.flips = True
    config.data.rotations = True
    config.data.workers = 0  # grain worker processes (0: in the main process)
    # shards: replace a corrupt record by the next readable one and count it
    # (metric data/corrupt_skipped) instead of stopping with an error naming it
    config.data.skip_corrupt = False

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = v.checkpoint_every  # and at the end; 0: only on SIGTERM
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True
    config.checkpoint.strict_resume = False  # True: stop at a damaged latest checkpoint

    config.log = ml_collections.ConfigDict()
    config.log.every_steps = v.log_every
    config.log.images_every_steps = v.checkpoint_every
    config.log.progress = True
    config.log.tensorboard = True
    return config
