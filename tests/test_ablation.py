"""The ablation M0..M3: the deltas / synergy / MAS arithmetic, the variant configs, MMA with
no layers, and (slow) the runner end to end."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import finetune as finetune_configs
from configs import pretrain
from mars_jax.models.mma import MetaModalityAttention
from mars_jax.train.ablation import (
    VARIANT_NAMES,
    deltas,
    finetune_config,
    headline_of,
    improvement,
    markdown,
    mean_std,
    pretrain_config,
    run_ablation,
    summarize,
)
from mars_jax.train.config import Experiment
from mars_jax.train.finetune_config import FinetuneExperiment

# ------------------------------------------------------------------------------------------
# The arithmetic, on hand-made numbers
# ------------------------------------------------------------------------------------------
# Two seeds; land cover mIoU (higher is better), building height RMSE (lower is better).
PERF = {
    "landcover": {"M0": (0.50, 0.52), "M1": (0.60, 0.58), "M2": (0.55, 0.57),
                  "M3": (0.70, 0.70)},
    "building_height": {"M0": (4.0, 4.0), "M1": (3.0, 3.5), "M2": (3.8, 3.6),
                        "M3": (2.5, 2.5)},
}
BASE = {"landcover": 0.25, "building_height": 5.0}
HEAD = {"landcover": ("miou", True), "building_height": ("rmse", False)}


def hand_runs():
    return [{"variant": v, "task": t, "seed": s, "value": PERF[t][v][s], "baseline": BASE[t],
             "headline": HEAD[t][0], "higher_is_better": HEAD[t][1]}
            for t in PERF for v in VARIANT_NAMES for s in (0, 1)]


def test_deltas_synergy_and_mas_on_hand_made_numbers():
    summary = summarize(hand_runs())
    assert summary["seeds"] == [0, 1] and list(summary["tasks"]) == list(PERF)
    lc, bh = summary["tasks"]["landcover"], summary["tasks"]["building_height"]
    sd = math.sqrt(2 * 0.01 ** 2)  # sample std (ddof 1) of x +- 0.01
    assert lc["perf"]["M0"]["mean"] == pytest.approx(0.51)
    assert lc["perf"]["M0"]["std"] == pytest.approx(sd)
    assert lc["perf"]["M3"]["std"] == pytest.approx(0.0)
    # Per seed: CGCL 0.10, 0.06; MMA 0.05, 0.05; synergy 0.70 - 0.65, 0.70 - 0.63.
    assert lc["deltas"]["cgcl"]["mean"] == pytest.approx(0.08)
    assert lc["deltas"]["cgcl"]["std"] == pytest.approx(2 * sd)
    assert lc["deltas"]["mma"]["mean"] == pytest.approx(0.05)
    assert lc["deltas"]["synergy"]["mean"] == pytest.approx(0.06)
    assert lc["deltas"]["synergy"]["std"] == pytest.approx(sd)
    # Lower is better: improvements are the negated differences (RMSE 4.0 -> 3.0 is +1.0).
    assert bh["deltas"]["cgcl"]["mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert bh["deltas"]["mma"]["mean"] == pytest.approx((0.2 + 0.4) / 2)
    # synergy: -(2.5 - (3.0 + 3.8 - 4.0)) = 0.3, -(2.5 - (3.5 + 3.6 - 4.0)) = 0.6
    assert bh["deltas"]["synergy"]["mean"] == pytest.approx(0.45)
    # The mean of the paired deltas is the delta of the seed means.
    means = [bh["perf"][v]["mean"] for v in VARIANT_NAMES]
    assert deltas(*means, higher_is_better=False)["synergy"] == pytest.approx(0.45)
    # MAS: per seed the mean over tasks of (perf - b) / |b| (signed), then over seeds.
    for v in VARIANT_NAMES:
        per_seed = [np.mean([(PERF["landcover"][v][s] - 0.25) / 0.25,
                             -(PERF["building_height"][v][s] - 5.0) / 5.0]) for s in (0, 1)]
        assert summary["mas"][v]["mean"] == pytest.approx(np.mean(per_seed))
        assert summary["mas"][v]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    m0 = np.mean([1.0, 0.2])  # seed 0, M0: landcover (0.5 - 0.25) / 0.25, height 1.0 / 5.0
    assert summary["mas"]["M0"]["mean"] == pytest.approx(np.mean([m0, np.mean([1.08, 0.2])]))
    mas = {v: summary["mas"][v]["mean"] for v in VARIANT_NAMES}
    assert summary["deltas"]["MAS"]["synergy"]["mean"] == pytest.approx(
        mas["M3"] - (mas["M1"] + mas["M2"] - mas["M0"]))
    table = markdown(summary)
    assert "| M3 | ✓ | ✓ |" in table and "| M0 | - | - |" in table
    assert "building_height rmse ↓" in table and "negated" in table
    assert "0.5100 ± 0.0141" in table and "+0.0800 ± 0.0283" in table
    assert "| MAS |" in table


def test_one_seed_has_no_std_and_missing_values_propagate_as_nan():
    runs = [r for r in hand_runs() if r["seed"] == 0]
    summary = summarize(runs)
    assert summary["tasks"]["landcover"]["perf"]["M1"] == {"mean": 0.60, "std": None, "n": 1}
    assert "± " not in markdown(summary).split("Deltas")[1]
    runs[0] = {**runs[0], "value": float("nan")}  # landcover M0 undefined
    summary = summarize(runs)
    assert math.isnan(summary["tasks"]["landcover"]["deltas"]["cgcl"]["mean"])
    assert "n/a" in markdown(summary)
    assert mean_std([])["n"] == 0


def test_improvement_signs_and_zero_baseline():
    assert improvement(0.6, 0.4, True) == pytest.approx(0.5)
    assert improvement(3.0, 4.0, False) == pytest.approx(0.25)  # lower RMSE: positive
    assert improvement(5.0, 4.0, False) == pytest.approx(-0.25)
    assert improvement(0.3, 0.0, True) == pytest.approx(0.3)  # b = 0: absolute difference
    assert improvement(0.3, 0.0, False) == pytest.approx(-0.3)
    assert improvement(-0.5, -1.0, True) == pytest.approx(0.5)  # |b| in the denominator


def test_headline_reads_both_else_the_first_set():
    record = {"headline": "miou", "higher_is_better": True,
              "headline_values": {"both": 0.4, "optical": 0.3, "sar": None},
              "baseline": {"metrics": {"miou": 0.1}}}
    got = headline_of(record)
    assert (got["modality_set"], got["value"], got["baseline"]) == ("both", 0.4, 0.1)
    record["headline_values"] = {"sar": None}
    got = headline_of(record)
    assert got["modality_set"] == "sar" and math.isnan(got["value"])


# ------------------------------------------------------------------------------------------
# The variants' configs
# ------------------------------------------------------------------------------------------
EXPECTED = {  # (cgcl_weight, alpha, beta, gamma, MMA layers as the size's)
    "M0": (1.0, 0.0, 1.0, 0.0, False), "M1": (1.0, 1.0, 1.0, 1.0, False),
    "M2": (1.0, 0.0, 1.0, 0.0, True), "M3": (1.0, 1.0, 1.0, 1.0, True),
}


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variant_configs_are_as_documented_and_validate(name, tmp_path):
    base = pretrain.get_config("tiny")
    before = base.to_dict()
    config = pretrain_config(base, name, steps=7, seed=3)
    assert base.to_dict() == before  # the base is copied, not changed
    weight, alpha, beta, gamma, mma = EXPECTED[name]
    loss = config.loss
    assert (loss.cgcl_weight, loss.alpha, loss.beta, loss.gamma) == (weight, alpha, beta, gamma)
    assert config.model.mma_layers == (base.model.mma_layers if mma else 0)
    assert (config.total_steps, config.seed) == (7, 3)
    exp = Experiment.from_config(config)
    assert exp.model.mma_layers == config.model.mma_layers and exp.loss.gamma == gamma

    ft_base = finetune_configs.get_config("roads,tiny")
    ft = finetune_config(ft_base, config, checkpoint=tmp_path, steps=5, seed=3)
    assert ft.model.to_dict() == config.model.to_dict()  # the encoder of the checkpoint
    assert (ft.init.checkpoint, ft.init.step) == (str(tmp_path), 7)
    assert (ft.total_steps, ft.seed) == (5, 3)
    ft_exp = FinetuneExperiment.from_config(ft)
    assert ft_exp.model.mma_layers == config.model.mma_layers


@pytest.mark.parametrize("present", [None, [[True, True], [False, True]]])
def test_mma_with_no_layers_is_the_identity(present):
    mma = MetaModalityAttention(0, 16, 2, 32, rngs=nnx.Rngs(0))
    z_rgb, z_sar = jax.random.normal(jax.random.key(0), (2, 2, 4, 16))
    mask = None if present is None else jnp.asarray(present)
    f_rgb, f_sar = mma(z_rgb, z_sar, mask)
    np.testing.assert_array_equal(f_rgb, z_rgb)
    np.testing.assert_array_equal(f_sar, z_sar)
    np.testing.assert_array_equal(mma.single(z_sar), z_sar)
    assert mma.kinds == () and not jax.tree.leaves(nnx.state(mma, nnx.Param))


# ------------------------------------------------------------------------------------------
# Slow: the runner end to end, then resumed
# ------------------------------------------------------------------------------------------
def tiny_pretrain():
    config = pretrain.get_config("tiny")
    config.input.image_size = 32
    config.model.encoder.depth = 1
    config.data.synth_size = 64
    config.checkpoint.async_save = False
    config.log.every_steps = 1
    config.log.images_every_steps = 0
    config.log.progress = False
    config.log.tensorboard = False
    return config


def tiny_finetune(task):
    config = finetune_configs.get_config(f"{task},tiny")
    config.input.image_size = 32
    config.data.synth_size = 64
    config.data.synth_scenes = 64
    config.head.channels = 8
    config.head.norm_groups = 4
    config.eval.scenes = 2
    config.eval.synth_size = 64
    config.eval.progress = False
    config.checkpoint.async_save = False
    config.log.progress = False
    config.log.tensorboard = False
    return config


@pytest.mark.slow  # 4 pretrainings and 4 fine-tunings of 3 steps: compiles, minutes on 2 cores
def test_the_runner_writes_the_table_and_resumes(tmp_path):
    lines = []
    kw = dict(pretrain_steps=3, finetune_steps=3, seeds=(0,), log=lines.append,
              devices=jax.devices()[:1])
    tasks = ("landcover",)  # the formulas over several tasks: the hand-made tests above
    first = run_ablation(tiny_pretrain(), tiny_finetune, tasks, tmp_path, **kw)
    table = (tmp_path / "ablation.md").read_text()
    for v in VARIANT_NAMES:
        assert f"| {v} |" in table
    assert "Δ_synergy" in table and "landcover miou ↑" in table
    record = json.loads((tmp_path / "ablation.json").read_text())
    assert len(record["runs"]) == 4 and record["seeds"] == [0]
    assert {r["kind"] for r in record["records"]} == {"pretrain", "finetune"}
    m0 = next(r for r in record["records"] if r["kind"] == "pretrain" and r["variant"] == "M0")
    assert m0["config"]["model"]["mma_layers"] == 0 and "--config.loss.alpha=0.0" in m0["command"]
    ft = [r for r in record["records"] if r["kind"] == "finetune"]
    assert all(r["results"]["step"] == 3 for r in ft)
    assert all(r["config"]["model"]["mma_layers"] == (2 if r["variant"] in ("M2", "M3") else 0)
               for r in ft)
    assert sum("finetune" in line and "reused" not in line for line in lines
               if line.startswith("[")) == 4
    # Everything is done: a second call reads the runs back and trains nothing.
    lines.clear()
    again = run_ablation(tiny_pretrain(), tiny_finetune, tasks, tmp_path, **kw)
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 8 and all("reused" in line for line in progress)
    assert again["table"] == first["table"]
