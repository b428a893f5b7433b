"""Raster readers and the SAR / optical / label conversion rules of mars_jax.data.io."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from mars_jax.data import io
from tests.conftest import TERRAMESH_DIR as TERRAMESH

SCENE = "282D_485L_3_3"
SCENE_TRANSFORM = (10.0, 0.0, 790236.0403820039, 0.0, -10.0, 7198039.252334285)


@pytest.mark.parametrize("folder, count, dtype", [("S1RTC", 2, "float64"), ("S2RGB", 3, "uint8"),
                                                  ("LULC", 1, "uint8")])
def test_reads_terramesh_geotiffs_with_georeferencing(folder, count, dtype):
    path = TERRAMESH / folder / f"{SCENE}.tif"
    array, meta = io.read_raster(path)
    assert array.shape == (224, 224, count) and array.dtype == dtype
    assert (meta.height, meta.width, meta.count, meta.dtype) == (224, 224, count, dtype)
    assert meta.crs == "EPSG:32722" and meta.georeferenced
    assert meta.transform == pytest.approx(SCENE_TRANSFORM)
    assert len(meta.descriptions) == count
    with rasterio.open(path) as dataset:  # band b of the file is channel b - 1
        np.testing.assert_array_equal(array[..., -1], dataset.read(count))


def test_reads_png_and_jpeg_without_georeferencing(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    rows, cols = np.mgrid[0:20, 0:30]
    smooth = np.stack([rows * 12, cols * 8, rows * 3 + cols * 4], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "smooth.jpg", quality=95)

    array, meta = io.read_raster(tmp_path / "rgb.png")
    np.testing.assert_array_equal(array, rgb)
    assert meta.crs is None and meta.transform is None and not meta.georeferenced
    array, meta = io.read_raster(tmp_path / "grey16.png")
    assert array.shape == (20, 30, 1) and meta.count == 1
    np.testing.assert_array_equal(array[..., 0], grey16)
    array, meta = io.read_raster(tmp_path / "smooth.jpg")
    assert array.shape == (20, 30, 3) and array.dtype == np.uint8 and meta.crs is None
    assert np.abs(array.astype(int) - smooth).max() <= 8  # lossy, but the same picture


def _truncate(source: Path, target: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


@pytest.mark.parametrize("name", ["truncated.tif", "header_only.tif", "truncated.png",
                                  "missing.tif", "not_an_image.png"])
def test_unreadable_files_raise_naming_the_file(tmp_path, name):
    path = tmp_path / name
    if name == "truncated.tif":
        _truncate(TERRAMESH / "S1RTC" / f"{SCENE}.tif", path)
    elif name == "header_only.tif":
        _truncate(TERRAMESH / "S1RTC" / f"{SCENE}.tif", path, keep=0.0001)
    elif name == "truncated.png":
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / "full.png")
        _truncate(tmp_path / "full.png", path)
    elif name == "not_an_image.png":
        path.write_text("hello")
    with pytest.raises(io.RasterReadError, match=name):
        io.read_raster(path)


@pytest.mark.parametrize("kind, raw, scale, offset, expected_db", [
    ("db", np.array([-12.5, 3.0, -31.8]), 1.0, 0.0, [-12.5, 3.0, -31.8]),
    ("intensity", np.array([100.0, 0.01, 1.0, 2.0]), 1.0, 0.0, [20.0, -20.0, 0.0, 3.0103]),
    ("amplitude", np.array([10.0, 0.5, 1.0]), 1.0, 0.0, [20.0, -6.0206, 0.0]),
    ("amplitude", np.array([10, 100, 255], np.uint8), 1.0, 0.0, [20.0, 40.0, 48.1308]),
    ("intensity", np.array([1000, 10, 65535], np.uint16), 1e-3, 0.0, [0.0, -20.0, 18.1648]),
    ("db", np.array([40, 100], np.uint8), 0.5, -50.0, [-30.0, 0.0]),  # quantised dB
])
def test_sar_to_db_matches_hand_computed_values(kind, raw, scale, offset, expected_db):
    db, valid = io.sar_to_db(raw[None, :, None], kind, scale=scale, offset=offset)
    assert db.dtype == np.float32 and db.shape == (1, len(raw), 1)
    np.testing.assert_allclose(db[0, :, 0], expected_db, atol=1e-4)
    assert valid.shape == (1, len(raw)) and valid.all()


@pytest.mark.parametrize("kind", io.SAR_KINDS)
def test_sar_nodata_becomes_invalid_at_a_finite_floor(kind):
    raw = np.array([[[0.0, 1.0], [np.nan, 1.0], [np.inf, 1.0], [-np.inf, 1.0], [-9999.0, 1.0],
                     [2.0, 2.0]]])  # last pixel: data in both bands
    db, valid = io.sar_to_db(raw, kind, nodata=-9999.0)
    assert np.isfinite(db).all()
    np.testing.assert_array_equal(valid, [[False] * 5 + [True]])
    np.testing.assert_array_equal(db[0, :5, 0], io.DB_FLOOR)
    assert db[0, 0, 1] != io.DB_FLOOR  # the valid band of an invalid pixel keeps its value


@pytest.mark.parametrize("kind", ["amplitude", "intensity"])
def test_non_positive_linear_values_are_invalid(kind):
    db, valid = io.sar_to_db(np.array([[[-1.0], [0.5]]]), kind, offset=-0.5)
    np.testing.assert_array_equal(valid, [[False, False]])
    np.testing.assert_array_equal(db, io.DB_FLOOR)


def test_negative_db_values_are_valid_and_unknown_kind_is_refused():
    _, valid = io.sar_to_db(np.array([[[-25.0]]]), "db")
    assert valid.all()
    with pytest.raises(ValueError, match="power"):
        io.sar_to_db(np.ones((1, 1, 1)), "power")


def test_optical_uint8_is_kept_and_a_single_band_becomes_grey():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out, valid = io.optical_to_uint8(rgb, scale=7.0)  # uint8 ignores the scale
    np.testing.assert_array_equal(out, rgb)
    assert valid.all()
    grey, _ = io.optical_to_uint8(rgb[..., :1])
    np.testing.assert_array_equal(grey, np.repeat(rgb[..., :1], 3, axis=-1))
    with pytest.raises(ValueError, match="1 or 3 bands"):
        io.optical_to_uint8(rgb[..., :2])


def test_optical_fixed_scale_rounds_and_clips():
    raw = np.array([[[0, 1000, 3000], [1499, 1500, 65535]]], np.uint16)
    out, valid = io.optical_to_uint8(raw, scale=0.1)
    np.testing.assert_array_equal(out, [[[0, 100, 255], [150, 150, 255]]])
    assert valid.all()


def test_optical_percentile_stretch_ignores_nodata():
    values = np.linspace(0.0, 1000.0, 101)  # one band: 2nd percentile 20, 98th percentile 980
    raw = np.stack([values, values, values], axis=-1)[None]
    raw[0, 50] = -1.0  # declared nodata, in all bands: not part of the statistics
    raw[0, 51, 1] = np.nan  # NaN in one band invalidates the pixel
    out, valid = io.optical_to_uint8(raw, nodata=-1.0)
    assert not valid[0, 50] and not valid[0, 51] and valid.sum() == 99
    np.testing.assert_array_equal(out[0, 50], 0)
    np.testing.assert_array_equal(out[0, 51], 0)
    assert out[0, 0, 0] == 0 and out[0, 100, 0] == 255
    low, high = np.percentile(np.delete(values, [50, 51]), [2, 98])
    assert out[0, 30, 2] == round((300 - low) / (high - low) * 255)


def test_select_bands_by_number_or_description():
    array = np.arange(4 * 3, dtype=np.float32).reshape(2, 2, 3)
    meta = io.RasterMeta(path=Path("s1.tif"), height=2, width=2, count=3, dtype="float32",
                         descriptions=("VV", "VH", None))
    np.testing.assert_array_equal(io.select_bands(array, meta, [1]), array[..., :1])
    np.testing.assert_array_equal(io.select_bands(array, meta, ["vh", 1]), array[..., [1, 0]])
    with pytest.raises(io.BandSelectionError, match=r"s1.tif.*band 4"):
        io.select_bands(array, meta, [4])
    with pytest.raises(io.BandSelectionError, match="HH"):
        io.select_bands(array, meta, ["HH"])


def test_labels_to_uint8_accepts_class_ids_only():
    np.testing.assert_array_equal(io.labels_to_uint8(np.array([[[1.0], [9.0]]])), [[1, 9]])
    assert io.labels_to_uint8(np.array([[[3]]], np.int32)).dtype == np.uint8
    for bad in (np.array([[[1.5]]]), np.array([[[256]]], np.uint16), np.array([[[np.nan]]]),
                np.zeros((1, 1, 2), np.uint8)):
        with pytest.raises(ValueError):
            io.labels_to_uint8(bad)


def test_crs_and_transform_comparisons():
    assert io.same_crs("EPSG:32722", rasterio.crs.CRS.from_epsg(32722).to_wkt())
    assert not io.same_crs("EPSG:32722", "EPSG:32631")
    shifted_noise = (10.0, 0.0, 790236.04 + 1e-4, 0.0, -10.0, 7198039.25)
    one_pixel_off = (10.0, 0.0, 790246.04, 0.0, -10.0, 7198039.25)
    base = (10.0, 0.0, 790236.04, 0.0, -10.0, 7198039.25)
    assert io.transforms_match(base, shifted_noise)
    assert not io.transforms_match(base, one_pixel_off)
    assert not io.transforms_match(base, (20.0, 0.0, 790236.04, 0.0, -20.0, 7198039.25))
