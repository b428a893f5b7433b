"""Whole-scene inference: scenes read window by window (``data.scene``), streamed tiled
prediction into GeoTIFFs (``inference.tiled``) against the in-memory sliding window and the
whole-image prediction, co-gridding, bounded memory, bad inputs named, and the command line.

The model is conftest's ``damage_bundle``: a tiny damage head exported from a workdir written
as fine-tuning writes it (perturbed initial parameters: no training, still a real model).
"""

import itertools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from mars_jax import inference
from mars_jax.data import io
from mars_jax.data.scene import SceneError, open_scene
from mars_jax.data.synth import render_pair
from mars_jax.inference.previews import pca_basis
from mars_jax.inference.tiled import TiledError, make_plan, predict_scene
from mars_jax.predict import predict_files
from mars_jax.tasks.sliding import sliding_window_predict, window_starts

ONE = jax.devices()[:1]
CRS = "EPSG:32633"
TRANSFORM = from_origin(500_000.0, 4_000_000.0, 0.5, 0.5)
TILE, OVERLAP = 32, 8
# the 200 x 168 scene's tiles
TILES = len(window_starts(200, TILE, OVERLAP)) * len(window_starts(168, TILE, OVERLAP))
pytestmark = pytest.mark.xdist_group("scene")


def write_tif(path, array, *, crs=CRS, transform=TRANSFORM, nodata=None, **profile):
    array = np.asarray(array)
    array = array[..., None] if array.ndim == 2 else array
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1],
                       height=array.shape[0], count=array.shape[2], dtype=array.dtype,
                       crs=crs, transform=transform, nodata=nodata, **profile) as dst:
        dst.write(np.moveaxis(array, -1, 0))
    return path


@pytest.fixture(scope="module")
def predictor(damage_bundle):
    return inference.load(damage_bundle, devices=ONE, batch_size=4)


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    """A 200 x 168 SynthVHR scene (not a multiple of the tile): uint16 optical with a no-data
    corner, post-event SAR in dB."""
    root = tmp_path_factory.mktemp("scene")
    scene = render_pair(1, 0, 200, with_t2=True)
    optical = scene["optical"][:, :168].astype(np.uint16) * 40 + 100
    optical[:20, :30] = 0
    write_tif(root / "pre.tif", optical, nodata=0)
    write_tif(root / "post.tif", scene["sar_t2"][:, :168])
    return root / "pre.tif", root / "post.tif", scene


def outputs_of(predictor):
    return lambda batch: predictor.predict(optical=batch["optical"], sar=batch["sar"],
                                           valid=batch["valid"]).outputs


def test_tiled_streaming_equals_the_in_memory_sliding_window(predictor, scene_files,
                                                             tmp_path):
    """Cells written as they complete give exactly the blend of the whole scene in memory:
    labels everywhere, seams included; CRS, geotransform and no-data kept."""
    pre, post, _ = scene_files
    with open_scene(pre, post) as scene:
        plan = make_plan(predictor, scene, tile=TILE, overlap=OVERLAP, batch=4,
                         probabilities=True)
        result = predict_scene(predictor, scene, tmp_path / "out.tif", plan, progress=False)
        whole = scene.read(0, 0, 200, 168)
    blended = sliding_window_predict(outputs_of(predictor), {k: v[None] for k, v in
                                                             whole.items()},
                                     window=TILE, overlap=OVERLAP, batch_windows=4,
                                     weighting="gaussian")[0]
    with rasterio.open(tmp_path / "out.tif") as src:
        labels, probabilities = src.read(1), np.moveaxis(src.read()[1:], 0, -1)
        assert src.crs == rasterio.crs.CRS.from_string(CRS) and src.transform == TRANSFORM
        assert src.nodata == 255 and src.count == 1 + 5
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert json.loads(src.tags()["CLASS_NAMES"])[0] == "no building"
        assert src.scales[1] == pytest.approx(1 / 254)
    valid = whole["valid"]
    assert not valid[:20, :30].any() and (labels[:20, :30] == 255).all()  # no-data kept
    np.testing.assert_array_equal(labels[valid], blended.argmax(-1)[valid])
    expected = np.asarray(jax.nn.softmax(blended, -1))
    assert np.abs(probabilities[valid] / 254 - expected[valid]).max() <= 0.5 / 254 + 1e-6
    assert result.tiles == TILES


def test_a_scene_of_one_tile_equals_the_whole_image_prediction(predictor, scene_files,
                                                               tmp_path):
    """No seam at all: the file holds exactly the model's prediction of the whole image; a
    scene smaller than the tile is padded as no-data and cropped back."""
    pre, post, _ = scene_files
    for size, name in ((32, "one"), (24, "small")):
        window = rasterio.windows.Window(40, 60, size + 8, size)
        for src_path, dst_name in ((pre, f"{name}_pre.tif"), (post, f"{name}_post.tif")):
            with rasterio.open(src_path) as src:
                write_tif(tmp_path / dst_name, np.moveaxis(src.read(window=window), 0, -1),
                          transform=src.window_transform(window), nodata=src.nodata)
        with open_scene(tmp_path / f"{name}_pre.tif", tmp_path / f"{name}_post.tif") as scene:
            plan = make_plan(predictor, scene, tile=size + 8 if size == 32 else TILE,
                             overlap=0, batch=1)
            predict_scene(predictor, scene, tmp_path / f"{name}.tif", plan, progress=False)
            padded = scene.read(0, 0, plan.tile, plan.tile)
        whole = predictor.predict(optical=padded["optical"][None], sar=padded["sar"][None],
                                  valid=padded["valid"][None]).labels[0]
        with rasterio.open(tmp_path / f"{name}.tif") as src:
            labels = src.read(1)
        valid = padded["valid"][:size, :size + 8]
        np.testing.assert_array_equal(labels[valid], whole[:size, :size + 8][valid])


def test_sar_on_another_crs_is_brought_onto_the_optical_grid(scene_files, tmp_path):
    """SAR reprojected to WGS 84 (another CRS and pixel size) reads back on the optical grid:
    as GDAL's own reprojection onto that grid puts it, and in register with the original."""
    from rasterio.warp import calculate_default_transform, reproject

    pre, post, scene = scene_files
    bilinear = rasterio.enums.Resampling.bilinear
    with rasterio.open(post) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        moved = np.zeros((height, width), np.float32)
        reproject(src.read(1), moved, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=transform, dst_crs="EPSG:4326", resampling=bilinear)
    write_tif(tmp_path / "post_wgs84.tif", moved, crs="EPSG:4326", transform=transform,
              nodata=0.0)
    back = np.zeros((200, 168), np.float32)
    reproject(moved, back, src_transform=transform, src_crs="EPSG:4326", src_nodata=0.0,
              dst_transform=TRANSFORM, dst_crs=CRS, resampling=bilinear)
    with open_scene(pre, tmp_path / "post_wgs84.tif") as gridded:
        assert gridded.describe()["sar"]["warped_onto_grid"] is True
        read = gridded.read(0, 0, 200, 168)
    inner = (slice(4, -4), slice(4, -4))
    assert read["valid"][inner][20:, 30:].all()
    # Up to GDAL's approximate transformer (the warp's default error threshold, 0.125 px).
    np.testing.assert_allclose(read["sar"][..., 0][inner], back[inner], atol=0.05)
    truth = scene["sar_t2"][:, :168, 0][inner].ravel()
    assert np.corrcoef(read["sar"][..., 0][inner].ravel(), truth)[0, 1] > 0.8


def test_either_modality_alone_predicts(predictor, scene_files, tmp_path):
    """SAR alone (the first hours after a disaster) and optical alone: class maps on their
    own grid, equal to the in-memory sliding window of the same inputs."""
    pre, post, _ = scene_files
    for name, paths in (("sar", {"sar": post}), ("optical", {"optical": pre})):
        with open_scene(**paths) as scene:
            plan = make_plan(predictor, scene, tile=TILE, overlap=OVERLAP, batch=8)
            predict_scene(predictor, scene, tmp_path / f"{name}.tif", plan, progress=False)
            whole = scene.read(0, 0, 200, 168)
        blended = sliding_window_predict(
            lambda b, name=name: predictor.predict(**{name: b[name]}, valid=b["valid"]).outputs,
            {k: v[None] for k, v in whole.items()}, window=TILE, overlap=OVERLAP,
            batch_windows=8, weighting="gaussian")[0]
        with rasterio.open(tmp_path / f"{name}.tif") as src:
            labels = src.read(1)
            assert src.transform == TRANSFORM
        valid = whole["valid"]
        np.testing.assert_array_equal(labels[valid], blended.argmax(-1)[valid])


def test_memory_stays_bounded_windows_read_are_tile_sized(predictor, tmp_path):
    """A scene whose whole-scene accumulators are 12x the budget: every window read is one
    tile, and the blended cells alive at once stay within the overlap band (overlap x width;
    344 rows: the last row of tiles overlaps the one before by --overlap too) plus two
    batches of tiles."""
    size = (344, 416)
    rows = window_starts(size[0], TILE, OVERLAP)
    band = max(a + TILE - b for a, b in itertools.pairwise(rows))
    assert band == OVERLAP
    scene = render_pair(2, 0, 416, with_t2=True)
    write_tif(tmp_path / "pre.tif", scene["optical"][:size[0]])
    write_tif(tmp_path / "post.tif", scene["sar_t2"][:size[0]])
    batch, channels = 4, 5
    with open_scene(tmp_path / "pre.tif", tmp_path / "post.tif", overview=64) as opened:
        plan = make_plan(predictor, opened, tile=TILE, overlap=OVERLAP, batch=batch)
        opened.reads.clear()  # the overview reads that decided the conversions
        result = predict_scene(predictor, opened, tmp_path / "big.tif", plan, progress=False,
                               cog=False)
        reads = list(opened.reads)
    assert reads and all(h <= TILE and w <= TILE for _, h, w in reads), set(reads)
    assert len(reads) == 2 * result.tiles  # one optical and one SAR window per tile
    whole = size[0] * size[1] * (channels + 1) * 4
    budget = (band * size[1] + 2 * batch * TILE * TILE) * (channels + 1) * 4
    assert result.peak_pending_bytes <= budget < whole / 8, (result.peak_pending_bytes,
                                                             budget, whole)
    with rasterio.open(tmp_path / "big.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"  # --nocog: plain
        assert src.block_shapes[0] == (256, 256)  # tiled


def test_scene_windows_share_one_conversion(tmp_path):
    """A uint16 optical scene and uncalibrated uint8 SAR: each window is converted with the
    scene's stretch and dB map, so windows equal the same crop of the whole scene."""
    rng = np.random.default_rng(0)
    optical = rng.integers(200, 3000, (96, 80, 3)).astype(np.uint16)
    optical[:, :40] //= 4  # a dark half: a per-window stretch would differ from the scene's
    sar = rng.integers(1, 256, (96, 80)).astype(np.uint8)
    write_tif(tmp_path / "o.tif", optical)
    write_tif(tmp_path / "s.tif", sar)
    with open_scene(tmp_path / "o.tif", tmp_path / "s.tif", overview=4096) as scene:
        whole = scene.read(0, 0, 96, 80)
        part = scene.read(32, 48, 32, 32)
        described = scene.describe()
    for key in ("optical", "sar", "valid"):
        np.testing.assert_array_equal(part[key], whole[key][32:64, 48:80])
    limits = io.stretch_limits(optical)
    np.testing.assert_array_equal(whole["optical"], io.optical_to_uint8(optical)[0])
    assert described["optical"]["stretch"] == [list(limit) for limit in limits]
    assert described["sar"]["kind"] == "amplitude" and described["sar"]["normalised"]
    db, valid = io.sar_to_db(sar[..., None], "amplitude")
    expected = io.match_db_statistics(db, valid, (-12.0,), (6.0,))[0]
    np.testing.assert_allclose(whole["sar"], expected, atol=1e-4)


def test_bad_inputs_are_named(predictor, scene_files, tmp_path):
    pre, post, scene = scene_files
    write_tif(tmp_path / "nocrs.tif", scene["optical"][:64, :64], crs=None,
              transform=rasterio.transform.Affine.identity())
    with pytest.raises(SceneError, match=r"--optical .*nocrs.tif: the file has no CRS"):
        open_scene(tmp_path / "nocrs.tif", post)
    far = from_origin(900_000.0, 4_000_000.0, 0.5, 0.5)
    write_tif(tmp_path / "far.tif", scene["sar_t2"][:64, :64], transform=far)
    with pytest.raises(SceneError, match=r"--sar .*far.tif and --optical .*pre.tif do not "
                       r"overlap"):
        open_scene(pre, tmp_path / "far.tif")
    with pytest.raises(SceneError, match=r"--sar .*missing.tif: no such file"):
        open_scene(pre, tmp_path / "missing.tif")
    two = np.concatenate([scene["sar_t2"], scene["sar_t2"] - 3], -1)[:64, :64]
    write_tif(tmp_path / "two.tif", two)
    with open_scene(None, tmp_path / "two.tif") as sar_only:
        with pytest.raises(TiledError, match=r"two.tif: 2 SAR band\(s\), the model reads 1"):
            make_plan(predictor, sar_only)
    sar_trained = inference.Predictor(predictor.model, what="task", modalities=("sar",),
                                      source="a SAR-only damage head", devices=ONE)
    with open_scene(pre) as optical_only:
        with pytest.raises(TiledError, match=r"predicts from sar; --optical alone is not one "
                           r"of them: pass --sar"):
            make_plan(sar_trained, optical_only)
        with pytest.raises(TiledError, match=r"--tile=20 must be a positive multiple"):
            make_plan(predictor, optical_only, tile=20)
        with pytest.raises(TiledError, match=r"--overlap=4 must be a multiple of the patch"):
            make_plan(predictor, optical_only, what="embed", tile=32, overlap=4)
        with pytest.raises(TiledError, match=r"--probabilities is for class maps"):
            _regression_plan(optical_only)
    lines = []
    assert predict_files(str(tmp_path / "nope"), str(tmp_path / "o.tif"), optical=str(pre),
                         log=lines.append) == 1
    assert "nope: no such bundle or workdir" in lines[-1]
    (tmp_path / "kept.tif").write_bytes(b"x")
    assert predict_files("b", str(tmp_path / "kept.tif"), optical=str(pre),
                         log=lines.append) == 1
    assert "--overwrite" in lines[-1] and (tmp_path / "kept.tif").read_bytes() == b"x"


def _regression_plan(scene):
    """--probabilities on a regression head (a tiny building-height model)."""
    from flax import nnx

    from configs import pretrain
    from mars_jax.models import MaRSConfig
    from mars_jax.models.heads import HeadConfig
    from mars_jax.tasks import get_task
    from mars_jax.tasks.model import TaskModel

    config = pretrain.get_config("tiny")
    config.model.encoder.depth = 1
    model = TaskModel(MaRSConfig.from_dict(config.model.to_dict()), get_task(
        "building_height"), HeadConfig(channels=8, norm_groups=4), rngs=nnx.Rngs(0))
    height = inference.Predictor(model, what="task", modalities=("optical", "sar"),
                                 source="height", devices=ONE)
    make_plan(height, scene, probabilities=True)


def test_the_command_line_predicts_and_embeds(damage_bundle, scene_files, tmp_path,
                                              repo_root):
    pre, post, _ = scene_files
    done = subprocess.run(
        [sys.executable, "-m", "mars_jax.predict", f"--bundle={damage_bundle}",
         f"--optical={pre}", f"--sar={post}", f"--out={tmp_path / 'pred.tif'}",
         "--tile=32", "--overlap=8", "--batch=8", "--weighting=uniform", "--nocog",
         "--noprogress", "--sar_kind=db"], cwd=repo_root, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "pred.json").read_text())
    assert record["weighting"] == "uniform" and record["cog"] is False
    assert record["scene"]["sar"]["rule"] == "--sar-kind db" and record["tiles"] == TILES
    with rasterio.open(tmp_path / "pred.tif") as src:
        assert src.count == 1 and src.tags()["TASK"] == "damage" and src.transform == TRANSFORM
        assert src.colormap(1)[1] == (255, 127, 14, 255)  # class_palette's second colour
    lines = []
    assert predict_files(str(damage_bundle), str(tmp_path / "emb.tif"), optical=str(pre),
                         sar=str(post), what="embed", embedding="optical", overlap=8,
                         progress=False, log=lines.append) == 0, lines
    with rasterio.open(tmp_path / "emb.tif") as src:
        assert src.transform == TRANSFORM @ rasterio.transform.Affine.scale(8)
        assert (src.height, src.width) == (25, 21) and src.tags()["EMBEDDING"] == "optical"
        embeddings = src.read()
    assert np.isfinite(embeddings[:, 5:, 5:]).all() and np.isnan(embeddings[:, 0, 0]).all()
    from PIL import Image

    assert Image.open(tmp_path / "emb.png").size == (21, 25)


def test_pca_basis_matches_scikit_learn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    samples = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    mean, basis = pca_basis(samples)
    reference = PCA(3).fit(samples)
    np.testing.assert_allclose(mean, reference.mean_, atol=1e-10)
    np.testing.assert_allclose(np.abs(basis.T @ reference.components_.T), np.eye(3),
                               atol=1e-8)
