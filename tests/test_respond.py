"""Disaster response (``python -m mars_jax.respond``): building polygons against the planted
buildings of a SynthVHR scene, the command end to end on GeoTIFFs with a planted
misregistration, and its bad inputs. (Registration by a fine-tuned head on such a scene:
test_registration.py's slow test, which trains one.)"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import rasterio
from scipy import ndimage

from mars_jax import inference
from mars_jax.data.scene import open_scene
from mars_jax.data.synth import render_pair, warp
from mars_jax.data.synth.constants import DAMAGE_NAMES
from mars_jax.inference.respond import (
    OUTPUTS,
    RespondError,
    building_polygons,
    check_damage_model,
    implausible,
    summarise,
)
from mars_jax.respond import respond_files
from tests.test_scene_inference import TRANSFORM, write_tif

ONE = jax.devices()[:1]
SIZE = 192
# A planted misregistration: the SAR content at optical pixel p sits at PLANTED @ p.
ANGLE = np.deg2rad(1.0)
PLANTED = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 6.0], [np.sin(ANGLE), np.cos(ANGLE), -4.0]])
pytestmark = pytest.mark.xdist_group("scene")


@pytest.fixture(scope="module")
def event(tmp_path_factory):
    """Pre-event optical and post-event SAR GeoTIFFs of one scene, the SAR misregistered."""
    root = tmp_path_factory.mktemp("event")
    scene = render_pair(3, 1, SIZE, with_t2=True)
    write_tif(root / "pre.tif", scene["optical"])
    moved, inside = warp(scene["sar_t2"][..., 0], PLANTED)
    write_tif(root / "post.tif", np.where(inside, moved, 0.0).astype(np.float32), nodata=0.0)
    np.savetxt(root / "planted.txt", PLANTED)
    return root, scene


def components(labels: np.ndarray) -> list[tuple[int, int]]:
    """(pixels, majority class) of each 4-connected building footprint: the reference."""
    found, count = ndimage.label(labels > 0)
    out = []
    for index in range(1, count + 1):
        classes = labels[found == index]
        values, counts = np.unique(classes, return_counts=True)
        best = counts.max()
        out.append((len(classes), int(values[counts == best].max())))
    return sorted(out)


def test_building_polygons_are_the_planted_buildings(event, tmp_path):
    """The ground-truth damage map polygonised: one feature per planted footprint, its pixel
    count and majority class, across polygonising strips too."""
    _, scene = event
    labels = scene["damage"]
    assert (labels > 0).sum() > 200  # the scene has buildings
    write_tif(tmp_path / "truth.tif", labels, nodata=255)
    expected = components(labels)
    for strip in (1024, 37):  # one strip, and strips cutting through buildings
        features = building_polygons(tmp_path / "truth.tif", DAMAGE_NAMES, strip=strip)
        got = sorted((f["properties"]["pixels"], f["properties"]["class_id"])
                     for f in features)
        assert got == expected, strip
    first = features[0]
    assert first["geometry"]["type"] in ("Polygon", "MultiPolygon")
    lon, lat = np.asarray(first["geometry"]["coordinates"][0])[0][:2]
    assert 14.9 < lon < 15.1 and 36.1 < lat < 36.2  # WGS 84 (UTM 33N near 500 km E, 4000 km N)
    assert first["properties"]["area_m2"] == pytest.approx(first["properties"]["pixels"]
                                                           * 0.25)
    summary = summarise(features, DAMAGE_NAMES)
    assert summary["buildings"] == len(expected)
    assert sum(summary["buildings_by_class"].values()) == len(expected)


def test_respond_end_to_end_with_the_planted_transform(event, damage_bundle, tmp_path):
    """``--transform`` with the planted misregistration: the SAR the damage head reads is
    back in register with the optical image; damage.tif is on the optical grid and the
    polygons and summary are those of the map written."""
    root, scene = event
    out = tmp_path / "out"
    lines = []
    assert respond_files(str(root / "pre.tif"), str(root / "post.tif"), str(damage_bundle),
                         str(out), transform=str(root / "planted.txt"), tile=32, overlap=8,
                         progress=False, log=lines.append) == 0, lines
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    np.testing.assert_allclose(summary["registration"]["transform"], PLANTED, atol=1e-12)
    with rasterio.open(out / "damage.tif") as src:
        assert src.transform == TRANSFORM and src.crs.to_epsg() == 32633
        labels = src.read(1)
    truth = scene["sar_t2"][..., 0]
    inner = (slice(12, -12), slice(12, -12))
    errors = {}
    for name, correction in (("registered", PLANTED), ("as georeferenced", None)):
        with open_scene(root / "pre.tif", root / "post.tif", sar_correction=correction) as s:
            read = s.read(0, 0, SIZE, SIZE)
        # 5x5 means: the structure, not the speckle two bilinear resamplings smooth anyway
        smooth = ndimage.uniform_filter(read["sar"][..., 0], 5) - ndimage.uniform_filter(
            truth, 5)
        errors[name] = float(np.median(np.abs(smooth[inner])))
    # Registered: the planted shift undone (a residue of resampling); as georeferenced it is
    # off by the planted ~6 px.
    assert errors["registered"] < 0.3 and errors["as georeferenced"] > 4 * errors[
        "registered"], errors
    features = json.loads((out / "buildings.geojson").read_text())["features"]
    assert summary["buildings"] == len(features)
    assert sorted((f["properties"]["pixels"], f["properties"]["class_id"]) for f in features
                  ) == components(np.where(labels == 255, 0, labels))


def test_implausible_registration_fits_are_rejected_with_their_reason():
    """A fit on few inliers, with a scale or shear the georeferenced grids cannot have, or
    moving the windows by more than half a window, is not used; the planted misregistration
    (1 degree, a few px) is."""
    centres = np.array([[64.0, 64.0], [192.0, 64.0], [64.0, 192.0], [192.0, 192.0]])
    assert implausible(PLANTED, 500, centres, 128) is None
    assert implausible(None, 0, centres, 128) == "RANSAC found no transform"
    assert implausible(PLANTED, 5, centres, 128) == "5 RANSAC inliers, fewer than 20"
    assert implausible(PLANTED, 5, centres, 128, min_inliers=5) is None
    stretched = np.array([[1.3, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert implausible(stretched, 500, centres, 128).startswith("scale 1.000-1.300")
    sheared = np.array([[1.0, 0.6, 0.0], [0.0, 1.0, 0.0]])  # singular values 1.34, 0.75
    assert "scale 0.74" in implausible(sheared, 500, centres, 128)
    far = np.array([[1.0, 0.0, 70.0], [0.0, 1.0, 0.0]])
    assert implausible(far, 500, centres, 128) == (
        "windows moved by up to 70 px, more than half a window (64)")
    assert implausible(far, 500, centres, 256) is None
    # 3 degrees about the origin moves the window centred at (192, 192) by 14 px.
    turned = np.array([[np.cos(0.05), -np.sin(0.05), 0.0], [np.sin(0.05), np.cos(0.05), 0.0]])
    assert implausible(turned, 500, centres, 128) is None
    assert "more than half a window (8)" in implausible(turned, 500, centres, 16)


def test_respond_registers_zero_shot_by_default_and_names_bad_inputs(event, damage_bundle,
                                                                      tmp_path, repo_root):
    root, _ = event
    out = tmp_path / "out"
    lines = []
    assert respond_files(str(root / "pre.tif"), str(root / "post.tif"), str(damage_bundle),
                         str(out), tile=32, register_tile=64, register_windows=4,
                         progress=False, log=lines.append) == 0, lines
    registration = json.loads((out / "summary.json").read_text())["registration"]
    assert registration["method"] == "pretrained CGCL patch embeddings (zero-shot)"
    assert len(registration["windows"]) == 4 and registration["matches"] > 0
    # Used, or rejected with its reason logged and the georeferencing kept.
    assert (registration["transform"] is None) == (registration["rejected"] is not None)
    if registration["rejected"]:
        assert any(registration["rejected"] in line and "georeferencing alone" in line
                   for line in lines), lines
    # Outputs already there are kept unless --overwrite.
    before = (out / "damage.tif").read_bytes()
    assert respond_files(str(root / "pre.tif"), str(root / "post.tif"), str(damage_bundle),
                         str(out), log=lines.append) == 1
    assert "already holds" in lines[-1] and (out / "damage.tif").read_bytes() == before
    # The command line: --noregister keeps the georeferencing; --overwrite replaces.
    done = subprocess.run(
        [sys.executable, "-m", "mars_jax.respond", f"--pre-optical={root / 'pre.tif'}",
         f"--post-sar={root / 'post.tif'}", f"--bundle={damage_bundle}", f"--out={out}",
         "--noregister", "--tile=32", "--overlap=8", "--batch=4", "--sar_kind=db",
         "--overwrite", "--noprogress"], cwd=repo_root, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registration"]["method"].startswith("skipped (--noregister)")
    assert summary["scene"]["sar"]["rule"] == "--sar-kind db"
    assert respond_files(str(root / "pre.tif"), str(root / "post.tif"), str(damage_bundle),
                         str(tmp_path / "x"), transform=str(tmp_path / "none.json"),
                         log=lines.append) == 1
    assert "--transform" in lines[-1] and "none.json: no such file" in lines[-1]
    assert respond_files(str(root / "pre.tif"), str(root / "post.tif"), str(damage_bundle),
                         str(tmp_path / "x"), transform="t.txt", register=False,
                         log=lines.append) == 2
    predictor = inference.load(damage_bundle, devices=ONE)
    encoders = inference.Predictor(predictor.encoder, what="model", modalities=("optical",
                                                                                "sar"),
                                   source="an encoders bundle", devices=ONE)
    with pytest.raises(RespondError, match=r"an encoders bundle holds no task head: respond "
                       r"needs a damage segmentation head"):
        check_damage_model(encoders)
    optical_only = inference.Predictor(predictor.model, what="task", modalities=("optical",),
                                       source="an optical damage head", devices=ONE)
    with pytest.raises(RespondError, match=r"trained without \['sar'\]"):
        check_damage_model(optical_only)


def test_the_demo_benchmark_scores_buildings_and_the_registration_used(damage_bundle, tmp_path,
                                                                     repo_root, monkeypatch,
                                                                     capsys):
    """bench/respond_demo.py: its building matcher on a known case, and the script with the
    planted transform given (``--planted``): no registration error is left."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("respond_demo",
                                                  repo_root / "bench" / "respond_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    truth = np.zeros((16, 16), np.uint8)
    truth[1:5, 1:5], truth[8:12, 8:14] = 1, 3
    predicted = truth.copy()
    predicted[8:12, 8:14] = 2  # found, wrong class
    predicted[14:16, 0:2] = 1  # a building that is not there
    assert demo.building_matches(truth, predicted) == {
        "planted": 2, "predicted": 3, "found": 2, "recall": 1.0, "precision": 2 / 3,
        "class_agreement": 0.5}
    monkeypatch.setattr(sys, "argv", ["respond_demo.py", f"--damage={damage_bundle}",
                                      "--size=128", f"--out={tmp_path}", "--planted",
                                      f"--picture={tmp_path / 'overlay_copy.png'}"])
    demo.main()
    record = json.loads(capsys.readouterr().out)
    assert record["registration"] == "given (--transform)" and record["rejected"] is None
    assert record["corner_error_px"] == 0.0 and record["planted_misregistration_px"] > 1.0
    assert record["buildings"]["planted"] > 0 and (tmp_path / "overlay_copy.png").is_file()
