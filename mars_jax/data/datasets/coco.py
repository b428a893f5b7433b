"""COCO-format object detection folders (SARDet-100K, UBCv2, ``export_coco``'s output).

Layout: one annotation JSON per split (COCO's ``images`` / ``annotations`` / ``categories``)
and an images folder holding each image's ``file_name`` (relative paths allowed). Found by
default, the first that exists::

    ROOT/annotations/instances_<split>.json    +  ROOT/images/<split>/      (export_coco, COCO)
    ROOT/Annotations/<split>.json              +  ROOT/JPEGImages/<split>/  (SARDet-100K)
                                                  ROOT/<split>/

or given: ``annotations=`` a JSON path, ``images=`` a folder (relative to ROOT or absolute).

Examples: ``optical`` uint8 [H, W, 3] or, with ``modality="sar"``, ``sar`` float32 [H, W, 1]
(dB), then ``valid`` bool [H, W], ``boxes`` float32 [K, 4] pixel-edge (x0, y0, x1, y1) =
(x, y, x + w, y + h) of COCO's ``bbox``, ``box_classes`` int32 [K] and ``image_id`` int64
0-d (COCO's id), plus ``id`` (the file name). Categories map to contiguous ids 0..C-1 in
ascending COCO category id; ``classes`` holds their names in that order.

Annotations left out (documented, not errors): ``iscrowd`` = 1 (COCO evaluates crowd regions
as "ignore", neither hit nor miss, which a plain box list cannot say) and boxes of zero width
or height. An annotation naming an unknown image or category, or whose ``bbox`` is not 4
finite numbers with w, h >= 0, is a problem naming its id, as are a JSON file that does not
parse or lacks ``images`` / ``annotations`` / ``categories``, an image file missing on disk
and an image whose size differs from its ``width`` / ``height`` (``base``: ``DatasetError``
listing all, or ``skip_bad=True``).

Conversions are ``base``'s: optical through ``to_optical`` (an alpha band marks invalid
pixels), SAR through ``to_sar_db`` + ``normalise_sar`` (``sar_kind`` / ``sar_normalise``): the
8-bit display SAR of SARDet-100K is amplitude DN, dB = 20 log10 DN, zeros no-data; a SAR image
stored as RGB with differing bands keeps its first band.

``export_coco`` writes examples (SynthVHR's ``render_pair``, any source's) as such a folder:
PNG images (optical RGB, or RGBA when some pixels are invalid; SAR 8-bit grey) and
``annotations/instances_<split>.json``. SAR dB is written as amplitude DN

    DN = clip(round(10 ** ((dB + SAR_EXPORT_OFFSET_DB) / 20)), 1, 255),  0 where invalid,

so the loader with ``sar_normalise="none"`` gives dB + 40 (to 8-bit rounding; dB outside
[-40, 8.1] saturates) and with the default ``"auto"``, which maps every uncalibrated image
affinely onto the contract's dB statistics, the offset does not matter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mars_jax.data.datasets.base import (
    FolderSource,
    Header,
    Problem,
    Sample,
    SampleError,
    SarOptions,
    normalise_sar,
    to_optical,
    to_sar_db,
)

MODALITIES = ("optical", "sar")
SAR_EXPORT_OFFSET_DB = 40.0
ANNOTATION_CANDIDATES = ("annotations/instances_{split}.json", "Annotations/{split}.json")
IMAGE_CANDIDATES = ("images/{split}", "JPEGImages/{split}", "{split}")


@dataclasses.dataclass(frozen=True)
class _Annotations:
    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray


class CocoSource(FolderSource):
    """A COCO-format detection split (module docstring)."""

    name = "coco"
    task = "detection"
    layout = ("ROOT/annotations/instances_<split>.json + ROOT/images/<split>/, or "
              "ROOT/Annotations/<split>.json + ROOT/JPEGImages/<split>/ (SARDet-100K), or "
              "annotations= a JSON path and images= a folder")

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 modality: str = "optical", annotations: str | os.PathLike | None = None,
                 images: str | os.PathLike | None = None, skip_bad: bool = False,
                 scan: str = "header", sar_kind: str = "auto", sar_normalise: str = "auto"):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality = modality
        self.sar_options = SarOptions(sar_kind, sar_normalise)
        self.keys = (modality, "valid", "boxes", "box_classes", "image_id")
        self._annotations_arg, self._images_arg = annotations, images
        self.classes: tuple[str, ...] = ()
        self.category_ids: tuple[int, ...] = ()
        super().__init__(root, split, skip_bad=skip_bad, scan=scan)

    # -- finding ------------------------------------------------------------------------------

    def _locate(self, given: str | os.PathLike | None, candidates: Sequence[str],
                want_dir: bool, what: str) -> Path:
        if given is not None:
            path = Path(given)
            path = path if path.is_absolute() else self.root / path
            if not (path.is_dir() if want_dir else path.is_file()):
                raise self._layout_error(path, "missing_folder" if want_dir else "missing_file",
                                         f"no {what} {'folder' if want_dir else 'file'}")
            return path
        paths = [self.root / c.format(split=self.split) for c in candidates]
        for path in paths:
            if path.is_dir() if want_dir else path.is_file():
                return path
        raise self._layout_error(paths[0], "missing_folder" if want_dir else "missing_file",
                                 f"no {what} of split {self.split!r}; looked for "
                                 f"{[str(p) for p in paths]}")

    def _find(self) -> tuple[list[Sample], list[Problem]]:
        json_path = self._locate(self._annotations_arg, ANNOTATION_CANDIDATES, False,
                                 "annotation JSON")
        folder = self._locate(self._images_arg, IMAGE_CANDIDATES, True, "images")
        self.annotations_path, self.images_dir = json_path, folder
        data = self._parse(json_path)
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.category_ids = tuple(int(c["id"]) for c in categories)
        self.classes = tuple(str(c.get("name", c["id"])) for c in categories)
        contiguous = {cid: i for i, cid in enumerate(self.category_ids)}
        problems: list[Problem] = []
        images: dict[int, dict[str, Any]] = {}
        for image in data["images"]:
            try:
                images[int(image["id"])] = {"file": str(image["file_name"]),
                                            "width": int(image["width"]),
                                            "height": int(image["height"])}
            except (KeyError, TypeError, ValueError) as error:
                problems.append(Problem(json_path, "bad_image_entry",
                                        f"image entry {image!r:.120}: {error!r}"))
        per_image: dict[int, tuple[list, list]] = {i: ([], []) for i in images}
        for ann in data["annotations"]:
            problem = self._add_annotation(ann, json_path, images, contiguous, per_image)
            if problem is not None:
                problems.append(problem)
        samples = []
        for image_id, image in images.items():
            path = folder / image["file"]
            boxes, classes = per_image[image_id]
            if not path.is_file():
                problems.append(Problem(path, "missing_file", f"image {image_id} of "
                                        f"{json_path.name} is not on disk", image["file"]))
                continue
            samples.append(Sample(image["file"], {"image": path}, _Annotations(
                image_id, image["width"], image["height"],
                np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(classes, np.int32))))
        self.labelled = True
        return samples, problems

    def _parse(self, json_path: Path) -> Mapping[str, Any]:
        try:
            with json_path.open() as file:
                data = json.load(file)
        except (OSError, ValueError) as error:
            raise self._layout_error(json_path, "bad_json", str(error),
                                     hint="The annotation file must be COCO JSON.") from error
        missing = [key for key in ("images", "annotations", "categories")
                   if not isinstance(data, dict) or not isinstance(data.get(key), list)]
        if missing:
            raise self._layout_error(json_path, "bad_json", f"no list {missing} in the COCO "
                                     "JSON", hint="The annotation file must be COCO JSON "
                                     "with images, annotations and categories lists.")
        return data

    @staticmethod
    def _add_annotation(ann: Any, json_path: Path, images: Mapping[int, Any],
                        contiguous: Mapping[int, int],
                        per_image: Mapping[int, tuple[list, list]]) -> Problem | None:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        try:
            image_id, category = int(ann["image_id"]), int(ann["category_id"])
            bbox = [float(v) for v in ann["bbox"]]
        except (KeyError, TypeError, ValueError) as error:
            return Problem(json_path, "bad_annotation", f"annotation {ann_id}: {error!r}")
        if image_id not in images:
            return Problem(json_path, "bad_annotation", f"annotation {ann_id}: unknown "
                           f"image_id {image_id}")
        sample = images[image_id]["file"]
        if category not in contiguous:
            return Problem(json_path, "bad_annotation", f"annotation {ann_id}: unknown "
                           f"category_id {category}", sample)
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or min(bbox[2:]) < 0:
            return Problem(json_path, "bad_annotation", f"annotation {ann_id}: bbox {bbox} "
                           "is not (x, y, w, h) with w, h >= 0", sample)
        if ann.get("iscrowd", 0) or bbox[2] == 0 or bbox[3] == 0:
            return None  # left out (module docstring)
        x, y, w, h = bbox
        per_image[image_id][0].append((x, y, x + w, y + h))
        per_image[image_id][1].append(contiguous[category])
        return None

    def _check_sample(self, sample: Sample, headers: Mapping[str, Header]) -> list[Problem]:
        header, ann = headers["image"], sample.extra
        if (header.height, header.width) != (ann.height, ann.width):
            return [Problem(header.path, "size_mismatch", f"{header.height}x{header.width} "
                            f"pixels, but {self.annotations_path.name} says {ann.height}x"
                            f"{ann.width}", sample.id)]
        return []

    # -- loading ------------------------------------------------------------------------------

    def _load(self, sample: Sample) -> dict[str, np.ndarray]:
        raw, meta = self._read(sample, "image")
        ann: _Annotations = sample.extra
        if self.modality == "optical":
            image, valid = to_optical(raw, meta, sample.id)
        else:
            if len(meta.data_bands) > 1:
                raw = raw[..., meta.data_bands[0] - 1:meta.data_bands[0]]
                meta = dataclasses.replace(meta, count=1, alpha_band=None)
            db, valid, uncalibrated = to_sar_db(raw, meta, self.sar_options, sample.id)
            image = normalise_sar(db, valid, uncalibrated, self.sar_options)
        if image.shape[:2] != (ann.height, ann.width):
            raise SampleError(Problem(meta.path, "size_mismatch", f"{image.shape[0]}x"
                                      f"{image.shape[1]} pixels, but the annotations say "
                                      f"{ann.height}x{ann.width}", sample.id))
        return {self.modality: image, "valid": valid, "boxes": ann.boxes.copy(),
                "box_classes": ann.classes.copy(), "image_id": np.asarray(ann.image_id,
                                                                          np.int64)}


# ---------------------------------------------------------------------------------------------
# Export


def sar_db_to_dn(db: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """SAR dB [H, W] or [H, W, 1] -> 8-bit amplitude DN (module docstring), 0 where invalid."""
    db = np.asarray(db, np.float64)
    db = db[..., 0] if db.ndim == 3 else db
    with np.errstate(over="ignore"):
        dn = np.clip(np.round(10.0 ** ((db + SAR_EXPORT_OFFSET_DB) / 20.0)), 1, 255)
    dn = np.where(np.isfinite(db), dn, 0)
    if valid is not None:
        dn = np.where(valid, dn, 0)
    return dn.astype(np.uint8)


def export_coco(examples: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike,
                modality: str = "optical", class_names: Sequence[str] = (),
                split: str = "train") -> Path:
    """Writes ``examples`` (dicts with ``modality``, ``boxes`` [K, 4] pixel edges,
    ``box_classes`` [K] in 0..C-1, optional ``valid`` and ``id``) as a COCO folder that
    ``CocoSource(out_dir, split, modality=modality)`` reads (module docstring). Category ids
    are 1..C for ``class_names``; image ids 1.. in order; files ``<index>.png``. Returns the
    annotation JSON's path."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not class_names:
        raise ValueError("class_names must name the box classes 0..C-1")
    out = Path(out_dir)
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, example in enumerate(examples):
        if modality not in example:
            raise KeyError(f"example {index} has no {modality!r} (keys {sorted(example)})")
        array = np.asarray(example[modality])
        height, width = array.shape[:2]
        valid = example.get("valid")
        valid = None if valid is None else np.asarray(valid, bool)
        if modality == "optical":
            rgb = np.asarray(array, np.uint8)[..., :3]
            picture = (Image.fromarray(np.dstack([rgb, 255 * valid.astype(np.uint8)]), "RGBA")
                       if valid is not None and not valid.all() else Image.fromarray(rgb, "RGB"))
        else:
            picture = Image.fromarray(sar_db_to_dn(array, valid), "L")
        file_name = f"{index:06d}.png"
        picture.save(image_dir / file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": int(width),
                       "height": int(height)})
        boxes = np.asarray(example["boxes"], np.float64).reshape(-1, 4)
        classes = np.asarray(example["box_classes"]).reshape(-1)
        if len(classes) != len(boxes):
            raise ValueError(f"example {index}: {len(boxes)} boxes but {len(classes)} classes")
        bad = sorted({int(c) for c in classes if not 0 <= c < len(class_names)})
        if bad:
            raise ValueError(f"example {index}: box classes {bad} outside the "
                             f"{len(class_names)} class_names")
        for (x0, y0, x1, y1), c in zip(boxes.tolist(), classes.tolist(), strict=True):
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(c) + 1, "bbox": [x0, y0, w, h],
                                "area": w * h, "iscrowd": 0})
    json_path = out / "annotations" / f"instances_{split}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": str(name)}
                           for i, name in enumerate(class_names)]}
    json_path.write_text(json.dumps(data))
    return json_path


