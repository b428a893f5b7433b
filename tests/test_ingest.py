"""Ingestion of optical / SAR scenes into shards: real TerraMesh GeoTIFFs, PNG pairs, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine

from mars_jax.data import io
from mars_jax.data.ingest import (
    SUMMARY_FILE,
    IngestConfig,
    IngestUsageError,
    StrictStop,
    ingest,
    main,
    tile_starts,
)
from mars_jax.data.records import ShardSource, list_shards
from tests.conftest import TERRAMESH_DIR as TERRAMESH

ROOT = Path(__file__).resolve().parents[1]
TERRAMESH_IDS = sorted(path.stem for path in (TERRAMESH / "S2RGB").glob("*.tif"))


def read_all(out: Path) -> list[dict[str, np.ndarray]]:
    source = ShardSource(list_shards(out))
    return [source[index] for index in range(len(source))]


def write_geotiff(path: Path, array: np.ndarray, crs: str = "EPSG:32631",
                  origin: tuple[float, float] = (500000.0, 4000000.0), pixel: float = 0.5) -> Path:
    array = array[..., None] if array.ndim == 2 else array
    height, width, count = array.shape
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count,
                       dtype=array.dtype, crs=crs,
                       transform=Affine(pixel, 0, origin[0], 0, -pixel, origin[1])) as dataset:
        dataset.write(np.moveaxis(array, -1, 0))
    return path


def random_optical(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def random_sar_db(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-25, -5, (*shape, 1)).astype(np.float32)


def write_pair(root: Path, scene_id: str, shape: tuple[int, int] = (32, 32),
               sar: np.ndarray | None = None, **sar_geo) -> tuple[Path, Path]:
    """A georeferenced optical / SAR GeoTIFF pair in root/opt and root/sar."""
    (root / "opt").mkdir(exist_ok=True)
    (root / "sar").mkdir(exist_ok=True)
    sar = random_sar_db(shape) if sar is None else sar
    return (write_geotiff(root / "opt" / f"{scene_id}.tif", random_optical(shape)),
            write_geotiff(root / "sar" / f"{scene_id}.tif", sar, **sar_geo))


def synthetic_config(root: Path, **overrides) -> IngestConfig:
    options = dict(optical=root / "opt", sar=root / "sar", out=root / "out", tile=16, overlap=0,
                   progress=False)
    return IngestConfig(**(options | overrides))


# ---------------------------------------------------------------------------------------------
# Real TerraMesh fixtures


@pytest.fixture(scope="module")
def terramesh_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("terramesh") / "shards"
    summary = ingest(IngestConfig(optical=TERRAMESH / "S2RGB", sar=TERRAMESH / "S1RTC",
                                  labels=TERRAMESH / "LULC", out=out, tile=112, overlap=16,
                                  shard_size=16, progress=False))
    return out, summary


def test_terramesh_tiles_cover_every_scene(terramesh_run):
    out, summary = terramesh_run
    assert len(TERRAMESH_IDS) == 5
    assert (summary.scenes_found, summary.scenes_ok, summary.scenes_skipped) == (5, 5, 0)
    # 224 pixels, tile 112, stride 96: starts 0, 96 and 112 (the last tile ends on the edge)
    assert (summary.tiles_written, summary.tiles_dropped) == (45, 0)
    assert [path.name for path in summary.shards] == [path.name for path in list_shards(out)]
    assert len(summary.shards) == 3  # 16 + 16 + 13 tiles
    origins = {(str(ex["id"]), *ex["tile_origin"].tolist()) for ex in read_all(out)}
    assert origins == {(scene, row, col) for scene in TERRAMESH_IDS for row in (0, 96, 112)
                       for col in (0, 96, 112)}


def test_terramesh_tiles_decode_to_the_source_pixels(terramesh_run):
    out, _ = terramesh_run
    sources = {}
    for example in read_all(out):
        scene = str(example["id"])
        if scene not in sources:
            sources[scene] = {folder: rasterio.open(TERRAMESH / folder / f"{scene}.tif")
                              for folder in ("S2RGB", "S1RTC", "LULC")}
        files = sources[scene]
        row, col = example["tile_origin"].tolist()
        window = rasterio.windows.Window(col, row, 112, 112)
        np.testing.assert_array_equal(
            example["optical"], np.moveaxis(files["S2RGB"].read(window=window), 0, -1))
        np.testing.assert_array_equal(
            example["sar"],
            np.moveaxis(files["S1RTC"].read(window=window), 0, -1).astype(np.float32))
        np.testing.assert_array_equal(example["landcover"], files["LULC"].read(1, window=window))
        assert example["optical"].dtype == np.uint8 and example["sar"].dtype == np.float32
        assert example["valid"].dtype == bool and example["valid"].all()
        a, b, c, d, e, f = tuple(files["S2RGB"].transform)[:6]
        np.testing.assert_allclose(example["transform"],
                                   [a, b, c + 10.0 * col, d, e, f - 10.0 * row], rtol=0, atol=1e-6)
        assert str(example["crs"]) == files["S2RGB"].crs.to_string()
        assert str(example["crs"]).startswith("EPSG:32")  # WGS 84 / UTM
    assert len(sources) == 5
    for files in sources.values():
        for dataset in files.values():
            dataset.close()


def test_terramesh_summary_json_describes_the_layout(terramesh_run):
    out, _ = terramesh_run
    written = json.loads((out / SUMMARY_FILE).read_text())
    assert written["num_examples"] == 45
    assert written["shards"] == [path.name for path in list_shards(out)]
    assert (written["tile"], written["overlap"]) == (112, 16)
    assert (written["optical_channels"], written["sar_channels"]) == (3, 2)
    assert (written["sar_kind"], written["labels"]) == ("db", "landcover")
    assert written["keys"]["landcover"] == {"dtype": "uint8", "shape": [112, 112]}
    assert written["keys"]["transform"] == {"dtype": "float64", "shape": [6]}
    assert written["bytes"] == sum(path.stat().st_size for path in list_shards(out))
    assert written["bytes_per_tile"] == pytest.approx(written["bytes"] / 45)
    assert written["scenes"] == {"found": 5, "ok": 5, "georeferenced": 5, "skipped": {}}


def test_vv_only_selection_gives_one_sar_channel(tmp_path):
    summary = ingest(IngestConfig(optical=TERRAMESH / "S2RGB", sar=TERRAMESH / "S1RTC",
                                  out=tmp_path, tile=224, overlap=0, sar_bands=(1,),
                                  progress=False))
    examples = read_all(tmp_path)
    assert summary.tiles_written == len(examples) == 5
    for example in examples:
        assert example["sar"].shape == (224, 224, 1) and "landcover" not in example
        with rasterio.open(TERRAMESH / "S1RTC" / f"{example['id']}.tif") as dataset:
            np.testing.assert_array_equal(example["sar"][..., 0],
                                          dataset.read(1).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Pairing, tiling and the no-data rule on synthetic scenes


@pytest.mark.parametrize("length, tile, overlap, starts", [
    (224, 112, 16, [0, 96, 112]), (256, 64, 0, [0, 64, 128, 192]), (112, 112, 16, [0]),
    (100, 112, 16, [0]), (130, 64, 8, [0, 56, 66])])
def test_tile_starts_cover_the_scene(length, tile, overlap, starts):
    assert tile_starts(length, tile, overlap) == starts


def test_png_pairs_by_pattern_in_one_folder(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    amplitude = {}
    for seed, scene in enumerate(["a", "b"]):
        Image.fromarray(random_optical((32, 32), seed)).save(folder / f"{scene}_opt.png")
        amplitude[scene] = np.random.default_rng(seed).integers(1, 256, (32, 32), dtype=np.uint8)
        Image.fromarray(amplitude[scene]).save(folder / f"{scene}_sar.png")
    (folder / "notes.txt").write_text("not a scene")
    summary = ingest(IngestConfig(optical=folder, optical_pattern="{id}_opt.png",
                                  sar_pattern="{id}_sar.png", sar_kind="amplitude",
                                  out=tmp_path / "out", tile=16, overlap=0, progress=False))
    assert (summary.scenes_found, summary.scenes_ok, summary.tiles_written) == (2, 2, 8)
    for example in read_all(tmp_path / "out"):
        row, col = example["tile_origin"]
        dn = amplitude[str(example["id"])][row:row + 16, col:col + 16]
        np.testing.assert_allclose(example["sar"][..., 0], 20 * np.log10(dn.astype(np.float64)),
                                   atol=1e-4)
        assert "crs" not in example and "transform" not in example
        assert example["optical"].shape == (16, 16, 3)
    with pytest.raises(ValueError, match="share a folder"):
        IngestConfig(optical=folder, out=tmp_path / "out2", sar_pattern="{id}_sar.png")


def test_tiles_with_more_than_30_percent_nodata_are_dropped(tmp_path):
    sar = random_sar_db((20, 20))
    no_data = np.zeros((20, 20), bool)
    no_data[:10, :10].flat[:31] = True  # tile (0, 0): 31% -> dropped
    no_data[0:3, 10:20] = True  # tile (0, 10): exactly 30% -> kept
    no_data[10:20, 10:20] = True  # tile (10, 10): 100% -> dropped; tile (10, 0): 0% -> kept
    fills = np.resize(np.array([0.0, np.nan, np.inf, -np.inf], np.float32), no_data.sum())
    sar[no_data, 0] = fills  # zeros and non-finite values alike are no-data
    write_pair(tmp_path, "scene", (20, 20), sar=sar)
    summary = ingest(synthetic_config(tmp_path, tile=10))
    assert (summary.tiles_written, summary.tiles_dropped) == (2, 2)
    kept = {tuple(ex["tile_origin"].tolist()): ex for ex in read_all(tmp_path / "out")}
    assert set(kept) == {(0, 10), (10, 0)}
    assert kept[(0, 10)]["valid"].sum() == 70 and kept[(10, 0)]["valid"].all()
    assert np.isfinite(kept[(0, 10)]["sar"]).all()
    np.testing.assert_array_equal(kept[(0, 10)]["sar"][:3], io.DB_FLOOR)


def test_a_scene_smaller_than_the_tile_is_padded_with_nodata(tmp_path):
    write_pair(tmp_path, "small", (11, 12))
    summary = ingest(synthetic_config(tmp_path, tile=12))
    (example,) = read_all(tmp_path / "out")
    assert summary.tiles_written == 1
    assert example["optical"].shape == (12, 12, 3) and example["sar"].shape == (12, 12, 1)
    assert example["valid"][:11].all() and not example["valid"][11].any()
    assert (example["optical"][11] == 0).all() and (example["sar"][11] == io.DB_FLOOR).all()
    dropped = ingest(synthetic_config(tmp_path, tile=16, out=tmp_path / "out2"))
    assert (dropped.tiles_written, dropped.tiles_dropped) == (0, 1)  # 48% padding > 30%


# ---------------------------------------------------------------------------------------------
# Bad input


def write_bad_inputs(root: Path) -> dict[str, Path]:
    """Good scenes 'good1', 'good2' and one scene per kind of bad input; -> the file to blame."""
    write_pair(root, "good1")
    write_pair(root, "good2")
    blame = {}
    _, sar = write_pair(root, "truncated_tif")
    sar.write_bytes(sar.read_bytes()[: sar.stat().st_size // 2])
    blame["unreadable"] = sar
    Image.fromarray(random_optical((32, 32))).save(root / "opt" / "truncated_png.png")
    Image.fromarray(np.ones((32, 32), np.uint8)).save(root / "sar" / "truncated_png.png")
    data = (root / "opt" / "truncated_png.png").read_bytes()
    (root / "opt" / "truncated_png.png").write_bytes(data[: len(data) // 2])
    blame["unreadable_png"] = root / "opt" / "truncated_png.png"
    blame["missing_partner"] = write_geotiff(root / "opt" / "lonely.tif", random_optical((32, 32)))
    write_pair(root, "twice")
    Image.fromarray(random_optical((32, 32))).save(root / "opt" / "twice.png")
    blame["duplicate_id"] = root / "opt" / "twice.png"  # the first of twice.png, twice.tif
    blame["size_mismatch"] = write_pair(root, "size", sar=random_sar_db((16, 32)))[1]
    blame["crs_mismatch"] = write_pair(root, "crs", crs="EPSG:32632")[1]
    blame["transform_mismatch"] = write_pair(root, "shift", origin=(500001.5, 4000000.0))[1]
    blame["all_nodata"] = write_pair(root, "nan", sar=np.full((32, 32, 1), np.nan, np.float32))[1]
    return blame


def test_bad_inputs_are_skipped_counted_and_good_pairs_still_land(tmp_path):
    blame = write_bad_inputs(tmp_path)
    summary = ingest(synthetic_config(tmp_path))
    assert dict(summary.skipped) == {"unreadable": 2, "missing_partner": 1, "duplicate_id": 1,
                                     "size_mismatch": 1, "crs_mismatch": 1,
                                     "transform_mismatch": 1, "all_nodata": 1}
    assert (summary.scenes_found, summary.scenes_ok, summary.tiles_written) == (10, 2, 8)
    blamed = {bad.reason: bad.path for bad in summary.bad_inputs}
    for reason in ("missing_partner", "duplicate_id", "size_mismatch", "crs_mismatch",
                   "transform_mismatch", "all_nodata"):
        assert blamed[reason] == blame[reason]
    assert {bad.path for bad in summary.bad_inputs if bad.reason == "unreadable"} == {
        blame["unreadable"], blame["unreadable_png"]}
    assert {str(ex["id"]) for ex in read_all(tmp_path / "out")} == {"good1", "good2"}
    written = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert written["scenes"]["skipped"]["unreadable"] == 2 and len(written["bad_inputs"]) == 8
    text = summary.format()
    assert "10 found, 2 ok, 8 skipped" in text and "crs_mismatch 1" in text


def test_an_empty_folder_is_counted_and_writes_nothing(tmp_path):
    write_pair(tmp_path, "scene")
    (tmp_path / "empty").mkdir()
    summary = ingest(synthetic_config(tmp_path, optical=tmp_path / "empty"))
    assert dict(summary.skipped) == {"empty_folder": 1} and summary.scenes_found == 0
    assert summary.tiles_written == 0 and list_shards(tmp_path / "out") == []
    with pytest.raises(IngestUsageError, match="does not exist"):
        ingest(synthetic_config(tmp_path, sar=tmp_path / "nowhere"))


def test_strict_stops_at_the_first_bad_file_and_keeps_finished_shards(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    _, bad_sar = write_pair(tmp_path, "c", crs="EPSG:32632")
    write_pair(tmp_path, "d")
    with pytest.raises(StrictStop, match=r"c\.tif: crs_mismatch") as stopped:
        ingest(synthetic_config(tmp_path, strict=True, shard_size=1))
    assert stopped.value.bad.path == bad_sar and str(bad_sar) in str(stopped.value)
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    assert not out.exists()  # OUT appears only complete; what was done waits for --resume
    assert len(list_shards(partial)) == 8 and not list(partial.glob("*.tmp"))
    assert {str(ex["id"]) for ex in read_all(partial)} == {"a", "b"}
    written = json.loads((partial / SUMMARY_FILE).read_text())
    assert "crs_mismatch" in written["stopped"] and written["num_examples"] == 8
    assert stopped.value.summary.output == partial


def test_out_with_shards_is_refused_unless_overwrite(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    ingest(synthetic_config(tmp_path, shard_size=1))
    out = tmp_path / "out"
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert len(list_shards(out)) == 8
    with pytest.raises(IngestUsageError, match="--overwrite"):
        ingest(synthetic_config(tmp_path, shard_size=100))
    (tmp_path / "empty").mkdir()  # an --overwrite run with nothing to write deletes nothing
    ingest(synthetic_config(tmp_path, optical=tmp_path / "empty", overwrite=True))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    summary = ingest(synthetic_config(tmp_path, shard_size=100, overwrite=True))
    assert [path.name for path in list_shards(out)] == ["tiles-00000.array_record"]
    assert summary.tiles_written == len(read_all(out)) == 8


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_end_to_end_on_terramesh(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mars_jax.data.ingest", "--optical", TERRAMESH / "S2RGB",
               "--sar", TERRAMESH / "S1RTC", "--labels", TERRAMESH / "LULC", "--out", out,
               "--tile", "112", "--overlap", "16", "--sar-bands", "1"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run([str(arg) for arg in command], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "scenes: 5 found, 5 ok, 0 skipped" in result.stdout
    assert "tiles: 45 written, 0 dropped (> 30% no-data); 112x112, overlap 16" in result.stdout
    assert "sar float32[112, 112, 1]" in result.stdout and "landcover uint8" in result.stdout
    assert "5/5" in result.stderr  # the progress bar
    assert json.loads((out / SUMMARY_FILE).read_text())["sar_channels"] == 1


def test_cli_exit_status_for_strict_stop_and_refused_out(tmp_path, capsys):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b", crs="EPSG:32632")
    args = ["--optical", str(tmp_path / "opt"), "--sar", str(tmp_path / "sar"), "--tile", "16",
            "--overlap", "0", "--no-progress", "--out", str(tmp_path / "out")]
    assert main([*args, "--strict"]) == 1
    captured = capsys.readouterr()
    assert "crs_mismatch" in captured.err and "b.tif" in captured.err
    assert "4 written" in captured.out
    with pytest.raises(SystemExit) as refused:
        main(args)
    assert refused.value.code == 2 and "--overwrite" in capsys.readouterr().err
