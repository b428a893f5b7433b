"""Model configs: transformer shapes, named size presets, and the MaRS model config."""

from __future__ import annotations

import dataclasses

from mars_jax.models import layers
from mars_jax.typed_config import Section


@dataclasses.dataclass(frozen=True)
class TransformerSpec(Section):
    """Shape of one transformer stack."""

    SECTION = "transformer"
    width: int
    depth: int
    num_heads: int
    mlp_dim: int

    def validate(self) -> None:
        self.require_positive("width", "num_heads", "mlp_dim")
        self.require_non_negative("depth")
        self.require(self.width % self.num_heads == 0, "width",
                     f"divisible by num_heads {self.num_heads} (width {self.width} is not "
                     "divisible by num_heads)")
        self.require(self.width % 4 == 0, "width", "divisible by 4 (2-D sin-cos positions)")


# Named sizes (big_vision's naming): encoders per modality, and the light MAE-style decoders
# that go with them. "mu" is the laptop-CPU test size.
ENCODER_PRESETS: dict[str, TransformerSpec] = {
    "mu": TransformerSpec(width=64, depth=2, num_heads=2, mlp_dim=256),
    "S": TransformerSpec(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": TransformerSpec(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": TransformerSpec(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}
DECODER_PRESETS: dict[str, TransformerSpec] = {
    "mu": TransformerSpec(width=32, depth=1, num_heads=2, mlp_dim=128),
    "S": TransformerSpec(width=256, depth=4, num_heads=8, mlp_dim=1024),
    "B": TransformerSpec(width=512, depth=4, num_heads=16, mlp_dim=2048),
    "L": TransformerSpec(width=512, depth=8, num_heads=16, mlp_dim=2048),
}


def preset(table: dict[str, TransformerSpec], name: str) -> TransformerSpec:
    if name not in table:
        raise ValueError(f"unknown transformer size {name!r}; sizes: {sorted(table)}")
    return table[name]


VIT_B = ENCODER_PRESETS["B"]
MAE_DECODER = DECODER_PRESETS["B"]


@dataclasses.dataclass(frozen=True)
class MaRSConfig(Section):
    """Everything that defines a MaRS model (``config.model``): the encoder half
    (``MaRSEncoder``) and the pretraining decoders (``MaRSPretrainer``)."""

    SECTION = "model"
    encoder: TransformerSpec = VIT_B
    decoder: TransformerSpec = MAE_DECODER
    mma_layers: int = 4
    mma_norm: str = "post"
    patch_size: int = 16
    optical_channels: int = 3
    sar_channels: int = 1
    mask_ratio: float = 0.6
    projection_dim: int = 0  # 0: CGCL directly on the encoder outputs
    optical_mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # of optical / 255
    optical_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    sar_db_mean: tuple[float, ...] = (-12.0,)  # per SAR channel, in dB
    sar_db_std: tuple[float, ...] = (6.0,)
    dtype: str = "float32"  # compute dtype ("bfloat16" for mixed precision)
    param_dtype: str = "float32"
    attention_impl: str | None = None  # None (XLA picks), "xla" or "cudnn"
    remat: str = "none"  # per-block activation remat: "none", "full" or "dots" (layers.py)
    scan_layers: bool = False  # nnx.scan over each stack's layers (stack.py)

    def validate(self) -> None:
        self.require_positive("patch_size", "optical_channels", "sar_channels")
        self.require_one_of("mma_norm", ("pre", "post"))
        self.require_non_negative("mma_layers", "projection_dim")
        self.require(0.0 <= self.mask_ratio < 1.0, "mask_ratio", "in [0, 1)")
        for stat, channels in (("optical_mean", self.optical_channels),
                               ("optical_std", self.optical_channels),
                               ("sar_db_mean", self.sar_channels),
                               ("sar_db_std", self.sar_channels)):
            self.require(len(getattr(self, stat)) == channels, stat,
                         f"one value per channel ({stat} has {len(getattr(self, stat))} "
                         f"values for {channels} channels)")
        for stat in ("optical_std", "sar_db_std"):
            self.require(min(getattr(self, stat)) > 0, stat, "positive")
        self.require_dtype("dtype")
        self.require_dtype("param_dtype")
        self.require_one_of("attention_impl", (None, "xla", "cudnn"))
        self.require_one_of("remat", tuple(layers.REMAT_POLICIES))
        self.require(isinstance(self.scan_layers, bool), "scan_layers", "True or False")
