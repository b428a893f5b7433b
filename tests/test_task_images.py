"""Task prediction panels: layout, class colours, ignored pixels, shared height scale."""

import numpy as np
import pytest

from mars_jax.tasks import IGNORE_INDEX, get_task
from mars_jax.train import task_images
from mars_jax.train.images import GAP_VALUE, save_png

B, H, W, GAP = 3, 6, 5, 2
BLACK = (0, 0, 0)


def panel_size(rows: int, cols: int) -> tuple[int, int, int]:
    return rows * H + (rows - 1) * GAP, cols * W + (cols - 1) * GAP, 3


def tile(panel: np.ndarray, row: int, col: int) -> np.ndarray:
    y, x = row * (H + GAP), col * (W + GAP)
    return panel[y:y + H, x:x + W]


def images(*roles: str, batch: int = B, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for role in roles:
        if role.startswith("optical"):
            out[role] = rng.integers(0, 256, (batch, H, W, 3), dtype=np.uint8)
        else:
            out[role] = rng.normal(-12.0, 4.0, (batch, H, W, 2)).astype(np.float32)
    return out


def class_ids(num_classes: int, batch: int = B, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, (batch, H, W)).astype(np.int32)


def test_segmentation_panel_layout_both_modalities():
    task = get_task("landcover")
    k = len(task.classes)
    panel = task_images.prediction_panel(task, images("optical", "sar"), class_ids(k),
                                         class_ids(k, seed=2))
    assert panel.dtype == np.uint8
    assert panel.shape == panel_size(B, 4)  # optical, sar, prediction, truth
    gap_col = panel[:, W:W + GAP]
    gap_row = panel[H:H + GAP]
    assert (gap_col == GAP_VALUE).all() and (gap_row == GAP_VALUE).all()


def test_sar_only_panel_and_max_examples():
    task = get_task("landcover")
    k = len(task.classes)
    sar = images("sar", batch=6)
    panel = task_images.prediction_panel(task, sar, class_ids(k, 6), class_ids(k, 6),
                                         max_examples=2)
    assert panel.shape == panel_size(2, 3)  # sar, prediction, truth
    grey = tile(panel, 0, 0)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert grey.min() == 0 and grey.max() == 255  # stretched per image


def test_optical_tile_is_the_input_as_is():
    task = get_task("roads")
    inputs = images("optical", "sar")
    panel = task_images.prediction_panel(task, inputs, class_ids(2), class_ids(2))
    for row in range(B):
        np.testing.assert_array_equal(tile(panel, row, 0), inputs["optical"][row])


def test_prediction_pixel_has_its_class_colour():
    task = get_task("landcover")
    k = len(task.classes)
    palette = task_images.class_palette(k)
    prediction = class_ids(k)
    panel = task_images.prediction_panel(task, images("optical"), prediction, prediction)
    for row in range(B):
        np.testing.assert_array_equal(tile(panel, row, 1), palette[prediction[row]])
        np.testing.assert_array_equal(tile(panel, row, 2), palette[prediction[row]])
    c = k - 1
    prediction[0, 2, 3] = c
    panel = task_images.prediction_panel(task, images("optical"), prediction, prediction)
    assert tuple(tile(panel, 0, 1)[2, 3]) == tuple(palette[c])


def test_binary_classes_black_and_white():
    task = get_task("roads")
    prediction = class_ids(2)
    panel = task_images.prediction_panel(task, images("sar"), prediction, prediction)
    pred_tile = tile(panel, 0, 1)
    assert (pred_tile[prediction[0] == 1] == 255).all()
    assert (pred_tile[prediction[0] == 0] == 0).all()


def test_ignored_and_masked_truth_pixels_are_black():
    task = get_task("damage")
    k = len(task.classes)
    palette = task_images.class_palette(k)
    truth = np.full((B, H, W), 1, np.int32)  # class 1 everywhere, not black
    truth[0, 0, 0] = IGNORE_INDEX
    truth[0, 1, 1] = k  # not a class: drawn as ignored
    mask = np.ones((B, H, W), bool)
    mask[1, 2, 2] = False
    prediction = truth.copy()
    prediction[prediction >= k] = 0
    panel = task_images.prediction_panel(task, images("optical", "sar"), prediction, truth,
                                         mask)
    truth0, truth1 = tile(panel, 0, 3), tile(panel, 1, 3)
    assert tuple(truth0[0, 0]) == BLACK and tuple(truth0[1, 1]) == BLACK
    assert tuple(truth1[2, 2]) == BLACK
    assert tuple(truth1[0, 0]) == tuple(palette[1])
    # the prediction is drawn everywhere, masked pixels included
    assert tuple(tile(panel, 1, 2)[2, 2]) == tuple(palette[1])
    # only the ignored pixels are black in the truth tiles
    assert sum(int((t == 0).all(-1).sum()) for t in (truth0, truth1)) == 3


def test_palette_distinct_fixed_not_black():
    for k in range(1, 21):
        palette = task_images.class_palette(k)
        assert palette.shape == (k, 3) and palette.dtype == np.uint8
        assert len({tuple(c) for c in palette}) == k
        assert not (palette == 0).all(-1).any()  # black means ignored
    np.testing.assert_array_equal(task_images.class_palette(5), task_images.class_palette(20)[:5])
    assert task_images.class_palette(45).shape == (45, 3)


def test_regression_tiles_share_one_scale():
    task = get_task("building_height")
    rng = np.random.default_rng(3)
    truth = rng.uniform(1.0, 20.0, (B, H, W)).astype(np.float32)
    prediction = rng.uniform(1.0, 40.0, (B, H, W)).astype(np.float32)
    truth[0, 0, 0], prediction[0, 4, 4] = 7.5, 7.5  # equal heights at different pixels
    truth[0, 1, 1], prediction[0, 1, 1] = 3.0, 3.0
    mask = np.ones((B, H, W), bool)
    mask[0, 5, 0] = False
    panel = task_images.prediction_panel(task, images("optical", "sar"), prediction, truth, mask)
    pred_tile, truth_tile = tile(panel, 0, 2), tile(panel, 0, 3)
    assert tuple(pred_tile[4, 4]) == tuple(truth_tile[0, 0])
    assert tuple(pred_tile[1, 1]) == tuple(truth_tile[1, 1])
    assert tuple(pred_tile[4, 4]) != tuple(pred_tile[1, 1])
    # the row's maximum (from the prediction) has the top colour, in either tile
    top = np.unravel_index(prediction[0].argmax(), (H, W))
    truth[0][top] = prediction[0][top]
    panel = task_images.prediction_panel(task, images("optical", "sar"), prediction, truth, mask)
    assert tuple(tile(panel, 0, 2)[top]) == tuple(tile(panel, 0, 3)[top])
    np.testing.assert_array_equal(tile(panel, 0, 3)[top], task_images.height_colours(1.0, 1.0))
    # unscored pixels black in both tiles
    assert tuple(pred_tile[5, 0]) == BLACK and tuple(truth_tile[5, 0]) == BLACK


def test_regression_scale_is_per_row():
    task = get_task("building_height")
    truth = np.ones((2, H, W), np.float32)
    truth[1] *= 10.0  # row 1's scale is 10, row 0's 1: both rows show their max at the top
    panel = task_images.prediction_panel(task, images("sar", batch=2), truth, truth)
    np.testing.assert_array_equal(tile(panel, 0, 1), tile(panel, 1, 1))


def test_bitemporal_inputs_add_tiles():
    task = get_task("change")
    both = images("optical", "sar", "optical_t2", "sar_t2")
    panel = task_images.prediction_panel(task, both, class_ids(2), class_ids(2))
    assert panel.shape == panel_size(B, 6)
    np.testing.assert_array_equal(tile(panel, 1, 2), both["optical_t2"][1])
    sar_only = {k: v for k, v in both.items() if k.startswith("sar")}
    panel = task_images.prediction_panel(task, sar_only, class_ids(2), class_ids(2))
    assert panel.shape == panel_size(B, 4)


def test_missing_image_inputs_raise_naming_roles():
    task = get_task("change")
    with pytest.raises(ValueError, match="optical_t2"):
        task_images.prediction_panel(task, {"valid": np.ones((B, H, W), bool)},
                                     class_ids(2), class_ids(2))


@pytest.mark.parametrize("name, inputs, pred, truth, match", [
    ("landcover", {"optical": np.zeros((B, H, W, 4), np.uint8)}, (B, H, W), (B, H, W),
     "'optical'.*4"),
    ("landcover", {"sar": np.zeros((B, H + 1, W, 2), np.float32)}, (B, H, W), (B, H, W),
     "'sar'"),
    ("landcover", {"sar": np.zeros((B, H, W, 2), np.float32)}, (B, H, W), (B, H, W + 1),
     "'truth'"),
    ("landcover", {"sar": np.zeros((B, H, W, 2), np.float32)}, (B, H, W, 7), (B, H, W),
     "'prediction'"),
    ("landcover", {"sar_t2": np.zeros((B, H, W, 2), np.float32)}, (B, H, W), (B, H, W),
     "sar_t2"),
])
def test_shapes_and_roles_are_checked(name, inputs, pred, truth, match):
    with pytest.raises(ValueError, match=match):
        task_images.prediction_panel(get_task(name), inputs, np.zeros(pred, np.int32),
                                     np.zeros(truth, np.int32))


def test_mask_shape_and_class_dtype_checked():
    task = get_task("landcover")
    with pytest.raises(ValueError, match="'mask'"):
        task_images.prediction_panel(task, images("sar"), class_ids(3), class_ids(3),
                                     np.ones((B, H, W + 1), bool))
    with pytest.raises(ValueError, match="integer"):
        task_images.prediction_panel(task, images("sar"), class_ids(3).astype(np.float32),
                                     class_ids(3))


def test_non_finite_sar_is_black_and_panel_saves(tmp_path):
    task = get_task("roads")
    sar = images("sar")
    sar["sar"][0, 0, 0, 0] = -np.inf
    panel = task_images.prediction_panel(task, sar, class_ids(2), class_ids(2))
    assert tuple(tile(panel, 0, 0)[0, 0]) == BLACK
    save_png(tmp_path / "panel.png", panel)
    assert (tmp_path / "panel.png").stat().st_size > 0
