r"""Registers a SAR image onto an optical image, or every pair of a GUSO-layout folder.

  python -m mars_jax.register --optical A.tif --sar B.tif --out DIR \
      (--workdir FINETUNED | --bundle BUNDLE | --checkpoint PRETRAIN)
      [--model affine|homography] [--truth T.txt] [--threshold 5]
  python -m mars_jax.register --folder PAIRS --out DIR (--workdir | --bundle | --checkpoint ...)

``--workdir``: a ``registration`` fine-tuning workdir (its newest checkpoint; ``--config`` only
for a workdir without config.json): the fine-tuned descriptor head. ``--bundle``: a bundle of
one (``python -m mars_jax.export``), or an encoders / model bundle for zero-shot matching.
``--checkpoint``: a pretraining workdir or step folder: zero-shot, the CGCL embeddings of the
pretrained encoders (``--config`` then names the pretraining variant, default
``configs/pretrain.py:tiny``).

Writes into DIR:
  transform.json   the transform (optical pixel (x, y, 1) -> SAR pixel), its inverse, the
                   match counts and, with ``--truth`` (a 2x3 or 3x3 matrix as text or .npy),
                   GUSO's scores and the corner error
  sar_registered.png / .tif   the SAR resampled onto the optical grid (the GeoTIFF keeps the
                   optical image's CRS and geotransform when it has them)
  checkerboard.png  optical and registered SAR in alternating squares
                   (checkerboard_unregistered.png: with the SAR as it came, the misfit)
  matches.png      both images side by side with the RANSAC inliers drawn

``--folder``: ``{id}_opt.png`` / ``{id}_sar.png`` pairs (any of .png .jpg .tif), each with
its ground truth ``{id}_H.txt`` or ``{id}_H.npy`` when given; every pair's outputs go to
``DIR/{id}/`` and ``DIR/scores.json`` holds GUSO's scores over the pairs with a ground truth
and each pair's record.

Images: any raster rasterio or pillow reads; SAR as the dataset loaders convert it (8-bit
display SAR is amplitude DN, ``20 log10 DN``, mapped onto the reference dB scale). Both are
padded to a multiple of the patch size (the padding is no-data).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, defined when it runs (not on import, so the module imports
    beside ``mars_jax.main``, whose --config / --workdir flags share these names)."""
    flags.DEFINE_string("optical", None, "optical image (GeoTIFF, PNG, JPEG)")
    flags.DEFINE_string("folder", None, "a GUSO-layout folder of pairs (instead of --optical "
                        "and --sar)")
    flags.DEFINE_string("sar", None, "SAR image (GeoTIFF, PNG)")
    flags.DEFINE_string("out", None, "output folder")
    flags.DEFINE_string("workdir", None, "registration fine-tuning workdir")
    flags.DEFINE_string("checkpoint", None, "pretraining workdir or step folder: zero-shot")
    flags.DEFINE_string("bundle", None, "a bundle (python -m mars_jax.export): a registration "
                        "task bundle, or an encoders / model bundle for zero-shot matching")
    flags.DEFINE_string("config", None, "config file[:arg] of a workdir without config.json, "
                        "or of --checkpoint")
    flags.DEFINE_enum("model", "affine", ["affine", "homography"],
                      "transform fitted by RANSAC")
    flags.DEFINE_float("threshold", 5.0, "RANSAC inlier threshold (px)")
    flags.DEFINE_string("truth", None, "ground-truth transform (optical px -> SAR px) to score")


def register_files(optical: str, sar: str, out: str, *, workdir: str | None = None,
                   checkpoint: str | None = None, bundle: str | None = None,
                   config: str | None = None,
                   model: str = "affine", threshold: float = 5.0, truth: str | None = None,
                   log=print) -> int:
    """The command's work for one pair; returns its exit status (0 registered, 1 bad input,
    2 usage, 3 no transform found: too few matches)."""
    from mars_jax.inference.registration import (
        load_registrar,
        load_truth,
        read_pair,
        write_outputs,
    )

    if not optical or not sar or not out:
        log("register: --optical and --sar (or --folder), and --out are required")
        return 2
    if usage := _source_problem(workdir, checkpoint, bundle):
        log(usage)
        return 2
    try:
        optical_image, sar_image = read_pair(optical, sar)
        matrix = load_truth(truth) if truth else None
        registrar = load_registrar(workdir=workdir, checkpoint=checkpoint, bundle=bundle,
                                   config=config)
    except (FileNotFoundError, ValueError) as error:
        log(f"register: {error}")
        return 1
    result = registrar.register(optical_image, sar_image, model=model, threshold=threshold,
                                truth=matrix)
    record = write_outputs(Path(out), optical_image, sar_image, result, registrar.describe())
    log(json.dumps({k: record[k] for k in ("transform", "matches", "inliers", "scores")},
                   indent=1))
    if result.transform is None:
        log(f"register: no transform found ({len(result.src)} matches)")
        return 3
    log(f"register: wrote {out}/transform.json, sar_registered.png, checkerboard.png")
    return 0


def register_pairs(folder: str, out: str, *, workdir: str | None = None,
                   checkpoint: str | None = None, bundle: str | None = None,
                   config: str | None = None,
                   model: str = "affine", threshold: float = 5.0, progress: bool = True,
                   log=print) -> int:
    """The command's work for a GUSO-layout folder; returns its exit status (0 every pair
    registered, 1 bad input, 2 usage, 3 a pair with no transform or unreadable)."""
    from mars_jax.inference.registration import folder_pairs, load_registrar, register_folder

    if not out:
        log("register: --out is required")
        return 2
    if usage := _source_problem(workdir, checkpoint, bundle):
        log(usage)
        return 2
    try:
        pairs = folder_pairs(folder)
        registrar = load_registrar(workdir=workdir, checkpoint=checkpoint, bundle=bundle,
                                   config=config)
    except (FileNotFoundError, ValueError) as error:
        log(f"register: {error}")
        return 1
    summary = register_folder(registrar, pairs, Path(out), model=model, threshold=threshold,
                              progress=progress)
    log(json.dumps({k: summary[k] for k in ("pairs", "scored", "failed_to_read", "scores")},
                   indent=1))
    unregistered = [i for i, r in summary["records"].items() if r.get("transform") is None]
    if unregistered:
        log(f"register: no transform for {unregistered} (see {out}/scores.json)")
        return 3
    log(f"register: wrote {out}/scores.json and a folder per pair")
    return 0


def _source_problem(workdir: str | None, checkpoint: str | None, bundle: str | None
                    ) -> str | None:
    if sum(bool(x) for x in (workdir, checkpoint, bundle)) != 1:
        return ("register: give one of --workdir (fine-tuned registration), --bundle or "
                "--checkpoint (pretrained encoders, zero-shot)")
    return None


def main(argv) -> int:
    del argv
    if not FLAGS["verbosity"].present:  # library INFO logs (orbax) off by default, as main's
        logging.set_verbosity(logging.WARNING)
    if FLAGS.folder:
        if FLAGS.optical or FLAGS.sar or FLAGS.truth:
            print("register: --folder takes its pairs and truths from the folder; drop "
                  "--optical, --sar and --truth", file=sys.stderr)
            return 2
        return register_pairs(FLAGS.folder, FLAGS.out, workdir=FLAGS.workdir,
                              checkpoint=FLAGS.checkpoint, bundle=FLAGS.bundle,
                              config=FLAGS.config,
                              model=FLAGS.model, threshold=FLAGS.threshold,
                              log=lambda line: print(line, file=sys.stderr))
    return register_files(FLAGS.optical, FLAGS.sar, FLAGS.out, workdir=FLAGS.workdir,
                          checkpoint=FLAGS.checkpoint, bundle=FLAGS.bundle,
                          config=FLAGS.config, model=FLAGS.model,
                          threshold=FLAGS.threshold, truth=FLAGS.truth,
                          log=lambda line: print(line, file=sys.stderr))


def run() -> None:
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
