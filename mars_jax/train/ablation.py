r"""The paper's ablation M0..M3: which of CGCL and MMA helps, and whether they add up.

Four pretraining variants of one size (``configs/pretrain.py:SIZE``), each pretrained with
``train.pretrain.train`` and fine-tuned on every task with ``train.finetune.finetune``
(``configs/finetune.py:TASK,SIZE[,PROTOCOL]``, its ``model`` section the variant's, its
``init.checkpoint`` the variant's pretraining workdir at step ``pretrain_steps``):

  variant  loss (cgcl_weight, alpha patch, beta global, gamma cross)  model.mma_layers
  M0       1, 0, 1, 0   MIM + the global dual-encoder contrastive term      0 (no MMA)
  M1       1, 1, 1, 1   M0 + CGCL (patch, global and cross terms)           0 (no MMA)
  M2       1, 0, 1, 0   M0 + MMA, global contrastive only                   the size's
  M3       1, 1, 1, 1   full MaRS: every CGCL term and MMA                  the size's

With ``mma_layers = 0`` MMA is the identity (an empty stack): the fused tokens are the ViT
outputs, so the fine-tuning backbone's last level is the modalities' mean ViT tokens.

Numbers, per task ``t`` (its ``results.json``: ``headline``, ``higher_is_better``, the value
of the ``both`` modality set, else the first set, and ``baseline.metrics[headline]``, the
trivial predictor's score):

  Perf(M_k)       the headline, mean and sample std (ddof 1) over seeds; one seed: no std.
  s_t             +1 for a higher-is-better headline, -1 for a lower-is-better one (rmse,
                  corner_error): every delta is reported as an *improvement*, positive =
                  better, i.e. the raw difference of headlines times s_t.
  Delta_CGCL      s_t (Perf(M1) - Perf(M0))
  Delta_MMA       s_t (Perf(M2) - Perf(M0))
  Delta_synergy   s_t (Perf(M3) - (Perf(M1) + Perf(M2) - Perf(M0))): > 0 when CGCL and MMA
                  together gain more than the sum of their separate gains.
  Deltas are computed per seed (the variants of one seed share it, paired) and reported as
  mean and std over seeds; the mean equals the delta of the seed means.
  imp_t(run)      the normalised improvement over the baseline b: s_t (perf - b) / |b|, and
                  s_t (perf - b) when b == 0 (an absolute difference: no scale to divide by).
  MAS(M_k)        the mean over tasks of imp_t for one seed, then mean and std over seeds.
                  The MAS row of the deltas table applies the same formulas to MAS (already
                  an improvement: no sign flip).

A missing or undefined (null) value propagates as NaN. Runs already done in ``workdir``
are reused: a fine-tuning run whose ``results.json`` holds step ``finetune_steps`` is read,
not run, and a pretraining run is skipped when its marker records ``pretrain_steps`` (or
when every fine-tuning run of it is done); an interrupted ablation resumes (the loops resume
their own checkpoints too). Layout::

  workdir/pretrain/M0_seed0/          a pretraining workdir (checkpoints/, metrics.jsonl)
  workdir/finetune/M0_seed0/roads/    a fine-tuning workdir (results.json)
  workdir/ablation.json, ablation.md  every run's numbers, configs and commands; the tables
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

VARIANT_NAMES = ("M0", "M1", "M2", "M3")
PRETRAIN_DONE = "ablation_pretrain_done.json"
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ablation arm: which of CGCL (patch and cross terms) and MMA it keeps."""

    name: str
    cgcl: bool  # alpha = gamma = 1 (else 0); beta = 1 always
    mma: bool  # the size's mma_layers (else 0)
    description: str


VARIANTS = {
    "M0": Variant("M0", False, False, "MIM + global contrastive, no MMA"),
    "M1": Variant("M1", True, False, "M0 + CGCL (patch, global, cross), no MMA"),
    "M2": Variant("M2", False, True, "M0 + MMA, global contrastive only"),
    "M3": Variant("M3", True, True, "full MaRS: CGCL + MMA"),
}


def variant_overrides(name: str, mma_layers: int) -> dict[str, Any]:
    """The config fields (dotted keys) the variant ``name`` sets; ``mma_layers``: the size's."""
    if name not in VARIANTS:
        raise ValueError(f"unknown ablation variant {name!r}; choose from {VARIANT_NAMES}")
    v = VARIANTS[name]
    term = 1.0 if v.cgcl else 0.0
    return {"loss.cgcl_weight": 1.0, "loss.alpha": term, "loss.beta": 1.0, "loss.gamma": term,
            "model.mma_layers": int(mma_layers) if v.mma else 0}


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(config.copy_and_resolve_references().to_dict())


def _apply(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value


def pretrain_overrides(base: ml_collections.ConfigDict, name: str, *, steps: int | None,
                       seed: int) -> dict[str, Any]:
    """Every field the runner sets on the base pretraining config for ``name``."""
    overrides = variant_overrides(name, base.model.mma_layers)
    overrides["seed"] = int(seed)
    if steps is not None:  # the schedules clip the warmup, checkpoints come at the end too
        overrides["total_steps"] = int(steps)
    return overrides


def pretrain_config(base: ml_collections.ConfigDict, name: str, *, steps: int | None = None,
                    seed: int = 0) -> ml_collections.ConfigDict:
    """A copy of ``base`` (``configs/pretrain.py:SIZE``) as variant ``name``."""
    config = _copy(base)
    _apply(config, pretrain_overrides(base, name, steps=steps, seed=seed))
    return config


def finetune_overrides(pretrained: ml_collections.ConfigDict, *,
                       checkpoint: str | os.PathLike, steps: int | None, seed: int
                       ) -> dict[str, Any]:
    """The fields set on a fine-tuning config (besides ``model``, the pretraining's)."""
    overrides: dict[str, Any] = {"model.mma_layers": int(pretrained.model.mma_layers),
                                 "init.checkpoint": str(checkpoint),
                                 "init.step": int(pretrained.total_steps), "seed": int(seed)}
    if steps is not None:  # the schedules clip the warmup, checkpoints come at the end too
        overrides["total_steps"] = int(steps)
    return overrides


def finetune_config(base: ml_collections.ConfigDict, pretrained: ml_collections.ConfigDict, *,
                    checkpoint: str | os.PathLike, steps: int | None = None, seed: int = 0
                    ) -> ml_collections.ConfigDict:
    """A copy of ``base`` (``configs/finetune.py:TASK,SIZE``) whose encoder is the pretraining
    variant's (``config.model`` copied whole, so it matches the checkpoint), started from
    ``checkpoint`` at the pretraining's last step."""
    config = _copy(base)
    config.model = _copy(pretrained.model)
    _apply(config, finetune_overrides(pretrained, checkpoint=checkpoint, steps=steps,
                                      seed=seed))
    return config


def command_line(entry: str, spec: str, workdir: str | os.PathLike,
                 overrides: Mapping[str, Any]) -> str:
    """The ``python -m mars_jax.main`` command of one run (its overrides of the config file;
    a base config changed in code, as the tests do, is recorded in full next to it)."""
    def value(v):
        return ",".join(str(x) for x in v) if isinstance(v, tuple | list) else str(v)

    flags = " ".join(f"--config.{k}={value(v)}" for k, v in overrides.items())
    return f"python -m mars_jax.main --mode={entry} --config={spec} --workdir={workdir} {flags}"


# ------------------------------------------------------------------------------------------
# The numbers: pure functions of the runs' records
# ------------------------------------------------------------------------------------------
def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def headline_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A ``results.json`` record -> headline name, direction, value (modality set ``both``,
    else the first) and baseline value (NaN where null)."""
    values = record.get("headline_values") or {}
    chosen = "both" if "both" in values else next(iter(values), None)
    headline = record["headline"]
    base = ((record.get("baseline") or {}).get("metrics") or {}).get(headline)
    return {"headline": headline, "higher_is_better": bool(record["higher_is_better"]),
            "modality_set": chosen,
            "value": _number(values.get(chosen)) if chosen is not None else float("nan"),
            "baseline": _number(base)}


def sign(higher_is_better: bool) -> float:
    """+1 / -1: multiplies a raw difference of headlines into an improvement."""
    return 1.0 if higher_is_better else -1.0


def improvement(value: float, baseline: float, higher_is_better: bool) -> float:
    """s (value - b) / |b|, or s (value - b) when b == 0 (module docstring)."""
    gain = sign(higher_is_better) * (value - baseline)
    return gain if baseline == 0 else gain / abs(baseline)


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample std (ddof 1; None for one value) of ``values``, NaN-propagating."""
    x = np.asarray(list(values), np.float64)
    if x.size == 0:
        return {"mean": float("nan"), "std": None, "n": 0}
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else None,
            "n": int(x.size)}


def deltas(p0: float, p1: float, p2: float, p3: float, higher_is_better: bool = True
           ) -> dict[str, float]:
    """Delta_CGCL, Delta_MMA and Delta_synergy as improvements (positive = better)."""
    s = sign(higher_is_better)
    return {"cgcl": s * (p1 - p0), "mma": s * (p2 - p0), "synergy": s * (p3 - (p1 + p2 - p0))}


def summarize(runs: Sequence[Mapping[str, Any]], variants: Sequence[str] = VARIANT_NAMES,
              tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """Rows ``{"variant", "task", "seed", "value", "baseline", "higher_is_better",
    "headline"}`` (one per fine-tuning run) -> per-task Perf, deltas and MAS (docstring)."""
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(r["task"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    by = {(r["variant"], r["task"], r["seed"]): r for r in runs}
    out: dict[str, Any] = {"variants": list(variants), "tasks": {}, "seeds": seeds,
                           "mas": {}, "deltas": {}}
    for task in tasks:
        rows = [r for r in runs if r["task"] == task]
        if not rows:
            continue
        higher = bool(rows[0]["higher_is_better"])
        perf = {v: mean_std([by[v, task, s]["value"] for s in seeds if (v, task, s) in by])
                for v in variants}
        entry: dict[str, Any] = {"headline": rows[0]["headline"], "higher_is_better": higher,
                                 "perf": perf,
                                 "baseline": mean_std([r["baseline"] for r in rows])}
        if all(v in variants for v in VARIANT_NAMES):
            per_seed = [deltas(*(by[v, task, s]["value"] for v in VARIANT_NAMES), higher)
                        for s in seeds if all((v, task, s) in by for v in VARIANT_NAMES)]
            entry["deltas"] = {k: mean_std([d[k] for d in per_seed])
                               for k in ("cgcl", "mma", "synergy")}
        out["tasks"][task] = entry
    mas_per_seed: dict[str, dict[int, float]] = {}
    for v in variants:
        mas_per_seed[v] = {}
        for s in seeds:
            gains = [improvement(by[v, t, s]["value"], by[v, t, s]["baseline"],
                                 by[v, t, s]["higher_is_better"])
                     for t in out["tasks"] if (v, t, s) in by]
            if gains:
                mas_per_seed[v][s] = float(np.mean(gains))
        out["mas"][v] = mean_std(list(mas_per_seed[v].values()))
    if all(v in variants for v in VARIANT_NAMES):
        per_seed = [deltas(*(mas_per_seed[v][s] for v in VARIANT_NAMES))
                    for s in seeds if all(s in mas_per_seed[v] for v in VARIANT_NAMES)]
        out["deltas"]["MAS"] = {k: mean_std([d[k] for d in per_seed])
                                for k in ("cgcl", "mma", "synergy")}
    return out


def _fmt(stat: Mapping[str, Any], digits: int = 4) -> str:
    mean = stat["mean"]
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    text = f"{mean:+.{digits}f}" if stat.get("signed") else f"{mean:.{digits}f}"
    return text if stat.get("std") is None else f"{text} ± {stat['std']:.{digits}f}"


def markdown(summary: Mapping[str, Any]) -> str:
    """The Perf/MAS table and the deltas table, as markdown."""
    tasks = summary["tasks"]
    n = len(summary["seeds"])
    spread = f"mean ± std over {n} seeds" if n > 1 else "one seed"
    head = [f"{t} {e['headline']} {'↑' if e['higher_is_better'] else '↓'}"
            for t, e in tasks.items()]
    lines = [f"Perf(M_k): fine-tuning headline per task ({spread}); MAS = mean over tasks of "
             "the improvement over the task's trivial baseline, s (perf - base) / |base| "
             "(|base| = 0: s (perf - base)), s = +1 higher-is-better, -1 lower-is-better.", "",
             "| variant | CGCL | MMA | " + " | ".join([*head, "MAS ↑"]) + " |",
             "|---" * (len(head) + 4) + "|"]
    for v in summary["variants"]:
        arm = VARIANTS[v]
        cells = [_fmt(tasks[t]["perf"][v]) for t in tasks] + [_fmt(summary["mas"][v])]
        lines.append(f"| {v} | {'✓' if arm.cgcl else '-'} | {'✓' if arm.mma else '-'} | "
                     + " | ".join(cells) + " |")
    lines.append("| baseline | | | " + " | ".join(_fmt(e["baseline"]) for e in tasks.values())
                 + " | 0 |")
    rows = [(f"{t} ({e['headline']}, {'higher' if e['higher_is_better'] else 'lower'} is "
             f"better{'' if e['higher_is_better'] else ': negated'})", e["deltas"])
            for t, e in tasks.items() if "deltas" in e]
    if "MAS" in summary["deltas"]:
        rows.append(("MAS", summary["deltas"]["MAS"]))
    if rows:
        lines += ["", "Deltas as improvements, positive = better (for a lower-is-better "
                  "headline the difference is negated): Δ_CGCL = Perf(M1) - Perf(M0), "
                  "Δ_MMA = Perf(M2) - Perf(M0), Δ_synergy = Perf(M3) - (Perf(M1) + Perf(M2) "
                  f"- Perf(M0)); {spread}, paired by seed.", "",
                  "| task | Δ_CGCL | Δ_MMA | Δ_synergy |", "|---|---|---|---|"]
        for label, d in rows:
            lines.append(f"| {label} | " + " | ".join(
                _fmt({**d[k], "signed": True}) for k in ("cgcl", "mma", "synergy")) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# The runner
# ------------------------------------------------------------------------------------------
def _jsonable(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def _no_nan(tree: Any) -> Any:
    """NaN / inf -> None, so the file is strict JSON."""
    if isinstance(tree, Mapping):
        return {k: _no_nan(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_no_nan(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _finished(path: Path, steps: int) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("step") == steps else None


def run_ablation(pretrain_base: ml_collections.ConfigDict,
                 finetune_base: Callable[[str], ml_collections.ConfigDict],
                 tasks: Sequence[str], workdir: str | os.PathLike, *,
                 pretrain_steps: int | None = None, finetune_steps: int | None = None,
                 seeds: Sequence[int] = (0,), variants: Sequence[str] = VARIANT_NAMES,
                 specs: Mapping[str, str] | None = None, log=print, devices=None
                 ) -> dict[str, Any]:
    """Pretrains every variant per seed, fine-tunes each on every task, writes
    ``workdir/ablation.json`` and ``ablation.md`` and returns the ablation record.

    ``pretrain_base``: ``configs/pretrain.py:SIZE``; ``finetune_base(task)``:
    ``configs/finetune.py:TASK,SIZE[,PROTOCOL]`` (both may be changed in code first, as the
    tests shrink them). ``specs``: ``{"pretrain": ..., "finetune": ...}`` config names for the
    recorded commands (``finetune`` formatted with ``{task}``). ``devices`` go to the loops.
    """
    import jax

    from mars_jax.train.finetune import finetune
    from mars_jax.train.pretrain import train

    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown ablation variants {bad}; choose from {VARIANT_NAMES}")
    specs = dict(specs or {})
    pre_spec = specs.get("pretrain", f"configs/pretrain.py:{pretrain_base.variant}")
    ft_spec = specs.get("finetune", "configs/finetune.py:{task}," + str(pretrain_base.variant))
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    total = len(variants) * len(seeds) * (1 + len(tasks))
    count, runs, records = 0, [], []
    started = time.perf_counter()
    for seed in seeds:
        for name in variants:
            pre_dir = root / "pretrain" / f"{name}_seed{seed}"
            pre_cfg = pretrain_config(pretrain_base, name, steps=pretrain_steps, seed=seed)
            pre_steps = int(pre_cfg.total_steps)
            ft_dirs = {t: root / "finetune" / f"{name}_seed{seed}" / t for t in tasks}
            ft_cfgs = {t: finetune_config(finetune_base(t), pre_cfg, checkpoint=pre_dir,
                                          steps=finetune_steps, seed=seed) for t in tasks}
            done = {t: _finished(ft_dirs[t] / RESULTS_FILE, int(ft_cfgs[t].total_steps))
                    for t in tasks}
            marker = pre_dir / PRETRAIN_DONE
            count += 1
            tick = time.perf_counter()
            if all(r is not None for r in done.values()) or (
                    _finished(marker, pre_steps) is not None):
                log(f"[{count}/{total}] pretrain {name} seed {seed}: reused {pre_dir}")
            else:
                log(f"[{count}/{total}] pretrain {name} seed {seed} "
                    f"({VARIANTS[name].description}) -> {pre_dir}")
                train(pre_cfg, pre_dir, log=log, devices=devices)
                if jax.process_index() == 0:
                    _write(marker, json.dumps({"step": pre_steps}) + "\n")
                log(f"[{count}/{total}] pretrain {name} seed {seed}: done in "
                    f"{time.perf_counter() - tick:.1f} s")
            records.append({
                "kind": "pretrain", "variant": name, "seed": seed, "workdir": str(pre_dir),
                "command": command_line("pretrain", pre_spec, pre_dir, pretrain_overrides(
                    pretrain_base, name, steps=pretrain_steps, seed=seed)),
                "config": _jsonable(pre_cfg)})
            for task in tasks:
                count += 1
                tick = time.perf_counter()
                record = done[task]
                if record is None:
                    record = finetune(ft_cfgs[task], ft_dirs[task], log=log, devices=devices)
                    if not record:
                        raise RuntimeError(f"fine-tuning {name} seed {seed} on {task} "
                                           f"stopped before its results ({ft_dirs[task]})")
                    how = f"{time.perf_counter() - tick:.1f} s"
                else:
                    how = "reused"
                h = headline_of(record)
                log(f"[{count}/{total}] finetune {name} seed {seed} {task}: "
                    f"{h['headline']}={h['value']:.4f} (baseline {h['baseline']:.4f}) {how}")
                runs.append({"variant": name, "task": task, "seed": seed, **h,
                             "workdir": str(ft_dirs[task])})
                records.append({
                    "kind": "finetune", "variant": name, "seed": seed, "task": task,
                    "workdir": str(ft_dirs[task]),
                    "command": command_line("finetune", ft_spec.format(task=task),
                                            ft_dirs[task], finetune_overrides(
                                                pre_cfg, checkpoint=pre_dir,
                                                steps=finetune_steps, seed=seed)),
                    "config": _jsonable(ft_cfgs[task]), "results": record})
    summary = summarize(runs, variants, tasks)
    table = markdown(summary)
    ablation = {"variants": {v: {**dataclasses.asdict(VARIANTS[v]), "overrides":
                                 variant_overrides(v, pretrain_base.model.mma_layers)}
                             for v in variants},
                "tasks": list(tasks), "seeds": list(seeds), "pretrain_steps": pretrain_steps,
                "finetune_steps": finetune_steps, "summary": summary, "runs": runs,
                "records": records, "table": table,
                "wall_s": round(time.perf_counter() - started, 1)}
    if jax.process_index() == 0:
        _write(root / "ablation.json", json.dumps(_no_nan(ablation), indent=2) + "\n")
        _write(root / "ablation.md", table)
    log(table)
    log(f"  ablation: {root / 'ablation.json'}, {root / 'ablation.md'}")
    return ablation
