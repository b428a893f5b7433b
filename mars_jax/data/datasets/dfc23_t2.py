"""IEEE GRSS DFC 2023 track 2: RGB + SAR, building footprints and building heights.

Sources checked: the organisers' baseline https://github.com/AICyberTeam/DFC2023-baseline
(``track2/README.md``: layout and formats; ``track2/HeightEstimation/dataset/dataset.py``;
``track1/make_merge.py``: RGB and SAR files share names and grid; ``track2/image_id/
image_id_val.json``: COCO ``images`` entries such as ``{"file_name": "P_0000.tif", "height":
512, "width": 512, "id": 0}``) and the contest repository
ISPNU-Signal-Group/2023-IEEE-GRSS-DATA-FUSION-CONTEST (README: "building annotations and
normalized Digital Surface Models (nDSMs)"). Data: IEEE DataPort, "2023 IEEE GRSS Data Fusion
Contest" (track2.zip).

Layout (512 x 512 GeoTIFF tiles)::

    ROOT/{train,val,test}/rgb/<name>.tif       optical RGB
    ROOT/{train,val,test}/sar/<name>.tif       SAR, one band, same name and grid
    ROOT/{train,val,test}/height/<name>.tif    per-pixel height above ground (nDSM), metres
    ROOT/annotations/buildings_only_{train,val,test}.json   building footprints, MS COCO

Splits are the folders. Sample ids are the file stems (``P_0000``). Without ``height/`` (an
unlabelled split) examples carry no ``height`` / ``building``.

Footprints: COCO ``images`` are matched to ``rgb/`` files by file-name stem (their
``height`` / ``width`` must equal the RGB size); every ``annotations`` entry of an image is a
building whose ``segmentation`` is polygons (``[[x0, y0, x1, y1, ...], ...]``, pixel-edge
coordinates) or RLE (``{"size": [h, w], "counts": [...] or "..."}``, column-major, COCO's
compressed string form decoded here). Polygons are rasterised with ``rasterio.features``
(a pixel is inside when its centre is, GDAL's rule; ``pycocotools.annToMask`` may differ by
a pixel along the outline). An RGB file without an ``images`` entry, an entry without its
RGB file and a malformed segmentation are problems. ``footprints="height"`` uses
``height > 0`` instead, for copies without the JSON.

``building`` (bool) is the footprint where the height is defined (finite, not the file's
nodata); ``height`` (float32 metres) is the nDSM there, floored at 0 (a building stands on the
ground), and 0 off buildings, as SynthVHR's ``height``.

SAR: the organisers do not state its unit; ``sar_kind="auto"`` decides per file
(``io.decide_sar_kind``: integer data without calibration, i.e. display DN, is amplitude DN;
float data by its metadata, else dB if the values fit dB); see ``base`` for
``sar_normalise``.

Keys: ``optical`` uint8 [H,W,3], ``sar`` float32 [H,W,C] (dB), ``valid`` bool [H,W],
``height`` float32 [H,W], ``building`` bool [H,W], ``id``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mars_jax.data.datasets.base import (
    FolderSource,
    Header,
    Problem,
    Role,
    Sample,
    SampleError,
    SarOptions,
    load_json,
    pair,
    sar_example,
    scan_roles,
)

SPLITS = ("train", "val", "test")
ANNOTATIONS = "annotations/buildings_only_{split}.json"
FOOTPRINTS = ("coco", "height")


@dataclass(frozen=True)
class Footprints:
    """The COCO entry of one image: its size and its buildings' segmentations."""

    json: Path
    height: int
    width: int
    segmentations: tuple[Any, ...]


class Dfc23Track2(FolderSource):
    """DFC23 track 2 building height (module docstring)."""

    name = "dfc23_t2"
    task = "building_height"
    keys = ("optical", "sar", "valid", "height", "building")
    splits = SPLITS
    layout = ("ROOT/<split>/rgb/<name>.tif, ROOT/<split>/sar/<name>.tif, "
              "ROOT/<split>/height/<name>.tif, ROOT/annotations/buildings_only_<split>.json "
              "(COCO); splits train, val, test")

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 footprints: str = "coco", annotations: str | os.PathLike | None = None,
                 skip_bad: bool = False, scan: str = "header", sar_kind: str = "auto",
                 sar_normalise: str = "auto"):
        if footprints not in FOOTPRINTS:
            raise ValueError(f"footprints must be one of {FOOTPRINTS}, got {footprints!r}")
        self.sar_options = SarOptions(sar_kind, sar_normalise)
        self.footprints, self.annotations = footprints, annotations
        super().__init__(root, split, skip_bad=skip_bad, scan=scan)

    def _find(self) -> tuple[list[Sample], list[Problem]]:
        folder = self._folder(self.root / self.split, f"split {self.split!r}")
        roles = [Role("optical", self._folder(folder / "rgb", "rgb")),
                 Role("sar", self._folder(folder / "sar", "sar"))]
        self.labelled = (folder / "height").is_dir()
        if self.labelled:
            roles.append(Role("height", folder / "height"))
        found, problems = scan_roles(roles)
        samples, missing = pair(roles, found)
        problems += missing
        if self.labelled and self.footprints == "coco":
            entries, coco_problems = self._read_coco(found["optical"], folder / "rgb")
            problems += coco_problems
            samples = [Sample(s.id, s.files, entries.get(s.id)) for s in samples]
        return samples, problems

    def _coco_path(self) -> Path:
        if self.annotations is not None:
            return Path(self.annotations)
        return self.root / ANNOTATIONS.format(split=self.split)

    def _read_coco(self, rgb: Mapping[str, Path], rgb_folder: Path
                   ) -> tuple[dict[str, Footprints], list[Problem]]:
        path = self._coco_path()
        if not path.is_file():
            raise self._layout_error(path, "missing_annotations", "no COCO footprint file",
                                     hint=f"Expected layout: {self.layout}. Pass annotations= "
                                     "its path, or footprints='height' to take buildings as "
                                     "height > 0.")
        try:
            coco = load_json(path)
            images = {int(image["id"]): image for image in coco["images"]}
            annotations = coco.get("annotations", [])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise self._layout_error(path, "bad_annotations", f"not a COCO file: {error!r}",
                                     hint="Expected MS COCO json with 'images' and "
                                     "'annotations'.") from error
        problems: list[Problem] = []
        by_image: dict[int, list[Any]] = {image_id: [] for image_id in images}
        for annotation in annotations:
            image_id = annotation.get("image_id")
            if image_id not in by_image:
                problems.append(Problem(path, "bad_annotation", f"annotation "
                                        f"{annotation.get('id')} refers to image {image_id}, "
                                        "which is not in 'images'"))
                continue
            by_image[image_id].append(annotation)
        entries: dict[str, Footprints] = {}
        for image_id, image in images.items():
            stem = Path(str(image.get("file_name", ""))).stem
            if stem not in rgb:
                problems.append(Problem(path, "missing_file", f"image {image_id} "
                                        f"({image.get('file_name')!r}) has no rgb file "
                                        f"{rgb_folder / stem}.tif"))
                continue
            height, width = int(image.get("height", -1)), int(image.get("width", -1))
            segmentations = []
            for annotation in by_image[image_id]:
                problem = _segmentation_problem(annotation.get("segmentation"), height, width)
                if problem:
                    problems.append(Problem(path, "bad_annotation", f"annotation "
                                            f"{annotation.get('id')} of {stem}: {problem}",
                                            stem))
                else:
                    segmentations.append(annotation["segmentation"])
            entries[stem] = Footprints(path, height, width, tuple(segmentations))
        for stem, file in rgb.items():
            if stem not in entries and not any(p.sample == stem for p in problems):
                problems.append(Problem(file, "missing_partner", f"no COCO image entry for "
                                        f"{file.name} in {path}", stem))
        return entries, problems

    def _check_sample(self, sample: Sample, headers: Mapping[str, Header]) -> list[Problem]:
        entry, header = sample.extra, headers.get("optical")
        if entry is None or header is None:
            return []
        if (entry.height, entry.width) != (header.height, header.width):
            return [Problem(entry.json, "size_mismatch", f"image {sample.id}: {entry.height}x"
                            f"{entry.width} pixels, but {header.path} has {header.height}x"
                            f"{header.width}", sample.id)]
        return []

    def _load(self, sample: Sample) -> dict[str, np.ndarray]:
        rasters = self._read_all(sample)
        optical, sar, valid = sar_example(sample, self.sar_options, rasters, "optical", "sar")
        example = {"optical": optical, "sar": sar, "valid": valid}
        if "height" not in rasters:
            return example
        raw, meta = rasters["height"]
        if meta.count != 1:
            raise SampleError(Problem(meta.path, "bad_height", f"height needs one band, the "
                                      f"file has {meta.count}", sample.id))
        heights = raw[..., 0].astype(np.float32)
        defined = np.isfinite(heights)
        if meta.nodata is not None:
            defined &= heights != np.float32(meta.nodata)
        if self.footprints == "coco":
            footprint = rasterize(sample.extra.segmentations, heights.shape)
        else:
            footprint = defined & (heights > 0)
        building = footprint & defined
        example["height"] = np.where(building, np.maximum(heights, 0), 0).astype(np.float32)
        example["building"] = building
        return example


# ---------------------------------------------------------------------------------------------
# COCO footprints


def _segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """What is wrong with a COCO segmentation, or None."""
    if isinstance(segmentation, Mapping):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if list(size or ()) != [height, width]:
            return f"RLE size {size} differs from the image's [{height}, {width}]"
        if not isinstance(counts, (str, list)):
            return f"RLE counts must be a list or a string, got {type(counts).__name__}"
        try:
            total = sum(rle_counts(counts))
        except (ValueError, TypeError) as error:
            return f"cannot decode RLE counts ({error})"
        return None if total == height * width else (
            f"RLE counts cover {total} pixels, the image has {height * width}")
    if not isinstance(segmentation, Sequence) or isinstance(segmentation, str):
        return f"segmentation must be polygons or RLE, got {type(segmentation).__name__}"
    for polygon in segmentation:
        try:
            coordinates = np.asarray(polygon, np.float64)
        except (TypeError, ValueError):
            return "a polygon is not a list of numbers"
        if coordinates.ndim != 1 or len(coordinates) % 2 or len(coordinates) < 6:
            return (f"a polygon needs x, y pairs of at least 3 points, got "
                    f"{coordinates.size} numbers")
        if not np.isfinite(coordinates).all():
            return "a polygon has non-finite coordinates"
        xs, ys = coordinates[0::2], coordinates[1::2]
        if xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height:
            return (f"a polygon leaves the {width}x{height} image (x {xs.min():g}..{xs.max():g},"
                    f" y {ys.min():g}..{ys.max():g})")
    return None


def rle_counts(counts: str | Sequence[int]) -> list[int]:
    """Run lengths of a COCO RLE: as given (uncompressed), or decoded from COCO's compressed
    string (``rleFrString`` of the COCO API: 5-bit groups offset by 48, a continuation bit,
    a sign bit, and counts after the second stored as differences to the one two before)."""
    if not isinstance(counts, str):
        values = [int(count) for count in counts]
        if any(count < 0 for count in values):
            raise ValueError("negative run length")
        return values
    values: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("truncated RLE string")
            chunk = ord(counts[position]) - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    if any(count < 0 for count in values):
        raise ValueError("negative run length")
    return values


def decode_rle(counts: str | Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """COCO RLE -> bool mask [H, W] (runs alternate 0, 1, 0, ... in column-major order)."""
    runs = np.asarray(rle_counts(counts), np.int64)
    values = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(values, runs)
    return flat.reshape(shape[1], shape[0]).T


def rasterize(segmentations: Sequence[Any], shape: tuple[int, int]) -> np.ndarray:
    """The union of COCO segmentations (polygons or RLE) as a bool mask [H, W]."""
    from rasterio import features
    from rasterio.transform import Affine

    mask = np.zeros(shape, bool)
    rings = []
    for segmentation in segmentations:
        if isinstance(segmentation, Mapping):
            mask |= decode_rle(segmentation["counts"], shape)
            continue
        for polygon in segmentation:
            points = [(float(x), float(y)) for x, y in zip(polygon[0::2], polygon[1::2],
                                                           strict=True)]
            rings.append({"type": "Polygon", "coordinates": [[*points, points[0]]]})
    if rings:
        mask |= features.rasterize(((ring, 1) for ring in rings), out_shape=shape,
                                   transform=Affine.identity(), fill=0, dtype="uint8") > 0
    return mask
