"""Finding scenes: files matched by pattern in each input folder, paired by scene id.

With ``recursive`` the folders are walked and an id is the file's folder relative to the
input folder joined with its pattern id (``dataset_a/0001``): pairs are matched inside the same
relative folder, and same-named files in different subfolders stay different scenes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mars_jax.data import io
from mars_jax.data.ingest.config import BadInput, IngestUsageError

if TYPE_CHECKING:
    from mars_jax.data.ingest.config import IngestConfig


@dataclass
class SceneFiles:
    """The files found for one scene id, per role (zero, one or several of each)."""

    id: str
    files: dict[str, list[Path]]


def pattern_regex(pattern: str | None) -> re.Pattern:
    """``'{id}_sar.png'`` -> a regex capturing the id; None -> stem + a raster suffix."""
    if pattern is None:
        suffixes = "|".join(re.escape(suffix) for suffix in sorted(io.RASTER_SUFFIXES))
        return re.compile(rf"(?P<id>.+)(?:{suffixes})", re.IGNORECASE)
    if pattern.count("{id}") != 1:
        raise ValueError(f"a file pattern needs exactly one {{id}}, got {pattern!r}")
    before, after = (re.escape(part).replace(r"\*", ".*") for part in pattern.split("{id}"))
    return re.compile(f"{before}(?P<id>.+?){after}")


def describe(pattern: str | None) -> str:
    suffixes = "|".join(sorted(io.RASTER_SUFFIXES))
    return repr(pattern) if pattern else f"'{{id}}{{{suffixes}}}'"


def scan_folder(folder: Path, pattern: str | None, recursive: bool = False
                ) -> dict[str, list[Path]]:
    """Scene id -> files of ``folder`` matching pattern (hidden files and folders ignored)."""
    regex = pattern_regex(pattern)
    found: dict[str, list[Path]] = {}
    for path in _files(folder, recursive):
        match = regex.fullmatch(path.name)
        if match:
            relative = path.parent.relative_to(folder)
            scene_id = (relative / match["id"]).as_posix()
            found.setdefault(scene_id, []).append(path)
    return found


def _files(folder: Path, recursive: bool) -> list[Path]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file():
            files.append(path)
        elif recursive and path.is_dir():
            files.extend(_files(path, recursive))
    return files


def find_scenes(config: IngestConfig) -> tuple[list[SceneFiles], list[BadInput]]:
    """Scenes sorted by id, or (when a folder has no matching file) none and ``empty_folder``."""
    scanned = {}
    for role, (folder, pattern) in config.folders().items():
        if not folder.is_dir():
            raise IngestUsageError(f"{role} folder {folder} does not exist")
        scanned[role] = scan_folder(folder, pattern, config.recursive)
    where = " (or its subfolders)" if config.recursive else " (add --recursive for subfolders)"
    empty = [BadInput("empty_folder", folder,
                      f"no {role} file matches {describe(pattern)}{where}")
             for role, (folder, pattern) in config.folders().items() if not scanned[role]]
    if empty:
        return [], empty
    ids = sorted(set(scanned["optical"]) | set(scanned["SAR"]))
    return [SceneFiles(scene_id, {role: found.get(scene_id, []) for role, found in
                                  scanned.items()}) for scene_id in ids], []
