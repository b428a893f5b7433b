"""WHU-CD: the WHU building change detection dataset, two aerial dates (2012, 2016), 0.3 m.

Sources checked: the dataset page https://study.rsgis.whu.edu.cn/pages/download/
building_dataset.html (via the READMEs that cite it: justchenhao/BIT_CD, Woojin0118/Building-
change-detection-TinyCD), BIT_CD's loader ``datasets/CD_dataset.py`` (folders ``A``, ``B``,
``label``, ``list``; "foreground annotated 255", ``label // 255``) and CDLab's WHU loader
(``<subset>/{A,B,label}/*.png``, ``label / 255`` to bool). The original release is two large
mosaics; every benchmark uses tiles cut from them (256 x 256 in BIT / ChangeFormer's
WHU-CD-256), in one of two layouts, both read here (chosen by what ROOT holds):

- split folders (CDLab and most repositories)::

      ROOT/{train,val,test}/A/<name>.png      2012 optical
      ROOT/{train,val,test}/B/<name>.png      2016 optical
      ROOT/{train,val,test}/label/<name>.png  change mask

- one folder with split lists (BIT_CD, ChangeFormer)::

      ROOT/A/<name>.png, ROOT/B/<name>.png, ROOT/label/<name>.png
      ROOT/list/{train,val,test}.txt          one file name per line

Files pair by stem (any of .png .jpg .tif). Sample ids are the stems.

Labels: 0 no change, 255 change (as published); 1 is also read as change, for copies saved
as 0 / 1. Other values raise naming the file and the values. RGB-saved masks (identical
bands) are read as one band.

Keys: ``optical`` uint8 [H,W,3] (2012), ``optical_t2`` uint8 [H,W,3] (2016), ``valid`` bool
[H,W] (valid in both dates), ``change`` bool [H,W], ``id``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mars_jax.data.datasets.base import (
    FolderSource,
    Problem,
    Role,
    Sample,
    label_band,
    map_labels,
    read_id_list,
    scan_and_pair,
    to_optical,
)

SPLITS = ("train", "val", "test")
LABELS = {0: 0, 1: 1, 255: 1}  # file value -> change


class WhuCd(FolderSource):
    """WHU-CD building change (module docstring)."""

    name = "whu_cd"
    task = "change"
    keys = ("optical", "optical_t2", "valid", "change")
    splits = SPLITS
    layout = ("ROOT/<split>/{A,B,label}/<name>.png, or ROOT/{A,B,label}/<name>.png with "
              "ROOT/list/<split>.txt; splits train, val, test")

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 skip_bad: bool = False, scan: str = "header"):
        super().__init__(root, split, skip_bad=skip_bad, scan=scan)

    def _find(self) -> tuple[list[Sample], list[Problem]]:
        listed = self.root / "list" / f"{self.split}.txt"
        if listed.is_file():
            folder, ids = self.root, [Path(name).stem for name in read_id_list(listed)]
        elif (self.root / self.split).is_dir():
            folder, ids = self.root / self.split, None
        else:
            raise self._layout_error(self.root / self.split, "missing_folder",
                                     f"neither a split folder nor {listed}")
        roles = [Role("optical", self._folder(folder / "A", "A (first date)")),
                 Role("optical_t2", self._folder(folder / "B", "B (second date)"))]
        self.labelled = (folder / "label").is_dir()
        if self.labelled:
            roles.append(Role("change", folder / "label"))
        return scan_and_pair(roles, ids)

    def _load(self, sample: Sample) -> dict[str, np.ndarray]:
        rasters = self._read_all(sample)
        optical, valid = to_optical(*rasters["optical"], sample.id)
        optical_t2, valid_t2 = to_optical(*rasters["optical_t2"], sample.id)
        example = {"optical": optical, "optical_t2": optical_t2, "valid": valid & valid_t2}
        if "change" in rasters:
            raw, meta = rasters["change"]
            example["change"] = map_labels(label_band(raw, meta, sample.id), LABELS,
                                           meta.path, sample.id).astype(bool)
        return example
