r"""The ablation M0..M3 (CGCL x MMA) and its synergy term.

  python -m mars_jax.ablation --size=tiny --pretrain_steps=60 --finetune_steps=150 \
      --tasks=landcover,roads --seeds=0,1 --workdir=/tmp/ablation

Pretrains the four variants of ``configs/pretrain.py:SIZE`` (M0: MIM + global contrastive,
no MMA; M1: + CGCL; M2: + MMA; M3: full MaRS), fine-tunes each on every task
(``configs/finetune.py:TASK,SIZE[,PROTOCOL]`` from the variant's checkpoint), and prints and
writes (``W/ablation.md``, ``W/ablation.json``) Perf(M_k) per task, Delta_CGCL, Delta_MMA,
Delta_synergy (as improvements: negated for lower-is-better headlines) and MAS (the mean
normalised improvement over each task's trivial baseline); ``mars_jax.train.ablation`` defines
them. Runs already done in --workdir are reused: an interrupted ablation resumes.
``--pretrain_steps`` / ``--finetune_steps`` omitted: the configs' ``total_steps``.
"""

from absl import app, flags, logging

from mars_jax.config_files import load_config

_SIZE = flags.DEFINE_string("size", "tiny", "Model size: a configs/pretrain.py variant.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", None,
                                       "Pretraining steps per variant (default: the config's).")
_FINETUNE_STEPS = flags.DEFINE_integer("finetune_steps", None,
                                       "Fine-tuning steps per task (default: the config's).")
_TASKS = flags.DEFINE_list("tasks", ["landcover", "roads"], "Fine-tuning tasks.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (pretraining and fine-tuning).")
_VARIANTS = flags.DEFINE_list("variants", ["M0", "M1", "M2", "M3"],
                              "Variants to run (the deltas need all four).")
_PROTOCOL = flags.DEFINE_enum("protocol", "full", ["full", "frozen", "linear"],
                              "Fine-tuning protocol (configs/finetune.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Every run's workdir, ablation.json/.md.")
_PRETRAIN_CONFIG = flags.DEFINE_string("pretrain_config", "configs/pretrain.py",
                                       "Pretraining config file (called with SIZE).")
_FINETUNE_CONFIG = flags.DEFINE_string("finetune_config", "configs/finetune.py",
                                       "Fine-tuning config file (called with TASK,SIZE,PROTOCOL).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # library INFO logs (orbax, grain) off by default
        logging.set_verbosity(logging.WARNING)
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    try:
        seeds = [int(s) for s in _SEEDS.value]
    except ValueError:
        raise app.UsageError(f"--seeds must be integers, got {_SEEDS.value}") from None
    for name, value in (("pretrain_steps", _PRETRAIN_STEPS.value),
                        ("finetune_steps", _FINETUNE_STEPS.value)):
        if value is not None and value < 1:
            raise app.UsageError(f"--{name} must be positive, got {value}")
    from mars_jax.cli_errors import user_errors_exit
    from mars_jax.train.ablation import VARIANT_NAMES, run_ablation

    bad = [v for v in _VARIANTS.value if v not in VARIANT_NAMES]
    if bad:
        raise app.UsageError(f"--variants: unknown {bad}; choose from {VARIANT_NAMES}")
    size, protocol = _SIZE.value, _PROTOCOL.value
    ft_spec = f"{_FINETUNE_CONFIG.value}:{{task}},{size},{protocol}"
    try:
        pretrain_base = load_config(f"{_PRETRAIN_CONFIG.value}:{size}")
        bases = {t: load_config(ft_spec.format(task=t)) for t in _TASKS.value}
    except ValueError as error:  # an unknown size, task or protocol
        raise app.UsageError(str(error)) from None
    with user_errors_exit():
        run_ablation(pretrain_base, bases.__getitem__, _TASKS.value, _WORKDIR.value,
                     pretrain_steps=_PRETRAIN_STEPS.value, finetune_steps=_FINETUNE_STEPS.value,
                     seeds=seeds, variants=_VARIANTS.value,
                     specs={"pretrain": f"{_PRETRAIN_CONFIG.value}:{size}",
                            "finetune": ft_spec})


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
