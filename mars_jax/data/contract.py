"""The data contract (docs/architecture.md): what an example, or a batch, looks like to training.

Every source (SynthVHR, ingested shards, TFDS) yields dicts of numpy arrays. Pretraining reads
``PRETRAIN_KEYS``, each of the dtype in ``PRETRAIN_DTYPES`` and of the shape rule in
``PRETRAIN_SHAPES``: ``"H"`` and ``"W"`` are the image size, the same in every key, ``"C"``
the number of SAR channels, integers are fixed sizes. SAR is ``10 log10`` of the intensity (dB),
floored at ``DB_FLOOR`` (also the value of no-data pixels). Scenes with known acquisition
geometry carry it as 0-d float32 arrays named ``SCENE_PARAMETERS``. Batches add a leading axis.

``random_batch`` draws a batch of random inputs in the contract's dtypes (for smoke runs,
benchmarks and tests); ``batch_spec`` is the same batch as abstract ``jax.ShapeDtypeStruct``s
(for lowering and compiling without data). jax is imported only by those two, so the data
layer stays numpy-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import jax

__all__ = [
    "DB_FLOOR", "PRETRAIN_DTYPES", "PRETRAIN_KEYS", "PRETRAIN_SHAPES", "SAR_DB_MEAN",
    "SAR_DB_STD", "SCENE_PARAMETERS",
    "batch_spec", "check_pretraining_example", "pretraining_shapes", "random_batch",
]

DB_FLOOR = -50.0  # dB value of zero intensity and of no-data pixels, below any SAR noise floor
# The SAR statistics the models normalise with by default (MaRSConfig.sar_db_mean / sar_db_std):
# ingestion maps uncalibrated SAR onto them (``--sar-normalise percentile``).
SAR_DB_MEAN = -12.0
SAR_DB_STD = 6.0
SCENE_PARAMETERS = ("gsd", "sun_azimuth", "sun_elevation", "look_azimuth", "incidence", "looks")

PRETRAIN_KEYS = ("optical", "sar", "valid")
PRETRAIN_DTYPES: Mapping[str, np.dtype] = {
    "optical": np.dtype(np.uint8),  # RGB
    "sar": np.dtype(np.float32),  # dB
    "valid": np.dtype(np.bool_),  # pixels with data in both modalities
}
PRETRAIN_SHAPES: Mapping[str, tuple[int | str, ...]] = {
    "optical": ("H", "W", 3),
    "sar": ("H", "W", "C"),
    "valid": ("H", "W"),
}
_UNITS = {"sar": " in dB"}


def pretraining_shapes(height: int, width: int, sar_channels: int) -> dict[str, tuple[int, ...]]:
    """The shape of each pretraining key in an example of ``height`` x ``width`` pixels."""
    sizes = {"H": height, "W": width, "C": sar_channels}
    return {key: tuple(sizes[d] if isinstance(d, str) else d for d in rule)
            for key, rule in PRETRAIN_SHAPES.items()}


def _describe(key: str) -> str:
    rule = ", ".join(str(d) for d in PRETRAIN_SHAPES[key])
    return f"{PRETRAIN_DTYPES[key].name} [{rule}]{_UNITS.get(key, '')}"


def check_pretraining_example(example: Mapping[str, Any]) -> None:
    """Raises naming the key, the shape and the dtype if ``example`` breaks the contract."""
    missing = [k for k in PRETRAIN_KEYS if k not in example]
    if missing:
        raise KeyError(f"example lacks keys {missing}; it has {sorted(example)}")
    arrays = {k: np.asarray(example[k]) for k in PRETRAIN_KEYS}
    seen: dict[str, tuple[str, int]] = {}  # symbolic size -> (first key, its value)
    for key, value in arrays.items():
        rule = PRETRAIN_SHAPES[key]
        fixed = value.ndim == len(rule) and all(
            n == d for n, d in zip(value.shape, rule, strict=True) if isinstance(d, int))
        if value.dtype != PRETRAIN_DTYPES[key] or not fixed:
            raise ValueError(f"{key!r} must be {_describe(key)}, got {value.dtype} "
                             f"{value.shape}")
        for d, n in zip(rule, value.shape, strict=True):
            if d in ("H", "W"):
                first, size = seen.setdefault(d, (key, n))
                if size != n:
                    raise ValueError(f"{first!r} {arrays[first].shape} and {key!r} "
                                     f"{value.shape} differ in size")


def random_batch(key: jax.Array, batch: int, size: int, sar_channels: int) -> dict[str, jax.Array]:
    """Random inputs in the data contract's dtypes (uint8 RGB, SAR in dB, validity)."""
    import jax
    import jax.numpy as jnp

    k_rgb, k_sar = jax.random.split(key)
    optical = jax.random.randint(k_rgb, (batch, size, size, 3), 0, 256).astype(jnp.uint8)
    # Fully developed speckle: exponential intensity around -12 dB, expressed in dB.
    intensity = jax.random.exponential(k_sar, (batch, size, size, sar_channels)) * 10 ** -1.2
    sar = 10.0 * jnp.log10(jnp.maximum(intensity, 1e-6))
    return {"optical": optical, "sar": sar, "valid": jnp.ones((batch, size, size), bool)}


def batch_spec(batch: int, size: int, sar_channels: int, *, sharding: Any = None
               ) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract batch of ``batch`` pairs of ``size`` x ``size`` pixels (what
    ``random_batch`` and the input pipeline produce), optionally with a sharding."""
    import jax

    shapes = pretraining_shapes(size, size, sar_channels)
    return {key: jax.ShapeDtypeStruct((batch, *shapes[key]), PRETRAIN_DTYPES[key],
                                      sharding=sharding)
            for key in PRETRAIN_KEYS}
