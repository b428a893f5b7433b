"""EarthMiss: 0.6 m optical + SAR land cover in 13 cities, the missing-modality benchmark.

Source checked: the authors' repository https://github.com/Yi-Heng/EarthMiss (data released
on Zenodo, record 17231107): ``data/EarthMiss.py`` (loader), ``configs/metadata/EarthMiss.py``
(folders and city splits), ``configs/base/EarthMiss.py`` (sensors ``('SAR', 'RGB')``).

Layout (one folder per city; ``.tif`` or ``.png``)::

    ROOT/<City>/images/RGB/<name>.tif          optical, 8-bit RGB
    ROOT/<City>/images/SAR/<name>_SAR.tif      SAR, one 8-bit band
    ROOT/<City>/masks/<name>_mask.tif          land-cover labels

Files pair by name: the SAR file is the RGB name plus ``_SAR``, the mask the RGB name plus
``_mask`` (the official loader's ``if_same_image``). Sample ids are ``<City>/<name>``.

Splits are by city, as in ``configs/metadata/EarthMiss.py`` (``CITIES``): 7 training, 3
validation and 3 test cities; ``split="all"`` takes every city folder found, and
``cities=(...)`` any list of city folders. A city folder of the split that is missing raises.

Labels: the masks store 0 for "no label" and 1..8 for the 8 classes; the official loader
subtracts 1 and ignores -1. Here 0 becomes ``IGNORE`` (255) and ``k`` becomes ``k - 1``, the
index into ``CLASSES``. Any other value raises naming the file and the values.

SAR: EarthMiss ships one-band 8-bit display SAR (the official loader stacks it with RGB into
4 channels normalised with statistics in DN, SAR mean 63.3 / std 68.2), so
``sar_kind="auto"`` takes it as amplitude DN (``20 log10 DN``, zeros no-data); see ``base``
for ``sar_normalise``.

Keys: ``optical`` uint8 [H,W,3], ``sar`` float32 [H,W,1] (dB), ``valid`` bool [H,W],
``landcover`` uint8 [H,W] (``CLASSES`` ids, 255 ignore), ``id``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mars_jax.data.datasets.base import (
    IGNORE,
    DatasetError,
    FolderSource,
    Problem,
    Role,
    Sample,
    SarOptions,
    label_band,
    map_labels,
    pair,
    sar_example,
    scan_roles,
)

CLASSES = ("background", "building", "road", "water", "barren", "forest", "agricultural",
           "playground")
# file value -> landcover id: 0 is "no label" (IGNORE), 1..8 the classes in CLASSES order
LABELS = {0: IGNORE, **{value: value - 1 for value in range(1, len(CLASSES) + 1)}}
CITIES = {
    "train": ("America-Eugene", "America-Louisville", "French-Paris", "Morocco-Casablanca",
              "Nanjing", "Netherlands-Rotterdam", "Singapore"),
    "val": ("Australia-PortHedland", "America-Pake", "Russian-Engels"),
    "test": ("America-NewYork", "Japan-Hakodate", "Peru-Callao"),
}
EXTENSIONS = frozenset({".tif", ".tiff", ".png"})


class EarthMiss(FolderSource):
    """EarthMiss land cover (module docstring)."""

    name = "earthmiss"
    classes = CLASSES
    task = "landcover"
    keys = ("optical", "sar", "valid", "landcover")
    splits = (*CITIES, "all")
    layout = ("ROOT/<City>/images/RGB/<name>.tif, ROOT/<City>/images/SAR/<name>_SAR.tif, "
              "ROOT/<City>/masks/<name>_mask.tif (.tif or .png); cities of each split: "
              "mars_jax.data.datasets.earthmiss.CITIES")

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 cities: Sequence[str] | None = None, skip_bad: bool = False,
                 scan: str = "header", sar_kind: str = "auto", sar_normalise: str = "auto"):
        self.sar_options = SarOptions(sar_kind, sar_normalise)
        self.cities = tuple(cities) if cities is not None else None
        super().__init__(root, split, skip_bad=skip_bad, scan=scan)

    def _check_split(self) -> None:
        if self.cities is None:  # cities=(...) replaces the split's list
            super()._check_split()

    def _city_folders(self) -> list[str]:
        if self.cities is not None:
            return list(self.cities)
        if self.split == "all":
            return sorted(path.name for path in self.root.iterdir()
                          if (path / "images").is_dir())
        return list(CITIES[self.split])

    def _find(self) -> tuple[list[Sample], list[Problem]]:
        cities = self._city_folders()
        missing = [Problem(self.root / city, "missing_folder", f"no folder of city {city!r} "
                           f"(split {self.split!r})") for city in cities
                   if not (self.root / city).is_dir()]
        if missing or not cities:
            problems = missing or [Problem(self.root, "missing_folder", "no city folder with "
                                           "images/ in it")]
            raise DatasetError(self.name, self.root, problems, hint=(
                f"Expected layout: {self.layout}. Pass cities=(...) to load other city "
                "folders."))
        samples, problems = [], []
        masks = [(self.root / city / "masks").is_dir() for city in cities]
        self.labelled = all(masks)
        for city in cities:
            images = self._folder(self.root / city / "images", f"{city} images")
            roles = [Role("optical", self._folder(images / "RGB", f"{city} RGB"),
                          extensions=EXTENSIONS),
                     Role("sar", self._folder(images / "SAR", f"{city} SAR"), suffix="_SAR",
                          extensions=EXTENSIONS)]
            if self.labelled:
                roles.append(Role("landcover", self.root / city / "masks", suffix="_mask",
                                  extensions=EXTENSIONS))
            found, duplicates = scan_roles(roles)
            city_samples, city_problems = pair(roles, found, prefix=f"{city}/")
            samples += city_samples
            problems += [Problem(p.path, p.reason, p.detail, f"{city}/{p.sample}")
                         if p.reason == "duplicate_id" else p for p in duplicates]
            problems += city_problems
        return samples, problems

    def _load(self, sample: Sample) -> dict[str, np.ndarray]:
        rasters = self._read_all(sample)
        optical, sar, valid = sar_example(sample, self.sar_options, rasters, "optical", "sar")
        example = {"optical": optical, "sar": sar, "valid": valid}
        if "landcover" in rasters:
            raw, meta = rasters["landcover"]
            example["landcover"] = map_labels(label_band(raw, meta, sample.id), LABELS,
                                              meta.path, sample.id)
        return example
