"""Where a run writes: a staging folder beside OUT, a journal to resume from, the swap into OUT.

A run writes its shards into ``OUT.partial`` and appends one journal line
(``ingest_journal.jsonl``) each time a shard is finished: the shards so far, the records of the
scenes done, where in which scene the shards end. OUT itself changes only when the run is
complete: the staging folder is renamed to OUT (or, with ``--overwrite``, OUT is renamed aside,
the staging folder renamed in, the old one deleted). So a killed run, an ``--overwrite``
included, leaves any previous OUT intact, and ``--resume`` continues from the last finished
shard: shards and counts come out as an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mars_jax.data.ingest.config import IngestConfig, IngestUsageError
from mars_jax.data.ingest.summary import IngestSummary, SarStatistics, SceneRecord
from mars_jax.data.records import SHARD_SUFFIX, ShardWriter, list_shards

log = logging.getLogger("mars_jax.data.ingest")

SHARD_NAME = "tiles"
SUMMARY_FILE = "ingest_summary.json"
JOURNAL_FILE = "ingest_journal.jsonl"
STAGING_SUFFIX = ".partial"
REPLACED_SUFFIX = ".replaced"
_OWN_FILES = (SUMMARY_FILE, JOURNAL_FILE)


def staging_dir(out: Path) -> Path:
    return out.with_name(out.name + STAGING_SUFFIX)


def write_summary_json(summary: IngestSummary, folder: Path) -> Path:
    """Writes FOLDER/ingest_summary.json atomically (a reader never sees half a file)."""
    path = folder / SUMMARY_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


@dataclass
class Resumed:
    """The state of an interrupted run at its last finished shard."""

    records: list[SceneRecord]
    keys: dict[str, Any]
    sar_stats: SarStatistics
    shards: list[Path]
    scene: int  # the scene the shards end in
    written_in_scene: int  # how many of its tiles they hold
    seconds: float


class Output:
    """The staging folder, its journal and the final swap (module docstring)."""

    def __init__(self, config: IngestConfig):
        self.config, self.out = config, config.out
        self.staging = staging_dir(config.out)
        _recover_interrupted_swap(self.out, self.staging)
        self.previous = list_shards(self.out) if self.out.is_dir() else []
        self.resumed: Resumed | None = None
        header = self._stale_run(config)
        replaces = bool(header and header.get("replaces"))
        if self.previous and not (config.overwrite or replaces):
            raise IngestUsageError(f"{self.out} already holds {len(self.previous)} shard(s) "
                                   f"(e.g. {self.previous[0].name}): pass --overwrite to "
                                   "replace them, or choose another --out")
        if self.previous:
            _check_only_ingest_output(self.out)
        self._check_writable()
        self._header = header
        self._writer: ShardWriter | None = None
        self._journaled = 0  # records already in the journal
        self.position = (0, 0)  # (scene index, tiles of it written)

    # Start ----------------------------------------------------------------------------------
    def _stale_run(self, config: IngestConfig) -> dict[str, Any] | None:
        """Deals with a staging folder left by an interrupted run; -> its journal header."""
        journal = self.staging / JOURNAL_FILE
        if not self.staging.exists():
            if config.resume:
                done = " (it holds a finished ingest)" if (self.out / SUMMARY_FILE).exists() else ""
                raise IngestUsageError(f"--resume: no interrupted ingest to continue: "
                                       f"{self.staging} does not exist{done}")
            return None
        if config.resume:
            if not journal.exists():
                return None  # killed before its first line: start afresh in the folder
            lines = [json.loads(line) for line in journal.read_text().splitlines() if line]
            _check_same_settings(lines[0], config, self.staging)
            self.resumed = _resumed_state(lines, self.staging)
            return lines[0]
        if config.overwrite:
            log.info("--overwrite: deleting the interrupted ingest in %s", self.staging)
            shutil.rmtree(self.staging)
            return None
        if not any(self.staging.iterdir()):
            self.staging.rmdir()
            return None
        shards = len(list_shards(self.staging))
        raise IngestUsageError(f"{self.staging} holds an interrupted ingest ({shards} finished "
                               "shard(s)): pass --resume to continue it, or --overwrite to start "
                               "over")

    def _check_writable(self) -> None:
        """Fails before any scene is read when OUT (or where its staging folder goes) is not
        writable."""
        blocker = next((p for p in (self.out, *self.out.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise IngestUsageError(f"--out {self.out}: {blocker} is a file, not a folder: "
                                   "choose a writable --out")
        folders = [self.staging.parent] + ([self.out] if self.out.is_dir() else [])
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".ingest-probe-"):
                    pass
            except OSError as error:
                raise IngestUsageError(
                    f"--out {self.out}: cannot write in {folder} "
                    f"({error.strerror or error}): choose a writable --out") from None

    def start(self, scene_ids: list[str]) -> None:
        """Opens the staging folder: a fresh journal, or checks that a resumed run reads the
        same scenes."""
        if self.resumed is not None:
            if self._header["scene_ids"] != scene_ids:
                before, now = set(self._header["scene_ids"]), set(scene_ids)
                raise IngestUsageError(
                    f"--resume: the inputs changed since the interrupted run "
                    f"({len(now - before)} scene(s) added, {len(before - now)} gone, e.g. "
                    f"{sorted(now ^ before)[:3]}): --overwrite starts over")
            self._journaled = len(self.resumed.records)
            self.position = (self.resumed.scene, self.resumed.written_in_scene)
            return
        self.staging.mkdir(parents=True, exist_ok=True)
        for stale in self.staging.iterdir():  # a resumed run killed before its first shard
            stale.unlink()
        self._header = {"settings": self.config.fingerprint(), "scene_ids": scene_ids,
                        "replaces": bool(self.previous)}
        self._append(self._header)

    # Writing --------------------------------------------------------------------------------
    def write(self, example: dict[str, np.ndarray], summary: IngestSummary) -> None:
        if self._writer is None:
            self._writer = ShardWriter(self.staging / SHARD_NAME, self.config.shard_size)
            if self.resumed is not None:
                self._writer.finished = list(self.resumed.shards)  # numbering continues
        before = len(self._writer.finished)
        self._writer.write(example)
        if len(self._writer.finished) > before:
            self._journal(summary)

    def _journal(self, summary: IngestSummary) -> None:
        scene, written = self.position
        new = summary.records[self._journaled:scene]
        self._append({"shards": [path.name for path in self._writer.finished],
                      "scene": scene, "written_in_scene": written,
                      "records": [record.to_json() for record in new],
                      "keys": summary.keys, "sar_stats": summary.sar_stats.to_json(),
                      "seconds": summary.seconds})
        self._journaled = scene

    def _append(self, entry: dict[str, Any]) -> None:
        with open(self.staging / JOURNAL_FILE, "a") as journal:
            journal.write(json.dumps(entry) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    def shards(self) -> list[Path]:
        if self._writer is not None:
            return list(self._writer.finished)
        return list(self.resumed.shards) if self.resumed else []

    # End ------------------------------------------------------------------------------------
    def finish(self, summary: IngestSummary) -> None:
        """A complete run: summary into the staging folder, then the swap into OUT."""
        self._close()
        summary.shards = [self.out / path.name for path in self.shards()]
        if not summary.tiles_written:
            shutil.rmtree(self.staging, ignore_errors=True)
            summary.output = None
            if self.previous:
                log.warning("nothing written: the previous output in %s is left as it was",
                            self.out)
            return
        summary.num_bytes = sum((self.staging / p.name).stat().st_size for p in summary.shards)
        summary.output = self.out
        write_summary_json(summary, self.staging)
        (self.staging / JOURNAL_FILE).unlink()
        if self.previous:
            replaced = self.out.with_name(self.out.name + REPLACED_SUFFIX)
            os.rename(self.out, replaced)
            os.rename(self.staging, self.out)
            shutil.rmtree(replaced)
            log.info("--overwrite: replaced the %d previous shard(s) in %s", len(self.previous),
                     self.out)
        elif self.out.is_dir():
            for path in sorted(self.staging.iterdir()):
                os.replace(path, self.out / path.name)
            self.staging.rmdir()
        else:
            os.rename(self.staging, self.out)

    def stop(self, summary: IngestSummary) -> None:
        """An interrupted run (strict stop, error, Ctrl-C): finished and current shards kept
        in the staging folder with a journal to --resume from; OUT untouched."""
        self._close()
        summary.shards = self.shards()
        if not summary.shards and self.resumed is None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        if self._writer is not None:
            self._journal(summary)
        summary.num_bytes = sum(path.stat().st_size for path in summary.shards)
        summary.output = self.staging
        write_summary_json(summary, self.staging)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_only_ingest_output(out: Path) -> None:
    """--overwrite swaps the whole folder: it must hold nothing but a previous ingest's."""
    foreign = [path.name for path in sorted(out.iterdir())
               if not (path.name.endswith((SHARD_SUFFIX, SHARD_SUFFIX + ".tmp"))
                       or path.name in _OWN_FILES or path.name == SUMMARY_FILE + ".tmp")]
    if foreign:
        raise IngestUsageError(f"--overwrite replaces the whole of {out}, which holds files "
                               f"that are not ingest output ({foreign[:5]}): move them, or "
                               "choose another --out")


def _check_same_settings(header: dict[str, Any], config: IngestConfig, staging: Path) -> None:
    before, now = header["settings"], config.fingerprint()
    changed = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if changed:
        detail = ", ".join(f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in changed)
        raise IngestUsageError(f"--resume: settings differ from the interrupted run in "
                               f"{staging} ({detail}): resume with the same flags, or "
                               "--overwrite to start over")


def _resumed_state(lines: list[dict[str, Any]], staging: Path) -> Resumed:
    """The state at the last journal line; deletes shards written after it (and temp files)."""
    entries = lines[1:]
    last = entries[-1] if entries else None
    kept = [staging / name for name in last["shards"]] if last else []
    missing = [path.name for path in kept if not path.exists()]
    if missing:
        raise IngestUsageError(f"--resume: {staging} lacks shards its journal lists "
                               f"({missing[:3]}): --overwrite starts over")
    for path in staging.iterdir():
        if path not in kept and path.name != JOURNAL_FILE:
            path.unlink()
    records = [SceneRecord.from_json(r) for entry in entries for r in entry["records"]]
    if last is None:
        return Resumed([], {}, SarStatistics(), [], 0, 0, 0.0)
    stats = SarStatistics.from_json(last["sar_stats"])
    log.info("--resume: %d shard(s) kept, continuing at scene %d (%d of its tiles written)",
             len(kept), last["scene"], last["written_in_scene"])
    return Resumed(records, last["keys"], stats, kept, last["scene"],
                   last["written_in_scene"], last["seconds"])


def _recover_interrupted_swap(out: Path, staging: Path) -> None:
    """A kill between the two renames of an --overwrite swap: finish or undo it."""
    replaced = out.with_name(out.name + REPLACED_SUFFIX)
    if not replaced.exists():
        return
    if out.exists():
        shutil.rmtree(replaced)  # the swap was done; only the deletion was left
        return
    complete = (staging / SUMMARY_FILE).exists() and not (staging / JOURNAL_FILE).exists()
    os.rename(staging if complete else replaced, out)
    if complete:
        shutil.rmtree(replaced)
    log.warning("finished an interrupted --overwrite swap of %s", out)
