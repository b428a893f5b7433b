"""Land-cover tiles from mars_jax's own ingest shards (``python -m mars_jax.data.ingest
--labels ...``): a thin wrapper over ``records.ShardSource(list_shards(DIR))``.

Ingestion stores the label raster as it is, as ``landcover`` uint8 (tiles padded past a scene's
edge get label 0). This source checks, when it opens the shards, that they carry
``landcover`` (``ingest_summary.json`` says ``"labels": "landcover"``, or, without a summary,
the first record holds the key), and maps every tile's values through ``label_map`` when it is
read: a value outside the map raises ``SampleError`` naming the shard, the record and the
values.

The default map is TerraMesh's LULC (the tests' real fixtures, tests/data/terramesh-samples):
ESRI 10 m annual land cover regridded by TerraMesh to contiguous ids, 0 no data, 1 water,
2 trees, 3 flooded vegetation, 4 crops, 5 built area, 6 bare ground, 7 snow / ice, 8 clouds,
9 rangeland (the table TerraMind's plotting utilities use, ``LULC_CLASS_NAMES``; the fixtures'
README leaves the legend undocumented, and their mean colours fit it: 2 dark green, 6 bright,
7 the only class of a snow tile). 0 (and padding) becomes ``IGNORE`` (255), ``k`` becomes
``k - 1``, the index into ``TERRAMESH_LULC_CLASSES``.

Keys: those of the shards (``optical``, ``sar``, ``valid``, ``id`` = scene id, ``tile_origin``,
georeferencing) with ``landcover`` remapped.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mars_jax.data.datasets.base import (
    IGNORE,
    DatasetError,
    Problem,
    SampleError,
    map_labels,
)
from mars_jax.data.ingest import LABEL_KEY, SUMMARY_FILE, read_ingest_summary
from mars_jax.data.records import ShardSource, list_shards

TERRAMESH_LULC_CLASSES = ("water", "trees", "flooded vegetation", "crops", "built area",
                          "bare ground", "snow/ice", "clouds", "rangeland")
TERRAMESH_LULC = {0: IGNORE, **{value: value - 1
                                for value in range(1, len(TERRAMESH_LULC_CLASSES) + 1)}}


class IngestedLabels:
    """Random-access source of ingested tiles with remapped ``landcover`` (module docstring).

    ``classes`` names the mapped ids (kept as ``self.classes``); ``skip_corrupt`` is
    ``ShardSource``'s.
    """

    name = "ingested_labels"
    task = "landcover"

    def __init__(self, shards_dir: str | os.PathLike, *,
                 label_map: Mapping[int, int] = TERRAMESH_LULC,
                 classes: tuple[str, ...] = TERRAMESH_LULC_CLASSES, skip_corrupt: bool = False):
        self.root = Path(shards_dir)
        self.label_map = dict(label_map)
        self.classes = tuple(classes)
        bad = sorted({v for v in self.label_map.values() if not (0 <= v < len(classes)
                                                                 or v == IGNORE)})
        if any(not 0 <= key <= 255 for key in self.label_map) or bad:
            raise ValueError(f"label_map must map 0..255 to class ids below {len(classes)} or "
                             f"{IGNORE}, got {self.label_map}")
        paths = list_shards(self.root)
        if not paths:
            raise DatasetError(self.name, self.root, [Problem(
                self.root, "no_shards", "no *.array_record shard in the folder")],
                hint="Ingest labelled scenes first: python -m mars_jax.data.ingest --optical "
                "... --sar ... --labels LABELS_DIR --out DIR")
        self.source = ShardSource(paths, skip_corrupt=skip_corrupt)
        self._check_label_key()

    def _check_label_key(self) -> None:
        summary = read_ingest_summary(self.root)
        if summary is not None:
            labels = summary.get("labels")
            if labels != LABEL_KEY:
                raise DatasetError(self.name, self.root, [Problem(
                    self.root / SUMMARY_FILE, "no_labels",
                    f"the shards were ingested without labels (\"labels\": {labels!r}), so no "
                    f"tile has {LABEL_KEY!r}")],
                    hint="Re-run the ingest with --labels LABELS_DIR.")
            return
        first = self.source[0]
        if LABEL_KEY not in first:
            path, index = self.source.locate(0)
            raise DatasetError(self.name, self.root, [Problem(
                path, "no_labels", f"record {index} has no {LABEL_KEY!r} (keys "
                f"{sorted(first)})")], hint="Re-run the ingest with --labels LABELS_DIR.")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        key = operator.index(index)
        example = self.source[key]
        path, record = self.source.locate(key)
        sample = f"record {record} of {os.path.basename(path)}"
        if LABEL_KEY not in example:
            raise SampleError(Problem(path, "no_labels", f"record {record} has no "
                                      f"{LABEL_KEY!r} (keys {sorted(example)})", sample), key)
        try:
            example[LABEL_KEY] = map_labels(example[LABEL_KEY], self.label_map, path, sample)
        except SampleError as error:
            raise SampleError(error.problem, key) from error
        return example

    def __repr__(self) -> str:
        return f"IngestedLabels({len(self)} tiles in {len(self.source.paths)} shards)"
