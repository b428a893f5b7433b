"""Reconstruction panels: layout, masked greying, reconstruction = input / prediction."""

import jax
import numpy as np
import pytest
from PIL import Image

from configs import pretrain
from mars_jax.data.contract import random_batch
from mars_jax.losses.mim import normalize_patches
from mars_jax.models import MaRSOutput
from mars_jax.models.patches import Masking
from mars_jax.train import images
from mars_jax.train.forward import build_model

PATCH, GRID, BATCH = 8, (8, 8), 3
SIZE = PATCH * GRID[0]


def tile(panel: np.ndarray, row: int, col: int, gap: int = 2) -> np.ndarray:
    """Tile (row, col) of a panel of SIZE x SIZE tiles."""
    y, x = row * (SIZE + gap), col * (SIZE + gap)
    return panel[y:y + SIZE, x:x + SIZE]


def patch_pixels(image: np.ndarray, index: int) -> np.ndarray:
    """Pixels of grid patch ``index`` (row-major) of a SIZE x SIZE tile."""
    r, c = divmod(index, GRID[1])
    return image[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH]


@pytest.fixture(scope="module")
def model_output() -> MaRSOutput:
    config = pretrain.get_config("tiny")
    config.model.update(dict(patch_size=PATCH, mask_ratio=0.6))  # an 8x8 grid, 26 visible

    @jax.jit  # initialisation included: one compile instead of many eager ops
    def forward(key):
        data_key, mask_key = jax.random.split(key)
        batch = random_batch(data_key, BATCH, SIZE, config.model.sar_channels)
        return build_model(config)(batch["optical"], batch["sar"], key=mask_key,
                                   valid=batch["valid"])

    return jax.device_get(forward(jax.random.key(0)))


def synthetic_output(pred_rgb, target_rgb, pred_sar, target_sar, mask) -> MaRSOutput:
    b, n = mask.shape
    empty = np.zeros((b, 1, 4), np.float32)
    ids = np.broadcast_to(np.arange(n, dtype=np.int32), (b, n))
    return MaRSOutput(z_rgb=empty, z_sar=empty, e_rgb=empty, e_sar=empty, f_rgb=empty,
                      f_sar=empty, pred_rgb=pred_rgb, pred_sar=pred_sar, target_rgb=target_rgb,
                      target_sar=target_sar, masking=Masking(ids, ids, mask),
                      patch_valid=np.ones((b, n), np.float32))


def test_panel_shape_dtype_and_grey_masked_patches(model_output):
    panel = images.reconstruction_panel(model_output, patch_size=PATCH, grid=GRID,
                                        max_examples=2)
    assert panel.dtype == np.uint8
    assert panel.shape == (2 * SIZE + 2, 6 * SIZE + 5 * 2, 3)
    mask = np.asarray(model_output.masking.mask)
    for row in range(2):
        masked = np.flatnonzero(mask[row] > 0.5)
        visible = np.flatnonzero(mask[row] < 0.5)
        assert len(masked) == 38 and len(visible) == 26  # round(0.4 * 64) visible
        for col in (0, 3):  # optical and SAR masked-input tiles
            masked_input, target = tile(panel, row, col), tile(panel, row, col + 2)
            for index in masked:
                assert (patch_pixels(masked_input, index) == images.MASKED_GREY).all()
            for index in visible:
                np.testing.assert_array_equal(patch_pixels(masked_input, index),
                                              patch_pixels(target, index))
        sar_target = tile(panel, row, 5)
        assert (sar_target[..., 0] == sar_target[..., 1]).all()
        assert (sar_target[..., 0] == sar_target[..., 2]).all()


def test_visible_patches_of_the_reconstruction_are_the_input(model_output):
    panel = images.reconstruction_panel(model_output, patch_size=PATCH, grid=GRID)
    assert panel.shape[0] == BATCH * SIZE + (BATCH - 1) * 2  # fewer examples than max
    mask = np.asarray(model_output.masking.mask)
    for row in range(BATCH):
        for col in (1, 4):  # optical and SAR reconstructions
            reconstruction, target = tile(panel, row, col), tile(panel, row, col + 1)
            for index in np.flatnonzero(mask[row] < 0.5):
                np.testing.assert_array_equal(patch_pixels(reconstruction, index),
                                              patch_pixels(target, index))
            # The untrained model does not reproduce its targets under the masks.
            differs = [not np.array_equal(patch_pixels(reconstruction, i),
                                          patch_pixels(target, i))
                       for i in np.flatnonzero(mask[row] > 0.5)]
            assert np.mean(differs) > 0.5


def test_perfect_prediction_reconstructs_the_target():
    rng = np.random.default_rng(0)
    n, k = GRID[0] * GRID[1], PATCH * PATCH
    target_rgb = rng.normal(size=(2, n, k * 3)).astype(np.float32) * 2 + 0.5
    target_sar = rng.normal(size=(2, n, k)).astype(np.float32)
    mask = (rng.random((2, n)) < 0.6).astype(np.float32)
    perfect = lambda t: np.asarray(normalize_patches(t))  # what a norm_pix model predicts
    out = synthetic_output(perfect(target_rgb), target_rgb, perfect(target_sar), target_sar,
                           mask)
    panel = images.reconstruction_panel(out, patch_size=PATCH, grid=GRID)
    for row in range(2):
        for col in (1, 4):
            # Same pixels up to float32 rounding in the de-normalisation: at most 1 level.
            diff = tile(panel, row, col).astype(int) - tile(panel, row, col + 1).astype(int)
            assert np.abs(diff).max() <= 1
            assert np.mean(diff == 0) > 0.99

    # Without norm_pix the prediction is taken as is: a zero prediction shows the mean level.
    zeros = synthetic_output(np.zeros_like(target_rgb), target_rgb, np.zeros_like(target_sar),
                             target_sar, mask)
    raw = images.reconstruction_panel(zeros, patch_size=PATCH, grid=GRID, norm_pix=False)
    normed = images.reconstruction_panel(zeros, patch_size=PATCH, grid=GRID)
    assert not np.array_equal(tile(raw, 0, 1), tile(normed, 0, 1))


def test_percentile_stretch_and_denormalisation():
    reference = np.arange(101, dtype=np.float32).reshape(1, 101, 1, 1)
    stretched = images.percentile_stretch(reference, reference)
    assert stretched.min() == 0 and stretched.max() == 1
    assert stretched[0, 50, 0, 0] == pytest.approx((50 - 2) / 96)
    flat = np.full((1, 4, 4, 1), 3.0, np.float32)
    assert np.isfinite(images.percentile_stretch(flat, flat)).all()

    target = np.random.default_rng(1).normal(size=(5, 48)) * 3 + 7
    restored = images.denormalize_patches(np.asarray(normalize_patches(target)), target)
    np.testing.assert_allclose(restored, target, rtol=1e-5, atol=1e-5)


def test_panel_rejects_a_wrong_grid(model_output):
    with pytest.raises(ValueError, match="grid"):
        images.reconstruction_panel(model_output, patch_size=PATCH, grid=(4, 4))


def test_save_png_round_trip(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "panel.png"
    images.save_png(path, image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    assert [p.name for p in path.parent.iterdir()] == ["panel.png"]
    with pytest.raises(ValueError, match="uint8"):
        images.save_png(path, image.astype(np.float32))
