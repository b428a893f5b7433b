"""Binary metrics against scikit-learn (zero divisions included), regression metrics against an
explicit float64 loop over pixels (empty mask included), MetricSet and state round trips."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from mars_jax import parallel
from mars_jax.metrics import (
    DELTA_THRESHOLDS,
    BinaryCounts,
    ConfusionMatrix,
    MetricSet,
    RegressionSums,
    accumulator_from_state_dict,
    batch_confusion,
    batch_counts,
    batch_sums,
)

SHAPE = (8, 5, 6)


def masks(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    target = rng.random(shape) < 0.3
    pred = np.where(rng.random(shape) < 0.7, target, rng.random(shape) < 0.3)
    return pred, target, rng.random(shape) > 0.25


def sklearn_binary(pred, target):
    """BinaryCounts.compute() from scikit-learn; NaN for 0 / 0 as in the module's rule."""
    kw = dict(zero_division=np.nan)
    # jaccard_score's zero_division takes 0 or 1 only; 0 / 0 means no positive anywhere.
    iou = (skm.jaccard_score(target, pred, zero_division=0) if (pred | target).any()
           else np.nan)
    return {"precision": skm.precision_score(target, pred, **kw),
            "recall": skm.recall_score(target, pred, **kw),
            "f1": skm.f1_score(target, pred, **kw), "iou": iou,
            "oa": skm.accuracy_score(target, pred) if target.size else np.nan}


def binary_metrics(pred, target, valid=None):
    acc = BinaryCounts()
    acc.update(batch_counts(pred, target, valid=valid))
    return acc


def assert_dict_close(got, want, rtol=1e-12):
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=0, err_msg=key)


@pytest.mark.parametrize("use_valid", [False, True], ids=["no-valid", "valid"])
def test_binary_equals_sklearn(use_valid):
    pred, target, valid = masks()
    acc = binary_metrics(pred, target, valid if use_valid else None)
    p, t = (pred[valid], target[valid]) if use_valid else (pred.ravel(), target.ravel())
    tn, fp, fn, tp = skm.confusion_matrix(t, p, labels=[False, True]).ravel()
    np.testing.assert_array_equal(acc.counts, [tp, fp, fn, tn])
    assert_dict_close(acc.compute(), sklearn_binary(p, t))


@pytest.mark.parametrize("case, want", [
    ("no-positive-anywhere", dict(precision=math.nan, recall=math.nan, f1=math.nan,
                                  iou=math.nan, oa=1.0)),
    ("none-predicted", dict(precision=math.nan, recall=0.0, f1=0.0, iou=0.0)),
    ("none-in-target", dict(precision=0.0, recall=math.nan, f1=0.0, iou=0.0)),
])
def test_binary_zero_divisions(case, want):
    pred, target, _ = masks(1, shape=(2, 4, 4))
    if case == "no-positive-anywhere":
        pred, target = np.zeros_like(pred), np.zeros_like(target)
    elif case == "none-predicted":
        pred = np.zeros_like(pred)
    else:
        target = np.zeros_like(target)
    got = binary_metrics(pred, target).compute()
    assert_dict_close(got, sklearn_binary(pred.ravel(), target.ravel()))
    for key, value in want.items():
        np.testing.assert_equal(got[key], value, err_msg=key)


def test_binary_no_kept_pixel_and_integer_masks():
    pred, target, _ = masks(2, shape=(2, 4, 4))
    got = binary_metrics(pred, target, np.zeros(pred.shape, bool)).compute()
    assert all(np.isnan(v) for v in got.values())
    # Integer masks (nonzero = positive) count like bool ones; probabilities are refused.
    np.testing.assert_array_equal(batch_counts(pred.astype(np.uint8) * 3, target.astype(np.int32)),
                                  batch_counts(pred, target))
    with pytest.raises(ValueError, match="threshold probabilities first"):
        batch_counts(jnp.asarray(pred, jnp.float32), target)


def test_binary_sharded_and_streamed():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    sharding = parallel.batch_sharding(parallel.create_mesh({"data": 8}))
    pred, target, valid = masks(3)
    got = jax.jit(lambda p, t, v: batch_counts(p, t, valid=v))(
        *(jax.device_put(x, sharding) for x in (pred, target, valid)))
    np.testing.assert_array_equal(got, batch_counts(pred, target, valid=valid))
    streamed = BinaryCounts()
    for i in range(0, SHAPE[0], 3):
        streamed.update(batch_counts(pred[i:i + 3], target[i:i + 3], valid=valid[i:i + 3]))
    np.testing.assert_array_equal(streamed.counts, got)


def heights(seed=0, shape=SHAPE):
    """Heights with exact zeros, negatives (both sides) and NaN in some masked-out pixels."""
    rng = np.random.default_rng(seed)
    target = np.where(rng.random(shape) < 0.2, 0.0, rng.gamma(2.0, 5.0, shape))
    pred = target * rng.uniform(0.6, 1.6, shape) + rng.normal(0, 0.5, shape)
    pred = np.where(rng.random(shape) < 0.1, 0.0, pred)  # some predicted 0 (both 0 possible)
    target = np.where(rng.random(shape) < 0.05, -1.0, target)
    mask = rng.random(shape) > 0.3
    pred = np.where(~mask & (rng.random(shape) < 0.3), np.nan, pred)
    return pred.astype(np.float32), target.astype(np.float32), mask


def regression_loop(pred, target, mask, eps=1e-6):
    """The metrics of regression.py's docstring, one pixel at a time in float64."""
    count, abs_sum, sq_sum, hits = 0, 0.0, 0.0, [0, 0, 0]
    for p, t, m in zip(pred.astype(np.float64).ravel(), target.astype(np.float64).ravel(),
                       mask.ravel(), strict=True):
        if not m:
            continue
        count += 1
        abs_sum += abs(p - t)
        sq_sum += (p - t) ** 2
        pc, tc = max(p, eps), max(t, eps)
        ratio = max(pc / tc, tc / pc)
        for k, threshold in enumerate(DELTA_THRESHOLDS):
            hits[k] += ratio < threshold
    if count == 0:
        return dict(mae=math.nan, rmse=math.nan, delta1=math.nan, delta2=math.nan,
                    delta3=math.nan, count=0)
    return dict(mae=abs_sum / count, rmse=math.sqrt(sq_sum / count),
                **{f"delta{k + 1}": h / count for k, h in enumerate(hits)}, count=count)


def test_regression_equals_numpy_loop():
    pred, target, mask = heights()
    stats = batch_sums(pred, target, mask)
    assert stats["count"].dtype == stats["delta"].dtype == jnp.int32
    assert stats["abs_error"].dtype == jnp.float32
    acc = RegressionSums()
    acc.update(stats)
    got, want = acc.compute(), regression_loop(pred, target, mask)
    assert got["count"] == want["count"] > 0
    for key in ("delta1", "delta2", "delta3"):  # counts: exact
        assert got[key] == want[key], key
    assert 0 < want["delta1"] < want["delta2"] < want["delta3"] < 1
    assert_dict_close(got, want, rtol=1e-6)  # float32 sums within the batch


def test_regression_empty_and_full_mask():
    pred, target, mask = heights(1, shape=(2, 4, 4))
    acc = RegressionSums()
    acc.update(batch_sums(pred, target, np.zeros(mask.shape, bool)))
    got = acc.compute()
    assert got["count"] == 0 and all(np.isnan(got[k]) for k in got if k != "count")
    pred = np.nan_to_num(pred)
    acc.update(batch_sums(pred, target))  # mask None: every pixel
    assert_dict_close(acc.compute(), regression_loop(pred, target, np.ones(mask.shape, bool)),
                      rtol=1e-6)


def test_regression_delta_eps_rule():
    target = np.array([0.0, 0.0, -2.0, 1.0, 1.0, 4.0], np.float32)
    pred = np.array([0.0, 1.0, 0.0, 1.2, 1.5, 2.0], np.float32)
    acc = RegressionSums()
    acc.update(batch_sums(pred, target))
    # r = 1 (both 0), 1e6 (target 0, pred 1), 1 (both <= 0), 1.2, 1.5, 2; thresholds 1.25,
    # 1.5625, 1.953125.
    np.testing.assert_array_equal(acc.delta, [3, 4, 4])


def test_regression_sharded_and_streamed():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    sharding = parallel.batch_sharding(parallel.create_mesh({"data": 8}))
    pred, target, mask = heights(2)
    got = jax.jit(batch_sums)(*(jax.device_put(x, sharding) for x in (pred, target, mask)))
    want = batch_sums(pred, target, mask)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)
    streamed = RegressionSums()
    for i in range(0, SHAPE[0], 3):
        streamed.update(batch_sums(pred[i:i + 3], target[i:i + 3], mask[i:i + 3]))
    assert_dict_close(streamed.compute(), regression_loop(pred, target, mask), rtol=1e-6)


def test_state_dict_round_trips_through_json():
    pred, target, mask = heights(3)
    regression = RegressionSums()
    regression.update(batch_sums(pred, target, mask))
    bpred, btarget, valid = masks(4)
    binary = binary_metrics(bpred, btarget, valid)
    for acc in (regression, binary):
        state = json.loads(json.dumps(acc.state_dict()))
        back = accumulator_from_state_dict(state)
        assert type(back) is type(acc) and back.state_dict() == acc.state_dict()
        assert_dict_close(back.compute(), acc.compute())
        merged = type(acc).from_state_dict(state).merge(back).state_dict()
        assert merged == {k: v if k == "kind" else (2 * np.asarray(v)).tolist()
                          for k, v in state.items()}
        back.reset()
        assert back.state_dict() == type(acc)().state_dict()
    with pytest.raises(ValueError, match="unknown accumulator kind"):
        accumulator_from_state_dict({"kind": "auc"})


def test_metric_set_updates_computes_with_prefixes_and_round_trips():
    metrics = MetricSet({"rgb": ConfusionMatrix(3), "sar": ConfusionMatrix(3),
                         "change": BinaryCounts(), "height": RegressionSums()})
    rng = np.random.default_rng(5)
    target = rng.integers(0, 3, (2, 4, 4))
    pred, btarget, valid = masks(6, shape=(2, 4, 4))
    hpred, htarget, hmask = heights(7, shape=(2, 4, 4))
    for _ in range(2):
        metrics.update({"rgb": batch_confusion(target, target, 3),
                        "sar": batch_confusion(rng.integers(0, 3, target.shape), target, 3),
                        "change": batch_counts(pred, btarget, valid=valid),
                        "height": batch_sums(hpred, htarget, hmask)})
    metrics.update({"rgb": batch_confusion(target, target, 3)})  # a subset of the names
    out = metrics.compute(prefix="val/")
    assert out["val/rgb/miou"] == 1.0 and 0 <= out["val/sar/miou"] < 1
    assert "val/change/f1" in out and "val/height/rmse" in out and "val/sar/iou/2" in out
    assert out["val/height/count"] == 2 * hmask.sum()
    back = MetricSet.from_state_dict(json.loads(json.dumps(metrics.state_dict())))
    assert_dict_close(back.compute(prefix="val/"), out)
    with pytest.raises(KeyError, match="no accumulator for"):
        metrics.update({"both": batch_confusion(target, target, 3)})
    with pytest.raises(ValueError, match="without '/'"):
        MetricSet({"a/b": BinaryCounts()})
