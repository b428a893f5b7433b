"""BRIGHT (and IEEE GRSS DFC 2025 track II): pre-event optical, post-event SAR, building damage.

Sources checked: the dataset repository https://github.com/ChenHongruixuan/BRIGHT (README.md,
bda_benchmark/README_DFC25.md: data on Zenodo records 14619797 / 15335889 and HuggingFace
Kullervo/BRIGHT), its loader ``bda_benchmark/dataset/make_data_loader.py`` and split lists
``bda_benchmark/dataset/splitname/{standard_ML,dfc25,few_shot}/*_set.txt`` (read in a fork,
lizilong1993/CVPR2026BrightChanllenge), and TorchGeo's ``BRIGHTDFC2025`` dataset (class
table ``px_class_values``).

Layout (1024 x 1024 GeoTIFF tiles)::

    ROOT/pre-event/<event>_<nnnnnnnn>_pre_disaster.tif       optical, RGB (extra bands dropped)
    ROOT/post-event/<event>_<nnnnnnnn>_post_disaster.tif     SAR, one 8-bit band
    ROOT/target/<event>_<nnnnnnnn>_building_damage.tif       damage labels

Sample ids are ``<event>_<nnnnnnnn>`` (e.g. ``bata-explosion_00000000``). Without ``target/``
(e.g. the unlabelled test events) examples carry no ``damage``.

Splits: BRIGHT ships them as id lists in the code repository, not in the data:
``standard_ML/{train,val,test}_set.txt`` and, for DFC25, ``dfc25/{train,holdout,val,test}_set
.txt``. ``split=NAME`` reads ``split_dir/NAME_set.txt`` (``split_dir`` defaults to ROOT: copy
the lists there, or point ``split_dir`` at a checkout's ``splitname/standard_ML``); a listed id
without its files is a problem; ``split="all"`` takes every tile in the folders.

Labels (the same ids in the files and in the data contract's ``damage``): 0 background,
1 intact, 2 damaged, 3 destroyed (``CLASSES``; the official loader derives building
localisation as ``damage > 0``). BRIGHT has no "no label" value; any value outside 0..3 raises
naming the file and the values.

SAR: the post-event images (Capella, Umbra) come as 8-bit display amplitude (TorchGeo shows
them as ``/ 255``, the official loader stacks the one band three times and normalises DN with
ImageNet statistics), so ``sar_kind="auto"`` takes them as amplitude DN; see ``base``.

Keys: ``optical`` uint8 [H,W,3] (pre-event), ``sar_t2`` float32 [H,W,1] (post-event, dB),
``valid`` bool [H,W], ``damage`` uint8 [H,W], ``id``. There is no pre-event SAR and no
post-event optical image.
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
    SarOptions,
    label_band,
    map_labels,
    read_id_list,
    sar_example,
    scan_and_pair,
)

CLASSES = ("background", "intact", "damaged", "destroyed")
LABELS = {value: value for value in range(len(CLASSES))}
SPLIT_LIST = "{split}_set.txt"


class Bright(FolderSource):
    """BRIGHT building damage (module docstring)."""

    name = "bright"
    classes = CLASSES
    task = "damage"
    keys = ("optical", "sar_t2", "valid", "damage")
    layout = ("ROOT/pre-event/<id>_pre_disaster.tif, ROOT/post-event/<id>_post_disaster.tif, "
              "ROOT/target/<id>_building_damage.tif; split lists SPLIT_DIR/<split>_set.txt "
              "(bda_benchmark/dataset/splitname/standard_ML or dfc25 of the BRIGHT repository)")

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 split_dir: str | os.PathLike | None = None, skip_bad: bool = False,
                 scan: str = "header", sar_kind: str = "auto", sar_normalise: str = "auto"):
        self.sar_options = SarOptions(sar_kind, sar_normalise)
        self.split_dir = split_dir
        super().__init__(root, split, skip_bad=skip_bad, scan=scan)

    def _ids(self) -> list[str] | None:
        if self.split == "all":
            return None
        folder = self.root if self.split_dir is None else Path(self.split_dir)
        path = folder / SPLIT_LIST.format(split=self.split)
        if not path.is_file():
            raise self._layout_error(path, "missing_split_list", f"no id list of split "
                                     f"{self.split!r}", hint=(
                                         f"Expected layout: {self.layout}. Pass split_dir= "
                                         "the folder of the lists, or split='all'."))
        return read_id_list(path)

    def _find(self) -> tuple[list[Sample], list[Problem]]:
        roles = [Role("optical", self._folder(self.root / "pre-event", "pre-event"),
                      suffix="_pre_disaster"),
                 Role("sar_t2", self._folder(self.root / "post-event", "post-event"),
                      suffix="_post_disaster")]
        self.labelled = (self.root / "target").is_dir()
        if self.labelled:
            roles.append(Role("damage", self.root / "target", suffix="_building_damage"))
        return scan_and_pair(roles, self._ids())

    def _load(self, sample: Sample) -> dict[str, np.ndarray]:
        rasters = self._read_all(sample)
        optical, sar, valid = sar_example(sample, self.sar_options, rasters, "optical",
                                          "sar_t2")
        example = {"optical": optical, "sar_t2": sar, "valid": valid}
        if "damage" in rasters:
            raw, meta = rasters["damage"]
            example["damage"] = map_labels(label_band(raw, meta, sample.id), LABELS,
                                           meta.path, sample.id)
        return example
