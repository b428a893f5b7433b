"""Dense-task losses against explicit float64 loops (torch's CrossEntropyLoss semantics) and
their analytic gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.losses.pixelwise import masked_cross_entropy, masked_regression_loss

B, H, W, K = 2, 5, 6, 4
IGNORE = 255


def kept(label, valid, k, ignore_index):
    return 0 <= label < k and label != ignore_index and (valid is None or bool(valid))


def reference_ce(logits, labels, valid=None, ignore_index=IGNORE, class_weights=None,
                 label_smoothing=0.0):
    """torch.nn.CrossEntropyLoss(weight, ignore_index, label_smoothing), reduction="mean",
    one pixel at a time, plus dropping labels outside [0, K) and valid False. Returns
    (loss, kept pixels, d loss / d logits)."""
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    weights = np.ones(k) if class_weights is None else np.asarray(class_weights, np.float64)
    numerator, denominator, pixels = 0.0, 0.0, 0
    grad = np.zeros_like(logits)
    for index in np.ndindex(*labels.shape):
        label = int(labels[index])
        if not kept(label, None if valid is None else valid[index], k, ignore_index):
            continue
        z = logits[index]
        top = z.max()
        logp = z - (top + math.log(np.exp(z - top).sum()))
        p = np.exp(logp)
        nll = -logp[label]
        smooth = -sum(weights[c] * logp[c] for c in range(k))
        numerator += ((1 - label_smoothing) * weights[label] * nll
                      + label_smoothing / k * smooth)
        denominator += weights[label]
        pixels += 1
        onehot = np.eye(k)[label]
        grad[index] = ((1 - label_smoothing) * weights[label] * (p - onehot)
                       + label_smoothing / k * (p * weights.sum() - weights))
    if denominator == 0:
        return 0.0, pixels, grad
    return numerator / denominator, pixels, grad / denominator


def random_case(seed, ignore_fraction=0.2, out_of_range=True):
    rng = np.random.default_rng(seed)
    logits = (2 * rng.normal(size=(B, H, W, K))).astype(np.float32)
    labels = rng.integers(0, K, size=(B, H, W)).astype(np.int32)
    labels[rng.uniform(size=labels.shape) < ignore_fraction] = IGNORE
    if out_of_range:
        labels[0, 0, :2] = [K, -1]
    valid = rng.uniform(size=labels.shape) < 0.8
    return logits, labels, valid


def ce_and_grad(logits, labels, **kwargs):
    fn = lambda z: masked_cross_entropy(z, jnp.asarray(labels), **kwargs)
    (loss, pixels), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(logits))
    return loss, pixels, grad


@pytest.mark.parametrize("use_valid", [False, True])
@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_matches_reference(use_valid, use_weights, label_smoothing):
    logits, labels, valid = random_case(0)
    class_weights = np.array([0.5, 2.0, 1.0, 3.0], np.float32) if use_weights else None
    kwargs = dict(valid=jnp.asarray(valid) if use_valid else None,
                  class_weights=None if class_weights is None else jnp.asarray(class_weights),
                  label_smoothing=label_smoothing)
    loss, pixels, grad = ce_and_grad(logits, labels, **kwargs)
    want, want_pixels, want_grad = reference_ce(
        logits, labels, valid if use_valid else None, IGNORE, class_weights, label_smoothing)
    assert loss.dtype == jnp.float32 and pixels.dtype == jnp.int32
    assert int(pixels) == want_pixels > 0
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)


def test_cross_entropy_uniform_logits_is_log_k():
    labels = np.array([[[0, 1], [2, IGNORE]]], np.int32)
    loss, pixels = masked_cross_entropy(jnp.zeros((1, 2, 2, 3)), jnp.asarray(labels))
    np.testing.assert_allclose(loss, math.log(3), rtol=1e-6)
    assert int(pixels) == 3


def test_cross_entropy_weighted_mean_is_torchs():
    # Two pixels, one of class 0 (weight 1) and one of class 1 (weight 3):
    # (1 * nll_0 + 3 * nll_1) / (1 + 3), not the plain mean of the weighted terms.
    logits = jnp.asarray([[[[2.0, 0.0], [0.0, 1.0]]]])
    labels = jnp.asarray([[[0, 1]]], jnp.int32)
    nll = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(-1.0))]
    loss, _ = masked_cross_entropy(logits, labels, class_weights=jnp.asarray([1.0, 3.0]))
    np.testing.assert_allclose(loss, (nll[0] + 3 * nll[1]) / 4, rtol=1e-6)


def test_cross_entropy_ignore_index_none_and_other_value():
    logits, labels, _ = random_case(1, ignore_fraction=0.0, out_of_range=False)
    labels[1, 2, :] = 2
    loss, pixels = masked_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                        ignore_index=2)
    want, want_pixels, _ = reference_ce(logits, labels, ignore_index=2)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert int(pixels) == want_pixels == int(np.sum(labels != 2))
    loss, pixels = masked_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                        ignore_index=None)
    np.testing.assert_allclose(loss, reference_ce(logits, labels, ignore_index=None)[0],
                               rtol=1e-5)
    assert int(pixels) == labels.size


@pytest.mark.parametrize("case", ["all_ignored", "all_invalid", "zero_weights"])
def test_cross_entropy_empty_is_zero_with_zero_grad(case):
    logits, labels, _ = random_case(2)
    # Garbage in the dropped pixels must not leak into the loss or the gradient.
    logits[0, 1, 1] = [np.nan, np.inf, -np.inf, 1.0]
    kwargs = {}
    if case == "all_ignored":
        labels[:] = IGNORE
    elif case == "all_invalid":
        kwargs["valid"] = jnp.zeros(labels.shape, bool)
        labels[0, 1, 1] = 0
    else:
        labels = np.where(labels == IGNORE, 0, labels % 2)
        kwargs["class_weights"] = jnp.asarray([0.0, 0.0, 1.0, 1.0])
        logits[0, 1, 1] = 0.0
    loss, pixels, grad = ce_and_grad(logits, labels, label_smoothing=0.1, **kwargs)
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0.0)
    if case != "zero_weights":
        assert int(pixels) == 0


def test_cross_entropy_garbage_in_dropped_pixels_does_not_leak():
    logits, labels, valid = random_case(3)
    clean = ce_and_grad(logits, labels, valid=jnp.asarray(valid))
    dirty_logits = logits.copy()
    dropped = ~valid | (labels == IGNORE)
    dirty_logits[dropped] = np.nan
    dirty = ce_and_grad(dirty_logits, labels, valid=jnp.asarray(valid))
    np.testing.assert_array_equal(clean[0], dirty[0])
    np.testing.assert_array_equal(clean[2], dirty[2])


def test_cross_entropy_bf16_logits_give_f32_loss():
    logits, labels, valid = random_case(4)
    loss_bf16, _ = masked_cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels),
                                        valid=jnp.asarray(valid), label_smoothing=0.1)
    rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
    loss_f32, _ = masked_cross_entropy(jnp.asarray(rounded), jnp.asarray(labels),
                                       valid=jnp.asarray(valid), label_smoothing=0.1)
    assert loss_bf16.dtype == jnp.float32
    np.testing.assert_allclose(loss_bf16, loss_f32, rtol=1e-6)  # bf16 in, f32 arithmetic
    np.testing.assert_allclose(loss_bf16, reference_ce(logits, labels, valid,
                                                       label_smoothing=0.1)[0], rtol=2e-2)


def test_cross_entropy_jits():
    logits, labels, valid = random_case(5)
    fn = jax.jit(lambda z, y, v: masked_cross_entropy(z, y, valid=v))
    loss, pixels = fn(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid))
    want, want_pixels, _ = reference_ce(logits, labels, valid)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert int(pixels) == want_pixels


def test_cross_entropy_bad_inputs():
    logits = jnp.zeros((1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"labels\.shape"):
        masked_cross_entropy(logits, jnp.zeros((1, 2, 3), jnp.int32))
    with pytest.raises(ValueError, match="integers"):
        masked_cross_entropy(logits, jnp.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="class_weights"):
        masked_cross_entropy(logits, jnp.zeros((1, 2, 2), jnp.int32),
                             class_weights=jnp.ones(4))
    with pytest.raises(ValueError, match="valid"):
        masked_cross_entropy(logits, jnp.zeros((1, 2, 2), jnp.int32),
                             valid=jnp.ones((1, 2), bool))
    with pytest.raises(ValueError, match="label_smoothing"):
        masked_cross_entropy(logits, jnp.zeros((1, 2, 2), jnp.int32), label_smoothing=1.5)


def reference_regression(pred, target, mask, kind, beta=1.0):
    """(loss, pixels, d loss / d pred), one pixel at a time, torch's l1 / mse / smooth_l1."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    total, pixels = 0.0, 0
    grad = np.zeros_like(pred)
    for index in np.ndindex(*target.shape):
        if not mask[index]:
            continue
        d = pred[index] - target[index]
        if kind == "l2":
            total, grad[index] = total + d * d, 2 * d
        elif kind == "l1" or beta == 0 or abs(d) >= beta:
            total += abs(d) if kind == "l1" or beta == 0 else abs(d) - 0.5 * beta
            grad[index] = np.sign(d)
        else:
            total, grad[index] = total + 0.5 * d * d / beta, d / beta
        pixels += 1
    if not pixels:
        return 0.0, 0, grad
    return total / pixels, pixels, grad / pixels


def regression_case(seed):
    rng = np.random.default_rng(seed)
    pred = (3 * rng.normal(size=(B, H, W))).astype(np.float32)
    target = (3 * rng.normal(size=(B, H, W))).astype(np.float32)
    mask = rng.uniform(size=(B, H, W)) < 0.7
    target[~mask] = np.nan  # no-data heights
    return pred, target, mask


def regression_and_grad(pred, target, mask, **kwargs):
    fn = lambda p: masked_regression_loss(p, jnp.asarray(target), jnp.asarray(mask), **kwargs)
    return jax.value_and_grad(fn, has_aux=True)(jnp.asarray(pred))


@pytest.mark.parametrize("kind, beta", [("l1", 1.0), ("l2", 1.0), ("smooth_l1", 1.0),
                                        ("smooth_l1", 2.5), ("smooth_l1", 0.0)])
def test_regression_matches_reference(kind, beta):
    pred, target, mask = regression_case(6)
    (loss, pixels), grad = regression_and_grad(pred, target, mask, kind=kind, beta=beta)
    want, want_pixels, want_grad = reference_regression(pred, target, mask, kind, beta)
    assert int(pixels) == want_pixels == int(mask.sum())
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-8)


def test_regression_accepts_a_channel_axis():
    pred, target, mask = regression_case(7)
    flat = masked_regression_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask),
                                  kind="l2")
    channel = masked_regression_loss(jnp.asarray(pred[..., None]), jnp.asarray(target),
                                     jnp.asarray(mask), kind="l2")
    np.testing.assert_array_equal(flat[0], channel[0])
    assert int(flat[1]) == int(channel[1])


@pytest.mark.parametrize("kind", ["l1", "l2", "smooth_l1"])
def test_regression_empty_mask_is_zero_with_zero_grad(kind):
    pred, target, _ = regression_case(8)
    mask = np.zeros(target.shape, bool)
    (loss, pixels), grad = regression_and_grad(pred, target, mask, kind=kind)
    assert float(loss) == 0.0 and int(pixels) == 0
    assert np.all(np.asarray(grad) == 0.0)


def test_regression_bad_inputs():
    pred, target, mask = (jnp.zeros((1, 2, 2)), jnp.zeros((1, 2, 2)), jnp.ones((1, 2, 2), bool))
    with pytest.raises(ValueError, match="kind"):
        masked_regression_loss(pred, target, mask, kind="huber")
    with pytest.raises(ValueError, match="pred"):
        masked_regression_loss(jnp.zeros((1, 2, 2, 2)), target, mask)
    with pytest.raises(ValueError, match="mask"):
        masked_regression_loss(pred, target, jnp.ones((1, 2), bool))
    with pytest.raises(ValueError, match="beta"):
        masked_regression_loss(pred, target, mask, kind="smooth_l1", beta=-1.0)
