"""The task registry and the task model: every task's model runs on its SynthVHR examples,
its loss is finite and differentiable, its metrics stream, its baseline is defined."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from mars_jax.data.synth import render_pair
from mars_jax.models import MaRSConfig
from mars_jax.models.heads import HeadConfig
from mars_jax.tasks import TASKS, get_task
from mars_jax.tasks.model import TaskModel, default_levels

SIZE = 64


def model_config() -> MaRSConfig:
    config = pretrain.get_config("tiny")
    config.model.encoder.depth = 2
    return MaRSConfig.from_dict(config.model.to_dict())


@pytest.fixture(scope="module")
def examples():
    """Two SynthVHR scenes with every task's keys (buildings and change in them)."""
    scenes = [render_pair(0, i, size=SIZE, with_t2=True) for i in (0, 3)]  # buildings, change
    return {key: jnp.asarray(np.stack([s[key] for s in scenes])) for key in scenes[0]
            if np.asarray(scenes[0][key]).shape[:2] == (SIZE, SIZE)}


def inputs_of(task, batch, modalities=("optical", "sar")):
    roles = {role: batch[key] for role, key in task.inputs.items()
             if role.removesuffix("_t2") in modalities}
    return roles | {"valid": batch["valid"]}


def test_default_levels_spread_over_the_depth():
    assert default_levels(12) == (2, 5, 8) and default_levels(24) == (5, 11, 17)
    assert default_levels(2) == (0, 0, 1)


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match=r"unknown task 'lancover'; tasks are \['building"):
        get_task("lancover")


@pytest.mark.parametrize("name", sorted(  # their own files: test_registration,
    set(TASKS) - {"registration", "sar_detection", "building_detection"}))  # _detection_task
def test_every_task_runs_trains_and_scores(name, examples):
    task = get_task(name)
    model = TaskModel(model_config(), task, HeadConfig(channels=16, norm_groups=4),
                      rngs=nnx.Rngs(0))
    model.eval()
    batch = {key: examples[key] for key in task.keys(("optical", "sar"))}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit  # one compile per task: eager dispatch of a whole model costs far more
    def loss_and_grads(params, batch):
        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(inputs_of(task, batch))
            return task.loss(logits, batch), logits
        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return value, logits, grads, task.batch_stats(logits, batch)

    value, logits, grads, stats = loss_and_grads(params, batch)
    assert logits.shape == (2, SIZE, SIZE, task.num_outputs) and logits.dtype == jnp.float32
    assert np.isfinite(float(value)) and float(value) > 0
    head_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["head"]))
    encoder_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["encoder"]))
    assert head_norm > 0 and encoder_norm > 0
    metric = task.new_metric()
    metric.update(stats)
    results = metric.compute()
    assert task.headline in results
    baseline = task.trivial_prediction(batch[task.label], task.target_mask(batch))
    if task.kind == "translation":  # the mean colour
        assert len(baseline) == 3 and all(0 <= v <= 1 for v in baseline)
    else:
        assert isinstance(baseline, int | float)


@pytest.fixture(scope="module")
def landcover_forward():
    """The land-cover model's forward pass, jitted (one compile per input structure)."""
    model = TaskModel(model_config(), get_task("landcover"),
                      HeadConfig(channels=16, norm_groups=4), rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    return jax.jit(lambda inputs, present=None: nnx.merge(graphdef, state)(inputs,
                                                                           present=present))


def test_one_model_serves_either_modality_and_presence_masks(landcover_forward, examples):
    task, forward = get_task("landcover"), landcover_forward
    rgb = forward(inputs_of(task, examples, ("optical",)))
    sar = forward(inputs_of(task, examples, ("sar",)))
    both = forward(inputs_of(task, examples))
    for logits in (rgb, sar, both):
        assert logits.shape == (2, SIZE, SIZE, len(task.classes))
    assert np.abs(rgb - both).max() > 1e-3  # SAR changes the prediction
    # Per-example presence (modality dropout) equals running the present modality alone.
    mixed = forward(inputs_of(task, examples), jnp.array([[True, False], [False, True]]))
    np.testing.assert_allclose(mixed[0], rgb[0], atol=2e-4)
    np.testing.assert_allclose(mixed[1], sar[1], atol=2e-4)


def test_a_linear_probe_config_stays_linear():
    task = get_task("landcover")
    model = TaskModel(model_config(), task, HeadConfig(kind="linear", levels=(-1,)),
                      rngs=nnx.Rngs(0))
    assert type(model.head).__name__ == "LinearHead"
