"""What an ingest run depends on (``IngestConfig``, the CLI flags of the same names) and the
errors that stop one before or while it runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mars_jax.data import io
from mars_jax.data.contract import SAR_DB_MEAN, SAR_DB_STD

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
DEFAULT_MAX_NODATA = 0.3
DEFAULT_SHARD_SIZE = 256
DEFAULT_MAX_SHIFT = 16.0  # pixels (--check-alignment); layover alone reads up to ~10
SAR_NORMALISE = ("auto", "none", "percentile")
OPTICAL_NODATA_WORDS = ("auto", "none")
# Settings that may change between an interrupted run and its --resume.
RUN_ONLY = ("progress", "resume", "overwrite", "strict", "force")


@dataclass
class IngestConfig:
    """Everything a run depends on (the CLI flags of the same names; module docstring)."""

    optical: Path
    out: Path
    sar: Path | None = None  # None: the optical folder
    labels: Path | None = None
    optical_pattern: str | None = None  # None: file stem + raster suffix
    sar_pattern: str | None = None
    labels_pattern: str | None = None
    recursive: bool = False
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    max_nodata: float = DEFAULT_MAX_NODATA
    sar_kind: str = "auto"
    force: bool = False  # keep an explicit --sar-kind whose values look implausible
    sar_bands: tuple[io.Band, ...] | None = None  # None: all (identical copies stored once)
    sar_scale: float = 1.0
    sar_offset: float = 0.0
    sar_normalise: str = "auto"  # auto: percentile for uncalibrated DN, else none
    sar_db_mean: tuple[float, ...] = (SAR_DB_MEAN,)  # --sar-normalise targets
    sar_db_std: tuple[float, ...] = (SAR_DB_STD,)
    optical_bands: tuple[io.Band, ...] | None = None  # None: the first three (or one)
    optical_scale: float | None = None  # None: percentile stretch of non-uint8 optical
    optical_nodata: str = "auto"  # "auto", "none" or a number
    check_alignment: bool = False
    max_shift: float = DEFAULT_MAX_SHIFT
    shard_size: int = DEFAULT_SHARD_SIZE
    strict: bool = False
    overwrite: bool = False
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.optical, self.out = Path(self.optical), Path(self.out)
        self.sar = Path(self.sar) if self.sar is not None else self.optical
        self.labels = Path(self.labels) if self.labels is not None else None
        self.sar_db_mean = tuple(float(v) for v in _as_tuple(self.sar_db_mean))
        self.sar_db_std = tuple(float(v) for v in _as_tuple(self.sar_db_std))
        self.optical_nodata = str(self.optical_nodata)
        if self.tile < 1 or not 0 <= self.overlap < self.tile:
            raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile {self.tile} "
                             f"overlap {self.overlap}")
        if not 0 <= self.max_nodata <= 1:
            raise ValueError(f"max_nodata must be in [0, 1], got {self.max_nodata}")
        if self.sar_kind not in io.SAR_KIND_CHOICES:
            raise ValueError(f"sar_kind must be one of {io.SAR_KIND_CHOICES}, got "
                             f"{self.sar_kind!r}")
        if self.force and self.sar_kind == "auto":
            raise ValueError("--force keeps an explicit --sar-kind: give one (db, amplitude or "
                             "intensity)")
        if self.sar_normalise not in SAR_NORMALISE:
            raise ValueError(f"sar_normalise must be one of {SAR_NORMALISE}, got "
                             f"{self.sar_normalise!r}")
        if min(self.sar_db_std, default=0) <= 0:
            raise ValueError(f"sar_db_std must be positive, got {self.sar_db_std}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        if self.optical_scale is not None and self.optical_scale <= 0:
            raise ValueError(f"optical_scale must be positive, got {self.optical_scale}")
        self.optical_nodata_value()  # fails early on a malformed value
        if not self.max_shift > 0:
            raise ValueError(f"max_shift must be positive, got {self.max_shift}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues an interrupted run, --overwrite starts over: "
                             "give one")
        from mars_jax.data.ingest.pairing import pattern_regex

        for pattern in (self.optical_pattern, self.sar_pattern, self.labels_pattern):
            pattern_regex(pattern)  # fails early on a malformed pattern
        shared = self.sar.resolve() == self.optical.resolve()
        if shared and (None in (self.optical_pattern, self.sar_pattern)
                       or self.optical_pattern == self.sar_pattern):
            raise ValueError("optical and SAR share a folder: give them different patterns, "
                             "e.g. --optical-pattern '{id}_opt.png' --sar-pattern '{id}_sar.png'")

    def optical_nodata_value(self) -> str | float:
        """"auto", "none" or the number given."""
        if self.optical_nodata in OPTICAL_NODATA_WORDS:
            return self.optical_nodata
        try:
            return float(self.optical_nodata)
        except ValueError:
            raise ValueError(f"optical_nodata must be 'auto', 'none' or a number, got "
                             f"{self.optical_nodata!r}") from None

    def folders(self) -> dict[str, tuple[Path, str | None]]:
        """Role -> (folder, pattern) of each input."""
        folders = {"optical": (self.optical, self.optical_pattern),
                   "SAR": (self.sar, self.sar_pattern)}
        if self.labels is not None:
            folders["labels"] = (self.labels, self.labels_pattern)
        return folders

    def to_json(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value
                for key, value in dataclasses.asdict(self).items()}

    def fingerprint(self) -> dict[str, Any]:
        """The settings an interrupted run must share with its --resume (JSON types)."""
        settings = {key: list(value) if isinstance(value, tuple) else value
                    for key, value in self.to_json().items() if key not in RUN_ONLY}
        return settings


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


class IngestUsageError(ValueError):
    """The run cannot start as asked (missing folder, OUT not writable or already holding
    shards, an interrupted run in the way)."""


class BadInput(Exception):
    """One input that cannot be ingested, with the reason it is counted under."""

    def __init__(self, reason: str, path: Path, detail: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.reason, self.path, self.detail = reason, Path(path), detail

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "path": str(self.path), "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> BadInput:
        return cls(data["reason"], Path(data["path"]), data["detail"])
