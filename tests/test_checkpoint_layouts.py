"""Checkpoints in another layout: written before the encoder split, or with the other
``model.scan_layers``, restore converted; anything else fails naming what differs."""

import json

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from mars_jax.train.checkpoint import (
    Checkpointer,
    CheckpointLayoutError,
    check_layout,
    upgrade_legacy,
)
from mars_jax.train.pretrain import (
    initial_state,
    make_input,
    make_plan,
    model_and_optimizer,
    train,
)
from tests.helpers import tiny_run_config


def small_config(steps: int = 4, scan: bool = False, constant_lr: bool = False):
    return tiny_run_config(steps, depth=2, constant_lr=constant_lr,
                           model={"scan_layers": scan}, checkpoint={"async_save": False})


def to_legacy(tree):
    """Today's pure dict -> the layout written before the split (independent of the code)."""
    if not isinstance(tree, dict):
        return tree
    tree = {k: to_legacy(v) for k, v in tree.items()}
    if "encoder" not in tree:
        return tree
    encoder = tree.pop("encoder")
    legacy = {}
    for new, old in (("optical_vit", "optical_encoder"), ("sar_vit", "sar_encoder")):
        if new in encoder:
            vit = dict(encoder.pop(new))
            vit["blocks"] = vit["blocks"]["layers"]
            legacy[old] = vit
    if "mma" in encoder:
        legacy["mma"] = {"layers": encoder.pop("mma")["blocks"]["layers"]}
    legacy.update(encoder)  # statistics and projections keep their names
    for decoder in ("optical_decoder", "sar_decoder"):
        if decoder in tree:
            legacy[decoder] = dict(tree.pop(decoder))
            legacy[decoder]["blocks"] = legacy[decoder]["blocks"]["layers"]
    if "temperatures" in tree:
        legacy["cgcl_temperatures"] = tree.pop("temperatures")
    return legacy | tree


def test_checkpoint_from_before_the_split_restores_converted(tmp_path):
    config = small_config()
    config.loss.learnable_temperatures = True
    plan = make_plan(config, devices=jax.devices()[:1])
    _, abstract, shardings, create = model_and_optimizer(plan, 0, 4)
    state = initial_state(plan, shardings, create)
    current = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    legacy = to_legacy(current)
    assert "optical_encoder" in legacy[0] and "encoder" not in legacy[0]
    assert "optical_encoder" in json.dumps(jax.tree.map(lambda x: 0, legacy[1]))  # moments
    jax.tree.map(np.testing.assert_array_equal, upgrade_legacy(legacy), current)

    data = make_input(plan)
    checkpointer = Checkpointer(tmp_path, async_save=False)
    iterator = iter(data)
    next(iterator)
    checkpointer.manager.save(3, args=ocp.args.Composite(  # what the old trainer wrote
        state=ocp.args.StandardSave(legacy),
        data=grain.checkpoint.CheckpointSave(iterator)))
    checkpointer.wait()
    assert check_layout(tmp_path / "3", abstract) == "legacy"
    resumed = iter(data)
    restored = checkpointer.restore(3, abstract, resumed)
    checkpointer.close()
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(np.asarray, nnx.to_pure_dict(restored)), current)
    want = next(iterator)
    got = next(resumed)
    np.testing.assert_array_equal(got["optical"], want["optical"])  # the data order too


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


@pytest.mark.slow  # three short runs, each compiling: ~100 s on 2 cores
def test_resume_with_the_other_scan_layout_continues_the_same_run(tmp_path):
    quiet = dict(log=lambda *_: None, devices=jax.devices()[:1])

    def config(steps, scan=False):  # one schedule whatever the run's length
        return small_config(steps, scan, constant_lr=True)

    train(config(4), tmp_path / "straight", **quiet)
    train(config(2), tmp_path / "switched", **quiet)
    train(config(4, scan=True), tmp_path / "switched", **quiet)  # resumes at 2, scanned
    want, got = losses(tmp_path / "straight"), losses(tmp_path / "switched")
    assert sorted(got) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in (3, 4)], [want[s] for s in (3, 4)], rtol=1e-5)


def test_another_model_is_an_error_naming_the_parameters(tmp_path):
    plan = make_plan(small_config(), devices=jax.devices()[:1])
    _, _, shardings, create = model_and_optimizer(plan, 0, 4)
    checkpointer = Checkpointer(tmp_path, async_save=False)
    data = iter(make_input(plan))
    checkpointer.save(2, initial_state(plan, shardings, create), data)
    checkpointer.wait()
    config = small_config()
    config.model.projection_dim = 16
    other = model_and_optimizer(make_plan(config, devices=jax.devices()[:1]), 0, 4)[1]
    with pytest.raises(CheckpointLayoutError, match=r"does not match the configured model.*"
                                                    r"optical_projection"):
        checkpointer.restore(2, other, data)
    config.model.scan_layers = True  # the scan conversion does not hide another model
    other = model_and_optimizer(make_plan(config, devices=jax.devices()[:1]), 0, 4)[1]
    with pytest.raises(CheckpointLayoutError, match="could not be converted"):
        checkpointer.restore(2, other, data)
    checkpointer.close()
