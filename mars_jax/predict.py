r"""Whole-scene inference over GeoTIFFs, tile by tile, in bounded memory.

  python -m mars_jax.predict --bundle BUNDLE --optical pre.tif --sar post.tif --out pred.tif \
      [--tile 256] [--overlap 64] [--batch 8] [--weighting gaussian|uniform] [--probabilities]
  python -m mars_jax.predict --bundle BUNDLE --optical scene.tif --out emb.tif --what embed

``--bundle``: a bundle (``python -m mars_jax.export``) or a training workdir. Either modality
alone works when the head was trained with it. The output is on the grid of ``--optical``
(of ``--sar`` alone): a SAR image on another CRS, resolution or extent is warped onto it
(bilinear). Windows are read, predicted and written as they go (``inference.tiled``): memory
is bounded by the tile and batch sizes, not by the scene. Written:

  --what predict  a Cloud-Optimized GeoTIFF of the head's output: class ids (uint8, nodata 255,
                  colour table, class names in the CLASS_NAMES tag; --probabilities adds one
                  band per class), regression values (float32, NaN no-data) or the translated
                  RGB; OUT.json: the scene, the conversions decided, the timings
  --what embed    per-patch embeddings (float32, one band per dimension, on the grid of
                  patches): fused with MMA, else --embedding optical / sar; OUT.png: the first
                  three principal components as RGB

Exit status: 0 written, 1 bad input (named), 2 usage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("bundle", None, "bundle (python -m mars_jax.export) or training workdir")
    flags.DEFINE_string("optical", None, "optical GeoTIFF (the output's grid)")
    flags.DEFINE_string("sar", None, "SAR GeoTIFF (warped onto the optical grid if need be)")
    flags.DEFINE_string("out", None, "output GeoTIFF")
    flags.DEFINE_enum("what", "predict", ["predict", "embed"], "the head's output or the "
                      "encoder's per-patch embeddings")
    flags.DEFINE_integer("tile", None, "tile side in px (default: the bundle's image size)")
    flags.DEFINE_integer("overlap", None, "overlap of neighbouring tiles in px (default tile/4)")
    flags.DEFINE_integer("batch", 8, "tiles per model call")
    flags.DEFINE_enum("weighting", "gaussian", ["gaussian", "uniform"], "blending of overlaps")
    flags.DEFINE_bool("probabilities", False, "also write each class's probability")
    flags.DEFINE_enum("embedding", None, ["fused", "optical", "sar"], "--what=embed: which "
                      "embedding (default fused with MMA, else the modality given)")
    flags.DEFINE_enum("sar_kind", "auto", ["auto", "db", "amplitude", "intensity"],
                      "the SAR's unit (auto: decided as the dataset loaders do)")
    flags.DEFINE_bool("cog", True, "write a Cloud-Optimized GeoTIFF (--nocog: plain tiled)")
    flags.DEFINE_bool("overwrite", False, "replace an existing --out")
    flags.DEFINE_bool("progress", True, "progress bar with ETA on stderr")


def predict_files(bundle: str, out: str, *, optical: str | None = None,
                  sar: str | None = None, what: str = "predict", tile: int | None = None,
                  overlap: int | None = None, batch: int = 8, weighting: str = "gaussian",
                  probabilities: bool = False, embedding: str | None = None,
                  sar_kind: str = "auto", cog: bool = True, overwrite: bool = False,
                  progress: bool = True, log=print) -> int:
    """The command's work; returns its exit status (module docstring)."""
    from mars_jax import inference
    from mars_jax.data.scene import SceneError, open_scene
    from mars_jax.export.bundle import BundleError
    from mars_jax.inference.tiled import TiledError, make_plan, predict_scene

    if not bundle or not out or not (optical or sar):
        log("predict: --bundle, --out and --optical and / or --sar are required")
        return 2
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        log(f"predict: --out {out} exists: pass --overwrite to replace it")
        return 1
    try:
        predictor = inference.load(bundle, batch_size=batch)
        scene = open_scene(optical, sar, sar_kind=sar_kind)
    except (FileNotFoundError, ValueError, BundleError, SceneError) as error:
        log(f"predict: {error}")
        return 1
    with scene:
        try:
            plan = make_plan(predictor, scene, what=what, tile=tile, overlap=overlap,
                             batch=batch, weighting=weighting, probabilities=probabilities,
                             embedding=embedding)
        except TiledError as error:
            log(f"predict: {error}")
            return 1
        result = predict_scene(predictor, scene, out_path, plan, cog=cog,
                               overwrite=overwrite, progress=progress)
        record = {"out": str(result.path), "what": what, "source": predictor.source,
                  "tile": plan.tile, "overlap": plan.overlap, "batch": plan.batch,
                  "weighting": plan.weighting, "tiles": result.tiles,
                  "seconds": round(result.seconds, 3),
                  "pixels_per_second": round(result.pixels_per_second, 1),
                  "peak_pending_bytes": result.peak_pending_bytes, "cog": result.cog,
                  "scene": scene.describe()}
    if what == "embed":
        from mars_jax.inference.previews import embedding_preview

        record["preview"] = str(embedding_preview(out_path, out_path.with_suffix(".png")))
    out_path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"predict: wrote {out_path} ({result.tiles} tiles, {result.seconds:.1f} s, "
        f"{result.pixels_per_second:,.0f} px/s) and {out_path.with_suffix('.json').name}")
    return 0


def main(argv) -> int:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    return predict_files(FLAGS.bundle, FLAGS.out, optical=FLAGS.optical, sar=FLAGS.sar,
                         what=FLAGS.what, tile=FLAGS.tile, overlap=FLAGS.overlap,
                         batch=FLAGS.batch, weighting=FLAGS.weighting,
                         probabilities=FLAGS.probabilities, embedding=FLAGS.embedding,
                         sar_kind=FLAGS.sar_kind, cog=FLAGS.cog, overwrite=FLAGS.overwrite,
                         progress=FLAGS.progress, log=lambda line: print(line, file=sys.stderr))


def run() -> None:
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
