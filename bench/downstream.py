r"""Does pretraining help? Pretrain on SynthVHR, then fine-tune every dense task three ways.

  python bench/downstream.py --workdir=/tmp/downstream --pretrain_steps=600 \
      --finetune_steps=150

1. Pretrains ``configs/pretrain.py:SIZE`` for ``--pretrain_steps`` steps (or reuses the
   checkpoint already in WORKDIR/pretrain).
2. Runs each task of ``--tasks`` with ``configs/finetune.py:TASK,SIZE,PROTOCOL`` for
   ``--finetune_steps`` steps from (a) the pretrained checkpoint, full fine-tuning, (b) random
   initialisation, full fine-tuning, (c) the frozen pretrained encoder (PANGAEA's protocol)
   and, with ``--frozen_random``, (d) a frozen random encoder (the same head on features
   nobody trained: what (c) must beat for the features themselves to be useful).
3. Prints one markdown table of each task's headline metric on held-out scenes (every run
   scores the same scenes, and the trivial baseline of the training labels), then the
   land-cover modality matrix (trained with optical + SAR and modality dropout; evaluated
   with optical, SAR and both). ``--json`` adds every figure as one JSON line.

Runs resume: a finished run (its results.json) is read back, not repeated, so the table can
be rebuilt or extended. Figures are from one seed: differences smaller than the seed-to-seed
spread (``--seeds`` > 1 measures it, reporting mean +- std) are not evidence.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mars_jax.config_files import load_config

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/mars_downstream", "Runs go here.")
_SIZE = flags.DEFINE_string("size", "tiny", "Config size (pretrain and finetune).")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 600, "Pretraining steps.")
_FINETUNE_STEPS = flags.DEFINE_integer("finetune_steps", 150, "Fine-tuning steps per run.")
_TASKS = flags.DEFINE_list("tasks", ["landcover", "damage", "change", "building_height",
                                     "roads"], "Tasks to run.")
_FROZEN_RANDOM = flags.DEFINE_bool("frozen_random", False,
                                   "Also run (d): the frozen protocol on a random encoder.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Fine-tuning seeds per run (mean +- std).")
_EVAL_SCENES = flags.DEFINE_integer("eval_scenes", 0, "Held-out scenes (0: the config's).")
_JSON = flags.DEFINE_bool("json", False, "Also print every figure as JSON lines.")

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # column -> (protocol, from the pretrained checkpoint)
    "pretrained, full": ("full", True),
    "random init, full": ("full", False),
    "pretrained, frozen": ("frozen", True),
    "random, frozen": ("frozen", False),
}


def pretrain(workdir: Path) -> Path:
    from mars_jax.train.pretrain import train

    config = load_config(f"{ROOT}/configs/pretrain.py:{_SIZE.value}")
    config.total_steps = _PRETRAIN_STEPS.value
    config.checkpoint.every_steps = 0
    config.log.progress = False
    config.log.every_steps = max(_PRETRAIN_STEPS.value // 6, 1)
    config.log.images_every_steps = 0
    started = time.perf_counter()
    train(config, workdir)
    print(f"pretraining: {_PRETRAIN_STEPS.value} steps in {time.perf_counter() - started:.0f} s",
          flush=True)
    return workdir


def finetune(task: str, protocol: str, init: Path | None, workdir: Path, seed: int) -> dict:
    from mars_jax.train.finetune import finetune as run

    config = load_config(f"{ROOT}/configs/finetune.py:{task},{_SIZE.value},{protocol}")
    config.total_steps = _FINETUNE_STEPS.value
    config.seed = seed
    config.checkpoint.every_steps = 0
    config.log.progress = False
    config.log.every_steps = max(_FINETUNE_STEPS.value // 3, 1)
    config.eval.progress = False
    if _EVAL_SCENES.value:
        config.eval.scenes = _EVAL_SCENES.value
    config.init.checkpoint = str(init) if init else ""
    started = time.perf_counter()
    record = run(config, workdir, log=lambda line: None)
    print(f"  {task:16s} {protocol:6s} {'pretrained' if init else 'random':10s} seed {seed}: "
          f"{record['headline']}={record['headline_values']['both']:.4f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return record


def cell(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax / grain INFO lines off
    root = Path(_WORKDIR.value)
    started = time.perf_counter()
    init = pretrain(root / "pretrain")
    columns = [c for c in RUNS if _FROZEN_RANDOM.value or c != "random, frozen"]
    records: dict[tuple[str, str], list[dict]] = {}
    for task in _TASKS.value:
        for column in columns:
            protocol, pretrained = RUNS[column]
            for seed in range(_SEEDS.value):
                name = f"{task}-{protocol}-{'pre' if pretrained else 'rand'}-s{seed}"
                records.setdefault((task, column), []).append(
                    finetune(task, protocol, init if pretrained else None, root / name, seed))
    minutes = (time.perf_counter() - started) / 60

    print(f"\n{_SIZE.value} encoders, {_PRETRAIN_STEPS.value} pretraining steps, "
          f"{_FINETUNE_STEPS.value} fine-tuning steps per run, {minutes:.1f} min in all "
          f"({os.cpu_count()} CPU cores)\n")
    print("| task | metric (held-out) | " + " | ".join(columns) + " | trivial baseline |")
    print("|---|---|" + "---|" * len(columns) + "---|")
    for task in _TASKS.value:
        first = records[(task, columns[0])][0]
        arrow = "higher" if first["higher_is_better"] else "lower"
        values = [cell([r["headline_values"]["both"] for r in records[(task, c)]])
                  for c in columns]
        base = first["baseline"]["metrics"].get(first["headline"])
        print(f"| {task} | {first['headline']} ({arrow} is better) | " + " | ".join(values)
              + f" | {cell([base])} |")
    if "landcover" in _TASKS.value:
        sets = list(records[("landcover", columns[0])][0]["headline_values"])
        print("\nLand cover (mIoU), trained with optical + SAR, evaluated with:\n")
        print("| run | " + " | ".join(sets) + " |")
        print("|---|" + "---|" * len(sets))
        for column in columns:
            runs = records[("landcover", column)]
            print(f"| {column} | " + " | ".join(
                cell([r["headline_values"][s] for r in runs]) for s in sets) + " |")
    if _JSON.value:
        for (task, column), runs in records.items():
            for r in runs:
                print("downstream " + json.dumps({"task": task, "run": column,
                                                  "headline": r["headline"],
                                                  "values": r["headline_values"],
                                                  "baseline": r["baseline"]["metrics"].get(
                                                      r["headline"])}))


if __name__ == "__main__":
    app.run(main)
