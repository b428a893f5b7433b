"""Fine-tuning's parts without a training run: configs, protocols' optimiser (layer-wise lr
decay, multistep schedule), modality dropout, label subsets, streamed evaluation and its
baseline, example checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from configs import finetune as finetune_configs
from mars_jax.data.subset import LabelSubset
from mars_jax.data.synth import SynthSource, render_pair
from mars_jax.tasks import ExampleError, get_task
from mars_jax.train.evaluate import baseline_value, evaluate, modality_sets
from mars_jax.train.finetune import draw_presence, trainable
from mars_jax.train.finetune_config import FinetuneExperiment, FinetuneOptimConfig
from mars_jax.train.finetune_optim import (
    finetune_schedule,
    layer_index,
    layer_scales,
    make_finetune_optimizer,
)
from mars_jax.typed_config import ConfigError


# -- configs --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", sorted(finetune_configs.SIZES))
@pytest.mark.parametrize("protocol", finetune_configs.PROTOCOLS)
def test_every_task_size_and_protocol_config_is_valid(size, protocol):
    for task in finetune_configs.TASK_NAMES:
        if protocol == "linear" and task in ("change", "translation", "registration",
                                             "sar_detection", "building_detection"):
            message = {"change": "no bi-temporal form", "translation": "cannot decode an image",
                       "registration": "no registration form",
                       "sar_detection": "no detection form",
                       "building_detection": "no detection form"}[task]
            with pytest.raises(ConfigError, match=message):
                FinetuneExperiment.from_config(finetune_configs.get_config(
                    f"{task},{size},{protocol}"))
            continue
        exp = FinetuneExperiment.from_config(finetune_configs.get_config(
            f"{task},{size},{protocol}"))
        assert exp.task.name == task and exp.task.protocol == protocol
        assert exp.trains_encoder == (protocol == "full")
        assert (exp.head.kind == "linear") == (protocol == "linear")
        if protocol == "frozen":  # PANGAEA's schedule
            assert exp.optim.schedule == "multistep" and exp.optim.milestones == (0.6, 0.9)
            assert exp.optim.weight_decay == 0.05
            assert size == "tiny" or exp.optim.learning_rate == 1e-4


@pytest.mark.parametrize("arg, message", [
    ("landcover", "expected TASK,SIZE"), ("lancover,tiny", "unknown task 'lancover'"),
    ("roads,huge", "unknown size 'huge'"), ("roads,tiny,half", "unknown protocol 'half'")])
def test_bad_config_arguments_are_named(arg, message):
    with pytest.raises(ValueError, match=message):
        finetune_configs.get_config(arg)


def test_config_mistakes_are_named():
    config = finetune_configs.get_config("roads,tiny,linear")
    config.head.kind = "upernet"
    with pytest.raises(ConfigError, match=r"kind must be 'linear' for task\.protocol='linear'"):
        FinetuneExperiment.from_config(config)
    config = finetune_configs.get_config("roads,tiny")
    config.task.modalities = ("optical",)
    config.task.modality_dropout = 0.5
    with pytest.raises(ConfigError, match="modality_dropout must be 0 when training with one"):
        FinetuneExperiment.from_config(config)
    config = finetune_configs.get_config("roads,tiny")
    config.task.label_fraction = 0.0
    with pytest.raises(ConfigError, match=r"label_fraction must be in \(0, 1\]"):
        FinetuneExperiment.from_config(config)
    with pytest.raises(ValueError, match="eval modality set 'sar' needs \\['sar'\\]"):
        modality_sets(("both", "sar"), ("optical",))
    assert modality_sets(("both", "sar"), ("optical", "sar")) == {
        "both": ("optical", "sar"), "sar": ("sar",)}


def test_the_finetune_config_carries_the_pretraining_encoder():
    from configs import pretrain

    for size in finetune_configs.SIZES:
        model = finetune_configs.get_config(f"landcover,{size}").model.to_dict()
        assert model == pretrain.get_config(size).model.to_dict()


# -- protocols: what trains, and at which rate ------------------------------------------------
def test_frozen_protocols_differentiate_the_head_only():
    from flax import nnx

    assert trainable("full") is nnx.Param
    for protocol in ("frozen", "linear"):
        rule = trainable(protocol)
        param = nnx.Param(jnp.zeros(()))
        assert rule(("head", "classifier", "kernel"), param)
        assert not rule(("encoder", "optical_vit", "patch_embed", "kernel"), param)


def test_layer_index_follows_the_depth():
    depth, mma = 4, 2
    top = depth + mma
    assert layer_index(("encoder", "optical_vit", "patch_embed", "kernel"), depth, mma) == 0
    assert layer_index(("encoder", "sar_vit", "blocks", "layers", "2", "mlp", "fc1", "kernel"),
                       depth, mma) == 3
    assert layer_index(("encoder", "optical_vit", "norm", "scale"), depth, mma) == depth
    assert layer_index(("encoder", "mma", "blocks", "layers", "1", "ln1", "scale"),
                       depth, mma) == depth + 2
    assert layer_index(("head", "fuse", "conv", "kernel"), depth, mma) == top + 1
    assert layer_index(("encoder", "optical_vit", "blocks", "stacked", "0", "ln1", "scale"),
                       depth, mma) is None


def _encoder_like(scanned: bool, depth: int = 4, mma: int = 2) -> dict:
    leaf = np.zeros((3,), np.float32)
    if scanned:
        vit = {"blocks": {"stacked": {0: {"w": np.zeros((depth, 3), np.float32)}}}}
        fused = {"blocks": {"stacked": {g: {"w": np.zeros((mma // 2, 3), np.float32)}
                                        for g in range(2)}}}
    else:
        vit = {"blocks": {"layers": {i: {"w": leaf} for i in range(depth)}}}
        fused = {"blocks": {"layers": {i: {"w": leaf} for i in range(mma)}}}
    vit |= {"patch_embed": {"kernel": leaf}, "norm": {"scale": leaf}}
    return {"encoder": {"optical_vit": vit, "mma": fused}, "head": {"kernel": leaf}}


def test_scanned_layers_get_the_scales_of_their_unscanned_twins():
    depth, mma, decay = 4, 2, 0.5
    flat = layer_scales(_encoder_like(False), depth=depth, mma_layers=mma, decay=decay)
    stacked = layer_scales(_encoder_like(True), depth=depth, mma_layers=mma, decay=decay)
    top = depth + mma
    vit = stacked[("encoder", "optical_vit", "blocks", "stacked", "0", "w")][:, 0]
    np.testing.assert_allclose(vit, [flat[("encoder", "optical_vit", "blocks", "layers",
                                           str(i), "w")] for i in range(depth)])
    np.testing.assert_allclose(vit, decay ** (top + 1 - (np.arange(depth) + 1)))
    for group in range(2):  # MMA's period 2: row k of group g is layer 2k + g
        rows = stacked[("encoder", "mma", "blocks", "stacked", str(group), "w")][:, 0]
        np.testing.assert_allclose(rows, [flat[("encoder", "mma", "blocks", "layers",
                                                str(2 * k + group), "w")]
                                          for k in range(mma // 2)])
    assert flat[("head", "kernel")] == 1.0
    assert flat[("encoder", "optical_vit", "patch_embed", "kernel")] == decay ** (top + 1)


def test_layer_decay_scales_each_layers_first_adam_step():
    """Adam's first step is lr * sign(g) per element (eps aside): with layer decay each
    parameter moves by lr * its scale, the head by lr."""
    params = _encoder_like(False)
    params = jax.tree.map(lambda x: x + 1.0, params)
    cfg = FinetuneOptimConfig(learning_rate=0.1, weight_decay=0.0, clip_norm=None,
                              eps=1e-12, layer_decay=0.5)
    scales = layer_scales(params, depth=4, mma_layers=2, decay=0.5)
    tx = make_finetune_optimizer(cfg, total_steps=10, scales=scales)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    moved = {names: float(np.abs(u).max()) for names, u in (
        (tuple(str(getattr(k, "key", k)) for k in path), u)
        for path, u in jax.tree_util.tree_leaves_with_path(updates))}
    lr = float(finetune_schedule(cfg, 10)(0))
    for names, scale in scales.items():
        np.testing.assert_allclose(moved[names], lr * scale, rtol=1e-5)
    # Without decay (1.0) every parameter moves by lr.
    plain = make_finetune_optimizer(FinetuneOptimConfig(learning_rate=0.1, weight_decay=0.0,
                                                        clip_norm=None, eps=1e-12), 10,
                                    scales=scales)
    updates, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose([float(np.abs(u).max()) for u in jax.tree.leaves(updates)],
                               lr, rtol=1e-5)


def test_multistep_schedule_cuts_at_the_milestones():
    cfg = FinetuneOptimConfig(learning_rate=1e-4, schedule="multistep", warmup_steps=0)
    schedule = finetune_schedule(cfg, 100)
    values = [float(schedule(s)) for s in (0, 59, 60, 89, 90, 99)]
    np.testing.assert_allclose(values, [1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6], rtol=1e-6)
    warm = finetune_schedule(FinetuneOptimConfig(learning_rate=1e-4, schedule="multistep",
                                                 warmup_steps=10), 100)
    np.testing.assert_allclose([float(warm(s)) for s in (0, 5, 10, 59, 60, 90)],
                               [0, 5e-5, 1e-4, 1e-4, 1e-5, 1e-6], rtol=1e-6, atol=1e-12)


# -- modality dropout and label fractions -----------------------------------------------------
def test_modality_dropout_drops_one_modality_at_the_rate():
    present = np.asarray(draw_presence(jax.random.key(0), 20_000, 0.3))
    assert present.any(axis=1).all()  # never both dropped
    dropped = ~present.all(axis=1)
    assert abs(dropped.mean() - 0.3) < 0.015
    assert abs((~present[:, 0]).mean() - 0.15) < 0.01  # either modality, even odds
    assert np.asarray(draw_presence(jax.random.key(1), 100, 0.0)).all()


def test_label_subsets_are_fixed_nested_and_checked():
    source = SynthSource(seed=1, size=64, length=40)
    quarter, half = LabelSubset(source, 0.25, seed=3), LabelSubset(source, 0.5, seed=3)
    assert len(quarter) == 10 and len(half) == 20
    assert set(quarter.indices) <= set(half.indices)
    np.testing.assert_array_equal(quarter.indices, LabelSubset(source, 0.25, seed=3).indices)
    assert not np.array_equal(quarter.indices, LabelSubset(source, 0.25, seed=4).indices)
    np.testing.assert_array_equal(quarter[0]["optical"], source[int(quarter.indices[0])][
        "optical"])
    assert len(LabelSubset(source, 0.001)) == 1
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        LabelSubset(source, 1.5)
    with pytest.raises(IndexError):
        quarter[10]


# -- examples and evaluation ---------------------------------------------------------------------
def test_a_bad_example_is_named():
    task = get_task("landcover")
    example = render_pair(0, 0, 64)
    task.check_example(example, ("optical", "sar"))
    no_sar = {k: v for k, v in example.items() if k != "sar"}
    with pytest.raises(ExampleError, match=r"lacks \['sar'\].*task.modalities=optical"):
        task.check_example(no_sar, ("optical", "sar"), where="training example 0 of X")
    task.check_example(no_sar, ("optical",))
    with pytest.raises(ExampleError, match="'sar' has shape \\(32, 32, 1\\)"):
        task.check_example(example | {"sar": example["sar"][:32, :32]}, ("optical", "sar"))
    with pytest.raises(ExampleError, match="holds class 9 but task 'landcover' has 7"):
        task.check_example(example | {"landcover": np.full((64, 64), 9, np.uint8)},
                           ("optical",))


def _scenes(task_name: str, count: int = 3, size: int = 48):
    return [render_pair(5, i, size, with_t2=True) for i in range(count)]


def _pointwise_predict(num_outputs: int):
    """A context-free stand-in for a model: logits from each pixel's own colour, so any
    window layout predicts a pixel alike."""
    weights = np.random.default_rng(0).normal(size=(3, num_outputs)).astype(np.float32)

    def predict(inputs):
        return np.asarray(inputs["optical"], np.float32) / 255.0 @ weights

    return predict


@pytest.mark.parametrize("name", ["landcover", "roads", "building_height"])
def test_streamed_sliding_evaluation_equals_whole_scene_scores(name):
    task = get_task(name)
    scenes = _scenes(name)
    predict = _pointwise_predict(task.num_outputs)
    sets = {"both": ("optical", "sar")}
    whole = evaluate(task, predict, scenes, sets, window=48, overlap=0, batch_windows=1)
    tiled = evaluate(task, predict, scenes, sets, window=32, overlap=8, batch_windows=3)
    for key, value in whole.metrics["both"].items():
        np.testing.assert_allclose(tiled.metrics["both"][key], value, rtol=1e-5,
                                   equal_nan=True, err_msg=key)
    # Against an independent count of the same predictions.
    if task.kind == "segmentation":
        pred = np.concatenate([predict({"optical": s["optical"][None]}).argmax(-1)
                               for s in scenes]).ravel()
        truth = np.concatenate([s["landcover"][None] for s in scenes]).ravel()
        valid = np.concatenate([s["valid"][None] for s in scenes]).ravel()
        cm = confusion_matrix(truth[valid], pred[valid], labels=range(task.num_outputs))
        assert whole.metrics["both"]["oa"] == pytest.approx(np.trace(cm) / cm.sum())


def test_the_baseline_is_the_training_majority_scored_like_the_model():
    task = get_task("landcover")
    train = _scenes("landcover", 4)
    majority = baseline_value(task, train)
    labels = np.concatenate([s["landcover"][s["valid"]] for s in train])
    assert majority == np.bincount(labels).argmax()
    held_out = [render_pair(6, i, 48) for i in range(2)]
    result = evaluate(task, _pointwise_predict(task.num_outputs), held_out,
                      {"both": ("optical", "sar")}, window=48, overlap=0, batch_windows=1,
                      baseline=majority)
    truth = np.concatenate([s["landcover"][s["valid"]] for s in held_out])
    assert result.baseline["oa"] == pytest.approx(np.mean(truth == majority))
    height = get_task("building_height")
    mean = baseline_value(height, train)
    heights = np.concatenate([s["height"][s["valid"] & (s["height"] > 0)] for s in train])
    assert mean == pytest.approx(heights.mean(), rel=1e-6)


# -- plans over real layouts and shards (no compilation) ---------------------------------------
def _plan_config(task: str, **data):
    from tests.helpers import tiny_finetune_config as tiny_config

    config = tiny_config(task)
    config.input.batch_size = 8
    for key, value in data.items():
        config.data[key] = value
    return config


def test_a_plan_reads_a_real_layout_with_its_own_classes(tmp_path):
    from mars_jax.data.datasets import earthmiss
    from mars_jax.train.finetune import make_finetune_plan
    from tests.test_datasets import write_earthmiss

    write_earthmiss(tmp_path / "EarthMiss", per_city=2)
    config = _plan_config("landcover", source="dataset", dataset="earthmiss",
                          root=str(tmp_path / "EarthMiss"))
    plan = make_finetune_plan(config)
    assert plan.task.classes == earthmiss.CLASSES and plan.eval_scenes == 2  # eval.scenes
    assert len(plan.train_source) == 14 and len(plan.eval_source) == 6  # 7 and 3 cities x 2
    assert plan.eval_sets == {"both": ("optical", "sar"), "optical": ("optical",),
                              "sar": ("sar",)}
    config.task.label_fraction = 0.6
    assert len(make_finetune_plan(config).train_source) == 8
    config.task.label_fraction = 0.25  # 4 examples cannot fill a batch of 8
    with pytest.raises(ConfigError, match="4 labelled training examples"):
        make_finetune_plan(config)


def test_an_optical_only_dataset_needs_optical_only_training(tmp_path):
    from mars_jax.train.finetune import make_finetune_plan
    from tests.test_datasets import write_whu

    root = tmp_path / "WHU-CD"
    write_whu(root / "train", [f"whu_{i:04d}" for i in range(8)])
    write_whu(root / "val", ["whu_0100"])
    config = _plan_config("change", source="dataset", dataset="whu_cd", root=str(root))
    with pytest.raises(ExampleError, match=r"lacks \['sar', 'sar_t2'\].*modalities=optical"):
        make_finetune_plan(config)
    config.task.modalities = ("optical",)
    plan = make_finetune_plan(config)
    assert plan.modalities == ("optical",) and plan.eval_sets == {"both": ("optical",)}


def test_a_plan_reads_labelled_ingest_shards(tmp_path):
    from mars_jax.data.datasets import TERRAMESH_LULC_CLASSES
    from mars_jax.data.ingest import IngestConfig, ingest
    from mars_jax.train.finetune import make_finetune_plan
    from tests.conftest import TERRAMESH_DIR

    out = tmp_path / "shards"
    ingest(IngestConfig(optical=TERRAMESH_DIR / "S2RGB", sar=TERRAMESH_DIR / "S1RTC",
                        labels=TERRAMESH_DIR / "LULC", out=out, tile=64, overlap=0,
                        shard_size=16, progress=False))
    config = _plan_config("landcover", source="shards", shards_dir=str(out))
    with pytest.raises(ConfigError, match="eval config: shards_dir must name"):
        make_finetune_plan(config)
    config.eval.shards_dir = str(out)
    plan = make_finetune_plan(config)
    assert plan.task.classes == TERRAMESH_LULC_CLASSES
    assert plan.task.num_outputs == len(TERRAMESH_LULC_CLASSES)


def test_median_frequency_weights_balance_the_training_labels():
    from mars_jax.train.evaluate import LabelStatistics

    task = get_task("damage")  # 5 classes
    counts = np.zeros(256, np.int64)
    counts[:5] = [9000, 400, 100, 500, 0]  # "new" absent
    weights = LabelStatistics(counts).median_frequency_weights(task, max_weight=10.0)
    freq = counts[:4] / counts[:4].sum()
    expected = np.clip(np.median(freq) / freq, 0.1, 10.0)
    np.testing.assert_allclose(weights[:4], expected, rtol=1e-6)
    assert weights[4] == 1.0 and weights[0] == pytest.approx(0.1)  # clipped
    assert LabelStatistics(counts).baseline(task) == 0
    config = finetune_configs.get_config("building_height,tiny")
    config.task.class_weighting = "median_frequency"
    with pytest.raises(ConfigError, match="class_weighting must be 'none' for a regression"):
        FinetuneExperiment.from_config(config)
    assert FinetuneExperiment.from_config(finetune_configs.get_config(
        "damage,tiny")).task.class_weighting == "median_frequency"


@pytest.mark.parametrize("activation", ["softplus", None])
def test_a_regression_head_starts_at_the_value_it_is_given(activation):
    from flax import nnx

    from mars_jax.models.heads import RegressionHead

    head = RegressionHead((16,) * 4, activation=activation, channels=8, norm_groups=4,
                          rngs=nnx.Rngs(0))
    head.start_at(7.5)
    head.eval()
    graphdef, state = nnx.split(head)
    features = tuple(jax.random.normal(jax.random.key(i), (2, 4, 4, 16)) for i in range(4))
    out = jax.jit(lambda s, f: nnx.merge(graphdef, s)({"features": f, "stride": 8},
                                                      image_size=(32, 32)))(state, features)
    assert abs(float(jnp.mean(out)) - 7.5) < 0.5 and float(jnp.std(out)) < 1.0
    if activation:
        with pytest.raises(ValueError, match="cannot start at -1"):
            head.start_at(-1.0)
