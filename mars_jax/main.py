r"""mars_jax entry point.

  python -m mars_jax.main --config=configs/pretrain.py:tiny [--config.model.mask_ratio=0.75]

Modes: ``forward`` (one forward pass on random inputs, printing every loss term).
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/pretrain.py:tiny.", lock_config=True)
_MODE = flags.DEFINE_enum("mode", "forward", ["forward"], "What to run.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from mars_jax.train.forward import run_forward  # after flag parsing: JAX starts here

    if _MODE.value == "forward":
        run_forward(_CONFIG.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
