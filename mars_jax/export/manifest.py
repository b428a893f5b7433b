"""``manifest.json``: the SHA-256 and size of every file of a bundle, checked on load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST_FILE = "manifest.json"


class BundleError(ValueError):
    """A bundle cannot be used: a file missing or altered, another format version, a part
    (a head, a serving function) it does not hold."""


def sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(folder: Path) -> list[str]:
    """Every file under ``folder`` but the manifest, as sorted POSIX relative paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    files = {name: {"sha256": sha256(folder / name), "bytes": (folder / name).stat().st_size}
             for name in bundle_files(folder)}
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps({"files": files}, indent=2) + "\n")
    return path


def verify_manifest(folder: str | os.PathLike) -> None:
    """Raises ``BundleError`` naming the first listed file that is missing or altered (files
    added later are not read, so they are not checked)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST_FILE}; not a mars_jax bundle (write one "
                          "with python -m mars_jax.export)")
    listed = json.loads(path.read_text())["files"]
    for name, entry in sorted(listed.items()):
        file = folder / name
        if not file.is_file():
            raise BundleError(f"bundle {folder}: {name} is missing (listed in {MANIFEST_FILE})")
        if file.stat().st_size != entry["bytes"] or sha256(file) != entry["sha256"]:
            raise BundleError(f"bundle {folder}: {name} does not match its SHA-256 in "
                              f"{MANIFEST_FILE} (altered or truncated); export the bundle again")
