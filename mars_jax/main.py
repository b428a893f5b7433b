r"""mars_jax entry point.

  python -m mars_jax.main --config=configs/pretrain.py:tiny --workdir=/tmp/mars_tiny
  python -m mars_jax.main --config=configs/pretrain.py:base --mode=summary
  python -m mars_jax.main --mode=finetune --config=configs/finetune.py:landcover,tiny \
      --workdir=/tmp/ft --config.init.checkpoint=/tmp/mars_tiny
  python -m mars_jax.main --mode=eval --config=configs/finetune.py:landcover,tiny \
      --workdir=/tmp/ft --config.eval.modalities=sar

Modes: ``pretrain`` (train or resume in --workdir), ``summary`` (config, parameter table,
FLOPs per step and memory estimate, without training), ``forward`` (one forward pass on random
inputs, printing every loss term), ``finetune`` (a task config: fine-tune or resume in
--workdir, evaluate, write W/results.json), ``eval`` (score W's newest fine-tuned checkpoint
with the config's eval section, write W/eval_results.json). Any config field can be
overridden: --config.total_steps=100.

Multi-process: pass --coordinator_address/--num_processes/--process_id, or set
MARS_DISTRIBUTED=1 to let ``jax.distributed.initialize()`` read the cluster environment
(SLURM, TPU pods, ...).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mars_jax.config_files import load_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/pretrain.py:tiny.", lock_config=True)
MODES = ["pretrain", "summary", "forward", "finetune", "eval"]
TASK_MODES = ("finetune", "eval")
_MODE = flags.DEFINE_enum("mode", "pretrain", MODES, "What to run.")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Checkpoints, metrics and images (pretrain, finetune, eval).")
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


def _shutdown_distributed() -> None:
    """Leaves a multi-process job together, right after the work is done.

    Left to jax's ``atexit`` hook, the shutdown barrier is entered only after the interpreter
    has joined its non-daemon threads (orbax's and grain's background threads among them), at
    a different moment on each process; a peer that enters 300 s after process 0 aborts the
    job (SIGABRT) although its work is complete. Only after success: a process that failed
    leaves without waiting for its peers."""
    import jax

    if jax.process_count() > 1:
        jax.distributed.shutdown()


def check_config_overrides(argv: list[str]) -> str | None:
    """The project's message for a ``--config.a.b=...`` naming a key the config lacks (absl
    would print ml_collections' bare ``AttributeError``), or None when every key exists."""
    from mars_jax.typed_config import unknown_keys_message

    spec, overrides = None, []
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif arg.startswith("--config."):
            overrides.append(arg[len("--config."):].split("=", 1)[0])
    if spec is None or not overrides:
        return None
    config = load_config(spec)
    for override in overrides:
        node, walked = config, []
        for key in override.split("."):
            if not hasattr(node, "keys") or key not in node.keys():
                known = list(node.keys()) if hasattr(node, "keys") else []
                section = ".".join(walked) or "top-level"
                return (f"--config.{override}: " + unknown_keys_message(section, [key], known))
            node, walked = node[key], [*walked, key]
    return None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if not flags.FLAGS["verbosity"].present:  # library INFO logs (orbax, grain) off by default
        logging.set_verbosity(logging.WARNING)
    if _MODE.value in ("pretrain", *TASK_MODES) and not _WORKDIR.value:
        raise app.UsageError(f"--workdir is required for --mode={_MODE.value}")
    is_task_config = "task" in config
    if (_MODE.value in TASK_MODES) != is_task_config:
        wanted = "configs/finetune.py:TASK,SIZE" if _MODE.value in TASK_MODES else \
            "configs/pretrain.py:VARIANT"
        raise app.UsageError(f"--mode={_MODE.value} takes a config like {wanted}")
    _initialize_distributed()  # JAX starts here, after flags are parsed
    from mars_jax.cli_errors import user_errors_exit

    with user_errors_exit():
        run(config)
    _shutdown_distributed()


def run(config) -> None:
    """The mode's job on a parsed config."""
    if _MODE.value == "forward":
        from mars_jax.train.forward import run_forward

        run_forward(config)
    elif _MODE.value == "summary":
        from mars_jax.train.summary import print_summary

        print_summary(config)
    elif _MODE.value == "finetune":
        from mars_jax.train.finetune import finetune

        finetune(config, _WORKDIR.value)
    elif _MODE.value == "eval":
        from mars_jax.train.finetune import evaluate_checkpoint

        evaluate_checkpoint(config, _WORKDIR.value)
    else:
        from mars_jax.train.pretrain import train

        train(config, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    problem = check_config_overrides(sys.argv[1:])
    if problem:
        print(f"config error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    app.run(main)
