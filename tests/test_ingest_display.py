"""Ingestion of display-format pairs (8-bit PNG, SAR as 3 identical grey channels, black
rotation fill, per-dataset subfolders) with default flags, and the unit checks around it."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from mars_jax.data import io
from mars_jax.data.contract import SAR_DB_MEAN, SAR_DB_STD
from mars_jax.data.ingest import SUMMARY_FILE, IngestConfig, build_parser, ingest
from mars_jax.data.records import ShardSource, list_shards
from mars_jax.data.synth.api import render_pair

SIZE = 256
TILE = 128
MARGIN = 32
SHIFTED = "benchmark_b/0003"  # the pair whose SAR the fixture shifts
SHIFT = (24, -16)


def display_dn(db: np.ndarray) -> np.ndarray:
    """dB -> 8-bit display DN 8..255, as SAR benchmarks publish their images."""
    return np.clip(np.rint(8 + (db + 30.0) * 6.0), 8, 255).astype(np.uint8)


def rotation_fill(optical: np.ndarray) -> np.ndarray:
    """Black corners where a rotated image left no pixels (every corner a triangle)."""
    out = optical.copy()
    rows, cols = np.mgrid[:SIZE, :SIZE]
    for r, c in ((rows, cols), (rows, SIZE - 1 - cols), (SIZE - 1 - rows, cols),
                 (SIZE - 1 - rows, SIZE - 1 - cols)):
        out[r + c < SIZE // 3] = 0
    return out


def write_benchmark(root, scenes=(("benchmark_a", "0001", 8), ("benchmark_a", "0002", 1),
                                  ("benchmark_b", "0001", 6), ("benchmark_b", "0003", 9))):
    """``{dataset}/{id}_opt.png`` / ``{id}_sar.png`` pairs; -> {scene id: (optical, sar DN)}."""
    written = {}
    for dataset, name, seed in scenes:
        folder = root / dataset
        folder.mkdir(parents=True, exist_ok=True)
        pair = render_pair(seed, 0, size=SIZE + 2 * MARGIN)  # crops of a larger scene
        dy, dx = SHIFT if f"{dataset}/{name}" == SHIFTED else (0, 0)
        optical = pair["optical"][MARGIN:MARGIN + SIZE, MARGIN:MARGIN + SIZE]
        sar = pair["sar"][MARGIN - dy:MARGIN - dy + SIZE, MARGIN - dx:MARGIN - dx + SIZE]
        dn = display_dn(sar[..., 0])  # SAR content sits (dy, dx) from the optical's
        if seed % 2 == 0:
            optical = rotation_fill(optical)
        Image.fromarray(optical).save(folder / f"{name}_opt.png")
        Image.fromarray(np.repeat(dn[..., None], 3, axis=-1)).save(folder / f"{name}_sar.png")
        written[f"{dataset}/{name}"] = (optical, dn)
    return written


def config(root, **overrides) -> IngestConfig:
    options = dict(optical=root / "pairs", optical_pattern="{id}_opt.png",
                   sar_pattern="{id}_sar.png", recursive=True, out=root / "out", tile=TILE,
                   overlap=0, progress=False)
    return IngestConfig(**(options | overrides))


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("display")
    scenes = write_benchmark(root / "pairs")
    summary = ingest(config(root))
    source = ShardSource(list_shards(root / "out"))
    return root, scenes, summary, [source[i] for i in range(len(source))]


def test_default_flags_give_one_db_channel_in_the_models_statistics(benchmark):
    _, scenes, summary, examples = benchmark
    assert summary.scenes_ok == 4 and summary.tiles_written > 0
    assert {ex["sar"].shape for ex in examples} == {(TILE, TILE, 1)}  # 3 grey copies -> one band
    assert summary.notes("identical_sar_bands") == [3] * 4
    assert summary.sar_kinds() == {"amplitude": 4}
    assert summary.notes("sar_kind_reason")[0] == "uint8 values 8..255 without calibration metadata"
    assert "SAR unit: amplitude in 4 scene(s): uint8 without calibration" in summary.format()
    # Each scene's winsorised (2nd..98th percentile) dB moments are mapped onto N(-12, 6).
    for scene_id in scenes:
        sar = np.concatenate([ex["sar"][ex["valid"]] for ex in examples
                              if str(ex["id"]) == scene_id]).astype(np.float64)
        clipped = np.clip(sar, *np.percentile(sar, (2, 98)))
        assert clipped.mean() == pytest.approx(SAR_DB_MEAN, abs=0.01)
        assert clipped.std() == pytest.approx(SAR_DB_STD, abs=0.01)
    mean, std = summary.sar_stats.mean_std()
    assert abs(mean[0] - SAR_DB_MEAN) < 0.5 and SAR_DB_STD < std[0] < 1.2 * SAR_DB_STD
    written = json.loads((benchmark[0] / "out" / SUMMARY_FILE).read_text())
    assert written["sar_channels"] == 1 and written["sar_kind"] == "amplitude"
    assert written["sar_db_stats"]["mean"] == pytest.approx(mean)
    assert written["sar_normalised_scenes"] == 4


def test_black_rotation_fill_is_invalid_and_ids_carry_their_subfolder(benchmark):
    _, scenes, summary, examples = benchmark
    assert {str(ex["id"]) for ex in examples} == set(scenes)  # benchmark_a/0001, _b/0001 apart
    for ex in examples:
        optical = scenes[str(ex["id"])][0]
        row, col = ex["tile_origin"]
        tile = optical[row:row + TILE, col:col + TILE]
        fill = tile.max(axis=-1) == 0
        corner = np.zeros((SIZE, SIZE), bool)
        corner[np.add.outer(np.arange(SIZE), np.arange(SIZE)) < SIZE // 3] = True
        if str(ex["id"]).endswith("0001") and (row, col) == (0, 0):
            assert fill[:10, :10].all()
        np.testing.assert_array_equal(ex["valid"][fill & corner[row:row + TILE, col:col + TILE]],
                                      False)
    rules = summary.notes("optical_nodata")
    assert len(rules) == 4 and all("black fill" in r["rule"] for r in rules)
    filled = [r["fraction"] for r in rules if r["fraction"] > 0]
    assert filled == [pytest.approx(2 * (SIZE // 3) ** 2 / SIZE**2, abs=0.01)] * 2  # 0001s
    assert "optical no-data: black fill touching the border in 4 scene(s)" in summary.format()


def test_per_scene_records_and_scenes_without_tiles(tmp_path):
    write_benchmark(tmp_path / "pairs")
    summary = ingest(config(tmp_path, max_nodata=0.0))  # any no-data pixel drops a tile
    records = {r.id: r for r in summary.records}
    assert set(records) == {"benchmark_a/0001", "benchmark_a/0002", "benchmark_b/0001",
                            "benchmark_b/0003"}
    assert all(r.tiles_written + r.tiles_dropped == 4 for r in records.values())
    written = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    per_scene = {r["id"]: (r["tiles_written"], r["tiles_dropped"]) for r in written["per_scene"]}
    assert per_scene == {i: (r.tiles_written, r.tiles_dropped) for i, r in records.items()}
    assert written["scenes_without_tiles"] == summary.scenes_without_tiles
    assert all(records[i].tiles_written == 0 for i in summary.scenes_without_tiles)
    for scene_id in summary.scenes_without_tiles:
        assert scene_id in summary.format()


def test_sar_kind_db_on_8bit_dn_is_refused_naming_file_range_and_flag(tmp_path):
    write_benchmark(tmp_path / "pairs")
    summary = ingest(config(tmp_path, sar_kind="db"))
    assert summary.skipped == {"sar_kind": 4} and summary.tiles_written == 0
    bad = summary.bad_inputs[0]
    assert bad.path.name == "0001_sar.png"
    assert re.search(r"--sar-kind db, but dB backscatter .* these values span 8\.\.255",
                     bad.detail), bad.detail
    assert "pass --sar-kind amplitude" in bad.detail and "--force" in bad.detail
    forced = ingest(config(tmp_path, sar_kind="db", force=True, out=tmp_path / "forced"))
    assert forced.tiles_written > 0
    assert forced.notes("sar_kind_rule")[0] == "--sar-kind db --force"


def test_check_alignment_flags_the_shifted_pair(benchmark, tmp_path):
    root = benchmark[0]
    summary = ingest(config(root, check_alignment=True, out=tmp_path / "checked"))
    assert summary.skipped == {"misaligned": 1}
    (bad,) = summary.bad_inputs
    assert bad.path == root / "pairs" / "benchmark_b" / "0003_sar.png"
    assert "--max-shift 16" in bad.detail
    dy, dx = (int(v) for v in re.search(r"dy (-?\d+), dx (-?\d+)", bad.detail).groups())
    assert abs(dy - SHIFT[0]) <= 3 and abs(dx - SHIFT[1]) <= 3
    assert all(abs(s["dy"]) + abs(s["dx"]) <= 4 for s in summary.notes("shift"))
    assert "alignment: 4 pair(s) checked, 1 off by more than 16 px" in summary.format()


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: auto)", "(default: 512)", "(default: 0.3)", "(default: 16.0)"):
        assert default in text


# ---------------------------------------------------------------------------------------------
# The conversions behind it, one by one


def meta(path="x.tif", **fields) -> io.RasterMeta:
    from pathlib import Path

    return io.RasterMeta(path=Path(path), height=4, width=4, count=1, dtype="float32", **fields)


@pytest.mark.parametrize("raw, fields, kind, uncalibrated", [
    (np.full((4, 4, 1), 9, np.uint8), {}, "amplitude", True),  # display DN
    (np.full((4, 4, 1), 900, np.uint16), {}, "amplitude", True),
    (np.linspace(-25, 3, 16, dtype=np.float32).reshape(4, 4, 1), {}, "db", False),
    (np.full((4, 4, 1), 0.05, np.float32), {"units": ("linear power",)}, "intensity", False),
    (np.full((4, 4, 1), 0.3, np.float32), {"tags": {"UNITS": "amplitude"}}, "amplitude", False),
    (np.full((4, 4, 1), -8, np.float32), {"units": ("sigma0_dB",)}, "db", False),
    (np.full((4, 4, 1), 120, np.uint16), {"scales": (0.01,), "offsets": (-20.0,)}, "db", False),
])
def test_sar_kind_auto(raw, fields, kind, uncalibrated):
    # A file's own calibration is applied by the caller (0.01 * 120 - 20 = -18.8 dB fits dB).
    calibration = dict(scale=fields["scales"][0], offset=fields["offsets"][0]) \
        if "scales" in fields else {}
    decided = io.decide_sar_kind(raw, meta(**fields), "auto", **calibration)
    assert (decided.kind, decided.uncalibrated) == (kind, uncalibrated), decided.reason


@pytest.mark.parametrize("raw, requested, message", [
    (np.full((4, 4, 1), 0.05, np.float32), "auto", "cannot tell the unit"),
    (np.full((4, 4, 1), -12, np.float32), "intensity", "intensity cannot be negative"),
    (np.full((4, 4, 1), 200, np.uint8), "db", "--sar-kind amplitude"),
    (np.full((4, 4, 1), -5, np.int16), "auto", "neither amplitude DN nor dB"),
])
def test_sar_kind_refusals_name_the_file_and_the_flag(raw, requested, message):
    with pytest.raises(io.SarKindError, match=message) as refused:
        io.decide_sar_kind(raw, meta("scene_sar.tif"), requested)
    assert "scene_sar.tif" in str(refused.value)
    if requested != "auto":  # --force keeps it
        assert io.decide_sar_kind(raw, meta(), requested, force=True).kind == requested


def test_stated_unit_contradicted_by_the_values_is_refused():
    raw = np.full((4, 4, 1), 150, np.uint8)
    with pytest.raises(io.SarKindError, match="states SAR in db"):
        io.decide_sar_kind(raw, meta(units=("dB",)), "auto")


def test_match_db_statistics_gives_the_winsorised_pixels_the_target_moments():
    rng = np.random.default_rng(0)
    db = rng.gamma(2.0, 4.0, (64, 64, 2)).astype(np.float32) + 20  # skewed, like display DN
    valid = rng.random((64, 64)) > 0.1
    out, gains, offsets = io.match_db_statistics(db, valid, (-12.0, -18.0), (6.0, 4.0))
    for band, (mean, std) in enumerate(((-12.0, 6.0), (-18.0, 4.0))):
        values = out[..., band][valid].astype(np.float64)
        clipped = np.clip(values, *np.percentile(values, (2, 98)))
        assert (clipped.mean(), clipped.std()) == pytest.approx((mean, std), abs=1e-3)
        np.testing.assert_allclose(values, gains[band] * db[..., band][valid] + offsets[band],
                                   atol=1e-4)
    assert (out[~valid] == io.DB_FLOOR).all()


def test_border_black_keeps_black_inside_the_image():
    image = np.full((10, 10, 3), 90, np.uint8)
    image[:3, :3] = 0  # fill in a corner
    image[5:7, 5:7] = 0  # a black roof in the middle
    fill = io.border_black(image)
    assert fill[:3, :3].all() and fill.sum() == 9 and not fill[5:7, 5:7].any()


def test_png_alpha_marks_optical_nodata_and_is_not_a_sar_band(tmp_path):
    rgba = np.full((16, 16, 4), 120, np.uint8)
    rgba[:4, :, 3] = 0  # transparent rows
    Image.fromarray(rgba).save(tmp_path / "a_opt.png")
    grey_alpha = np.stack([np.full((16, 16), 60, np.uint8), rgba[..., 3]], axis=-1)
    Image.fromarray(grey_alpha, mode="LA").save(tmp_path / "a_sar.png")
    summary = ingest(IngestConfig(optical=tmp_path, optical_pattern="{id}_opt.png",
                                  sar_pattern="{id}_sar.png", out=tmp_path / "out", tile=16,
                                  overlap=0, max_nodata=0.5, progress=False))
    (example,) = [ShardSource(list_shards(tmp_path / "out"))[0]]
    assert example["sar"].shape == (16, 16, 1)  # the alpha band is not a polarisation
    assert not example["valid"][:4].any() and example["valid"][4:].all()
    assert summary.notes("optical_nodata")[0]["rule"] == "alpha / mask band"


def test_optical_nodata_value_and_none(tmp_path):
    optical = np.full((16, 16, 3), 50, np.uint8)
    optical[:, :8] = 0
    Image.fromarray(optical).save(tmp_path / "a_opt.png")
    Image.fromarray(np.full((16, 16), 80, np.uint8)).save(tmp_path / "a_sar.png")
    common = dict(optical=tmp_path, optical_pattern="{id}_opt.png", sar_pattern="{id}_sar.png",
                  tile=16, overlap=0, max_nodata=1.0, progress=False)
    for rule, valid_columns in (("auto", 8), ("0", 8), ("50", 8), ("none", 16)):
        ingest(IngestConfig(out=tmp_path / rule, optical_nodata=rule, **common))
        example = ShardSource(list_shards(tmp_path / rule))[0]
        assert example["valid"].all(axis=0).sum() == valid_columns, rule


def test_cli_with_target_statistics_and_a_wider_shift_tolerance(benchmark, tmp_path, capsys):
    from mars_jax.data.ingest import main

    root = benchmark[0]
    status = main(["--optical", str(root / "pairs"), "--optical-pattern", "{id}_opt.png",
                   "--sar-pattern", "{id}_sar.png", "--recursive", "--out", str(tmp_path / "o"),
                   "--tile", str(TILE), "--overlap", "0", "--sar-db-mean", "-10",
                   "--sar-db-std", "5", "--check-alignment", "--max-shift", "40",
                   "--no-progress"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "alignment: 4 pair(s) checked, 0 off by more than 40 px" in printed
    assert "winsorised) mapped onto -10.0 / 5.0 dB" in printed
    written = json.loads((tmp_path / "o" / SUMMARY_FILE).read_text())
    assert written["sar_db_stats"]["mean"][0] == pytest.approx(-10, abs=0.5)
    assert written["scenes"]["ok"] == 4
