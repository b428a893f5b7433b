"""Ingests folders of co-registered optical / SAR scenes into ArrayRecord shards of tiles.

    python -m mars_jax.data.ingest --optical OPT_DIR --sar SAR_DIR [--labels LULC_DIR] \\
        --out OUT_DIR --tile 512 --overlap 64 [--sar-bands 1] [--recursive] [--strict]

or in Python ``ingest(IngestConfig(optical=..., sar=..., out=...)) -> IngestSummary``.

Pairing (pairing.py). Each folder is scanned with a pattern holding ``{id}`` and optional ``*``
wildcards, e.g. ``--optical-pattern '{id}_opt.png' --sar-pattern '{id}_sar.png'``; the default
pattern is the file stem with a raster suffix (.tif .tiff .png .jpg .jpeg), so same-name files
in two folders pair. Optical and SAR may share one folder when their patterns differ. With
``--recursive`` subfolders are scanned too and ids are ``subfolder/id``.

Conversion (scene.py, by the rules of ``mars_jax.data.io``). SAR becomes dB float32:
``--sar-kind auto`` (the default) takes integer data without calibration metadata as amplitude
DN (display images) and then gives each scene's dB values (winsorised at the 2nd / 98th
percentiles) the mean ``--sar-db-mean`` and std ``--sar-db-std``, the model's statistics
(``--sar-normalise auto``);
float or calibrated data is taken in the unit its metadata states, else as dB when the values
fit dB. An explicit kind the values cannot be in (8-bit DN as dB) is refused with the file, the
range and the flag to use (``--force`` keeps it). SAR bands that are identical copies (a grey
PNG saved as RGB) are stored once. Optical becomes uint8 RGB (``--optical-scale`` or a 2..98
percentile stretch); ``--optical-nodata auto`` marks the file's nodata value, alpha or mask
band, and in PNG / JPEG black fill touching the border, as no-data. ``--check-alignment``
estimates each pair's residual shift (``mars_jax.data.coregistration``) and skips pairs off by
more than ``--max-shift`` pixels as ``misaligned``. Every decision is recorded per scene.

Tiling (tiling.py). Tiles of ``--tile`` pixels start every ``tile - overlap`` pixels; the last
row and column of tiles are moved back to end on the scene's edge. A scene smaller than a tile
is padded (bottom / right) with no-data (``valid`` False, optical 0, SAR at the dB floor, labels
0). Tiles with more than ``--max-nodata`` (default 0.3) of their pixels not valid are dropped.

Example keys (docs/architecture.md, plus): ``optical`` uint8 [T,T,3]; ``sar`` float32 [T,T,C]
(dB); ``valid`` bool [T,T] (data in both modalities); ``id`` 0-d str (scene id); ``tile_origin``
int32 [2] (row, col of the tile's top-left pixel in the scene); for georeferenced scenes ``crs``
0-d str (``EPSG:n`` or WKT) and ``transform`` float64 [6], the tile's own affine in rasterio
``Affine`` order (a, b, c, d, e, f); with ``--labels``, ``landcover`` uint8 [T,T].

Bad input (unreadable or truncated file, missing partner, duplicate id, size / CRS / transform
mismatch, missing band, SAR values not in their unit, no valid pixel, bad labels, misaligned,
empty folder) is skipped, logged and counted by reason; ``--strict`` stops at the first one.

Output (output.py). ``--out`` is checked writable before any scene is read. The run writes into
``OUT.partial`` with a journal and renames it to OUT only when complete (``--overwrite``: OUT is
swapped out then), so a killed run leaves the previous OUT intact and ``--resume`` continues
from its last finished shard. OUT holds ``tiles-NNNNN.array_record`` (read them with
``ShardSource(list_shards(OUT))``) and ``ingest_summary.json``: the layout, counts, SAR
statistics and per-scene records for downstream readers (the trainer checks its config
against it).
"""

from mars_jax.data.ingest.cli import build_parser, main, parse_bands
from mars_jax.data.ingest.config import BadInput, IngestConfig, IngestUsageError
from mars_jax.data.ingest.output import JOURNAL_FILE, SHARD_NAME, SUMMARY_FILE, staging_dir
from mars_jax.data.ingest.pairing import SceneFiles, find_scenes, scan_folder
from mars_jax.data.ingest.run import StrictStop, ingest
from mars_jax.data.ingest.scene import Scene, load_scene
from mars_jax.data.ingest.summary import LABEL_KEY, IngestSummary, SceneRecord
from mars_jax.data.ingest.tiling import cut_tile, nodata_fraction, scene_tiles, tile_starts

__all__ = [
    "JOURNAL_FILE", "LABEL_KEY", "SHARD_NAME", "SUMMARY_FILE", "BadInput", "IngestConfig",
    "IngestSummary", "IngestUsageError", "Scene", "SceneFiles", "SceneRecord", "StrictStop",
    "build_parser", "cut_tile", "find_scenes", "ingest", "load_scene", "main", "nodata_fraction",
    "parse_bands", "read_ingest_summary", "scan_folder", "scene_tiles", "staging_dir",
    "tile_starts",
]


def read_ingest_summary(folder) -> dict | None:
    """FOLDER/ingest_summary.json as a dict, or None when the folder has none."""
    import json
    from pathlib import Path

    path = Path(folder) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None
