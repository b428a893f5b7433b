"""DeepGlobe 2018 road extraction: 0.5 m RGB tiles and road masks.

Sources checked: the first-place solution's repository
https://github.com/zlckanata/DeepGlobe-Road-Extraction-Challenge (README: "Place train, valid
and test data folders in the dataset folder"; its ``dataset/`` samples ``train/104_sat.jpg``,
``train/104_mask.png``, ``valid/6477_sat.jpg``, ``test/206_sat.jpg``; ``data.py``: masks read
as grey, ``/ 255``, ``>= 0.5`` is road) and the Kaggle copy
(balraj98/deepglobe-road-extraction-dataset, same folders plus ``metadata.csv``). Challenge
page: https://competitions.codalab.org/competitions/18467.

Layout (1024 x 1024 tiles)::

    ROOT/train/<id>_sat.jpg     RGB
    ROOT/train/<id>_mask.png    road mask, white = road
    ROOT/valid/<id>_sat.jpg     RGB only: the masks of valid and test were never released
    ROOT/test/<id>_sat.jpg

Splits are the folders (``split="val"`` reads ``valid/``). A split folder without any
``*_mask`` file is unlabelled: its examples carry no ``road``. In a labelled folder every
``_sat`` needs its ``_mask`` and the other way round.

Labels: the challenge's data description (quoted in the READMEs of several DeepGlobe
repositories) says "The mask is a grayscale image, with white standing for road pixel ... The
values of the mask image may not be pure 0 and 255. When converting to labels, please binarize
them at threshold 128." So the mean of the mask's bands (masks are often saved as RGB) ``>=
128`` is road, as the winning solution's ``/ 255 >= 0.5``. Every 8-bit value is therefore
valid; a mask that is not 8-bit raises.

Keys: ``optical`` uint8 [H,W,3], ``valid`` bool [H,W], ``road`` bool [H,W], ``id``.
"""

from __future__ import annotations

import os

import numpy as np

from mars_jax.data.datasets.base import (
    FolderSource,
    Problem,
    Role,
    Sample,
    SampleError,
    pair,
    scan_roles,
    to_optical,
)

SPLIT_FOLDERS = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}
ROAD_THRESHOLD = 128


class DeepGlobeRoads(FolderSource):
    """DeepGlobe road extraction (module docstring)."""

    name = "deepglobe_roads"
    task = "roads"
    keys = ("optical", "valid", "road")
    splits = tuple(SPLIT_FOLDERS)
    layout = ("ROOT/{train,valid,test}/<id>_sat.jpg with ROOT/train/<id>_mask.png "
              "(white roads)")

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 skip_bad: bool = False, scan: str = "header"):
        super().__init__(root, split, skip_bad=skip_bad, scan=scan)

    def _find(self) -> tuple[list[Sample], list[Problem]]:
        folder = self._folder(self.root / SPLIT_FOLDERS[self.split],
                              f"split {self.split!r}")
        roles = [Role("optical", folder, suffix="_sat"), Role("road", folder, suffix="_mask")]
        found, problems = scan_roles(roles)
        self.labelled = bool(found["road"])
        if not self.labelled:
            roles = roles[:1]
        samples, missing = pair(roles, found)
        return samples, problems + missing

    def _load(self, sample: Sample) -> dict[str, np.ndarray]:
        rasters = self._read_all(sample)
        optical, valid = to_optical(*rasters["optical"], sample.id)
        example = {"optical": optical, "valid": valid}
        if "road" in rasters:
            raw, meta = rasters["road"]
            if raw.dtype != np.uint8:
                raise SampleError(Problem(meta.path, "bad_labels", f"road masks are 8-bit grey, "
                                          f"the file is {raw.dtype}", sample.id))
            bands = raw[..., [band - 1 for band in meta.data_bands]]
            example["road"] = bands.mean(axis=-1) >= ROAD_THRESHOLD
        return example
