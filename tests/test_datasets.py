"""Loaders of real downstream datasets, on tiny fixtures written here in each dataset's real
layout (folder names, file names, extensions, label encodings), and the ingested-shards
wrapper on a real ingest of the TerraMesh samples."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine

from mars_jax.data import io
from mars_jax.data.contract import DB_FLOOR, SAR_DB_MEAN, SAR_DB_STD
from mars_jax.data.datasets import (
    DATASETS,
    IGNORE,
    TERRAMESH_LULC_CLASSES,
    DatasetError,
    DatasetWarning,
    Problem,
    SampleError,
    bright,
    dfc23_t2,
    earthmiss,
    ingested_labels,
    open_dataset,
)
from mars_jax.data.ingest import IngestConfig, ingest
from mars_jax.data.records import ShardSource, list_shards
from tests.conftest import TERRAMESH_DIR

SIZE = 32
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# Writers


def write_tif(path: Path, array: np.ndarray, nodata: float | None = None) -> Path:
    array = array[..., None] if array.ndim == 2 else array
    height, width, count = array.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count,
                       dtype=array.dtype, crs="EPSG:32631", nodata=nodata,
                       transform=Affine(0.5, 0, 500000.0, 0, -0.5, 4000000.0)) as dataset:
        dataset.write(np.moveaxis(array, -1, 0))
    return path


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if path.suffix == ".jpg" else {}
    Image.fromarray(array).save(path, **options)
    return path


def rgb(size: int = SIZE) -> np.ndarray:
    return RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)


def sar_dn(size: int = SIZE) -> np.ndarray:
    """8-bit display SAR with a few zero (no-data) pixels."""
    dn = RNG.integers(1, 256, (size, size), dtype=np.uint8)
    dn[0, :3] = 0
    return dn


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def amplitude_db(dn: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        db = np.where(dn > 0, 20 * np.log10(dn.astype(np.float64)), DB_FLOOR)
    return db.astype(np.float32)[..., None]


# ---------------------------------------------------------------------------------------------
# EarthMiss


def write_earthmiss(root: Path, cities=None, per_city: int = 1) -> dict[str, dict]:
    """Every city folder of the official split lists, ``per_city`` samples each."""
    written = {}
    for city in cities or [c for split in earthmiss.CITIES.values() for c in split]:
        for k in range(per_city):
            name = f"{city.split('-')[-1]}_{k:04d}"
            mask = RNG.integers(0, 9, (SIZE, SIZE), dtype=np.uint8)
            dn = sar_dn()
            write_tif(root / city / "images" / "RGB" / f"{name}.tif", rgb())
            write_tif(root / city / "images" / "SAR" / f"{name}_SAR.tif", dn)
            write_tif(root / city / "masks" / f"{name}_mask.tif", mask)
            written[f"{city}/{name}"] = {"mask": mask, "dn": dn}
    return written


@pytest.fixture
def earthmiss_root(tmp_path):
    return tmp_path / "EarthMiss", write_earthmiss(tmp_path / "EarthMiss")


def test_earthmiss_splits_are_the_official_cities(earthmiss_root):
    root, _ = earthmiss_root
    sizes = {split: len(open_dataset("earthmiss", root, split)) for split in earthmiss.CITIES}
    assert sizes == {"train": 7, "val": 3, "test": 3}
    assert len(open_dataset("earthmiss", root, "all")) == 13
    source = open_dataset("earthmiss", root, "test")
    assert [str(source[i]["id"]).split("/")[0] for i in range(3)] == \
        sorted(earthmiss.CITIES["test"])


def test_earthmiss_example_keys_dtypes_labels_and_sar(earthmiss_root):
    root, written = earthmiss_root
    source = open_dataset("earthmiss", root, "val", sar_normalise="none")
    for index in range(len(source)):
        example = source[index]
        assert set(example) == {*source.keys, "id"}
        assert (example["optical"].dtype, example["optical"].shape) == (np.uint8, (SIZE, SIZE, 3))
        assert (example["sar"].dtype, example["sar"].shape) == (np.float32, (SIZE, SIZE, 1))
        assert example["valid"].dtype == bool and example["landcover"].dtype == np.uint8
        assert example["id"].shape == () and example["id"].dtype.kind == "U"
        truth = written[str(example["id"])]
        # 0 = no label -> 255, k -> k - 1 (the official loader's mask - 1)
        np.testing.assert_array_equal(
            example["landcover"], np.where(truth["mask"] == 0, IGNORE, truth["mask"] - 1))
        np.testing.assert_allclose(example["sar"], amplitude_db(truth["dn"]), atol=1e-5)
        np.testing.assert_array_equal(example["valid"], truth["dn"] > 0)
    assert len(earthmiss.CLASSES) == 8


def test_earthmiss_default_gives_uncalibrated_dn_the_reference_db_statistics(earthmiss_root):
    root, written = earthmiss_root
    example = open_dataset("earthmiss", root, "val")[0]
    truth = written[str(example["id"])]
    expected = io.match_db_statistics(amplitude_db(truth["dn"]), truth["dn"] > 0,
                                      (SAR_DB_MEAN,), (SAR_DB_STD,))[0]
    np.testing.assert_allclose(example["sar"], expected, atol=1e-5)
    assert abs(np.median(example["sar"][example["valid"]]) - SAR_DB_MEAN) < 3


def test_earthmiss_missing_partner_and_unknown_labels_are_named(tmp_path):
    root = tmp_path / "EarthMiss"
    write_earthmiss(root, cities=["Nanjing", "Singapore"], per_city=2)
    (root / "Nanjing" / "images" / "SAR" / "Nanjing_0001_SAR.tif").unlink()
    write_tif(root / "Singapore" / "masks" / "Singapore_0000_mask.tif",
              np.full((SIZE, SIZE), 12, np.uint8))
    with pytest.raises(DatasetError) as caught:
        open_dataset("earthmiss", root, cities=["Nanjing", "Singapore"])
    assert "Nanjing_0001.tif: missing_partner" in str(caught.value)
    assert "Nanjing_0001_SAR" in str(caught.value)
    # label values are checked when read (or up front with scan="full")
    with pytest.warns(DatasetWarning, match=r"Nanjing_0001\.tif: missing_partner"):
        source = open_dataset("earthmiss", root, cities=["Nanjing", "Singapore"],
                              skip_bad=True)
    assert len(source) == 3
    index = [s.id for s in source.samples].index("Singapore/Singapore_0000")
    with pytest.raises(SampleError, match=r"Singapore_0000_mask\.tif: bad_labels: label values "
                       r"\[12\]"):
        source[index]
    with pytest.raises(DatasetError, match=r"Singapore_0000_mask\.tif: bad_labels"):
        open_dataset("earthmiss", root, cities=["Nanjing", "Singapore"], scan="full")


def test_earthmiss_missing_city_folder_raises_naming_it(tmp_path):
    root = tmp_path / "EarthMiss"
    write_earthmiss(root, cities=earthmiss.CITIES["val"][:2])
    with pytest.raises(DatasetError, match="Russian-Engels: missing_folder"):
        open_dataset("earthmiss", root, "val", skip_bad=True)  # a layout problem: no skip


# ---------------------------------------------------------------------------------------------
# BRIGHT


def write_bright(root: Path, events=("bata-explosion", "libya-flood"), per_event: int = 2,
                 splits=None) -> dict[str, dict]:
    written = {}
    for event in events:
        for k in range(per_event):
            tile = f"{event}_{k:08d}"
            damage = RNG.integers(0, 4, (SIZE, SIZE), dtype=np.uint8)
            dn = sar_dn()
            write_tif(root / "pre-event" / f"{tile}_pre_disaster.tif", rgb())
            write_tif(root / "post-event" / f"{tile}_post_disaster.tif", dn)
            write_tif(root / "target" / f"{tile}_building_damage.tif", damage)
            written[tile] = {"damage": damage, "dn": dn}
    for split, ids in (splits or {}).items():
        (root / f"{split}_set.txt").write_text("".join(f"{i}\n" for i in ids))
    return written


@pytest.fixture
def bright_root(tmp_path):
    root = tmp_path / "bright"
    written = write_bright(root, splits={
        "train": ["bata-explosion_00000000", "libya-flood_00000001"],
        "val": ["bata-explosion_00000001"], "test": ["libya-flood_00000000"]})
    return root, written


def test_bright_splits_keys_and_damage_classes(bright_root):
    root, written = bright_root
    assert [len(open_dataset("bright", root, s)) for s in ("train", "val", "test", "all")] == \
        [2, 1, 1, 4]
    source = open_dataset("bright", root, "train", sar_normalise="none")
    example = source[1]
    assert str(example["id"]) == "libya-flood_00000001"
    assert set(example) == {"optical", "sar_t2", "valid", "damage", "id"}
    assert example["sar_t2"].dtype == np.float32 and example["damage"].dtype == np.uint8
    truth = written["libya-flood_00000001"]
    np.testing.assert_array_equal(example["damage"], truth["damage"])  # 0..3 as published
    np.testing.assert_allclose(example["sar_t2"], amplitude_db(truth["dn"]), atol=1e-5)
    assert bright.CLASSES == ("background", "intact", "damaged", "destroyed")


def test_bright_split_dir_and_missing_list(bright_root, tmp_path):
    root, _ = bright_root
    lists = tmp_path / "splitname" / "dfc25"
    lists.mkdir(parents=True)
    (lists / "holdout_set.txt").write_text("libya-flood_00000000\nlibya-flood_00000001\n")
    assert len(open_dataset("bright", root, "holdout", split_dir=lists)) == 2
    with pytest.raises(DatasetError, match=r"holdout_set\.txt: missing_split_list"):
        open_dataset("bright", root, "holdout")


def test_bright_bad_files_are_named_together_or_skipped(bright_root):
    root, _ = bright_root
    (root / "target" / "bata-explosion_00000000_building_damage.tif").unlink()
    truncate(root / "post-event" / "libya-flood_00000001_post_disaster.tif", keep=0.02)
    with open(root / "train_set.txt", "a") as file:
        file.write("haiti-earthquake_00000007\n")
    with pytest.raises(DatasetError) as caught:
        open_dataset("bright", root, "train")
    message = str(caught.value)
    assert "3 problem(s)" in message
    assert "bata-explosion_00000000_pre_disaster.tif: missing_partner: no damage file" in message
    assert "libya-flood_00000001_post_disaster.tif: unreadable" in message
    assert "haiti-earthquake_00000007_pre_disaster" in message and "missing_file" in message
    with pytest.warns(DatasetWarning, match="3 of 3 samples of split 'train' left out"):
        with pytest.raises(DatasetError, match="no_samples"):
            open_dataset("bright", root, "train", skip_bad=True)
    with pytest.warns(DatasetWarning, match="2 of 4 samples of split 'all' left out"):
        source = open_dataset("bright", root, "all", skip_bad=True)
    assert [s.id for s in source.samples] == ["bata-explosion_00000001", "libya-flood_00000000"]
    assert {p.reason for p in source.problems} == {"missing_partner", "unreadable"}


def test_bright_label_values_outside_0_to_3_raise_when_read(bright_root):
    root, _ = bright_root
    write_tif(root / "target" / "bata-explosion_00000001_building_damage.tif",
              np.full((SIZE, SIZE), 4, np.uint8))
    source = open_dataset("bright", root, "val")
    with pytest.raises(SampleError) as caught:
        source[0]
    assert caught.value.reason == "bad_labels" and caught.value.index == 0
    assert "bata-explosion_00000001_building_damage.tif" in str(caught.value)
    assert "[4]" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# DFC23 track 2


def rle_string(counts) -> str:
    """COCO's compressed RLE string (the inverse of the COCO API's rleFrString)."""
    out = []
    for i, value in enumerate(counts):
        value = int(value) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            out.append(chr(chunk + (0x20 if more else 0) + 48))
    return "".join(out)


def rle_counts_of(mask: np.ndarray) -> list[int]:
    flat = mask.T.ravel().astype(np.int8)  # column-major
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], edges])).tolist()


def write_dfc23(root: Path, split: str = "train", names=("P_0000", "P_0001", "P_0002")):
    images, annotations, written = [], [], {}
    for image_id, name in enumerate(names):
        height = RNG.uniform(-2, 30, (SIZE, SIZE)).astype(np.float32)
        write_tif(root / split / "rgb" / f"{name}.tif", rgb())
        write_tif(root / split / "sar" / f"{name}.tif", sar_dn())
        write_tif(root / split / "height" / f"{name}.tif", height)
        images.append({"file_name": f"{name}.tif", "height": SIZE, "width": SIZE,
                       "id": image_id})
        written[name] = {"height": height}
    # P_0000: one rectangle polygon (pixel-edge x 4..12, y 6..10), and an RLE building
    rle = np.zeros((SIZE, SIZE), bool)
    rle[20:24, 2:5] = True
    annotations += [
        {"id": 1, "image_id": 0, "category_id": 1, "iscrowd": 0,
         "segmentation": [[4, 6, 12, 6, 12, 10, 4, 10]]},
        {"id": 2, "image_id": 0, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [SIZE, SIZE], "counts": rle_string(rle_counts_of(rle))}},
        # P_0001: uncompressed RLE
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1,
         "segmentation": {"size": [SIZE, SIZE], "counts": rle_counts_of(rle)}}]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "building"}]}
    (root / "annotations" / f"buildings_only_{split}.json").write_text(json.dumps(coco))
    footprint = np.zeros((SIZE, SIZE), bool)
    footprint[6:10, 4:12] = True
    written["P_0000"]["building"] = footprint | rle
    written["P_0001"]["building"] = rle
    written["P_0002"]["building"] = np.zeros((SIZE, SIZE), bool)
    return written


def test_dfc23_heights_on_coco_footprints(tmp_path):
    root = tmp_path / "DFC_Track_2"
    written = write_dfc23(root)
    source = open_dataset("dfc23_t2", root, "train")
    assert len(source) == 3
    for index in range(3):
        example = source[index]
        truth = written[str(example["id"])]
        assert set(example) == {"optical", "sar", "valid", "height", "building", "id"}
        assert example["height"].dtype == np.float32 and example["building"].dtype == bool
        np.testing.assert_array_equal(example["building"], truth["building"])
        expected = np.where(truth["building"], np.maximum(truth["height"], 0), 0)
        np.testing.assert_array_equal(example["height"], expected)
    by_height = open_dataset("dfc23_t2", root, "train", footprints="height")[0]
    np.testing.assert_array_equal(by_height["building"], written["P_0000"]["height"] > 0)


def test_coco_rle_string_decodes_like_the_coco_api():
    mask = RNG.random((7, 5)) < 0.4
    counts = rle_counts_of(mask)
    assert dfc23_t2.rle_counts(rle_string(counts)) == counts
    np.testing.assert_array_equal(dfc23_t2.decode_rle(rle_string(counts), mask.shape), mask)


def test_dfc23_bad_annotations_and_sizes_are_named(tmp_path):
    root = tmp_path / "DFC_Track_2"
    write_dfc23(root)
    coco_path = root / "annotations" / "buildings_only_train.json"
    coco = json.loads(coco_path.read_text())
    coco["images"][1]["width"] = 64  # P_0001: json size differs from the tif
    coco["annotations"][0]["segmentation"] = [[4, 6, 40, 6, 40, 10]]  # leaves the image
    coco["images"] = [*coco["images"][:2], {"file_name": "P_0099.tif", "height": SIZE,
                                            "width": SIZE, "id": 99}]  # P_0002 unlisted
    coco_path.write_text(json.dumps(coco))
    write_tif(root / "train" / "sar" / "P_0002.tif", sar_dn(16))
    with pytest.raises(DatasetError) as caught:
        open_dataset("dfc23_t2", root)
    message = str(caught.value)
    assert "buildings_only_train.json: bad_annotation: annotation 1 of P_0000" in message
    assert "buildings_only_train.json: size_mismatch: image P_0001: 32x64" in message
    assert "buildings_only_train.json: missing_file: image 99 ('P_0099.tif')" in message
    assert "P_0002.tif: missing_partner: no COCO image entry" in message
    assert "sar/P_0002.tif: size_mismatch: 16x16 pixels" in message
    with pytest.raises(DatasetError, match="missing_annotations"):
        open_dataset("dfc23_t2", root, annotations=root / "none.json")


# ---------------------------------------------------------------------------------------------
# WHU-CD


def write_whu(folder: Path, names, labels=(0, 255)) -> dict[str, np.ndarray]:
    written = {}
    for name in names:
        change = RNG.choice(np.array(labels, np.uint8), (SIZE, SIZE))
        write_image(folder / "A" / f"{name}.png", rgb())
        write_image(folder / "B" / f"{name}.png", rgb())
        write_image(folder / "label" / f"{name}.png", change)
        written[name] = change
    return written


def test_whu_cd_split_folders(tmp_path):
    root = tmp_path / "WHU-CD"
    written = write_whu(root / "train", ["whu_0001", "whu_0002"])
    write_whu(root / "test", ["whu_0100"])
    source = open_dataset("whu_cd", root, "train")
    assert len(source) == 2 and len(open_dataset("whu_cd", root, "test")) == 1
    example = source[1]
    assert set(example) == {"optical", "optical_t2", "valid", "change", "id"}
    assert example["optical_t2"].dtype == np.uint8 and example["change"].dtype == bool
    np.testing.assert_array_equal(example["change"], written["whu_0002"] == 255)


def test_whu_cd_list_layout_and_0_1_labels(tmp_path):
    root = tmp_path / "WHU-CD-256"
    written = write_whu(root, ["1", "2", "3"], labels=(0, 1))
    (root / "list").mkdir()
    (root / "list" / "train.txt").write_text("1.png\n3.png\n")
    (root / "list" / "val.txt").write_text("2.png\n")
    source = open_dataset("whu_cd", root, "train")
    assert [str(source[i]["id"]) for i in range(len(source))] == ["1", "3"]
    np.testing.assert_array_equal(source[1]["change"], written["3"] == 1)


def test_whu_cd_bad_label_values_and_missing_partner(tmp_path):
    root = tmp_path / "WHU-CD"
    write_whu(root / "train", ["a", "b", "c"])
    write_image(root / "train" / "label" / "b.png", np.full((SIZE, SIZE), 128, np.uint8))
    (root / "train" / "B" / "c.png").unlink()
    with pytest.raises(DatasetError) as caught:
        open_dataset("whu_cd", root, scan="full")
    message = str(caught.value)
    assert "label/b.png: bad_labels: label values [128]" in message
    assert "A/c.png: missing_partner: no optical_t2 file" in message
    with pytest.warns(DatasetWarning, match="2 of 3 samples"):
        source = open_dataset("whu_cd", root, scan="full", skip_bad=True)
    assert [s.id for s in source.samples] == ["a"]


# ---------------------------------------------------------------------------------------------
# DeepGlobe roads


def write_deepglobe(root: Path) -> dict[str, np.ndarray]:
    written = {}
    for tile in ("104", "113", "343"):
        road = RNG.random((SIZE, SIZE)) < 0.3
        grey = np.where(road, RNG.integers(200, 256, road.shape), RNG.integers(0, 40, road.shape))
        write_image(root / "train" / f"{tile}_sat.jpg", rgb())
        write_image(root / "train" / f"{tile}_mask.png",
                    np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1))  # RGB-saved grey
        written[tile] = road
    for tile in ("6477", "19438"):
        write_image(root / "valid" / f"{tile}_sat.jpg", rgb())
    write_image(root / "test" / "206_sat.jpg", rgb())
    (root / "metadata.csv").write_text("image_id,split,sat_image_path,mask_path\n")
    return written


def test_deepglobe_roads_masks_binarised_at_128_and_unlabelled_splits(tmp_path):
    root = tmp_path / "deepglobe"
    written = write_deepglobe(root)
    source = open_dataset("deepglobe_roads", root, "train")
    assert len(source) == 3 and source.labelled
    for index in range(3):
        example = source[index]
        assert set(example) == {"optical", "valid", "road", "id"}
        assert example["road"].dtype == bool and example["optical"].dtype == np.uint8
        np.testing.assert_array_equal(example["road"], written[str(example["id"])])
    valid = open_dataset("deepglobe_roads", root, "val")
    assert len(valid) == 2 and not valid.labelled and "road" not in valid[0]
    assert len(open_dataset("deepglobe_roads", root, "test")) == 1


def test_deepglobe_truncated_jpeg_is_named_when_read_or_scanned(tmp_path):
    root = tmp_path / "deepglobe"
    write_deepglobe(root)
    truncate(root / "train" / "113_sat.jpg", keep=0.5)
    source = open_dataset("deepglobe_roads", root)  # the header is intact
    assert str(source[0]["id"]) == "104"
    with pytest.raises(SampleError, match=r"113_sat\.jpg: unreadable"):
        source[1]
    with pytest.raises(DatasetError, match=r"113_sat\.jpg: unreadable"):
        open_dataset("deepglobe_roads", root, scan="full")
    (root / "train" / "343_sat.jpg").unlink()
    with pytest.warns(DatasetWarning, match=r"343_mask\.png: missing_partner"):
        source = open_dataset("deepglobe_roads", root, scan="full", skip_bad=True)
    assert [s.id for s in source.samples] == ["104"]


# ---------------------------------------------------------------------------------------------
# Registry, pickling, pipeline


def test_registry_names_and_unknown_dataset(tmp_path):
    assert set(DATASETS) == {
        "earthmiss", "bright", "dfc23_t2", "whu_cd", "deepglobe_roads", "coco"}
    assert {cls.task for cls in DATASETS.values()} == {
        "landcover", "damage", "building_height", "change", "roads", "detection"}
    with pytest.raises(ValueError, match="unknown dataset 'xview2'"):
        open_dataset("xview2", tmp_path)
    with pytest.raises(DatasetError, match="missing_folder"):
        open_dataset("whu_cd", tmp_path / "nowhere")


def test_sources_pickle_for_grain_workers_and_feed_the_pipeline(earthmiss_root):
    from mars_jax.data.pipeline import make_pipeline

    root, _ = earthmiss_root
    source = open_dataset("earthmiss", root, "train")
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy[3]["sar"], source[3]["sar"])
    problem = Problem(root / "a.tif", "unreadable", "truncated", "a")
    assert str(pickle.loads(pickle.dumps(SampleError(problem, 3)))) == str(SampleError(problem, 3))
    assert str(pickle.loads(pickle.dumps(DatasetError("earthmiss", root, [problem])))) == \
        str(DatasetError("earthmiss", root, [problem]))
    batch = next(iter(make_pipeline(source, global_batch_size=2, crop_size=16, read_threads=1,
                                    keys=("optical", "sar", "valid", "landcover"))))
    assert batch["landcover"].shape == (2, 16, 16) and batch["sar"].shape == (2, 16, 16, 1)


# ---------------------------------------------------------------------------------------------
# Ingested shards with labels (real TerraMesh GeoTIFFs)


@pytest.fixture(scope="module")
def terramesh_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("terramesh") / "shards"
    ingest(IngestConfig(optical=TERRAMESH_DIR / "S2RGB", sar=TERRAMESH_DIR / "S1RTC",
                        labels=TERRAMESH_DIR / "LULC", out=out, tile=112, overlap=16,
                        shard_size=16, progress=False))
    return out


def test_ingested_labels_remaps_terramesh_lulc(terramesh_shards):
    source = ingested_labels(terramesh_shards)
    raw = ShardSource(list_shards(terramesh_shards))
    assert len(source) == len(raw) == 45
    seen = set()
    for index in range(len(source)):
        example, original = source[index], raw[index]["landcover"]
        assert example["landcover"].dtype == np.uint8
        np.testing.assert_array_equal(example["landcover"],
                                      np.where(original == 0, IGNORE, original - 1))
        assert {"optical", "sar", "valid", "id", "tile_origin"} <= set(example)
        seen |= set(np.unique(example["landcover"]).tolist())
    # ids 1..7 and 9 occur in the fixtures: water .. snow/ice, and rangeland
    assert seen == {0, 1, 2, 3, 4, 5, 6, 8}
    assert TERRAMESH_LULC_CLASSES[8] == "rangeland" and TERRAMESH_LULC_CLASSES[1] == "trees"


def test_ingested_labels_checks_the_key_and_the_values(terramesh_shards, tmp_path):
    without = {value: value for value in range(9)}  # no entry for 9 (rangeland)
    source = ingested_labels(terramesh_shards, label_map=without,
                             classes=tuple(str(v) for v in range(9)))
    errors = []
    for index in range(len(source)):
        try:
            source[index]
        except SampleError as error:
            errors.append(error)
    assert errors and all("[9]" in str(e) and ".array_record" in str(e) for e in errors)
    assert "record" in str(errors[0]) and errors[0].reason == "bad_labels"
    unlabelled = tmp_path / "unlabelled"
    ingest(IngestConfig(optical=TERRAMESH_DIR / "S2RGB", sar=TERRAMESH_DIR / "S1RTC",
                        out=unlabelled, tile=224, overlap=0, progress=False))
    with pytest.raises(DatasetError, match=r"ingest_summary\.json: no_labels"):
        ingested_labels(unlabelled)
    (unlabelled / "ingest_summary.json").unlink()
    with pytest.raises(DatasetError, match="record 0 has no 'landcover'"):
        ingested_labels(unlabelled)
    with pytest.raises(DatasetError, match="no_shards"):
        ingested_labels(tmp_path)
