"""MIM loss against a float64 per-patch reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.losses import mim_loss


def reference_mim(pred, target, weights, norm_pix, loss_type, eps=1e-6):
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    total, count = 0.0, 0.0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            t = target[b, n]
            if norm_pix:
                t = (t - t.mean()) / np.sqrt(t.var() + eps)
            err = np.mean((pred[b, n] - t) ** 2) if loss_type == "l2" else np.mean(
                np.abs(pred[b, n] - t))
            total += weights[b, n] * err
            count += weights[b, n]
    return total / count


@pytest.mark.parametrize("loss_type", ["l2", "l1"])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_matches_reference(loss_type, norm_pix):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 7, 12)).astype(np.float32)
    target = (5 + 3 * rng.normal(size=(3, 7, 12))).astype(np.float32)
    weights = (rng.uniform(size=(3, 7)) < 0.6).astype(np.float32)
    got = mim_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weights),
                   norm_pix=norm_pix, loss_type=loss_type)
    np.testing.assert_allclose(got, reference_mim(pred, target, weights, norm_pix, loss_type),
                               rtol=1e-5)


def test_only_weighted_patches_count():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(2, 6, 4)), rng.normal(size=(2, 6, 4))
    weights = np.zeros((2, 6), np.float32)
    weights[:, :3] = 1
    base = mim_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weights))
    pred_visible = pred.copy()
    pred_visible[:, 3:] += 10
    np.testing.assert_allclose(
        mim_loss(jnp.asarray(pred_visible), jnp.asarray(target), jnp.asarray(weights)), base,
        rtol=1e-6)
    pred_masked = pred.copy()
    pred_masked[:, :3] += 1
    assert float(mim_loss(jnp.asarray(pred_masked), jnp.asarray(target),
                          jnp.asarray(weights))) > float(base) + 0.1
    assert float(mim_loss(jnp.asarray(pred), jnp.asarray(target), jnp.zeros((2, 6)))) == 0.0


def test_rejects_bad_shapes_and_types():
    with pytest.raises(ValueError, match=r"\(2, 4, 3\) and \(2, 4, 5\)"):
        mim_loss(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 5)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"weights must be \[B, N\] = \(2, 4\)"):
        mim_loss(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        mim_loss(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3)), jnp.ones((2, 4)), loss_type="huber")
