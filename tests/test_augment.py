"""PairedAugment moves the geometric labels with the pixels: boxes, the registration affine and
the image-frame azimuths follow the crop, flip and rotation applied to every spatial array."""

import itertools
import math

import numpy as np
import pytest

from mars_jax.data.pipeline import (
    PairedAugment,
    grid_transform,
    transform_affine,
    transform_azimuth,
    transform_boxes,
)
from mars_jax.data.synth import SynthSource, render_pair
from tests.helpers import bilinear


def coded(height, width):
    """(H, W, 2) int32 array holding each pixel's own (row, col)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows, cols], -1).astype(np.int32)


def apply(value, top, left, crop_hw, flip, turns):
    """PairedAugment's array steps, spelled out."""
    value = value[top:top + crop_hw[0], left:left + crop_hw[1]]
    if flip:
        value = value[:, ::-1]
    return np.rot90(value, turns, axes=(0, 1))


def tight_box(mask):
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


def augmented(example, seed, crop_size, where=True):
    """Augments ``example`` plus a coded key recording where each output pixel came from."""
    h, w = example["optical"].shape[:2]
    inputs = dict(example, where=coded(h, w)) if where else dict(example)
    return PairedAugment(crop_size=crop_size).random_map(inputs, np.random.default_rng(seed))


# --- the transform itself -----------------------------------------------------------------------

CASES = list(itertools.product([False, True], range(4)))


@pytest.mark.parametrize("flip,turns", CASES)
def test_grid_transform_is_where_the_array_steps_put_each_pixel_centre(flip, turns):
    top, left, crop_hw = 3, 5, (7, 10)  # not square: turns swap the sizes
    out = apply(coded(16, 20), top, left, crop_hw, flip, turns)
    matrix = grid_transform(top, left, crop_hw, flip, turns)
    ys, xs = np.mgrid[top:top + crop_hw[0], left:left + crop_hw[1]]
    mapped = np.tensordot(matrix[:2], np.stack([xs, ys, np.ones_like(xs)]), axes=1)
    x_out, y_out = np.rint(mapped).astype(int)
    np.testing.assert_array_equal(mapped, np.stack([x_out, y_out]))  # whole pixels
    np.testing.assert_array_equal(out[y_out, x_out], np.stack([ys, xs], -1))


@pytest.mark.parametrize("flip,turns", CASES)
def test_a_box_covers_exactly_the_pixels_it_covered(flip, turns):
    top, left, crop_hw = 2, 4, (9, 12)
    out_hw = crop_hw[::-1] if turns % 2 else crop_hw
    matrix = grid_transform(top, left, crop_hw, flip, turns)
    rng = np.random.default_rng(turns + 4 * flip)
    x0 = rng.integers(left, left + crop_hw[1] - 1, 20)
    y0 = rng.integers(top, top + crop_hw[0] - 1, 20)
    x1 = x0 + rng.integers(1, left + crop_hw[1] - x0 + 1)
    y1 = y0 + rng.integers(1, top + crop_hw[0] - y0 + 1)
    boxes = np.stack([x0, y0, x1, y1], 1).astype(np.float32)
    moved = transform_boxes(boxes, matrix, out_hw)
    assert moved.dtype == np.float32 and moved.shape == boxes.shape
    canvas = np.zeros((16, 20), bool)
    for box, new in zip(boxes.astype(int), moved, strict=True):
        canvas[:] = False
        canvas[box[1]:box[3], box[0]:box[2]] = True
        np.testing.assert_array_equal(new, tight_box(apply(canvas, top, left, crop_hw, flip,
                                                           turns)))
    # Pixel edges: a horizontal flip maps x to w - x, not w - 1 - x.
    if flip and turns == 0:
        np.testing.assert_array_equal(moved[:, 0], crop_hw[1] - (boxes[:, 2] - left))
    # Mapped back through the inverse: the original boxes (they lie inside the crop).
    back = transform_boxes(moved, np.linalg.inv(matrix), (16, 20))
    np.testing.assert_allclose(back, boxes, atol=1e-5)


@pytest.mark.parametrize("flip,turns", CASES)
def test_affine_becomes_t_a_t_inverse_and_maps_back(flip, turns):
    affine = np.array([[0.99, -0.05, 1.7], [0.04, 1.02, -2.3]], np.float32)
    matrix = grid_transform(6, 1, (20, 20), flip, turns)
    moved = transform_affine(affine, matrix)
    assert moved.dtype == np.float32 and moved.shape == (2, 3)
    point = np.array([9.25, 4.5, 1.0])  # a point of the input grid, and its image
    target = np.append(affine.astype(float) @ point, 1.0)
    np.testing.assert_allclose(moved.astype(float) @ (matrix @ point), (matrix @ target)[:2],
                               atol=1e-4)
    np.testing.assert_allclose(transform_affine(moved, np.linalg.inv(matrix)), affine, atol=1e-5)
    linear = moved[:, :2].astype(float)  # still a small rotation and scale (same orientation)
    assert np.linalg.det(linear) > 0 and abs(np.linalg.det(linear) - np.linalg.det(
        affine[:, :2].astype(float))) < 1e-5


@pytest.mark.parametrize("flip,turns", CASES)
def test_azimuths_turn_with_the_image(flip, turns):
    matrix = grid_transform(0, 0, (8, 8), flip, turns)
    for azimuth in (0.0, 37.5, 90.0, 200.0, 359.0):
        vector = np.array([math.sin(math.radians(azimuth)), -math.cos(math.radians(azimuth))])
        new = float(transform_azimuth(np.float32(azimuth), flip, turns))
        assert 0.0 <= new < 360.0
        np.testing.assert_allclose(
            [math.sin(math.radians(new)), -math.cos(math.radians(new))],
            matrix[:2, :2] @ vector, atol=1e-6)
    assert transform_azimuth(np.asarray(10.0, np.float32), flip, turns).dtype == np.float32


# --- boxes that leave the crop ------------------------------------------------------------------


def test_boxes_leaving_the_crop_become_zero_area_and_keep_their_slots():
    optical = np.zeros((32, 32, 3), np.uint8)
    boxes = np.array([[2, 2, 6, 6], [20, 3, 30, 9], [10, 10, 22, 20], [0, 0, 32, 32]],
                     np.float32)
    example = {"optical": optical, "boxes": boxes, "box_classes": np.arange(4, dtype=np.int32),
               "object_heights": np.array([3.0, 4.0, 5.0, 6.0], np.float32)}
    augment = PairedAugment(crop_size=16)
    for seed in range(40):
        out = augment.random_map(dict(example, where=coded(32, 32)),
                                 np.random.default_rng(seed))
        top, left = (int(v) for v in out["where"].reshape(-1, 2).min(axis=0))
        assert out["boxes"].shape == (4, 4) and out["boxes"].dtype == np.float32
        assert out["box_classes"] is example["box_classes"]  # per-box arrays untouched
        assert out["object_heights"] is example["object_heights"]
        x0, y0, x1, y1 = out["boxes"].T
        assert ((0 <= x0) & (x0 <= x1) & (x1 <= 16) & (0 <= y0) & (y0 <= y1) & (y1 <= 16)).all()
        for k, box in enumerate(boxes):
            canvas = np.zeros((32, 32), bool)
            canvas[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = True
            visible = canvas[out["where"][..., 0], out["where"][..., 1]]
            area = (x1[k] - x0[k]) * (y1[k] - y0[k])
            if visible.any():  # clipped to the visible part, exactly (an axis-aligned box)
                np.testing.assert_array_equal(out["boxes"][k], tight_box(visible))
            else:
                assert area == 0, (seed, k, top, left)
    assert (transform_boxes(np.zeros((0, 4), np.float32), np.eye(3), (8, 8))).shape == (0, 4)


# --- rendered scenes ----------------------------------------------------------------------------


def test_rendered_instances_lie_in_their_transformed_boxes():
    source = SynthSource(seed=5, size=96, length=4, options={"with_t2": False,
                                                              "with_registration": False})
    checked_inside = checked_partial = 0
    for index in range(len(source)):
        example = source[index]
        instances, boxes = example["instances"], example["boxes"]
        for k in range(len(boxes)):  # SynthVHR boxes are the tight boxes of the instances
            np.testing.assert_array_equal(boxes[k], tight_box(instances == k + 1))
        for seed in range(3):
            out = augmented(example, 10 * index + seed, crop_size=64)
            top, left = (int(v) for v in out["where"].reshape(-1, 2).min(axis=0))
            assert out["boxes"].shape == boxes.shape
            np.testing.assert_array_equal(out["box_classes"], example["box_classes"])
            for k, (box, new) in enumerate(zip(boxes, out["boxes"], strict=True)):
                mask = out["instances"] == k + 1
                inside = (box[0] >= left and box[2] <= left + 64 and box[1] >= top
                          and box[3] <= top + 64)
                if inside:
                    np.testing.assert_array_equal(new, tight_box(mask))
                    checked_inside += 1
                rows, cols = np.nonzero(mask)
                assert ((cols >= new[0]) & (cols < new[2]) & (rows >= new[1])
                        & (rows < new[3])).all()
                if mask.any() and not inside:
                    checked_partial += 1
    assert checked_inside >= 10 and checked_partial >= 1, (checked_inside, checked_partial)


def test_augmented_affine_maps_augmented_sar_onto_augmented_sar_warped():
    size, crop = 128, 80
    turns_seen = set()
    for index in range(2):
        example = render_pair(3, index, size, with_t2=False, with_registration=True)
        for seed in range(4):
            out = augmented(example, seed, crop, where=True)
            where = out.pop("where")
            turns_seen.add((where[0, 0, 0] < where[-1, 0, 0], where[0, 0, 1] < where[0, -1, 1],
                            where[0, 0, 0] == where[0, -1, 0]))
            affine = out["affine"].astype(float)
            assert out["affine"].dtype == np.float32 and out["affine"].shape == (2, 3)
            inverse = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))
            ys, xs = np.mgrid[:crop, :crop]
            source = np.tensordot(inverse[:2], np.stack([xs, ys, np.ones_like(xs)]), axes=1)
            inside = ((source >= 0) & (source <= crop - 1)).all(axis=0)
            assert inside.mean() > 0.6
            valid = out["valid_warped"]
            margin = ((source >= 0.01) & (source <= crop - 1.01)).all(axis=0)
            assert valid[margin].all()
            expected = bilinear(out["sar"][..., 0], source[0][inside], source[1][inside])
            np.testing.assert_allclose(out["sar_warped"][..., 0][inside], expected, atol=2e-3)
            # and the scene's azimuths stay those of the image frame (0-d float32)
            for name in ("sun_azimuth", "look_azimuth"):
                assert out[name].shape == () and out[name].dtype == np.float32
            assert out["gsd"] is example["gsd"]
    assert len(turns_seen) >= 3  # flips and rotations really happened


def test_no_augmentation_leaves_the_labels_alone():
    example = render_pair(1, 0, 48, with_t2=False)
    out = PairedAugment(crop_size=None, flips=False, rotations=False).random_map(
        dict(example), np.random.default_rng(0))
    for key in example:
        np.testing.assert_array_equal(out[key], example[key], err_msg=key)
