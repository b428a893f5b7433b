"""The detection tasks (sar_detection, building_detection): targets prepared on the host,
the CenterNet task model trains, whole-scene evaluation by sliding windows scores the truth 1
and no box 0, the configs, and (slow) a tiny fine-tune beating the no-box baseline."""

import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import finetune as finetune_configs
from mars_jax.data.pipeline import make_pipeline
from mars_jax.data.synth import BOX_BUILDING, BOX_SMALL_OBJECT, render_pair
from mars_jax.models.heads import HeadConfig
from mars_jax.tasks import TASKS
from mars_jax.tasks.centernet import encode_targets
from mars_jax.tasks.detection import BUILDING_DETECTION, SAR_DETECTION, DetectionTask
from mars_jax.tasks.model import TaskModel
from mars_jax.tasks.registry import ExampleError
from mars_jax.train.evaluate import label_statistics
from mars_jax.train.evaluate_detection import evaluate_detection, window_origins
from mars_jax.train.finetune import RESULTS_FILE, finetune
from mars_jax.train.finetune_config import FinetuneExperiment
from mars_jax.typed_config import ConfigError
from tests.helpers import whole_finetune_config
from tests.test_tasks import model_config

SIZE = 64


def test_both_tasks_are_registered_with_their_classes():
    assert TASKS["sar_detection"] is SAR_DETECTION and TASKS["building_detection"] is \
        BUILDING_DETECTION
    assert SAR_DETECTION.source_classes == (BOX_SMALL_OBJECT,)
    assert BUILDING_DETECTION.source_classes == (BOX_BUILDING,)
    assert SAR_DETECTION.keys(("sar",)) == ("sar", "boxes", "box_classes", "valid")
    assert BUILDING_DETECTION.keys(("optical", "sar")) == (
        "optical", "sar", "boxes", "box_classes", "valid")
    assert BUILDING_DETECTION.head_kind == "centernet" and BUILDING_DETECTION.num_outputs == 1


@pytest.mark.parametrize("task", [SAR_DETECTION, BUILDING_DETECTION], ids=lambda t: t.name)
def test_prepare_keeps_the_task_class_pads_and_encodes(task):
    for index in range(3):
        example = render_pair(0, index, size=SIZE)
        task.check_example(example, task.roles)
        boxes, classes = example["boxes"], example["box_classes"]
        wanted = boxes[(classes == task.source_classes[0])
                       & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        out = task.prepare(dict(example))
        m = task.max_objects
        assert out["boxes"].shape == (m, 4) and out["boxes"].dtype == np.float32
        assert out["box_classes"].shape == (m,) and out["box_valid"].shape == (m,)
        n = int(out["box_valid"].sum())
        assert n == len(wanted)
        np.testing.assert_array_equal(out["boxes"][:n], wanted)
        assert (out["box_classes"][:n] == 0).all() and (out["box_classes"][n:] == -1).all()
        assert (out["boxes"][n:] == 0).all()
        expected = encode_targets(wanted, np.zeros(n, np.int32), None, (SIZE, SIZE), 1,
                                  stride=task.stride, max_objects=m)
        for key, value in expected.items():
            np.testing.assert_array_equal(out[f"target_{key}"], value)
        assert out["target_heatmap"].shape == (SIZE // 4, SIZE // 4, 1)
        assert int(out["target_mask"].sum()) == n
        np.testing.assert_array_equal(out["optical"], example["optical"])


def test_check_example_names_bad_boxes():
    example = render_pair(0, 0, size=SIZE)
    with pytest.raises(ExampleError, match=r"'boxes' must be float \[K, 4\]"):
        BUILDING_DETECTION.check_example(example | {"boxes": np.zeros((3, 5), np.float32)},
                                         ("optical", "sar"))
    with pytest.raises(ExampleError, match=r"'box_classes' must be integer \[K\]"):
        BUILDING_DETECTION.check_example(
            example | {"box_classes": example["box_classes"].astype(np.float32)},
            ("optical", "sar"))
    with pytest.raises(ExampleError, match="lacks"):
        SAR_DETECTION.check_example({k: v for k, v in example.items() if k != "box_classes"},
                                    ("sar",))


def test_a_sar_only_pipeline_crops_and_batches_fixed_shapes():
    scenes = [render_pair(0, i, size=SIZE) for i in range(4)]
    task = SAR_DETECTION
    pipeline = make_pipeline(scenes, global_batch_size=2, keys=task.keys(("sar",)),
                             crop_size=32, check_contract=False, map_fn=task.prepare,
                             read_threads=1)
    batch = next(iter(pipeline))
    assert batch["sar"].shape == (2, 32, 32, 1) and "optical" not in batch
    assert batch["boxes"].shape == (2, task.max_objects, 4)
    assert batch["target_heatmap"].shape == (2, 8, 8, 1)
    valid = batch["box_valid"]
    assert (batch["boxes"][valid] <= 32).all() and (batch["boxes"][valid] >= 0).all()


def test_the_detection_model_trains_its_head_and_encoder():
    task = BUILDING_DETECTION
    model = TaskModel(model_config(), task, HeadConfig(channels=16, norm_groups=4),
                      rngs=nnx.Rngs(0))
    model.eval()
    examples = [task.prepare(render_pair(0, i, size=SIZE)) for i in (0, 1)]
    batch = {key: jnp.asarray(np.stack([e[key] for e in examples])) for key in examples[0]
             if key in task.keys(task.roles) or key.startswith(("target_", "box_"))}
    assert int(batch["target_mask"].sum()) > 0
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def loss_and_grads(params, batch):
        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(task.model_inputs(batch, task.roles))
            return task.loss(logits, batch), logits
        return jax.value_and_grad(loss, has_aux=True)(params)

    (value, logits), grads = loss_and_grads(params, batch)
    assert logits.shape == (2, SIZE // 4, SIZE // 4, 1 + 4) and logits.dtype == jnp.float32
    assert math.isfinite(float(value)) and float(value) > 0
    for part in ("head", "encoder"):
        assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[part])) > 0, part
    assert set(task.split(logits)) == {"heatmap", "size", "offset"}
    stats = label_statistics(task, examples)
    assert stats.baseline(task) == ()


# -- whole-scene evaluation -------------------------------------------------------------------
SCENE, WINDOW, OVERLAP = 96, 64, 32


def coordinate_scene(boxes, classes) -> dict:
    """A scene whose optical image holds each pixel's (x, y): a predict function reads its
    window's origin from it."""
    ys, xs = np.mgrid[:SCENE, :SCENE]
    optical = np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)
    return {"optical": optical, "sar": np.zeros((SCENE, SCENE, 1), np.float32),
            "valid": np.ones((SCENE, SCENE), bool),
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "box_classes": np.asarray(classes, np.int32)}


def truth_predictor(task: DetectionTask, scenes):
    """Windows -> the packed head output that encodes the ground truth of their scene
    (``predict.scene``, its index in ``scenes``), cut to each window: peaks (logit 10) at the
    centre cells, -10 elsewhere, the true size and offset there."""
    def predict(inputs):
        out = []
        for optical in np.asarray(inputs["optical"]):
            ox, oy = int(optical[0, 0, 0]), int(optical[0, 0, 1])
            scene = scenes[predict.scene]  # the scene being evaluated (set by the caller)
            boxes, classes = task.task_boxes(scene["boxes"], scene["box_classes"])
            shifted = np.clip(boxes - [ox, oy, ox, oy], 0, WINDOW)
            t = encode_targets(shifted, classes, None, (WINDOW, WINDOW), task.num_outputs,
                               stride=task.stride)
            h = WINDOW // task.stride
            maps = np.zeros((h * h, 4), np.float32)
            maps[t["indices"][t["mask"]], :2] = t["size"][t["mask"]]
            maps[t["indices"][t["mask"]], 2:] = t["offset"][t["mask"]]
            heat = np.where(t["heatmap"] >= 1, 10.0, -10.0)
            out.append(np.concatenate([heat, maps.reshape(h, h, 4)], -1))
        return np.stack(out)

    predict.scene = 0
    return predict


def test_the_truth_as_prediction_scores_one_and_no_box_zero():
    task = BUILDING_DETECTION
    # Boxes at most 32 px (the overlap): each lies whole in some window; some cross the inner
    # window edges (32, 64), so merging must drop their cut copies. Small objects: not GT.
    scenes = [coordinate_scene([[4, 6, 24, 30], [50, 10, 78, 30], [30, 60, 48, 90],
                                [70, 70, 90, 94], [10, 70, 14, 74]],
                               [BOX_BUILDING] * 4 + [BOX_SMALL_OBJECT]),
              coordinate_scene([[58, 40, 70, 52], [2, 2, 34, 20], [40, 80, 60, 96]],
                               [BOX_BUILDING, BOX_BUILDING, BOX_SMALL_OBJECT])]
    assert len(window_origins(SCENE, SCENE, WINDOW, OVERLAP)) == 4
    predict = truth_predictor(task, scenes)

    def streamed():
        for i, scene in enumerate(scenes):
            predict.scene = i
            yield scene

    result = evaluate_detection(task, predict, streamed(), {"both": ("optical", "sar")},
                                window=WINDOW, overlap=OVERLAP, batch_windows=3, panels=2)
    metrics = result.metrics["both"]
    assert metrics["map"] == pytest.approx(1.0) and metrics["ap50"] == pytest.approx(1.0)
    assert metrics["ar100"] == pytest.approx(1.0)
    assert result.baseline["map"] == 0.0 and result.baseline["ap50"] == 0.0
    assert result.scenes == 2
    panel = result.panels["both"]
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    assert panel.shape[0] == 2 * SCENE + 4 and panel.shape[1] == 2 * SCENE + 4
    assert ((panel == [0, 255, 0]).all(-1)).any()  # the truth (red) lies under its boxes


def test_scenes_without_ground_truth_give_undefined_not_an_error():
    task = BUILDING_DETECTION
    scenes = [coordinate_scene([[10, 70, 14, 74]], [BOX_SMALL_OBJECT])]
    predict = truth_predictor(task, scenes)
    result = evaluate_detection(task, predict, iter(scenes), {"both": ("optical", "sar")},
                                window=WINDOW, overlap=OVERLAP, batch_windows=4)
    assert math.isnan(result.metrics["both"]["map"]) and math.isnan(result.baseline["map"])


# -- configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sar_detection", "building_detection"])
def test_detection_configs(name):
    config = finetune_configs.get_config(f"{name},tiny")
    exp = FinetuneExperiment.from_config(config)
    modalities = ("sar",) if name == "sar_detection" else ("optical", "sar")
    assert exp.task.modalities == modalities
    assert tuple(exp.eval.modalities) == (("sar",) if name == "sar_detection" else ("both",))
    assert exp.task.class_weighting == "none" and exp.task.modality_dropout == 0
    assert FinetuneExperiment.from_config(finetune_configs.get_config(f"{name},tiny,frozen"))
    with pytest.raises(ConfigError, match="no detection form"):
        FinetuneExperiment.from_config(finetune_configs.get_config(f"{name},tiny,linear"))
    config.task.class_weighting = "median_frequency"
    with pytest.raises(ConfigError, match="class_weighting"):
        FinetuneExperiment.from_config(config)


# -- slow: a whole run ------------------------------------------------------------------------
DETECTION_STEPS = 300
DETECTION_LEARNING_RATE = 2e-3


# Measured on the 2-core CPU (python -m mars_jax.main --mode=finetune
# --config=configs/finetune.py:building_detection,tiny --config.total_steps=300
# --config.optim.learning_rate=2e-3): mAP 0.094, AP50 0.360, AR100 0.217 against the no-box
# baseline's 0; 2 min 37 s of training.
@pytest.mark.slow
def test_a_tiny_building_detection_run_beats_no_box(tmp_path):
    config = whole_finetune_config("building_detection,tiny", DETECTION_STEPS,
                                   DETECTION_LEARNING_RATE)
    start = time.perf_counter()
    record = finetune(config, tmp_path)
    seconds = time.perf_counter() - start
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == record
    model, base = record["metrics"]["both"], record["baseline"]["metrics"]
    print(f"building_detection {DETECTION_STEPS} steps in {seconds:.0f} s: map "
          f"{model['map']:.4f} ap50 {model['ap50']:.4f} ar100 {model['ar100']:.4f}; "
          f"baseline map {base['map']} ap50 {base['ap50']}")
    assert record["headline"] == "map" and base["map"] == 0.0
    assert model["map"] > base["map"] and model["ap50"] > base["ap50"]
    assert (tmp_path / "images").is_dir()
