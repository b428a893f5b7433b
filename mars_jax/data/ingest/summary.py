"""What a run did: one record per scene, counts derived from them, SAR statistics.

``IngestSummary.format()`` is printed for people; ``to_json()`` is OUT/ingest_summary.json for
downstream readers (the TFDS builder, the trainer's checks). Every count derives from the
per-scene records, so an interrupted run resumed from its journal (output.py) reports exactly
what an uninterrupted one does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mars_jax.data import io
from mars_jax.data.ingest.config import BadInput, IngestConfig

SUMMARY_FORMAT = "mars_jax.ingest/2"
LABEL_KEY = "landcover"
_LISTED = 8  # scene ids named in the printed summary per line


@dataclass
class SceneRecord:
    """One scene's outcome: ``bad`` when skipped; the tiles and conversion notes otherwise."""

    id: str
    bad: BadInput | None = None
    tiles_written: int = 0
    tiles_dropped: int = 0
    georeferenced: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.bad is None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "bad": self.bad.to_json() if self.bad else None,
                "tiles_written": self.tiles_written, "tiles_dropped": self.tiles_dropped,
                "georeferenced": self.georeferenced, "notes": self.notes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SceneRecord:
        bad = BadInput.from_json(data["bad"]) if data.get("bad") else None
        return cls(**(data | {"bad": bad}))


@dataclass
class SarStatistics:
    """Running per-channel sums of the dB values of valid pixels in written tiles."""

    count: int = 0
    sums: list[float] = field(default_factory=list)
    squares: list[float] = field(default_factory=list)

    def add(self, sar: np.ndarray, valid: np.ndarray) -> None:
        values = sar[valid].astype(np.float64)  # [P, C]
        sums, squares = values.sum(axis=0), np.square(values).sum(axis=0)
        if not self.sums:
            self.sums, self.squares = [0.0] * len(sums), [0.0] * len(sums)
        self.count += len(values)
        self.sums = (np.asarray(self.sums) + sums).tolist()
        self.squares = (np.asarray(self.squares) + squares).tolist()

    def mean_std(self) -> tuple[list[float], list[float]]:
        if not self.count:
            return [], []
        mean = np.asarray(self.sums) / self.count
        var = np.maximum(np.asarray(self.squares) / self.count - mean * mean, 0.0)
        return mean.tolist(), np.sqrt(var).tolist()

    def to_json(self) -> dict[str, Any]:
        mean, std = self.mean_std()
        return {"mean": [round(m, 4) for m in mean], "std": [round(s, 4) for s in std],
                "pixels": self.count, "sums": self.sums, "squares": self.squares}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SarStatistics:
        return cls(count=data["pixels"], sums=list(data["sums"]), squares=list(data["squares"]))


@dataclass
class IngestSummary:
    """A run's outcome; ``format()`` for people, ``to_json()`` for downstream readers."""

    config: IngestConfig
    scenes_found: int = 0
    records: list[SceneRecord] = field(default_factory=list)
    folder_problems: list[BadInput] = field(default_factory=list)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    sar_stats: SarStatistics = field(default_factory=SarStatistics)
    shards: list[Path] = field(default_factory=list)
    num_bytes: int = 0
    seconds: float = 0.0
    stopped: str | None = None
    output: Path | None = None  # where the shards are (OUT, or the staging folder if stopped)

    # Counts, all derived from the records ---------------------------------------------------
    @property
    def bad_inputs(self) -> list[BadInput]:
        return self.folder_problems + [r.bad for r in self.records if r.bad is not None]

    @property
    def skipped(self) -> Counter[str]:
        return Counter(bad.reason for bad in self.bad_inputs)

    @property
    def scenes_ok(self) -> int:
        return sum(r.ok for r in self.records)

    @property
    def scenes_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def tiles_written(self) -> int:
        return sum(r.tiles_written for r in self.records)

    @property
    def tiles_dropped(self) -> int:
        return sum(r.tiles_dropped for r in self.records)

    @property
    def georeferenced_scenes(self) -> int:
        return sum(r.georeferenced for r in self.records if r.ok)

    @property
    def bytes_per_tile(self) -> float:
        return self.num_bytes / self.tiles_written if self.tiles_written else 0.0

    @property
    def scenes_without_tiles(self) -> list[str]:
        """Scenes read fine whose every tile was dropped for no-data."""
        return [r.id for r in self.records if r.ok and not r.tiles_written]

    def record_keys(self, example: dict[str, np.ndarray]) -> None:
        for key, value in example.items():
            dtype = "str" if value.dtype.kind == "U" else value.dtype.name
            self.keys.setdefault(key, {"dtype": dtype, "shape": list(value.shape)})

    def notes(self, name: str) -> list[Any]:
        """The note ``name`` of every scene read that has it."""
        return [r.notes[name] for r in self.records if r.ok and name in r.notes]

    # Reports --------------------------------------------------------------------------------
    def sar_kinds(self) -> Counter[str]:
        return Counter(self.notes("sar_kind"))

    def format(self) -> str:
        config = self.config
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()))
        keys = ", ".join(f"{key} {spec['dtype']}{spec['shape']}" for key, spec in self.keys.items())
        names = sorted({path.name for path in (self.shards[:1] + self.shards[-1:])})
        shard_names = f" ({' .. '.join(names)})" if names else ""
        lines = [
            f"ingest summary: {self.output or config.out}",
            f"  scenes: {self.scenes_found} found, {self.scenes_ok} ok, "
            f"{self.scenes_skipped} skipped",
            f"  skipped by reason: {reasons or 'none'}",
            f"  tiles: {self.tiles_written} written, {self.tiles_dropped} dropped "
            f"(> {config.max_nodata:.0%} no-data); {config.tile}x{config.tile}, "
            f"overlap {config.overlap}",
            *self._sar_lines(),
            *self._optical_lines(),
            *self._alignment_lines(),
            f"  example keys: {keys or 'none written'}",
            f"  shards: {len(self.shards)}{shard_names}, {self.num_bytes:,} bytes, "
            f"{self.bytes_per_tile:,.0f} bytes per tile, {self.seconds:.1f} s",
        ]
        if self.scenes_without_tiles:
            lines.append(f"  scenes without a tile (all > {config.max_nodata:.0%} no-data): "
                         f"{_listed(self.scenes_without_tiles)}")
        if self.stopped:
            lines.append(f"  stopped: {self.stopped}")
        return "\n".join(lines)

    def _sar_lines(self) -> list[str]:
        rules = Counter(zip(self.notes("sar_kind"), self.notes("sar_kind_rule"), strict=True))
        lines = [f"  SAR unit: {kind} in {count} scene(s): {rule}" for (kind, rule), count in
                 rules.most_common()]
        normalised = self.notes("sar_normalised")
        if normalised:
            c = self.config
            lines.append(f"  SAR normalised ({len(normalised)} scene(s)): each scene's dB "
                         f"mean / std (2..98th percentile winsorised) mapped onto "
                         f"{_values(c.sar_db_mean)} / {_values(c.sar_db_std)} dB "
                         "(--sar-normalise)")
        copies = Counter(self.notes("identical_sar_bands"))
        for bands, count in sorted(copies.items()):
            lines.append(f"  SAR: {bands} identical bands stored once in {count} scene(s) "
                         "(--sar-bands selects bands explicitly)")
        mean, std = self.sar_stats.mean_std()
        if mean:
            lines.append(f"  SAR dB of written tiles: mean {_values(mean)}, std {_values(std)} "
                         "(the trainer checks these against config.model.sar_db_mean / "
                         "sar_db_std)")
        return lines

    def _optical_lines(self) -> list[str]:
        fractions = Counter()
        for note in self.notes("optical_nodata"):
            fractions[note["rule"]] += 1
        lines = []
        for rule, count in sorted(fractions.items()):
            masked = [n["fraction"] for n in self.notes("optical_nodata") if n["rule"] == rule]
            lines.append(f"  optical no-data: {rule} in {count} scene(s), {np.mean(masked):.1%} "
                         f"of their pixels on average (largest {max(masked):.1%})")
        return lines

    def _alignment_lines(self) -> list[str]:
        if not self.config.check_alignment:
            return []
        checked = self.notes("shift")
        off = self.skipped.get("misaligned", 0)
        return [f"  alignment: {len(checked) + off} pair(s) checked, {off} off by more than "
                f"{self.config.max_shift:g} px (skipped as misaligned)"]

    def to_json(self) -> dict[str, Any]:
        config = self.config
        kinds = self.sar_kinds()
        mean, std = self.sar_stats.mean_std()
        return {
            "format": SUMMARY_FORMAT,
            "num_examples": self.tiles_written,
            "shards": [path.name for path in self.shards],
            "keys": self.keys,
            "tile": config.tile,
            "overlap": config.overlap,
            "optical_channels": 3,
            "sar_channels": self.keys.get("sar", {}).get("shape", [None])[-1],
            "sar_kind": next(iter(kinds)) if len(kinds) == 1 else
                        ("mixed" if kinds else config.sar_kind),
            "sar_kinds": dict(kinds),
            "sar_units": "dB",
            "sar_floor_db": io.DB_FLOOR,
            "sar_db_stats": {"mean": mean, "std": std, "pixels": self.sar_stats.count},
            "sar_normalised_scenes": len(self.notes("sar_normalised")),
            "transform_order": "rasterio Affine (a, b, c, d, e, f)",
            "labels": LABEL_KEY if config.labels else None,
            "scenes": {"found": self.scenes_found, "ok": self.scenes_ok,
                       "georeferenced": self.georeferenced_scenes,
                       "skipped": dict(sorted(self.skipped.items()))},
            "scenes_without_tiles": self.scenes_without_tiles,
            "tiles": {"written": self.tiles_written, "dropped_nodata": self.tiles_dropped},
            "bytes": self.num_bytes,
            "bytes_per_tile": self.bytes_per_tile,
            "seconds": self.seconds,
            "stopped": self.stopped,
            "bad_inputs": [bad.to_json() for bad in self.bad_inputs],
            "per_scene": [record.to_json() for record in self.records],
            "config": config.to_json(),
        }


def _values(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values) if len(values) != 1 else f"{values[0]:.1f}"


def _listed(ids: list[str]) -> str:
    more = f" and {len(ids) - _LISTED} more" if len(ids) > _LISTED else ""
    return ", ".join(ids[:_LISTED]) + more
