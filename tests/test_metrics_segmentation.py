"""Confusion-matrix metrics against scikit-learn: ignore index, valid mask, empty classes,
jit on a sharded batch, streaming over batches, state round trips."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from mars_jax import parallel
from mars_jax.metrics import ConfusionMatrix, batch_confusion

C = 6
IGNORE = 255
SHAPE = (8, 6, 7)
NAMES = ("water", "tree", "grass", "crop", "built", "bare")
# Class 3 occurs in neither target nor prediction (empty), class 5 only in the target (never
# predicted), class 4 only in the prediction.
TARGET_CLASSES = (0, 1, 2, 5)
PRED_CLASSES = (0, 1, 2, 4)


def labels(seed=0, shape=SHAPE):
    """pred, target, valid with ignored (255) and out-of-range (-1, C) target pixels and a few
    out-of-range predictions (-1, C)."""
    rng = np.random.default_rng(seed)
    target = rng.choice(TARGET_CLASSES, size=shape)
    pred = np.where(rng.random(shape) < 0.6, target, rng.choice(PRED_CLASSES, size=shape))
    pred = np.where(pred == 5, 4, pred)
    special = rng.random(shape)
    target = np.where(special < 0.1, IGNORE, target)
    target = np.where((special >= 0.1) & (special < 0.13), -1, target)
    target = np.where((special >= 0.13) & (special < 0.15), C, target)
    pred = np.where((special >= 0.15) & (special < 0.17), -1, pred)
    pred = np.where((special >= 0.17) & (special < 0.19), C, pred)
    valid = rng.random(shape) > 0.2
    return pred.astype(np.int32), target.astype(np.int32), valid


def kept(pred, target, valid=None, ignore_index=IGNORE):
    """The pixels batch_confusion counts, flattened: the reference's input."""
    keep = (target >= 0) & (target < C) & (pred >= 0) & (pred < C) & (target != ignore_index)
    if valid is not None:
        keep &= valid
    return pred[keep], target[keep]


def sklearn_metrics(pred, target):
    """The ConfusionMatrix.compute() dict from scikit-learn on the kept pixels."""
    labels_ = list(range(C))
    # jaccard_score's zero_division takes 0 or 1 only: mark its 0 / 0 (a class in neither the
    # target nor the prediction) NaN by hand.
    iou = skm.jaccard_score(target, pred, labels=labels_, average=None, zero_division=0)
    empty = ~np.isin(labels_, target) & ~np.isin(labels_, pred)
    iou = np.where(empty, np.nan, iou)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        target, pred, labels=labels_, average=None, zero_division=np.nan)
    out = {"miou": np.nanmean(iou), "oa": skm.accuracy_score(target, pred),
           "mf1": np.nanmean(f1), "macc": np.nanmean(recall)}
    for key, values in (("iou", iou), ("precision", precision), ("recall", recall), ("f1", f1)):
        out.update({f"{key}/{name}": v for name, v in zip(NAMES, values, strict=True)})
    return out


def assert_metrics_equal(got, want):
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=0, err_msg=key)


@pytest.mark.parametrize("use_valid", [False, True], ids=["no-valid", "valid"])
def test_batch_confusion_equals_sklearn(use_valid):
    pred, target, valid = labels()
    got = batch_confusion(jnp.asarray(pred), jnp.asarray(target), C,
                          valid=jnp.asarray(valid) if use_valid else None, ignore_index=IGNORE)
    assert got.dtype == jnp.int32 and got.shape == (C, C)
    p, t = kept(pred, target, valid if use_valid else None)
    want = skm.confusion_matrix(t, p, labels=range(C))
    np.testing.assert_array_equal(got, want)
    assert want[3].sum() == want[:, 3].sum() == 0  # the empty class really is empty


def test_ignore_index_none_and_inside_the_class_range():
    pred, target, _ = labels(1)
    # No ignore index: 255 is still outside [0, C) and left out.
    np.testing.assert_array_equal(
        batch_confusion(pred, target, C),
        skm.confusion_matrix(*kept(pred, target)[::-1], labels=range(C)))
    # ignore_index = 0: class 0 has no target pixel, but its predictions stay false positives.
    got = np.asarray(batch_confusion(pred, target, C, ignore_index=0))
    p, t = kept(pred, target, ignore_index=0)
    np.testing.assert_array_equal(got, skm.confusion_matrix(t, p, labels=range(C)))
    assert got[0].sum() == 0 and got[1:, 0].sum() > 0


def test_metrics_equal_sklearn_with_empty_classes():
    pred, target, valid = labels(2)
    cm = ConfusionMatrix(C, NAMES)
    cm.update(batch_confusion(pred, target, C, valid=valid, ignore_index=IGNORE))
    got = cm.compute()
    assert_metrics_equal(got, sklearn_metrics(*kept(pred, target, valid)))
    # The rules of the module docstring, spelled out.
    assert np.isnan(got["iou/crop"]) and np.isnan(got["f1/crop"])  # empty class
    assert np.isnan(got["precision/crop"]) and np.isnan(got["recall/crop"])
    assert got["iou/bare"] == got["f1/bare"] == got["recall/bare"] == 0  # never predicted
    assert np.isnan(got["precision/bare"])
    assert got["iou/built"] == got["f1/built"] == got["precision/built"] == 0  # not in target
    assert np.isnan(got["recall/built"])
    ious = [got[f"iou/{n}"] for n in NAMES if n != "crop"]
    assert got["miou"] == pytest.approx(np.mean(ious))  # 5 classes: the empty one left out


def test_streaming_over_batches_equals_all_pixels_at_once():
    batches = [labels(seed, shape=(2, 5, 4)) for seed in range(5)]
    streamed = ConfusionMatrix(C, NAMES)
    for pred, target, valid in batches:
        streamed.update(batch_confusion(pred, target, C, valid=valid, ignore_index=IGNORE))
    pred, target, valid = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    at_once = ConfusionMatrix(C, NAMES)
    at_once.update(batch_confusion(pred, target, C, valid=valid, ignore_index=IGNORE))
    np.testing.assert_array_equal(streamed.matrix, at_once.matrix)
    assert_metrics_equal(streamed.compute(), sklearn_metrics(*kept(pred, target, valid)))


def test_sharded_batch_under_jit_equals_unsharded():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = parallel.create_mesh({"data": 8})
    sharding = parallel.batch_sharding(mesh)
    pred, target, valid = labels(3)
    want = batch_confusion(pred, target, C, valid=valid, ignore_index=IGNORE)

    def step(p, t, v):
        return batch_confusion(p, t, C, valid=v, ignore_index=IGNORE)

    args = [jax.device_put(x, sharding) for x in (pred, target, valid)]
    got = jax.jit(step)(*args)
    np.testing.assert_array_equal(got, want)
    assert got.sharding.is_fully_replicated
    # Each device counts its own pixels; only the C x C counts cross devices.
    hlo = jax.jit(step).lower(*args).compile().as_text()
    assert "all-reduce" in hlo and "all-gather" not in hlo


def test_no_pixel_gives_nan_without_warnings():
    cm = ConfusionMatrix(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cm.compute()
    assert list(got)[:4] == ["miou", "oa", "mf1", "macc"]
    assert "iou/0" in got and "f1/2" in got
    assert all(np.isnan(v) for v in got.values())


def test_state_dict_round_trip_and_merge():
    cm = ConfusionMatrix(C, NAMES)
    pred, target, valid = labels(4)
    cm.update(batch_confusion(pred, target, C, valid=valid, ignore_index=IGNORE))
    state = json.loads(json.dumps(cm.state_dict()))
    back = ConfusionMatrix.from_state_dict(state)
    np.testing.assert_array_equal(back.matrix, cm.matrix)
    assert back.class_names == NAMES and back.matrix.dtype == np.int64
    assert_metrics_equal(back.compute(), cm.compute())
    merged = ConfusionMatrix.from_state_dict(state).merge(back)
    np.testing.assert_array_equal(merged.matrix, 2 * cm.matrix)
    with pytest.raises(ValueError, match="classes differ"):
        merged.merge(ConfusionMatrix(C))
    merged.reset()
    assert merged.matrix.sum() == 0


def test_int64_accumulation_past_int32():
    cm = ConfusionMatrix(2)
    batch = np.array([[2**30, 0], [0, 2**30]], np.int32)
    for _ in range(4):
        cm.update(batch)
    assert cm.matrix[0, 0] == 2**32 and cm.compute()["oa"] == 1.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="one shape"):
        batch_confusion(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 4), jnp.int32), C)
    with pytest.raises(ValueError, match="valid must have the shape"):
        batch_confusion(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.int32), C,
                        valid=jnp.ones((3,), bool))
    with pytest.raises(ValueError, match="integer class ids"):
        batch_confusion(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32), C)
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        ConfusionMatrix(3, ["a", "b"])
    with pytest.raises(ValueError, match=r"expected a \(3, 3\) matrix"):
        ConfusionMatrix(3).update(np.zeros((2, 2), np.int32))
