r"""mars_jax entry point.

  python -m mars_jax.main --config=configs/pretrain.py:tiny --workdir=/tmp/mars_tiny
  python -m mars_jax.main --config=configs/pretrain.py:base --mode=summary

Modes: ``pretrain`` (train or resume in --workdir), ``summary`` (config, parameter table,
FLOPs per step and memory estimate, without training), ``forward`` (one forward pass on random
inputs, printing every loss term). Any config field can be overridden: --config.total_steps=100.

Multi-process: pass --coordinator_address/--num_processes/--process_id, or set
MARS_DISTRIBUTED=1 to let ``jax.distributed.initialize()`` read the cluster environment
(SLURM, TPU pods, ...).
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/pretrain.py:tiny.", lock_config=True)
_MODE = flags.DEFINE_enum("mode", "pretrain", ["pretrain", "summary", "forward"], "What to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and images (pretrain).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def _initialize_distributed() -> None:
    import jax

    if _COORDINATOR.value:
        # Cross-process collectives for the CPU backend (tests, laptops); GPUs/TPUs ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif os.environ.get("MARS_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if not flags.FLAGS["verbosity"].present:  # library INFO logs (orbax, grain) off by default
        logging.set_verbosity(logging.WARNING)
    if _MODE.value == "pretrain" and not _WORKDIR.value:
        raise app.UsageError("--workdir is required for --mode=pretrain")
    _initialize_distributed()  # JAX starts here, after flags are parsed

    if _MODE.value == "forward":
        from mars_jax.train.forward import run_forward

        run_forward(config)
    elif _MODE.value == "summary":
        from mars_jax.train.summary import print_summary

        print_summary(config)
    else:
        from mars_jax.train.pretrain import train

        train(config, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
