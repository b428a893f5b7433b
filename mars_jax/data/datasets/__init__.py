"""Loaders for real downstream datasets in their published folder layouts.

Each loader is a random-access source (``__len__`` / ``__getitem__``, what grain and
``data/pipeline.py`` take, like ``records.ShardSource``) whose examples are dicts of numpy
arrays in the data contract's keys and dtypes, the names SynthVHR task examples use
(``synth.render_pair``), so a task reads either; every example also has ``id`` (0-d str).

======================  =================  ===============================================
name                    task               keys (besides ``id``)
======================  =================  ===============================================
``earthmiss``           landcover          optical, sar, valid, landcover
``bright``              damage             optical (pre-event), sar_t2 (post-event), valid,
                                           damage
``dfc23_t2``            building_height    optical, sar, valid, height, building
``whu_cd``              change             optical, optical_t2, valid, change
``deepglobe_roads``     roads              optical, valid, road
``coco``                detection          optical or sar (``modality``), valid, boxes,
                                           box_classes, image_id (COCO-format folders:
                                           SARDet-100K, UBCv2; ``export_coco`` writes one)
======================  =================  ===============================================

``open_dataset(name, root, split="train", **options)`` opens one; the options are the
loader's (``skip_bad``, ``scan``, and ``sar_kind`` / ``sar_normalise`` for SAR datasets, plus
dataset-specific ones). Each module's docstring gives the layout it reads, the source it was
checked against, its splits and its label mapping; ``base`` gives the scan, the errors and the
conversions shared by all. ``ingested_labels(DIR)`` reads mars_jax's own ingest shards that
carry ``landcover`` (``ingested.py``).
"""

from __future__ import annotations

import os
from typing import Any

from mars_jax.data.datasets.base import (
    IGNORE,
    DatasetError,
    DatasetWarning,
    FolderSource,
    Problem,
    SampleError,
)
from mars_jax.data.datasets.bright import Bright
from mars_jax.data.datasets.coco import CocoSource, export_coco
from mars_jax.data.datasets.deepglobe_roads import DeepGlobeRoads
from mars_jax.data.datasets.dfc23_t2 import Dfc23Track2
from mars_jax.data.datasets.earthmiss import EarthMiss
from mars_jax.data.datasets.ingested import (
    TERRAMESH_LULC,
    TERRAMESH_LULC_CLASSES,
    IngestedLabels,
)
from mars_jax.data.datasets.whu_cd import WhuCd

__all__ = [
    "DATASETS", "IGNORE", "TERRAMESH_LULC", "TERRAMESH_LULC_CLASSES", "Bright",
    "CocoSource", "DatasetError", "DatasetWarning", "DeepGlobeRoads", "Dfc23Track2", "EarthMiss",
    "FolderSource", "IngestedLabels", "Problem", "SampleError", "WhuCd", "export_coco",
    "ingested_labels", "open_dataset",
]

DATASETS: dict[str, type[FolderSource]] = {
    "earthmiss": EarthMiss,
    "bright": Bright,
    "dfc23_t2": Dfc23Track2,
    "whu_cd": WhuCd,
    "deepglobe_roads": DeepGlobeRoads,
    "coco": CocoSource,
}


def open_dataset(name: str, root: str | os.PathLike, split: str = "train",
                 **options: Any) -> FolderSource:
    """The loader ``DATASETS[name]`` over ``split`` of the folder ``root``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name](root, split=split, **options)


def ingested_labels(shards_dir: str | os.PathLike, **options: Any) -> IngestedLabels:
    """Ingested tiles with ``landcover`` remapped (TerraMesh LULC by default)."""
    return IngestedLabels(shards_dir, **options)
