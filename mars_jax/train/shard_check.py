"""The trainer's check of ingested shards against its config, before anything compiles.

``python -m mars_jax.data.ingest`` writes ``ingest_summary.json`` beside the shards: the SAR
channel count, the tile size and the dB statistics of the tiles written. A config that
disagrees would fail minutes later at trace time (a channel count) or train on badly scaled
inputs without a word (the statistics): both are named here, with the config key to set.
"""

from __future__ import annotations

from mars_jax.data.ingest import SUMMARY_FILE, read_ingest_summary
from mars_jax.train.config import Experiment
from mars_jax.typed_config import ConfigError

# How far the shards' SAR statistics may sit from config.model.sar_db_mean / sar_db_std:
# the mean within this many configured stds, the std within this factor.
MEAN_TOLERANCE_STDS = 1.0
STD_TOLERANCE_FACTOR = 2.0


def check_ingest_summary(exp: Experiment) -> dict | None:
    """Raises ``ConfigError`` naming every disagreement; -> the summary (None: none there)."""
    if exp.data.source != "shards":
        return None
    summary = read_ingest_summary(exp.data.shards_dir)
    if summary is None:
        return None
    where = f"{exp.data.shards_dir}/{SUMMARY_FILE}"
    problems = []
    channels = summary.get("sar_channels")
    if channels is not None and channels != exp.model.sar_channels:
        problems.append(
            f"the shards hold {channels}-channel SAR, config.model.sar_channels is "
            f"{exp.model.sar_channels}: set --config.model.sar_channels={channels} (with "
            f"{channels} values each in config.model.sar_db_mean / sar_db_std), or re-ingest "
            "with --sar-bands to pick the bands")
    tile = summary.get("tile")
    if tile is not None and tile < exp.input.image_size:
        problems.append(
            f"the tiles are {tile} px, smaller than the crop config.input.image_size "
            f"{exp.input.image_size}: set --config.input.image_size={tile} (or less), or "
            f"re-ingest with --tile {exp.input.image_size}")
    stats = summary.get("sar_db_stats") or {}
    if not problems and stats.get("mean"):
        problems += _statistics_problems(stats, exp)
    if problems:
        raise ConfigError(f"{where} disagrees with the config:\n  - " + "\n  - ".join(problems))
    return summary


def _statistics_problems(stats: dict, exp: Experiment) -> list[str]:
    mean, std = stats["mean"], stats["std"]
    want_mean, want_std = exp.model.sar_db_mean, exp.model.sar_db_std
    off = [c for c, (m, s, wm, ws) in enumerate(zip(mean, std, want_mean, want_std, strict=True))
           if abs(m - wm) > MEAN_TOLERANCE_STDS * ws
           or not ws / STD_TOLERANCE_FACTOR <= s <= ws * STD_TOLERANCE_FACTOR]
    if not off:
        return []
    fmt = lambda values: "(" + ", ".join(f"{v:.1f}" for v in values) + ",)"
    return [f"the shards' SAR is {fmt(mean)} +- {fmt(std)} dB (mean +- std over valid "
            f"pixels), the model normalises with config.model.sar_db_mean {fmt(want_mean)} / "
            f"sar_db_std {fmt(want_std)} (channel(s) {off} off): set "
            f"--config.model.sar_db_mean='{fmt(mean)}' --config.model.sar_db_std='{fmt(std)}', "
            "or re-ingest with --sar-normalise percentile"]
