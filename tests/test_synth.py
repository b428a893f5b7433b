"""SynthVHR (mars_jax.data.synth): the output contract, determinism, the imaging physics of both
modalities checked against geometry computed here from the labels, and label consistency."""

import math
import pickle

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mars_jax.data import synth
from tests.helpers import bilinear

SEED = 3


def render(index, size=128, seed=SEED, **options):
    return synth.render_pair(seed, index, size, **options)


def unit(azimuth_deg):
    """(x, y) unit vector of an azimuth: clockwise from image-up, y pointing down."""
    angle = math.radians(azimuth_deg)
    return np.array([math.sin(angle), -math.cos(angle)])


def moved(mask, vector):
    """mask moved by the vector rounded to whole pixels: out[y, x] = mask[y - dy, x - dx]."""
    dx, dy = (int(v) for v in np.rint(vector))
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dx) < w and abs(dy) < h:
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def swept(mask, vector):
    """Union of the mask moved by t * vector, t in [0, 1] in steps of at most one pixel: the
    ground a prism with this footprint covers when projected along ``vector``."""
    steps = max(1, int(np.ceil(np.hypot(*vector))))
    out = np.zeros_like(mask)
    for t in np.linspace(0.0, 1.0, steps + 1):
        out |= moved(mask, t * vector)
    return out


def longer(vector, pixels):
    return vector * (1.0 + pixels / max(np.hypot(*vector), 1e-9))


def grow(mask, pixels=1):
    return ndimage.binary_dilation(mask, iterations=pixels)


def shrink(mask, pixels=1):
    return ndimage.binary_erosion(mask, iterations=pixels)


def luminance(image):
    return image.astype(float) @ [0.299, 0.587, 0.114]


def angle_between(a_deg, b_deg):
    return abs((a_deg - b_deg + 180.0) % 360.0 - 180.0)


def mean_db(values_db):
    """dB of the mean intensity."""
    return 10 * np.log10(np.mean(10 ** (values_db / 10)))


def sar_shifts(example, height):
    """Layover (towards the sensor) and radar-shadow (away) displacements of a height, px."""
    theta = math.radians(float(example["incidence"]))
    look, gsd = unit(float(example["look_azimuth"])), float(example["gsd"])
    return -look * height / math.tan(theta) / gsd, look * height * math.tan(theta) / gsd


def tree_influence(example, pixels_per_metre_toward, pixels_per_metre_away):
    """Pixels that tree crowns (of any allowed canopy height) may brighten or shadow."""
    trees = example["landcover"] == synth.TREES
    top = synth.CANOPY_HEIGHT_RANGE[1]
    return grow(trees | swept(trees, pixels_per_metre_toward * top)
                | swept(trees, pixels_per_metre_away * top), 2)


# --- contract ------------------------------------------------------------------------------------

EXPECTED = {
    "optical": (np.uint8, (3,)), "sar": (np.float32, (1,)), "valid": (np.bool_, ()),
    "landcover": (np.uint8, ()), "height": (np.float32, ()), "instances": (np.int32, ()),
    "road": (np.bool_, ()), "optical_t2": (np.uint8, (3,)), "sar_t2": (np.float32, (1,)),
    "change": (np.bool_, ()), "damage": (np.uint8, ()), "sar_warped": (np.float32, (1,)),
    "valid_warped": (np.bool_, ()),
}
SCALARS = ("gsd", "sun_azimuth", "sun_elevation", "look_azimuth", "incidence", "looks")


def test_output_contract():
    size = 96
    example = render(0, size)
    assert set(example) == set(EXPECTED) | set(SCALARS) | {
        "boxes", "box_classes", "object_heights", "affine"}
    for key, (dtype, tail) in EXPECTED.items():
        assert example[key].dtype == dtype, key
        assert example[key].shape == (size, size, *tail), key
    k = len(example["boxes"])
    assert example["boxes"].shape == (k, 4) and example["boxes"].dtype == np.float32
    assert example["box_classes"].shape == (k,) and example["box_classes"].dtype == np.int32
    assert example["object_heights"].shape == (k,)
    assert example["object_heights"].dtype == np.float32
    assert example["affine"].shape == (2, 3) and example["affine"].dtype == np.float32
    for name in SCALARS:
        assert isinstance(example[name], np.ndarray), name
        assert example[name].shape == () and example[name].dtype == np.float32, name
    assert example["valid"].all()
    assert all(isinstance(value, np.ndarray) for value in example.values())
    for key in ("sar", "sar_t2", "sar_warped"):
        assert np.isfinite(example[key]).all() and example[key].min() >= synth.DB_FLOOR
    assert len(synth.CLASS_NAMES) == 7 and synth.CLASS_NAMES[synth.BUILDING] == "building"


def test_extras_are_optional_and_change_nothing_else():
    full = render(1)
    lean = render(1, with_t2=False, with_registration=False)
    assert set(full) - set(lean) == {"optical_t2", "sar_t2", "change", "damage", "sar_warped",
                                     "affine", "valid_warped"}
    for key, value in lean.items():
        np.testing.assert_array_equal(value, full[key], err_msg=key)
    clean = render(1, speckle=False)
    np.testing.assert_array_equal(clean["optical"], full["optical"])
    assert not np.array_equal(clean["sar"], full["sar"])
    fewer = render(1, small_objects=False)
    assert not (fewer["landcover"] == synth.SMALL_OBJECT).any()
    assert (fewer["box_classes"] == synth.BOX_BUILDING).all()
    buildings = full["box_classes"] == synth.BOX_BUILDING
    np.testing.assert_array_equal(fewer["object_heights"], full["object_heights"][buildings])


def test_deterministic_independent_of_call_order_and_index_dependent():
    first, second = render(4), render(5)
    again_second, again_first = render(5), render(4)
    for key in first:
        np.testing.assert_array_equal(first[key], again_first[key], err_msg=key)
        np.testing.assert_array_equal(second[key], again_second[key], err_msg=key)
    assert not np.array_equal(first["optical"], second["optical"])
    assert not np.array_equal(render(4, seed=SEED + 1)["optical"], first["optical"])


def test_options_fix_the_acquisition_and_defaults_are_in_range():
    fixed = dict(gsd=0.4, looks=3.0, incidence=41.0, look_azimuth=400.0, sun_azimuth=-30.0,
                 sun_elevation=33.0)
    example = render(2, **fixed)
    expected = fixed | {"look_azimuth": 40.0, "sun_azimuth": 330.0}
    for name, value in expected.items():
        assert float(example[name]) == pytest.approx(value, abs=1e-4), name
    for index in range(6):
        drawn = render(index, 48, with_t2=False, with_registration=False)
        assert synth.GSD_RANGE[0] <= drawn["gsd"] <= synth.GSD_RANGE[1]
        assert synth.INCIDENCE_RANGE[0] <= drawn["incidence"] <= synth.INCIDENCE_RANGE[1]
        assert synth.LOOKS_RANGE[0] <= drawn["looks"] <= synth.LOOKS_RANGE[1]
        assert synth.SUN_ELEVATION_RANGE[0] <= drawn["sun_elevation"] <= 90.0


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(colour="red"), TypeError, "colour"),
    (dict(size=31), ValueError, "size"),
    (dict(size=64.0), ValueError, "size"),
    (dict(size=True), ValueError, "size"),
    (dict(index=-1), ValueError, "index"),
    (dict(gsd=0.0), ValueError, "gsd"),
    (dict(incidence=80.0), ValueError, "incidence"),
    (dict(looks=0.5), ValueError, "looks"),
    (dict(sun_elevation=float("nan")), ValueError, "sun_elevation"),
    (dict(look_azimuth="east"), ValueError, "look_azimuth"),
    (dict(with_t2=1), ValueError, "with_t2"),
])
def test_bad_arguments_raise_naming_them(kwargs, error, words):
    arguments = dict(seed=0, index=0, size=64) | kwargs
    with pytest.raises(error, match=words):
        synth.render_pair(**arguments)


# --- SAR physics ---------------------------------------------------------------------------------


def test_water_is_darker_than_built_up_in_sar():
    """Over several scenes: median dB of open water (away from any object's or tree's returns)
    at least 10 dB below that of built-up returns (displaced roofs and layover)."""
    checked = 0
    for index in range(40):
        example = render(index, 192, with_t2=False, with_registration=False)
        water = example["landcover"] == synth.WATER
        buildings = np.flatnonzero(example["box_classes"] == synth.BOX_BUILDING) + 1
        if water.sum() < 500 or len(buildings) < 2:
            continue
        built_up = np.zeros_like(water)
        influence = tree_influence(example, *sar_shifts(example, 1.0))
        for k in range(1, len(example["boxes"]) + 1):
            footprint = example["instances"] == k
            layover, shadow = sar_shifts(example, float(example["object_heights"][k - 1]))
            influence |= grow(swept(footprint, layover) | swept(footprint, shadow), 2)
            if k in buildings:
                built_up |= (swept(footprint, layover) & ~footprint) | moved(footprint, layover)
        open_water = shrink(water, 2) & ~influence
        sar = example["sar"][..., 0]
        if open_water.sum() < 200:
            continue
        gap = np.median(sar[built_up]) - np.median(sar[open_water])
        assert gap >= 10.0, (index, gap)
        checked += 1
        if checked == 4:
            break
    assert checked == 4


def _building_sar_checks(example):
    """Per-building geometry checks on a speckle-free image; yields one record per building
    whose neighbourhood is free of other objects' and trees' returns."""
    sar = example["sar"][..., 0]
    noise_floor = sar.min()  # thermal noise alone: radar shadow
    instances = example["instances"]
    look = unit(float(example["look_azimuth"]))
    count = len(example["boxes"])
    footprints = {k: instances == k for k in range(1, count + 1)}
    shifts = {k: sar_shifts(example, float(example["object_heights"][k - 1])) for k in footprints}
    zones = {k: grow(swept(footprints[k], longer(shifts[k][0], 4))
                     | swept(footprints[k], longer(shifts[k][1], 4)), 2) for k in footprints}
    base = tree_influence(example, *sar_shifts(example, 1.0))
    base |= grow(example["landcover"] == synth.WATER, 2)
    for k in np.flatnonzero(example["box_classes"] == synth.BOX_BUILDING) + 1:
        footprint, (layover, shadow) = footprints[k], shifts[k]
        excluded = base.copy()
        for other in footprints:
            if other != k:
                excluded |= zones[other]
        expected_layover = swept(footprint, layover) & ~footprint
        expected_shadow = swept(footprint, shadow) & ~footprint
        shadow_core = shrink(expected_shadow) & ~excluded
        beyond_shadow = swept(footprint, longer(shadow, 3)) & ~grow(expected_shadow | footprint)
        layover_core = shrink(expected_layover) & ~excluded
        beyond_layover = swept(footprint, longer(layover, 3)) & ~grow(expected_layover | footprint)
        # Pixels within one pixel of the outline, on its sensor-facing or far side.
        outline = grow(footprint) & ~shrink(footprint)
        inside_behind, inside_ahead = moved(footprint, -3 * look), moved(footprint, 3 * look)
        front = outline & inside_behind & ~inside_ahead
        back = outline & inside_ahead & ~inside_behind
        beyond_shadow &= ~excluded
        beyond_layover &= ~excluded
        zone = zones[k] & ~excluded
        if min(shadow_core.sum(), beyond_shadow.sum(), layover_core.sum(),
               beyond_layover.sum(), (front & ~excluded).sum(), (back & ~excluded).sum()) < 3:
            continue
        ground = np.median(sar[beyond_layover])
        bright = zone & (sar >= np.median(sar[layover_core]) + 4.0)
        yield {
            "shadow_at_noise_floor": np.mean(sar[shadow_core] <= noise_floor + 0.01),
            "lit_beyond_shadow": np.mean(sar[beyond_shadow] > noise_floor + 2.0),
            "layover_above_ground_db": np.median(sar[layover_core]) - ground,
            "layover_brighter": np.mean(sar[layover_core] > ground + 1.0),
            "brightest_on_front_edge": bool(front[zone & (sar == sar[zone].max())].all()),
            "bright_on_back_edge": np.mean(bright[back & ~excluded]),
            "front_minus_back_db": (mean_db(sar[front & ~excluded])
                                    - mean_db(sar[back & ~excluded])),
        }


@pytest.mark.parametrize("look_azimuth, incidence", [(45.0, 35.0), (160.0, 30.0), (280.0, 45.0)])
def test_sar_layover_double_bounce_and_shadow_geometry(look_azimuth, incidence):
    """Expected regions come from each footprint, height, look azimuth, incidence and gsd:
    layover towards the sensor by h / tan(theta), radar shadow away by h * tan(theta), the
    double bounce on the footprint edge facing the sensor; each checked within one pixel."""
    records = []
    for index in range(4):
        example = render(index, 256, look_azimuth=look_azimuth, incidence=incidence, gsd=0.5,
                         speckle=False, with_t2=False, with_registration=False)
        records += list(_building_sar_checks(example))
    assert len(records) >= 4
    for record in records:
        assert record["shadow_at_noise_floor"] >= 0.98, record
        assert record["lit_beyond_shadow"] >= 0.9, record
        assert record["layover_above_ground_db"] >= 3.0, record
        assert record["layover_brighter"] >= 0.9, record
        assert record["brightest_on_front_edge"], record
        assert record["bright_on_back_edge"] <= 0.1, record
        assert record["front_minus_back_db"] >= 8.0, record


@pytest.mark.parametrize("looks", [1.0, 4.0, 16.0])
def test_speckle_is_gamma_with_cv_one_over_sqrt_looks(looks):
    """Intensity ratio to the speckle-free image over the whole scene, and intensity over a
    homogeneous area (radar shadow: thermal noise only), both have CV = 1/sqrt(L) +- 10%."""
    target = 1.0 / math.sqrt(looks)
    homogeneous = 0
    for index in range(3):
        example = render(index, 256, looks=looks, with_t2=False, with_registration=False)
        clean = render(index, 256, looks=looks, speckle=False, with_t2=False,
                       with_registration=False)
        sar, truth = example["sar"][..., 0], clean["sar"][..., 0]
        unclipped = sar > synth.DB_FLOOR + 1.0
        ratio = 10 ** ((sar[unclipped] - truth[unclipped]) / 10)
        assert ratio.mean() == pytest.approx(1.0, rel=0.03)
        assert ratio.std() / ratio.mean() == pytest.approx(target, rel=0.1)
        intensity = 10 ** (sar[truth == truth.min()] / 10)
        if len(intensity) >= 1000:
            assert intensity.std() / intensity.mean() == pytest.approx(target, rel=0.1)
            homogeneous += 1
    assert homogeneous >= 2


# --- optical physics -----------------------------------------------------------------------------


@pytest.mark.parametrize("sun_azimuth", [150.0, 230.0, 20.0])
def test_optical_shadows_fall_opposite_the_sun(sun_azimuth):
    """The scene lit at 50 degrees over the same scene lit from the zenith (no shadows) is
    albedo-free: shadowed ground drops to the sky term alone. Shadow pixels must fill the
    footprints swept by h / tan(elevation) / gsd away from the sun, within one pixel; for
    isolated buildings the centroid of footprint + shadow sits half that vector from the
    footprint's (a box swept along a vector is symmetric about its midpoint)."""
    elevation = 50.0
    away = -unit(sun_azimuth)
    centroid_errors = []
    for index in range(10):
        if index >= 4 and len(centroid_errors) >= 2:
            break
        options = dict(sun_azimuth=sun_azimuth, gsd=0.5, small_objects=False, with_t2=False,
                       with_registration=False)
        lit = render(index, 256, sun_elevation=elevation, **options)
        zenith = render(index, 256, sun_elevation=90.0, **options)
        reference = luminance(zenith["optical"])
        dark = luminance(lit["optical"]) < 0.5 * np.maximum(reference, 1.0)
        per_metre = away / math.tan(math.radians(elevation)) / float(lit["gsd"])
        objects = lit["instances"] > 0
        unknown = tree_influence(lit, 0 * per_metre, per_metre) | objects | (reference < 25)
        frame = np.ones_like(objects)
        frame[1:-1, 1:-1] = False
        sweeps = {}
        for k in range(1, len(lit["boxes"]) + 1):
            footprint = lit["instances"] == k
            sweeps[k] = (footprint, per_metre * float(lit["object_heights"][k - 1]))
            x0, y0, x1, y1 = lit["boxes"][k - 1]
            if min(x0, y0) == 0 or max(x1, y1) == 256:  # its unseen part shades the border
                entry = frame & grow(footprint, int(x1 - x0 + y1 - y0))
                unknown |= swept(entry, sweeps[k][1])
        expected = np.zeros_like(objects)
        for footprint, vector in sweeps.values():
            expected |= swept(footprint, vector)
        expected &= ~objects
        assert dark[shrink(expected) & ~unknown].mean() >= 0.98  # recall, one pixel in
        assert (~grow(expected))[dark & ~unknown].mean() <= 0.01  # precision, one pixel out
        for k, (footprint, vector) in sweeps.items():
            region = grow(swept(footprint, vector), 3)
            crowded = (region & unknown & ~footprint).any() or any(
                (region & grow(swept(f, v))).any() for j, (f, v) in sweeps.items() if j != k)
            if lit["box_classes"][k - 1] != synth.BOX_BUILDING or crowded:
                continue
            shadow = dark & region & ~footprint
            offset = (np.argwhere(shadow | footprint).mean(0) - np.argwhere(footprint).mean(0))
            centroid_errors.append(np.hypot(*(2 * offset[::-1] - vector)))
            direction = math.degrees(math.atan2(offset[1], -offset[0]))  # azimuth of the offset
            assert angle_between(direction, sun_azimuth + 180.0) < 5.0
    assert len(centroid_errors) >= 2
    assert max(centroid_errors) <= 1.0


# --- labels --------------------------------------------------------------------------------------


def test_labels_are_consistent():
    states = set()
    for index in range(8):
        example = render(index, 160, with_registration=False)
        instances, landcover = example["instances"], example["landcover"]
        boxes, classes = example["boxes"], example["box_classes"]
        heights = example["object_heights"]
        k = len(boxes)
        assert len(classes) == len(heights) == k and instances.max() <= k
        kind = np.concatenate([[-1], classes])[instances]
        for j in range(1, k + 1):
            rows, cols = np.nonzero(instances == j)
            assert len(rows) > 0
            np.testing.assert_array_equal(boxes[j - 1], [cols.min(), rows.min(),
                                                          cols.max() + 1, rows.max() + 1])
        building, small = kind == synth.BOX_BUILDING, kind == synth.BOX_SMALL_OBJECT
        np.testing.assert_array_equal(landcover == synth.BUILDING, building)
        np.testing.assert_array_equal(landcover == synth.SMALL_OBJECT, small)
        np.testing.assert_array_equal(example["height"] > 0, building)
        np.testing.assert_array_equal(example["height"][building],
                                      heights[instances[building] - 1])
        low, high = synth.BUILDING_HEIGHT_RANGE
        building_heights = heights[classes == synth.BOX_BUILDING]
        assert ((building_heights >= low) & (building_heights <= high)).all()
        np.testing.assert_array_equal(landcover == synth.ROAD,
                                      example["road"] & (instances == 0))
        assert landcover.max() < len(synth.CLASS_NAMES)
        damage = example["damage"]
        np.testing.assert_array_equal(np.isin(damage, [synth.INTACT, synth.DAMAGED,
                                                       synth.DESTROYED]), building)
        assert not (damage == synth.NEW_BUILDING)[instances > 0].any()
        np.testing.assert_array_equal(example["change"], damage >= synth.DAMAGED)
        for j in np.flatnonzero(classes == synth.BOX_BUILDING) + 1:
            assert len(np.unique(damage[instances == j])) == 1
        states |= set(np.unique(damage).tolist())
        changed = example["change"] & (damage == synth.DESTROYED)
        if changed.any():
            difference = np.abs(example["optical_t2"].astype(int) - example["optical"])
            assert difference[changed].mean() > 2 * difference[~example["change"]].mean()
    assert states == set(range(len(synth.DAMAGE_NAMES)))


def test_road_network_is_connected():
    for index in range(6):
        road = render(index, 256, with_t2=False, with_registration=False)["road"]
        assert road.any()
        _, components = ndimage.label(road, structure=np.ones((3, 3)))
        assert components == 1, index


# --- registration --------------------------------------------------------------------------------


def test_registration_affine_maps_sar_onto_sar_warped():
    for index in range(3):
        size = 128
        example = render(index, size, with_t2=False)
        affine = example["affine"].astype(float)
        linear = affine[:, :2]
        scale = math.sqrt(abs(np.linalg.det(linear)))
        rotation = math.degrees(math.atan2(linear[1, 0], linear[0, 0]))
        centre = np.full(2, (size - 1) / 2)
        assert 0.95 <= scale <= 1.05 and abs(rotation) <= 3.0
        assert np.all(np.abs(affine @ np.append(centre, 1) - centre) <= 0.03 * size + 1e-3)
        inverse = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))
        ys, xs = np.mgrid[:size, :size]
        source = np.tensordot(inverse[:2], np.stack([xs, ys, np.ones_like(xs)]), axes=1)
        inside = ((source >= 0) & (source <= size - 1)).all(axis=0)
        margin = ((source >= 0.01) & (source <= size - 1.01)).all(axis=0)
        outside = ((source < -0.01) | (source > size - 0.99)).any(axis=0)
        valid = example["valid_warped"]
        assert valid[margin].all() and not valid[outside].any()
        assert 0.8 < valid.mean() < 1.0
        expected = bilinear(example["sar"][..., 0], source[0][inside], source[1][inside])
        warped = example["sar_warped"][..., 0]
        np.testing.assert_allclose(warped[inside], expected, atol=2e-3)
        assert (warped[~valid] == synth.DB_FLOOR).all()


# --- primitives, data source, preview ------------------------------------------------------------


def test_rasterize_follows_pixel_centres_tiles_and_shifts():
    square = np.array([[[0.5, 0.5], [3.5, 0.5], [3.5, 3.5], [0.5, 3.5]]])
    raster = synth.rasterize(square, 1, (6, 6), np.int32)
    expected = np.zeros((6, 6), np.int32)
    expected[1:4, 1:4] = 1
    np.testing.assert_array_equal(raster, expected)
    rng = np.random.default_rng(0)
    corner = rng.uniform(5, 20, (1, 1, 2))
    quad = corner + np.array([[0, 0], [9.3, 2.1], [7.7, 11.4], [-1.6, 8.8]])
    q0, q1, q2, q3 = quad[0]
    near, far = (q0 + q1) / 2, (q2 + q3) / 2  # split from mid edge 0-1 to mid edge 2-3
    halves = np.stack([np.stack([q0, near, far, q3]), np.stack([near, q1, q2, far])])
    whole = synth.rasterize(quad, 1, (40, 40), np.int32)
    tiled = synth.rasterize(halves, 1, (40, 40), np.int32)
    np.testing.assert_array_equal(tiled, whole)  # no gap, no overlap along the shared edge
    diagonal, other = q2 - q0, q3 - q1
    assert abs(whole.sum() - 0.5 * abs(diagonal[0] * other[1] - diagonal[1] * other[0])) < 12
    shifted = synth.rasterize(quad + np.array([3.0, -2.0]), 1, (40, 40), np.int32)
    np.testing.assert_array_equal(shifted, np.roll(whole, (-2, 3), axis=(0, 1)))


def test_rasterize_tiles_halves_split_through_pixel_centres():
    """Boxes split along an axis through their centre, on a pixel centre: each pixel of the
    box in exactly one half, whatever the direction each half walks the shared edge."""
    angles = np.random.default_rng(1).uniform(0, np.pi, 64)
    along = np.stack([np.cos(angles), np.sin(angles)], axis=1)[:, None, :]
    across = np.stack([-np.sin(angles), np.cos(angles)], axis=1)[:, None, :]
    centre, a, b = np.array([20.0, 20.0]), 9.3 * along, 4.7 * across
    first = np.concatenate([centre + a + b, centre - a + b, centre - a + 0 * b,
                            centre + a + 0 * b], axis=1)
    second = np.concatenate([centre + a + 0 * b, centre - a + 0 * b, centre - a - b,
                             centre + a - b], axis=1)
    whole = np.concatenate([centre + a + b, centre - a + b, centre - a - b, centre + a - b],
                           axis=1)
    for k in range(len(angles)):
        halves = synth.rasterize(np.stack([first[k], second[k]]), 1, (40, 40), np.int32)
        np.testing.assert_array_equal(halves, synth.rasterize(whole[k:k + 1], 1, (40, 40),
                                                              np.int32))


def test_sweep_is_the_minkowski_sum_with_a_segment():
    square = np.array([[[10.0, 10.0], [20.0, 10.0], [20.0, 20.0], [10.0, 20.0]]])
    swept_square = synth.sweep(square, np.array([[6.0, 8.0]]))
    raster = synth.rasterize(swept_square, 1, (48, 48), np.int32)
    mask = synth.rasterize(square, 1, (48, 48), np.int32) > 0
    assert raster.max() == 1  # one convex polygon
    assert (raster[mask] == 1).all() and (raster[moved(mask, [6, 8])] == 1).all()
    assert abs(raster.sum() - (100 + 10 * 8 + 10 * 6)) <= 24


def test_data_source_is_random_access():
    source = synth.SynthSource(seed=1, length=10, size=48, options={"with_t2": False})
    assert len(source) == 10
    np.testing.assert_array_equal(source[7]["sar"], synth.render_pair(1, 7, 48)["sar"])
    assert "optical_t2" not in source[7] and "sar_warped" in source[7]
    with pytest.raises(IndexError):
        source[10]
    with pytest.raises(TypeError, match="bogus"):
        synth.SynthSource(options={"bogus": True})


def test_data_source_is_checked_hashable_and_picklable():
    source = synth.SynthSource(seed=2, size=40, length=5, options=(("with_t2", False),))
    assert source == synth.SynthSource(seed=2, size=40, length=5, options={"with_t2": False})
    assert hash(source) == hash(pickle.loads(pickle.dumps(source)))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[3]["sar"], source[3]["sar"])
    default = synth.SynthSource()
    assert dict(default.options) == {"with_t2": False, "with_registration": False}
    for bad in (dict(seed=-1), dict(size=16), dict(length=1.5), dict(seed=True),
                dict(options={"gsd": 5.0}), dict(options={"speckle": 1})):
        with pytest.raises(ValueError):
            synth.SynthSource(**bad)


def test_preview_writes_a_png_grid(tmp_path):
    path = tmp_path / "grid.png"
    synth.main(["--preview", str(path), "--count", "2", "--size", "48", "--panel", "40"])
    with Image.open(path) as image:
        width, height = image.size
        assert image.mode == "RGB"
    assert width >= 7 * 40 and height >= 2 * 40
