"""The run: scenes in order, tiles judged for no-data, written through the staging output."""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

from mars_jax.data.ingest.config import BadInput, IngestConfig
from mars_jax.data.ingest.output import Output
from mars_jax.data.ingest.pairing import SceneFiles, find_scenes
from mars_jax.data.ingest.scene import Scene, load_scene
from mars_jax.data.ingest.summary import IngestSummary, SceneRecord
from mars_jax.data.ingest.tiling import nodata_fraction, scene_tiles

log = logging.getLogger("mars_jax.data.ingest")


class StrictStop(RuntimeError):
    """A strict run met bad input; ``summary`` tells what was written before, and where."""

    def __init__(self, bad: BadInput, summary: IngestSummary):
        super().__init__(f"--strict: stopped at bad input {bad}")
        self.bad, self.summary = bad, summary


def ingest(config: IngestConfig) -> IngestSummary:
    """Ingests the scenes of ``config`` into shards in ``config.out``; see the package docstring.

    Raises ``IngestUsageError`` before reading any scene if the run cannot start, and
    ``StrictStop`` (carrying the summary) at the first bad input of a strict run. Whatever
    stops a run, the shards finished so far stay in the staging folder for ``--resume``.
    """
    started = time.perf_counter()
    summary = IngestSummary(config=config)
    output = Output(config)
    scenes, summary.folder_problems = find_scenes(config)
    summary.scenes_found = len(scenes)
    previous_seconds = 0.0
    if output.resumed is not None:
        summary.records = list(output.resumed.records)
        summary.keys = dict(output.resumed.keys)
        summary.sar_stats = output.resumed.sar_stats
        previous_seconds = output.resumed.seconds
    output.start([scene.id for scene in scenes])
    try:
        for bad in summary.folder_problems:
            _stop_if_strict(bad, summary)
            log.warning("skipped: %s", bad)
        _ingest_scenes(scenes, config, output, summary, started, previous_seconds)
    except BaseException as error:
        summary.stopped = summary.stopped or f"{type(error).__name__}: {error}"
        summary.seconds = previous_seconds + time.perf_counter() - started
        output.stop(summary)
        raise
    summary.seconds = previous_seconds + time.perf_counter() - started
    output.finish(summary)
    return summary


def _ingest_scenes(scenes: list[SceneFiles], config: IngestConfig, output: Output,
                   summary: IngestSummary, started: float, previous_seconds: float) -> None:
    first, skip_written = output.position
    progress = tqdm(total=len(scenes), initial=first, desc="ingest", unit="scene",
                    disable=not config.progress)
    with progress:
        for index in range(first, len(scenes)):
            output.position = (index, 0)
            record = SceneRecord(id=scenes[index].id)
            summary.records.append(record)
            try:
                scene = load_scene(scenes[index], config)
                _check_channels(scene, summary)
            except BadInput as bad:
                record.bad = bad
                _stop_if_strict(bad, summary)
                log.warning("skipped: %s", bad)
                progress.update()
                continue
            record.georeferenced, record.notes = scene.crs is not None, scene.notes
            _write_tiles(scene, record, config, output, summary,
                         skip_written if index == first else 0, started, previous_seconds)
            progress.update()


def _write_tiles(scene: Scene, record: SceneRecord, config: IngestConfig, output: Output,
                 summary: IngestSummary, already_written: int, started: float,
                 previous_seconds: float) -> None:
    """Writes the scene's tiles with at most ``max_nodata`` no-data; the first
    ``already_written`` kept ones are in the shards already (a resumed run)."""
    for example in scene_tiles(scene, config.tile, config.overlap):
        if nodata_fraction(example["valid"]) > config.max_nodata:
            record.tiles_dropped += 1
            continue
        record.tiles_written += 1
        if record.tiles_written <= already_written:
            continue
        summary.record_keys(example)
        summary.sar_stats.add(example["sar"], example["valid"])
        summary.seconds = previous_seconds + time.perf_counter() - started
        output.position = (output.position[0], record.tiles_written)
        output.write(example, summary)


def _check_channels(scene: Scene, summary: IngestSummary) -> None:
    """All tiles of a dataset have one SAR channel count: the first written sets it."""
    if "sar" not in summary.keys:
        return
    channels, expected = scene.sar.shape[-1], summary.keys["sar"]["shape"][-1]
    if channels != expected:
        raise BadInput("sar_channels", scene.sar_path,
                       f"{channels} SAR band(s), but the tiles written so far have {expected}: "
                       "pick the same bands for every scene with --sar-bands")


def _stop_if_strict(bad: BadInput, summary: IngestSummary) -> None:
    if summary.config.strict:
        summary.stopped = f"--strict: {bad}"
        raise StrictStop(bad, summary)
