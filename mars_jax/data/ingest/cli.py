"""``python -m mars_jax.data.ingest``: the command line of ``ingest``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from mars_jax.data import io
from mars_jax.data.ingest import config as defaults
from mars_jax.data.ingest.config import IngestConfig, IngestUsageError
from mars_jax.data.ingest.output import staging_dir
from mars_jax.data.ingest.run import StrictStop, ingest
from mars_jax.data.ingest.summary import LABEL_KEY

log = logging.getLogger("mars_jax.data.ingest")


def parse_bands(text: str) -> tuple[io.Band, ...]:
    """``'1,2'`` -> (1, 2); ``'VV'`` -> ('VV',): numbers are 1-based, words band descriptions."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"no band in {text!r}")
    return tuple(int(item) if item.isdigit() else item for item in items)


def parse_floats(text: str) -> tuple[float, ...]:
    """``'-12'`` or ``'-12,-18'`` (one value per SAR band)."""
    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: "
                                         f"{text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mars_jax.data.ingest",
        description="Tile co-registered optical / SAR scenes (GeoTIFF, or PNG / JPEG display "
                    "images) into ArrayRecord shards of 'optical' uint8 RGB, 'sar' dB and "
                    "'valid' pixels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Conversion rules, pairing, tiling, the example keys and the output folders: "
               "see the docstrings of mars_jax.data.ingest and mars_jax.data.io.")
    add = parser.add_argument
    add("--optical", type=Path, required=True, help="folder of optical scenes")
    add("--sar", type=Path, help="folder of SAR scenes (default: the optical folder)")
    add("--labels", type=Path, help=f"folder of label rasters, stored as {LABEL_KEY!r}")
    add("--out", type=Path, required=True,
        help="output folder of shards (written as OUT.partial, renamed when complete)")
    add("--optical-pattern", help="e.g. '{id}_opt.png' (default: file stem + raster suffix)")
    add("--sar-pattern", help="e.g. '{id}_sar.png' (default: file stem + raster suffix)")
    add("--labels-pattern", help="e.g. '{id}_lc.tif' (default: file stem + raster suffix)")
    add("--recursive", action="store_true",
        help="scan subfolders too; ids become 'subfolder/id', pairs match within a subfolder")
    add("--tile", type=int, default=defaults.DEFAULT_TILE, help="tile size in pixels")
    add("--overlap", type=int, default=defaults.DEFAULT_OVERLAP,
        help="overlap of adjacent tiles")
    add("--max-nodata", type=float, default=defaults.DEFAULT_MAX_NODATA,
        help="drop tiles with a larger fraction of pixels without data")
    add("--sar-kind", choices=io.SAR_KIND_CHOICES, default="auto",
        help="unit of the SAR values. auto: integer data without calibration is amplitude "
             "DN; otherwise the unit the metadata states, or dB if the values fit dB. "
             "Values that cannot be in the unit are refused, naming the file")
    add("--force", action="store_true",
        help="keep an explicit --sar-kind even where the values look implausible for it")
    add("--sar-bands", type=parse_bands,
        help="e.g. '1' or 'VV' (default: every band; identical copies stored once)")
    add("--sar-scale", type=float, default=1.0,
        help="calibration: value = scale * DN + offset (default: the file's own, else 1)")
    add("--sar-offset", type=float, default=0.0, help="calibration: value = scale * DN + offset")
    add("--sar-normalise", choices=defaults.SAR_NORMALISE, default="auto",
        help="percentile: an affine map per scene giving its dB values (winsorised at the "
             "2nd / 98th percentiles) the mean --sar-db-mean and std --sar-db-std, for "
             "uncalibrated SAR; auto: percentile for "
             "uncalibrated amplitude DN (what --sar-kind auto finds in display images), "
             "none otherwise")
    add("--sar-db-mean", type=parse_floats, default=defaults.SAR_DB_MEAN,
        help="--sar-normalise target mean (dB; one per band or one for all): "
             "config.model.sar_db_mean")
    add("--sar-db-std", type=parse_floats, default=defaults.SAR_DB_STD,
        help="--sar-normalise target std (dB): config.model.sar_db_std")
    add("--optical-bands", type=parse_bands, help="e.g. '4,3,2' (default: bands 1,2,3)")
    add("--optical-scale", type=float,
        help="uint8 = round(value * scale) for non-uint8 optical (default: 2-98%% stretch)")
    add("--optical-nodata", default="auto",
        help="pixels without data: a value all bands equal (e.g. 0), 'none', or 'auto': the "
             "file's nodata value, alpha or mask band, and for PNG / JPEG black fill "
             "touching the image border")
    add("--check-alignment", action="store_true",
        help="estimate each pair's residual shift (phase correlation of optical and SAR "
             "edges) and skip pairs off by more than --max-shift")
    add("--max-shift", type=float, default=defaults.DEFAULT_MAX_SHIFT,
        help="pixels of residual shift --check-alignment tolerates")
    add("--shard-size", type=int, default=defaults.DEFAULT_SHARD_SIZE, help="tiles per shard")
    add("--strict", action="store_true", help="stop at the first bad input (exit status 1)")
    add("--overwrite", action="store_true",
        help="replace the shards in OUT (swapped in only once the new run is complete)")
    add("--resume", action="store_true",
        help="continue an interrupted run from its last finished shard (same flags)")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; exit status 0 when tiles were written, 1 when none or the run stopped,
    2 for usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    log.setLevel(logging.INFO)
    try:
        config = IngestConfig(**vars(args))
    except ValueError as error:
        parser.error(str(error))
    try:
        with logging_redirect_tqdm():
            summary = ingest(config)
    except IngestUsageError as error:
        parser.error(str(error))
    except StrictStop as stop:
        print(stop.summary.format())
        print(f"error: {stop}", file=sys.stderr)
        _point_to_partial(config)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        _point_to_partial(config)
        return 1
    print(summary.format())
    if not summary.tiles_written:
        print("error: no tile written", file=sys.stderr)
        return 1
    return 0


def _point_to_partial(config: IngestConfig) -> None:
    staging = staging_dir(config.out)
    if staging.exists():
        print(f"the shards finished so far are in {staging}: run again with --resume to "
              f"continue, or --overwrite to start over; {config.out} is untouched",
              file=sys.stderr)
