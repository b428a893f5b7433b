r"""Disaster response: pre-event optical + post-event SAR -> registered damage map.

  python -m mars_jax.respond --pre-optical pre.tif --post-sar post.tif --bundle BUNDLE \
      --out DIR [--registration REG] [--transform T.json | --noregister] [--tile 256]

``--bundle``: a damage bundle (``python -m mars_jax.export`` of a ``damage`` fine-tuning) or
its workdir. ``--registration``: a registration bundle or workdir (the fine-tuned descriptor
head), or an encoders / model bundle, or a pretraining checkpoint (zero shot); default: zero
shot with the damage model's own encoders. ``--transform``: a known transform instead
(``register``'s transform.json, or a 2x3 / 3x3 matrix as text or .npy: optical px -> SAR px).
The work is ``inference.respond``'s. Writes into DIR:

  damage.tif       damage classes on the optical grid (COG, uint8, nodata 255, colour table)
  buildings.geojson  one polygon per building (WGS 84) with its damage class and areas
  overlay.png      the damage classes over the pre-event image
  registration_checkerboard.png (_unregistered.png)  optical / SAR squares after (before)
  summary.json     the transform and its evidence, buildings and area per class, timings

Exit status: 0 written, 1 bad input (named), 2 usage.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("pre-optical", None, "pre-event optical GeoTIFF (the output's grid)")
    flags.DEFINE_string("post-sar", None, "post-event SAR GeoTIFF")
    flags.DEFINE_string("bundle", None, "damage bundle or fine-tuning workdir")
    flags.DEFINE_string("out", None, "output folder")
    flags.DEFINE_string("registration", None, "registration bundle / workdir, encoders bundle "
                        "or pretraining checkpoint (default: the damage model's encoders)")
    flags.DEFINE_string("transform", None, "a known transform (optical px -> SAR px) instead "
                        "of registering")
    flags.DEFINE_bool("register", True, "register the SAR (--noregister: georeferencing only)")
    flags.DEFINE_integer("register_tile", 256, "registration window side in px")
    flags.DEFINE_integer("register_windows", 8, "registration windows spread over the scene")
    flags.DEFINE_integer("tile", None, "damage tile side in px (default: the bundle's size)")
    flags.DEFINE_integer("overlap", None, "damage tile overlap in px (default tile/4)")
    flags.DEFINE_integer("batch", 8, "tiles per model call")
    flags.DEFINE_enum("sar_kind", "auto", ["auto", "db", "amplitude", "intensity"],
                      "the SAR's unit")
    flags.DEFINE_bool("overwrite", False, "replace the outputs in --out")
    flags.DEFINE_bool("progress", True, "progress bars with ETA on stderr")


def respond_files(pre_optical: str, post_sar: str, bundle: str, out: str, *,
                  registration: str | None = None, transform: str | None = None,
                  register: bool = True, register_tile: int = 256, register_windows: int = 8,
                  tile: int | None = None, overlap: int | None = None, batch: int = 8,
                  sar_kind: str = "auto", overwrite: bool = False, progress: bool = True,
                  log=print) -> int:
    """The command's work; returns its exit status (module docstring)."""
    from mars_jax import inference
    from mars_jax.data.scene import SceneError
    from mars_jax.export.bundle import BundleError
    from mars_jax.inference.respond import RespondError, read_transform, respond
    from mars_jax.inference.tiled import TiledError

    if not (pre_optical and post_sar and bundle and out):
        log("respond: --pre-optical, --post-sar, --bundle and --out are required")
        return 2
    if transform and (registration or not register):
        log("respond: --transform replaces registration: drop --registration / --noregister")
        return 2
    try:
        predictor = inference.load(bundle, batch_size=batch)
        matrix = read_transform(transform) if transform else None
        registrar = _registrar(registration) if registration else None
        record = respond(predictor, pre_optical, post_sar, out, registrar=registrar,
                         transform=matrix, register=register, register_tile=register_tile,
                         register_windows=register_windows,
                         tile=tile, overlap=overlap, batch=batch,
                         sar_kind=sar_kind, overwrite=overwrite, progress=progress, log=log)
    except (FileNotFoundError, ValueError, BundleError, SceneError, TiledError,
            RespondError) as error:
        log(f"respond: {error}")
        return 1
    log(json.dumps({k: record[k] for k in ("registration", "buildings", "buildings_by_class",
                                           "area_by_class_m2")}, indent=1))
    log(f"respond: wrote {out}/damage.tif, buildings.geojson, overlay.png, summary.json")
    return 0


def _registrar(path: str):
    """A registration source: a bundle (any), a registration workdir, or a pretraining
    checkpoint (zero shot)."""
    from pathlib import Path

    from mars_jax.inference.predictor import is_bundle
    from mars_jax.inference.registration import load_registrar

    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"--registration {path}: no such bundle or workdir")
    if is_bundle(source):
        return load_registrar(bundle=path)
    from mars_jax.train.workdir import read_run_config

    try:
        finetuned = read_run_config(source).task is not None
    except FileNotFoundError:  # a step folder, or a workdir older than W/config.json
        finetuned = False
    return load_registrar(workdir=path) if finetuned else load_registrar(checkpoint=path)


def main(argv) -> int:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    return respond_files(
        FLAGS["pre-optical"].value, FLAGS["post-sar"].value, FLAGS.bundle, FLAGS.out,
        registration=FLAGS.registration, transform=FLAGS.transform, register=FLAGS.register,
        register_tile=FLAGS.register_tile, register_windows=FLAGS.register_windows,
        tile=FLAGS.tile, overlap=FLAGS.overlap, batch=FLAGS.batch, sar_kind=FLAGS.sar_kind,
        overwrite=FLAGS.overwrite, progress=FLAGS.progress,
        log=lambda line: print(line, file=sys.stderr))


def run() -> None:
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
