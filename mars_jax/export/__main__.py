r"""Exports a training workdir's checkpoint as a self-contained bundle.

  python -m mars_jax.export --workdir W --out BUNDLE [--step N] [--what encoders|model|task]
      [--image_size 256] [--onnx] [--no_serving] [--overwrite] [--config FILE:ARG]

``--what``: ``task`` (encoders, MMA and the fine-tuned head; the default for a fine-tuning
workdir), ``model`` (encoders and MMA; the default for a pretraining workdir) or
``encoders`` (the optical and SAR ViTs only). ``--image_size``: the serving artifacts' input
size (default: the run's crop). ``--config``: only for workdirs written before runs recorded
their config.json. The bundle's layout: ``mars_jax.export.bundle``; load it with
``mars_jax.inference.load(BUNDLE)``.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "pretraining or fine-tuning workdir")
    flags.DEFINE_string("out", None, "bundle folder to write")
    flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
    flags.DEFINE_enum("what", None, ["encoders", "model", "task"], "what the bundle holds")
    flags.DEFINE_integer("image_size", None, "serving input size (default: the run's crop)")
    flags.DEFINE_bool("onnx", False, "also write onnx/*.onnx (jax2onnx), checked with "
                      "onnxruntime")
    flags.DEFINE_bool("serving", True, "write serving/*.jaxexport (--noserving: weights only)")
    flags.DEFINE_bool("overwrite", False, "replace --out if it exists")
    flags.DEFINE_string("config", None, "the run's config file[:arg], for workdirs without "
                        "config.json")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir or not FLAGS.out:
        raise app.UsageError("--workdir and --out are required")
    if not FLAGS["verbosity"].present:  # library INFO logs (orbax) off, as main's
        logging.set_verbosity(logging.WARNING)
    from mars_jax.cli_errors import user_errors_exit

    with user_errors_exit():
        from mars_jax.config_files import load_config
        from mars_jax.export.bundle import export_bundle

        export_bundle(FLAGS.workdir, FLAGS.out, step=FLAGS.step, what=FLAGS.what,
                      config=load_config(FLAGS.config) if FLAGS.config else None,
                      image_size=FLAGS.image_size, serving=FLAGS.serving, onnx=FLAGS.onnx,
                      overwrite=FLAGS.overwrite,
                      log=lambda line: print(line, file=sys.stderr))


if __name__ == "__main__":
    define_flags()
    app.run(main)
