"""SAR -> optical translation: dm-pix's PSNR / SSIM (checked against scikit-image), their
streamed accumulator, the task's decoder, loss, example checks, configs, streamed
evaluation and panels, and (slow) a tiny fine-tune that beats the mean-colour baseline."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from skimage.metrics import structural_similarity

from configs import finetune as finetune_configs
from mars_jax.data.synth import render_pair
from mars_jax.metrics import ImageQualitySums, accumulator_from_state_dict, batch_image_sums
from mars_jax.models.heads import HeadConfig
from mars_jax.tasks import ExampleError, get_task
from mars_jax.tasks.model import TaskModel
from mars_jax.train.evaluate import baseline_value, evaluate
from mars_jax.train.finetune_config import FinetuneExperiment
from mars_jax.train.task_images import prediction_panel
from mars_jax.typed_config import ConfigError
from tests.helpers import whole_finetune_config

SIZE = 64
TASK = get_task("translation")


def images(seed: int, shape=(2, SIZE, SIZE, 3), low=0.0, high=1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def smooth(seed: int, shape=(1, SIZE, SIZE, 3)) -> np.ndarray:
    """A structured image in [0.2, 0.8] (blurred noise), so SSIM is not trivially ~0."""
    x = images(seed, shape)
    for axis in (1, 2):
        x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
    x = (x - x.min()) / (x.max() - x.min())
    return (0.2 + 0.6 * x).astype(np.float32)


# -- PSNR / SSIM -----------------------------------------------------------------------------
def test_identical_images_have_infinite_psnr_and_ssim_one():
    x = smooth(0, (2, SIZE, SIZE, 3))
    sums = batch_image_sums(jnp.asarray(x), jnp.asarray(x))
    assert int(sums["images"]) == 2 and int(sums["ssim_images"]) == 2
    assert float(sums["psnr"]) == np.inf  # dm-pix: -10 log10(0)
    assert float(sums["ssim"]) / 2 == pytest.approx(1.0, abs=1e-6)
    assert float(sums["abs_error"]) == 0.0 and int(sums["values"]) == 2 * SIZE * SIZE * 3
    metric = ImageQualitySums()
    metric.update(sums)
    result = metric.compute()
    assert result["psnr"] == np.inf and result["l1"] == 0.0 and result["count"] == 2


def test_a_constant_offset_of_a_tenth_is_20_db():
    x = images(1, low=0.2, high=0.8)
    sums = batch_image_sums(jnp.asarray(x + 0.1), jnp.asarray(x))
    assert float(sums["psnr"]) / 2 == pytest.approx(20.0, abs=1e-4)  # MSE = 0.01
    assert float(sums["abs_error"]) / int(sums["values"]) == pytest.approx(0.1, abs=1e-6)


def test_ssim_matches_scikit_image():
    clean = smooth(2)
    noisy = np.clip(clean + np.random.default_rng(3).normal(0, 0.05, clean.shape), 0, 1)
    noisy = noisy.astype(np.float32)
    sums = batch_image_sums(jnp.asarray(noisy), jnp.asarray(clean))
    reference = structural_similarity(
        noisy[0].astype(np.float64), clean[0].astype(np.float64), data_range=1,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1)
    assert 0.2 < reference < 0.99  # a real degradation, not a trivial value
    assert float(sums["ssim"]) == pytest.approx(reference, abs=1e-3)


# -- the streamed accumulator ------------------------------------------------------------------
def test_two_batches_add_up_to_one_and_the_state_round_trips():
    pred, target = images(4, (4, 24, 24, 3)), images(5, (4, 24, 24, 3))
    whole = ImageQualitySums()
    whole.update(batch_image_sums(jnp.asarray(pred), jnp.asarray(target)))
    parts = ImageQualitySums()
    for half in (slice(0, 1), slice(1, 4)):
        parts.update(batch_image_sums(jnp.asarray(pred[half]), jnp.asarray(target[half])))
    for key, value in whole.compute().items():
        assert parts.compute()[key] == pytest.approx(value, rel=1e-6), key
    state = json.loads(json.dumps(parts.state_dict()))  # JSON-ready
    again = accumulator_from_state_dict(state)
    assert isinstance(again, ImageQualitySums) and again.compute() == parts.compute()
    assert ImageQualitySums.from_state_dict(state).state_dict() == parts.state_dict()
    assert parts.merge(again).compute()["count"] == 8
    with pytest.raises(ValueError, match=r"lack \['ssim'"):
        ImageQualitySums().update({k: v for k, v in state.items() if k != "ssim"})


def test_the_valid_mask_leaves_out_pixels_and_empty_images():
    pred, target = images(6, (2, 32, 32, 3)), images(7, (2, 32, 32, 3))
    valid = np.ones((2, 32, 32), bool)
    valid[0, :, :8] = False  # image 0: partly valid
    valid[1] = False  # image 1: not counted at all
    sums = batch_image_sums(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(valid))
    assert int(sums["images"]) == 1 and int(sums["ssim_images"]) == 1
    err = (pred[0] - target[0])[valid[0]].astype(np.float64)
    assert float(sums["psnr"]) == pytest.approx(-10 * np.log10(np.mean(err**2)), abs=1e-4)
    assert int(sums["values"]) == err.size
    assert float(sums["abs_error"]) == pytest.approx(np.abs(err).sum(), rel=1e-5)
    # SSIM over the windows lying wholly on valid pixels (columns 8..31): that crop's SSIM.
    crop = batch_image_sums(jnp.asarray(pred[:1, :, 8:]), jnp.asarray(target[:1, :, 8:]))
    assert float(sums["ssim"]) == pytest.approx(float(crop["ssim"]), abs=1e-5)
    nothing = ImageQualitySums()
    nothing.update(batch_image_sums(jnp.asarray(pred[1:]), jnp.asarray(target[1:]),
                                    jnp.asarray(valid[1:])))
    result = nothing.compute()
    assert result["count"] == 0 and np.isnan(result["psnr"]) and np.isnan(result["ssim"])


# -- the task ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def example():
    return render_pair(0, 0, size=SIZE)


@pytest.fixture(scope="module")
def forward():
    """A tiny translation model's jitted forward pass, and its head."""
    from tests.test_tasks import model_config

    model = TaskModel(model_config(), TASK, HeadConfig(channels=16, norm_groups=4),
                      rngs=nnx.Rngs(0))
    model.eval()
    colour = (0.3, 0.5, 0.7)
    model.head.start_at(colour)
    graphdef, state = nnx.split(model)
    return jax.jit(lambda inputs: nnx.merge(graphdef, state)(inputs)), model, colour


def test_the_task_reads_sar_only_and_predicts_three_channels():
    assert TASK.kind == "translation" and TASK.num_outputs == 3 and TASK.headline == "psnr"
    assert TASK.head_kind == "regression" and TASK.roles == ("sar",)
    assert TASK.keys(("sar",)) == ("sar", "optical", "valid")
    batch = {"sar": np.zeros((1, 8, 8, 1)), "optical": np.zeros((1, 8, 8, 3), np.uint8),
             "valid": np.ones((1, 8, 8), bool)}
    assert set(TASK.model_inputs(batch, ("sar",))) == {"sar", "valid"}
    labels = TASK.labels({"optical": jnp.full((1, 2, 2, 3), 255, jnp.uint8)})
    assert labels.dtype == jnp.float32 and float(labels.max()) == 1.0


def test_the_decoder_turns_sar_into_an_image_in_0_1(forward, example):
    run, model, colour = forward
    assert type(model.head).__name__ == "RegressionHead" and model.head.activation == "sigmoid"
    sar = jnp.asarray(np.stack([example["sar"]] * 2))
    assert sar.shape == (2, SIZE, SIZE, 1)
    out = run({"sar": sar, "valid": jnp.ones((2, SIZE, SIZE), bool)})
    assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # start_at(colour): the head starts out near the colour it is given, per channel.
    np.testing.assert_allclose(np.asarray(out).mean(axis=(0, 1, 2)), colour, atol=0.05)


def test_the_loss_is_masked_l1_plus_the_ssim_term():
    pred = images(8, (2, 32, 32, 3))
    optical = (images(9, (2, 32, 32, 3)) * 255).round().astype(np.uint8)
    valid = np.ones((2, 32, 32), bool)
    valid[1, 20:] = False
    batch = {"optical": jnp.asarray(optical), "valid": jnp.asarray(valid)}
    target = optical.astype(np.float64) / 255
    reference = np.abs(pred.astype(np.float64) - target)[valid].mean()
    l1 = float(TASK.loss(jnp.asarray(pred), batch))
    assert l1 == pytest.approx(reference, rel=1e-5)
    # SSIM term, with every pixel valid: weight * (1 - mean SSIM), SSIM from scikit-image.
    batch["valid"] = jnp.ones((2, 32, 32), bool)
    plain = float(TASK.loss(jnp.asarray(pred), batch))
    with_ssim = float(TASK.loss(jnp.asarray(pred), batch, ssim_weight=0.5))
    ssim = np.mean([structural_similarity(
        pred[i].astype(np.float64), target[i], data_range=1, gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False, channel_axis=-1) for i in range(2)])
    assert with_ssim - plain == pytest.approx(0.5 * (1 - ssim), abs=1e-3)
    grads = jax.grad(lambda p: TASK.loss(p, batch, ssim_weight=0.5))(jnp.asarray(pred))
    assert np.isfinite(np.asarray(grads)).all() and float(jnp.abs(grads).sum()) > 0
    with pytest.raises(ValueError, match="0 for every kind but translation"):
        get_task("roads").loss(jnp.zeros((1, 4, 4, 2)), {"road": jnp.zeros((1, 4, 4), bool),
                               "valid": jnp.ones((1, 4, 4), bool)}, ssim_weight=0.1)


def test_the_baseline_is_the_training_mean_colour():
    scenes = [render_pair(5, i, 32) for i in range(3)]
    colour = baseline_value(TASK, scenes)
    pixels = np.concatenate([s["optical"][s["valid"]] for s in scenes]) / 255.0
    np.testing.assert_allclose(colour, pixels.mean(0), rtol=1e-6)
    trivial = TASK.trivial_prediction(np.stack([s["optical"] for s in scenes]),
                                      np.stack([s["valid"] for s in scenes]))
    np.testing.assert_allclose(trivial, colour, rtol=1e-6)
    assert len(trivial) == 3 and all(isinstance(v, float) for v in trivial)


def test_examples_are_checked(example):
    TASK.check_example(example, ("sar",))
    no_sar = {k: v for k, v in example.items() if k != "sar"}
    with pytest.raises(ExampleError, match=r"lacks \['sar'\] for task 'translation'") as error:
        TASK.check_example(no_sar, ("sar",), where="training example 0 of X")
    assert "modalities=optical" not in str(error.value)  # translation cannot drop SAR
    with pytest.raises(ExampleError, match=r"must be a uint8 \[H, W, 3\] optical image"):
        TASK.check_example(example | {"optical": example["optical"] / 255.0}, ("sar",))


# -- configs ---------------------------------------------------------------------------------
def test_the_translation_config_reads_sar_and_refuses_misuse():
    exp = FinetuneExperiment.from_config(finetune_configs.get_config("translation,tiny"))
    assert exp.task.name == "translation" and exp.task.modalities == ("sar",)
    assert exp.eval.modalities == ("sar",) and exp.head.activation == "sigmoid"
    assert exp.task.ssim_weight == 0.0 and exp.task.class_weighting == "none"
    config = finetune_configs.get_config("translation,tiny")
    config.task.ssim_weight = 0.2
    assert FinetuneExperiment.from_config(config).task.ssim_weight == 0.2
    config.task.ssim_weight = -0.1
    with pytest.raises(ConfigError, match="ssim_weight must be >= 0"):
        FinetuneExperiment.from_config(config)
    config = finetune_configs.get_config("roads,tiny")
    config.task.ssim_weight = 0.1
    with pytest.raises(ConfigError, match=r"ssim_weight must be 0 for task 'roads'.*"
                                          r"'translation' only"):
        FinetuneExperiment.from_config(config)
    config = finetune_configs.get_config("translation,tiny")
    config.task.modalities = ("optical", "sar")
    with pytest.raises(ConfigError, match=r"modalities must be among \['sar'\]"):
        FinetuneExperiment.from_config(config)
    config = finetune_configs.get_config("translation,tiny")
    config.head.activation = "softplus"
    with pytest.raises(ConfigError, match="activation must be 'sigmoid'"):
        FinetuneExperiment.from_config(config)
    with pytest.raises(ConfigError, match="'linear' cannot decode an image"):
        FinetuneExperiment.from_config(finetune_configs.get_config("translation,tiny,linear"))


# -- streamed evaluation and panels ------------------------------------------------------------
def _pointwise_translate(inputs):
    """A context-free stand-in for a model: each pixel's colour from its own SAR value."""
    sar = np.asarray(inputs["sar"], np.float32)[..., :1]
    return 1 / (1 + np.exp(-sar * np.array([0.5, -0.3, 0.2], np.float32)))


def test_streamed_evaluation_equals_whole_scene_scores_and_draws_panels():
    scenes = [render_pair(6, i, 48) for i in range(2)]
    colour = baseline_value(TASK, [render_pair(5, i, 48) for i in range(2)])
    sets = {"sar": ("sar",)}
    whole = evaluate(TASK, _pointwise_translate, scenes, sets, window=48, overlap=0,
                     batch_windows=1, baseline=colour, panels=2)
    tiled = evaluate(TASK, _pointwise_translate, scenes, sets, window=32, overlap=8,
                     batch_windows=3, baseline=colour)
    assert set(whole.metrics["sar"]) == {"psnr", "ssim", "l1", "count"}
    for key, value in whole.metrics["sar"].items():
        assert tiled.metrics["sar"][key] == pytest.approx(value, rel=1e-5), key
    truth = np.stack([s["optical"] for s in scenes]) / 255.0
    pred = np.concatenate([_pointwise_translate({"sar": s["sar"][None]}) for s in scenes])
    assert whole.metrics["sar"]["l1"] == pytest.approx(np.abs(pred - truth).mean(), rel=1e-5)
    assert whole.baseline["l1"] == pytest.approx(np.abs(np.asarray(colour) - truth).mean(),
                                                 rel=1e-5)
    panel = whole.panels["sar"]  # SAR | predicted optical | true optical, one row a scene
    assert panel.dtype == np.uint8 and panel.shape[2] == 3
    assert panel.shape[1] > 3 * 48 and panel.shape[1] < 4 * 48
    assert panel.shape[0] > 2 * 48 and panel.shape[0] < 3 * 48


def test_the_panel_shows_sar_prediction_and_truth():
    scene = render_pair(6, 0, 32)
    prediction = np.full((1, 32, 32, 3), 0.5, np.float32)
    mask = np.ones((1, 32, 32), bool)
    mask[0, :4] = False
    panel = prediction_panel(TASK, {"sar": scene["sar"][None]}, prediction,
                             scene["optical"][None], mask)
    assert panel.shape == (32, 3 * 32 + 2 * 2, 3)
    np.testing.assert_array_equal(panel[:, 34:66], 128)  # 0.5 -> 128
    np.testing.assert_array_equal(panel[4:, 68:], scene["optical"][4:])
    assert (panel[:4, 68:] == 0).all()  # unscored pixels of the truth black
    with pytest.raises(ValueError, match=r"expected \[B, H, W, 3\]"):
        prediction_panel(TASK, {"sar": scene["sar"][None]}, prediction[..., 0],
                         scene["optical"][None])


# -- slow: a whole run ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_translation_finetune_beats_the_mean_colour_on_held_out_scenes(tmp_path):
    from mars_jax.train.finetune import RESULTS_FILE, finetune

    config = whole_finetune_config("translation,tiny", 150)
    record = finetune(config, tmp_path)
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == record
    assert record["headline"] == "psnr" and set(record["metrics"]) == {"sar"}
    model, base = record["metrics"]["sar"], record["baseline"]["metrics"]
    print(f"\ntranslation held-out: model {model}, baseline {base}, "
          f"colour {record['baseline']['prediction']}")
    assert len(record["baseline"]["prediction"]) == 3
    assert model["l1"] < base["l1"], (model, base)
    assert model["psnr"] > base["psnr"], (model, base)
    assert (tmp_path / "images").is_dir()
