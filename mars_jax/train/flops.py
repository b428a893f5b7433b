"""Analytic FLOPs of a MaRS pretraining step, device peaks and model FLOPs utilisation (MFU).

MaxText-style accounting: a multiply-add is 2 FLOPs, only matrix multiplications are counted
(layer norms, GELU, softmax, residual adds, masking, gathers and the MIM loss are left out:
they are a few percent of the total and not what the peak measures), and a training step
costs 3 x the forward (the backward pass computes two products per forward product). MFU is
therefore the fraction of the dense bf16 peak spent on the model's own matmuls.
"""

from __future__ import annotations

import os

import jax

from mars_jax.models import MaRSConfig
from mars_jax.models.mma import layer_kind
from mars_jax.models.patches import num_visible

PEAK_ENV_VAR = "MARS_PEAK_TFLOPS"

# Dense (no sparsity) bf16 peak FLOP/s per device, from the vendors' datasheets, matched
# against ``jax.Device.device_kind`` (lower-cased substring, first match wins, so the more
# specific names come first). H100 SXM ("NVIDIA H100 80GB HBM3") and H200: 989 TFLOP/s;
# H100 / H200 NVL: 835; H100 PCIe: 756; A100 (any form): 312. TPU v4: 275; v5e ("TPU v5
# lite"): 197; v5p ("TPU v5"): 459; v6e ("TPU v6 lite"): 918. Measured peaks are often lower
# (an H100 SXM typically sustains ~780 TFLOP/s on a large bf16 matmul): set MARS_PEAK_TFLOPS.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h200 nvl", 835e12),
    ("h100", 989e12),
    ("h200", 989e12),
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
)


def _matmul(rows: int, in_dim: int, out_dim: int) -> int:
    """A dense layer applied to ``rows`` tokens (bias adds are elementwise: not counted)."""
    return 2 * rows * in_dim * out_dim


def _transformer_block(sequences: int, tokens: int, width: int, mlp_dim: int) -> dict[str, int]:
    """One attention + MLP block over ``sequences`` independent sequences of ``tokens``.

    Attention costs ``2 * tokens^2 * width`` per sequence for the scores (Q K^T summed over
    heads) and as much again for the weighted sum of values: quadratic in the sequence length,
    which is why an MMA meta layer (B sequences of 2 N_vis) costs twice the attention of an
    intra layer (2B sequences of N_vis) at equal linear cost.
    """
    rows = sequences * tokens
    return {
        "qkv": _matmul(rows, width, 3 * width),
        "attention": 2 * 2 * sequences * tokens * tokens * width,
        "out_proj": _matmul(rows, width, width),
        "mlp": _matmul(rows, width, mlp_dim) + _matmul(rows, mlp_dim, width),
    }


def _add_blocks(breakdown: dict[str, int], prefix: str, count: int, **block) -> None:
    for part, flops in _transformer_block(**block).items():
        breakdown[f"{prefix}/{part}"] = breakdown.get(f"{prefix}/{part}", 0) + count * flops


def _patch_grid(image_size: int | tuple[int, int], patch_size: int) -> tuple[int, int]:
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height % patch_size or width % patch_size or min(height, width) < patch_size:
        raise ValueError(f"image size {height}x{width} is not a positive multiple of the patch "
                         f"size {patch_size}")
    return height // patch_size, width // patch_size


def forward_flops(
    cfg: MaRSConfig, *, image_size: int | tuple[int, int], batch_size: int,
    projection: bool | None = None,
) -> dict[str, float]:
    """Forward FLOPs of one pretraining step on the global batch, by part, plus ``"total"``.

    Covers what the model and the CGCL loss multiply, for both modalities: patch embeddings
    of the N_vis visible patches, the encoders over N_vis tokens, the MMA layers (intra: 2B
    sequences of N_vis tokens; meta: B sequences of 2 N_vis), the MIM decoders (embedding of
    N_vis tokens to the decoder width, blocks over all N grid tokens, head to P*P*C pixels),
    the CGCL projections and the dense CGCL logits with M = B*N_vis patches and embedding
    dim E: patch 2*M*M*E, global 2*B*B*E, cross 2*2*M*B*E. At pretraining scale the patch
    logits can be the largest part (half of ``base``'s FLOPs at a global batch of 1024).
    Recomputation (rematerialisation, blockwise CGCL's backward) is not model work and is
    not counted, as MFU defines it. ``projection``: count the CGCL projection matmuls (None:
    when ``cfg.projection_dim > 0``); E is the model's embedding dim either way.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if projection and not cfg.projection_dim:
        raise ValueError("projection=True needs a model config with projection_dim > 0")
    use_projection = bool(cfg.projection_dim) if projection is None else projection
    grid = _patch_grid(image_size, cfg.patch_size)
    b, n = batch_size, grid[0] * grid[1]
    n_vis = num_visible(n, cfg.mask_ratio)
    enc, dec, pp = cfg.encoder, cfg.decoder, cfg.patch_size * cfg.patch_size
    channels = cfg.optical_channels + cfg.sar_channels  # summed: one encoder per modality
    embed_dim = cfg.projection_dim or enc.width  # what CGCL compares, counted or not

    parts: dict[str, int] = {"patch_embed": _matmul(b * n_vis, pp * channels, enc.width)}
    encoder = dict(tokens=n_vis, width=enc.width, mlp_dim=enc.mlp_dim)
    _add_blocks(parts, "encoder", 2 * enc.depth, sequences=b, **encoder)
    kinds = [layer_kind(i) for i in range(cfg.mma_layers)]
    mma = dict(width=enc.width, mlp_dim=enc.mlp_dim)
    _add_blocks(parts, "mma_intra", kinds.count("intra"), sequences=2 * b, tokens=n_vis, **mma)
    _add_blocks(parts, "mma_meta", kinds.count("meta"), sequences=b, tokens=2 * n_vis, **mma)
    parts["decoder/embed"] = 2 * _matmul(b * n_vis, enc.width, dec.width)
    _add_blocks(parts, "decoder", 2 * dec.depth, sequences=b, tokens=n, width=dec.width,
                mlp_dim=dec.mlp_dim)
    parts["decoder/head"] = _matmul(b * n, dec.width, pp * channels)
    parts["projection"] = 2 * _matmul(b * n_vis, enc.width, embed_dim) if use_projection else 0
    m = b * n_vis
    parts["cgcl/patch"] = 2 * m * m * embed_dim
    parts["cgcl/global"] = 2 * b * b * embed_dim
    parts["cgcl/cross"] = 2 * 2 * m * b * embed_dim

    breakdown = {name: float(flops) for name, flops in parts.items()}
    breakdown["total"] = float(sum(parts.values()))
    return breakdown


def train_flops(
    cfg: MaRSConfig, *, image_size: int | tuple[int, int], batch_size: int,
    projection: bool | None = None,
) -> float:
    """FLOPs of one training step (forward + backward) on the global batch: 3 x forward."""
    return 3.0 * forward_flops(cfg, image_size=image_size, batch_size=batch_size,
                               projection=projection)["total"]


def _peak_from_env() -> float | None:
    value = os.environ.get(PEAK_ENV_VAR, "").strip()
    if not value:
        return None
    try:
        tflops = float(value)
    except ValueError:
        raise ValueError(f"{PEAK_ENV_VAR}={value!r} is not a number (TFLOP/s)") from None
    if not tflops > 0:
        raise ValueError(f"{PEAK_ENV_VAR} must be a positive TFLOP/s figure, got {value!r}")
    return tflops * 1e12


def peak_flops_for_kind(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s for a ``device_kind`` string, None when not in the table."""
    kind = device_kind.lower()
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """Peak FLOP/s of ``device`` (default: the first device), for MFU.

    ``MARS_PEAK_TFLOPS`` (in TFLOP/s), when set, wins: use it for a measured peak or a device
    missing from the table. Otherwise the table's dense bf16 figure; None for CPUs and
    unknown devices (MFU is then not reported rather than reported wrong).
    """
    from_env = _peak_from_env()
    if from_env is not None:
        return from_env
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    return peak_flops_for_kind(device.device_kind)


def mfu(train_flops_per_step: float, step_seconds: float, num_devices: int,
        peak_per_device: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of all devices; None if unknown."""
    if peak_per_device is None or not step_seconds > 0 or num_devices < 1:
        return None
    return train_flops_per_step / (step_seconds * num_devices * peak_per_device)
