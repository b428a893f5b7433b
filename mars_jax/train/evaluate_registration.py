"""Held-out evaluation of a registration model: every scene registered whole and scored with
GUSO's metrics (``metrics.registration``) against its ground-truth transform.

Scenes go through the model in batches of ``batch`` (the data-parallel width; the last batch
is filled with repeats that are not scored). The baseline is no registration at all: the
identity transform, whose corner error is the misregistration the model must undo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
import tqdm

from mars_jax.metrics.registration import RegistrationScores, score_pair
from mars_jax.tasks.matching import match_descriptors
from mars_jax.tasks.registration import FINE_TUNED, RegistrationTask, register_descriptors
from mars_jax.tasks.registration_pictures import checkerboard, resample_onto, sar_to_display
from mars_jax.tasks.registry import MODALITIES
from mars_jax.train.evaluate import EvalResult


def _batches(scenes: Iterable[Mapping[str, Any]], size: int):
    group = []
    for scene in scenes:
        group.append(scene)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def evaluate_registration(task: RegistrationTask, predict: Callable[[dict[str, Any]], Any],
                          scenes: Iterable[Mapping[str, Any]], *, batch: int, panels: int = 0,
                          total: int | None = None, progress: bool = False,
                          threshold: float = 5.0) -> EvalResult:
    """``predict``: role inputs [N, H, W, C] -> the head's [N, h, w, 2 * dim] descriptors."""
    metrics, reference = RegistrationScores(), RegistrationScores()
    matcher = jax.jit(match_descriptors, static_argnums=(2, 3))
    pictures, count = [], 0
    bar = tqdm.tqdm(total=total, desc="registering", unit="scene", disable=not progress)
    for group in _batches(scenes, batch):
        rows = group + [group[-1]] * (batch - len(group))
        stacked = {key: np.stack([np.asarray(s[key]) for s in rows])
                   for key in task.keys(MODALITIES)}
        out = np.asarray(predict(task.model_inputs(stacked, MODALITIES)))
        for i, scene in enumerate(group):
            optical, sar = task.split(out[i])
            size = np.shape(scene["valid"])
            truth = np.asarray(scene[task.label], np.float64)
            result = register_descriptors(
                optical, sar, size[0] / optical.shape[0], settings=FINE_TUNED,
                threshold=threshold, valid_optical=np.asarray(scene["valid"]),
                valid_sar=np.asarray(scene[task.mask]), truth=truth, image_size=size,
                matcher=matcher)
            metrics.update(result.score)
            empty = np.zeros((0, 2))
            reference.update(score_pair(truth, empty, empty, np.zeros(0, bool),
                                        estimate=task.trivial_prediction(None, None),
                                        image_size=size))
            if count < panels and result.transform is not None:
                grey = sar_to_display(np.asarray(scene[task.inputs["sar_t2"]]),
                                      np.asarray(scene[task.mask]))
                pictures.append(checkerboard(np.asarray(scene[task.inputs["optical"]]),
                                             resample_onto(result.transform, grey, size)))
            count += 1
            bar.update(1)
    bar.close()
    if not count:
        raise ValueError("evaluation got no scenes")
    panel = {"both": np.concatenate(pictures, axis=1)} if pictures else {}
    return EvalResult({"both": metrics.compute()}, reference.compute(), count, panel)
