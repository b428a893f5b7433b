"""Sliding-window prediction: window starts, exactness for per-pixel predictors, padding, fixed
call shapes, and the blend against an explicit weighted-average loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.tasks.sliding import blend_weights, sliding_window_predict, window_starts

MIX = np.random.default_rng(0).normal(size=(5, 5)).astype(np.float32)


@pytest.mark.parametrize("length, window, overlap, want", [
    (10, 4, 0, [0, 4, 6]),
    (8, 4, 0, [0, 4]),
    (10, 4, 2, [0, 2, 4, 6]),
    (11, 4, 2, [0, 2, 4, 6, 7]),
    (5, 4, 3, [0, 1]),
    (4, 4, 0, [0]),
    (3, 4, 1, [0]),
    (1, 1, 0, [0]),
    (3, 1, 0, [0, 1, 2]),
])
def test_window_starts(length, window, overlap, want):
    assert window_starts(length, window, overlap) == want


def test_window_starts_cover_every_pixel():
    for length in range(1, 40):
        for window in range(1, 12):
            for overlap in range(window):
                starts = window_starts(length, window, overlap)
                assert starts[0] == 0 and starts == sorted(set(starts))
                assert max(length, window) == starts[-1] + window
                assert np.all(np.diff(starts) <= window - overlap)


@pytest.mark.parametrize("length, window, overlap", [(10, 0, 0), (10, 4, 4), (10, 4, -1),
                                                     (0, 4, 0)])
def test_window_starts_bad_arguments(length, window, overlap):
    with pytest.raises(ValueError):
        window_starts(length, window, overlap)


def make_scene(batch=2, height=23, width=17, seed=1):
    rng = np.random.default_rng(seed)
    return {
        "optical": rng.integers(0, 256, size=(batch, height, width, 3)).astype(np.uint8),
        "sar": rng.normal(-15, 5, size=(batch, height, width, 1)).astype(np.float32),
        "valid": rng.uniform(size=(batch, height, width)) < 0.9,
    }


def per_pixel(inputs):
    """A nonlinear per-pixel predictor: K = 5 logits from optical, SAR and validity."""
    x = jnp.concatenate([jnp.asarray(inputs["optical"], jnp.float32) / 255,
                         jnp.asarray(inputs["sar"]) / 10,
                         jnp.asarray(inputs["valid"], jnp.float32)[..., None]], axis=-1)
    return jnp.tanh(x @ jnp.asarray(MIX))


def test_one_window_covering_the_scene_is_exact():
    scene = make_scene(height=16, width=16)
    got = sliding_window_predict(per_pixel, scene, window=16, overlap=4, batch_windows=3)
    np.testing.assert_array_equal(got, np.asarray(per_pixel(scene)))
    assert got.dtype == np.float32


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
@pytest.mark.parametrize("overlap", [0, 3, 7])
@pytest.mark.parametrize("batch_windows", [1, 4])
def test_per_pixel_predict_equals_the_whole_scene(weighting, overlap, batch_windows):
    scene = make_scene(height=23, width=17)  # not a multiple of the window or the stride
    got = sliding_window_predict(per_pixel, scene, window=8, overlap=overlap,
                                 batch_windows=batch_windows, weighting=weighting)
    assert got.shape == (2, 23, 17, 5)
    np.testing.assert_allclose(got, np.asarray(per_pixel(scene)), rtol=1e-5, atol=1e-6)


def test_uniform_without_overlap_on_an_exact_grid_is_exact():
    scene = make_scene(height=24, width=16)
    got = sliding_window_predict(per_pixel, scene, window=8, overlap=0)
    np.testing.assert_array_equal(got, np.asarray(per_pixel(scene)))


def coordinates(batch, height, width):
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    grid = np.stack([rows, cols], axis=-1).astype(np.float32)
    return np.broadcast_to(grid, (batch, height, width, 2)).copy()


def window_origin(inputs):
    """Not translation-equivariant: every pixel gets its window's (row, col) origin."""
    coords = jnp.asarray(inputs["coords"])
    return jnp.broadcast_to(coords[:, :1, :1, :], coords.shape)


def reference_blend(height, width, window, overlap, weighting):
    """The weighted mean of the origins of the windows covering each pixel, one at a time."""
    stride = window - overlap
    rows = sorted({min(r, height - window) for r in range(0, height, stride)})
    cols = sorted({min(c, width - window) for c in range(0, width, stride)})
    sigma, centre = window / 8, (window - 1) / 2
    out = np.zeros((height, width, 2))
    for i in range(height):
        for j in range(width):
            total, norm = np.zeros(2), 0.0
            for r in rows:
                for c in cols:
                    if r <= i < r + window and c <= j < c + window:
                        a = 1.0 if weighting == "uniform" else math.exp(
                            -((i - r - centre) ** 2 + (j - c - centre) ** 2) / (2 * sigma**2))
                        total += a * np.array([r, c])
                        norm += a
            out[i, j] = total / norm
    return out


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
@pytest.mark.parametrize("overlap", [0, 4])
def test_blend_matches_an_explicit_weighted_mean(weighting, overlap):
    height, width, window = 21, 14, 8
    scene = {"coords": coordinates(2, height, width)}
    got = sliding_window_predict(window_origin, scene, window=window, overlap=overlap,
                                 weighting=weighting, batch_windows=3)
    want = reference_blend(height, width, window, overlap, weighting)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got[0], got[1])


def test_gaussian_weights():
    weights = blend_weights(16, "gaussian")
    assert weights.shape == (16, 16) and weights.dtype == np.float32
    np.testing.assert_allclose(weights, weights.T)
    np.testing.assert_allclose(weights, weights[::-1, ::-1])
    np.testing.assert_allclose(weights.max(), 1.0, rtol=1e-6)
    # sigma = window / 8 = 2; the centre (7.5, 7.5) falls between pixels, the largest
    # weights are half a pixel from it in each axis.
    corner, peak = 2 * 7.5**2, 2 * 0.5**2
    np.testing.assert_allclose(weights[0, 0], math.exp(-(corner - peak) / (2 * 2.0**2)),
                               rtol=1e-4)
    np.testing.assert_array_equal(blend_weights(5, "uniform"), np.ones((5, 5), np.float32))
    with pytest.raises(ValueError, match="weighting"):
        blend_weights(4, "cosine")


class Recorder:
    """A per-pixel predictor that records what every call got."""

    def __init__(self, predict=per_pixel):
        self.predict, self.calls = predict, []

    def __call__(self, inputs):
        self.calls.append({key: value for key, value in inputs.items()})
        return self.predict(inputs)


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
def test_scene_smaller_than_the_window_is_padded(weighting):
    scene = make_scene(height=5, width=7)
    recorder = Recorder()
    got = sliding_window_predict(recorder, scene, window=8, overlap=2, weighting=weighting,
                                 pad_values={"sar": -50.0, "optical": 7})
    assert got.shape == (2, 5, 7, 5)
    np.testing.assert_allclose(got, np.asarray(per_pixel(scene)), rtol=1e-5, atol=1e-6)
    (call,) = recorder.calls
    assert call["sar"].shape == (8 * 2, 8, 8, 1)
    np.testing.assert_array_equal(call["sar"][:2, :5, :7], scene["sar"])
    assert np.all(call["sar"][:, 5:] == -50.0) and np.all(call["sar"][:, :, 7:] == -50.0)
    assert np.all(call["optical"][:, 5:] == 7) and call["optical"].dtype == np.uint8
    assert call["valid"].dtype == bool and not call["valid"][:, 5:].any()
    assert not call["valid"][:, :, 7:].any()


def test_scene_smaller_than_the_window_in_one_axis():
    scene = make_scene(height=5, width=30)
    got = sliding_window_predict(per_pixel, scene, window=8, overlap=3, weighting="gaussian")
    assert got.shape == (2, 5, 30, 5)
    np.testing.assert_allclose(got, np.asarray(per_pixel(scene)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_windows", [1, 3, 4, 12, 20])
def test_calls_have_one_shape_and_cover_the_windows(batch_windows):
    scene = make_scene(batch=2, height=23, width=17)
    recorder = Recorder()
    sliding_window_predict(recorder, scene, window=8, overlap=2, batch_windows=batch_windows)
    windows = len(window_starts(23, 8, 2)) * len(window_starts(17, 8, 2))
    assert windows == 12
    assert len(recorder.calls) == math.ceil(windows / batch_windows)
    for call in recorder.calls:
        assert call["optical"].shape == (batch_windows * 2, 8, 8, 3)
        assert call["sar"].shape == (batch_windows * 2, 8, 8, 1)
        assert call["valid"].shape == (batch_windows * 2, 8, 8)
    # Window-major stacking: rows 2w and 2w + 1 are window w of examples 0 and 1.
    first = recorder.calls[0]["sar"]
    np.testing.assert_array_equal(first[0], scene["sar"][0, :8, :8])
    np.testing.assert_array_equal(first[1], scene["sar"][1, :8, :8])


def test_jitted_predict_compiles_once_across_scene_sizes():
    traces = []

    @jax.jit
    def predict(inputs):
        traces.append(1)
        return per_pixel(inputs)

    for height, width in [(23, 17), (9, 40), (5, 5), (16, 16)]:
        scene = make_scene(height=height, width=width)
        got = sliding_window_predict(predict, scene, window=8, overlap=2, batch_windows=4)
        np.testing.assert_allclose(got, np.asarray(per_pixel(scene)), rtol=1e-5, atol=1e-6)
    assert len(traces) == 1


def test_non_spatial_inputs_pass_through_unchanged():
    scene = make_scene(height=12, width=12)
    gain = np.float32(1.5)
    task = "segmentation"
    scene.update(gain=gain, task=task, offsets=jnp.asarray([0.25, -0.5]))

    def predict(inputs):
        assert inputs["task"] == "segmentation"
        return per_pixel(inputs) * inputs["gain"] + inputs["offsets"][0]

    recorder = Recorder(predict)
    got = sliding_window_predict(recorder, scene, window=8, overlap=4, batch_windows=2)
    np.testing.assert_allclose(got, np.asarray(per_pixel(scene)) * 1.5 + 0.25,
                               rtol=1e-5, atol=1e-6)
    assert len(recorder.calls) == 2
    for call in recorder.calls:
        assert call["gain"] is gain and call["task"] is task
        assert call["offsets"] is scene["offsets"]


def test_spatial_keys_name_the_spatial_inputs():
    scene = make_scene(height=12, width=12)
    scene["boxes"] = np.zeros((2, 3, 4), np.float32)  # 3 axes, not spatial
    with pytest.raises(ValueError, match="spatial_keys"):
        sliding_window_predict(per_pixel, scene, window=8, overlap=2)
    recorder = Recorder()
    got = sliding_window_predict(recorder, scene, window=8, overlap=2,
                                 spatial_keys=["optical", "sar", "valid"])
    np.testing.assert_allclose(got, np.asarray(per_pixel(scene)), rtol=1e-5, atol=1e-6)
    assert all(call["boxes"] is scene["boxes"] for call in recorder.calls)


@pytest.mark.parametrize("channel", [True, False])
def test_regression_outputs(channel):
    scene = make_scene(height=19, width=11)

    def height_map(inputs):
        out = per_pixel(inputs)[..., :1] * 30
        return out if channel else out[..., 0]

    got = sliding_window_predict(height_map, scene, window=8, overlap=3, weighting="gaussian")
    assert got.shape == ((2, 19, 11, 1) if channel else (2, 19, 11))
    np.testing.assert_allclose(got, np.asarray(height_map(scene)), rtol=1e-5, atol=1e-5)


def test_bf16_and_jax_inputs():
    scene = {key: jnp.asarray(value) for key, value in make_scene(height=10, width=13).items()}
    predict = lambda inputs: per_pixel(inputs).astype(jnp.bfloat16)
    got = sliding_window_predict(predict, scene, window=8, overlap=2)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(predict(scene), np.float32), rtol=1e-2,
                               atol=1e-2)


def test_progress_bar(capsys):
    sliding_window_predict(per_pixel, make_scene(height=12, width=12), window=8, overlap=2,
                           progress=True)
    assert "window" in capsys.readouterr().err


def test_bad_arguments():
    scene = make_scene(height=12, width=12)
    with pytest.raises(ValueError, match="pad_values"):
        sliding_window_predict(per_pixel, scene, window=8, overlap=2, pad_values={"dem": 0})
    with pytest.raises(ValueError, match="share"):
        sliding_window_predict(per_pixel, {**scene, "dem": np.zeros((2, 11, 12, 1))},
                               window=8, overlap=2)
    with pytest.raises(ValueError, match="no spatial input"):
        sliding_window_predict(per_pixel, {"gsd": np.ones(2)}, window=8, overlap=2)
    with pytest.raises(ValueError, match="batch_windows"):
        sliding_window_predict(per_pixel, scene, window=8, overlap=2, batch_windows=0)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_predict(per_pixel, scene, window=8, overlap=8)
    with pytest.raises(ValueError, match="predict must return"):
        sliding_window_predict(lambda inputs: per_pixel(inputs)[:, ::2, ::2], scene,
                               window=8, overlap=2)
