"""Held-out evaluation of a task model, streamed scene by scene.

Each scene is predicted by sliding windows of the training crop (``tasks.sliding``), once per
modality set ("both" = the modalities trained with, "optical", "sar"), and only the metrics'
sufficient statistics are kept (a confusion matrix, binary counts, regression or image-quality
sums), so the evaluation set's size costs time, not memory. The trivial baseline (the majority
class, the mean target or, for translation, the mean colour of the training labels, predicted
everywhere) is scored by the same metric code on the same scenes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mars_jax.tasks import IGNORE_INDEX, Task
from mars_jax.tasks.registry import MODALITIES
from mars_jax.tasks.sliding import sliding_window_predict


def modality_sets(names: Iterable[str], trained: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Eval set name -> the modalities given to the model ("both": every trained one)."""
    sets = {}
    for name in names:
        modalities = tuple(trained) if name == "both" else (name,)
        missing = [m for m in modalities if m not in trained]
        if missing:
            raise ValueError(f"eval modality set {name!r} needs {missing}, which the model "
                             f"was not trained with (task.modalities={list(trained)})")
        sets[name] = modalities
    return sets


MAX_CLASS_WEIGHT = 10.0


def _label_keys(task: Task) -> tuple[str, ...]:
    return (task.label, "valid", *([task.mask] if task.mask else []))


@dataclasses.dataclass(frozen=True)
class LabelStatistics:
    """Counts of the kept pixels per class (classification kinds) or the sum and count of
    the scored targets (regression; translation: the per-channel sums of the valid pixels'
    colours in [0, 1] and the number of pixels), over some labelled examples."""

    counts: np.ndarray  # int64 [256]
    total: float | np.ndarray = 0.0  # translation: float64 [3]
    count: int = 0

    def baseline(self, task: Task) -> int | float | tuple[float, ...]:
        """The trivial prediction: the most frequent class, the mean target, or the mean
        colour (translation: a tuple of 3 floats in [0, 1]; mid-grey with no pixels)."""
        if task.kind == "registration":  # no registration: the identity
            return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        if task.kind == "detection":  # no box at all (scored: mAP 0 with ground truth)
            return ()
        if task.kind == "translation":
            if not self.count:
                return (0.5,) * task.num_outputs
            return tuple(float(v) for v in np.asarray(self.total, np.float64) / self.count)
        if task.kind == "regression":
            return float(self.total / self.count) if self.count else 0.0
        return int(self.counts.argmax())

    def median_frequency_weights(self, task: Task, max_weight: float = MAX_CLASS_WEIGHT
                                 ) -> np.ndarray:
        """Median-frequency balancing (Eigen & Fergus 2015): ``w_c = median(f) / f_c`` over
        the classes present, clipped to ``[1 / max_weight, max_weight]`` so a class seen in
        a handful of pixels cannot dominate; absent classes get 1."""
        freq = self.counts[:task.num_outputs].astype(np.float64)
        present = freq > 0
        weights = np.ones(task.num_outputs)
        if present.any():
            freq = freq / freq.sum()
            weights[present] = np.median(freq[present]) / freq[present]
        return np.clip(weights, 1 / max_weight, max_weight).astype(np.float32)


def label_statistics(task: Task, examples: Iterable[Mapping[str, Any]]) -> LabelStatistics:
    counts, total, count = np.zeros(256, np.int64), 0.0, 0
    if task.kind in ("registration", "detection"):  # transforms, boxes: nothing to count
        return LabelStatistics(counts)
    for example in examples:
        batch = {key: np.asarray(example[key])[None] for key in _label_keys(task)}
        mask = np.asarray(task.target_mask(batch))
        labels = np.asarray(batch[task.label])
        if task.kind == "translation":
            kept = labels[mask].astype(np.float64) / 255.0  # [N, 3]
            total, count = total + kept.sum(0), count + kept.shape[0]
        elif task.kind == "regression":
            kept = labels[mask].astype(np.float64)
            total, count = total + kept.sum(), count + kept.size
        else:
            kept = labels[mask & (labels != IGNORE_INDEX)].astype(np.int64)
            counts += np.bincount(kept, minlength=256)[:256]
    return LabelStatistics(counts, total, count)


def baseline_value(task: Task, examples: Iterable[Mapping[str, Any]]
                   ) -> int | float | tuple[float, ...]:
    """The trivial prediction learnt from labelled examples: the most frequent kept class
    (segmentation, binary, change), the mean of the scored targets (regression), or the mean
    colour of the valid pixels (translation)."""
    return label_statistics(task, examples).baseline(task)


def constant_logits(task: Task, value: int | float | tuple[float, ...],
                    shape: tuple[int, int, int]) -> np.ndarray:
    """``[B, H, W, K]`` outputs that predict ``value`` at every pixel (translation: the
    constant image of colour ``value``)."""
    if task.kind == "translation":
        colour = np.broadcast_to(np.asarray(value, np.float32), (task.num_outputs,))
        return np.broadcast_to(colour, (*shape, task.num_outputs)).copy()
    if task.kind == "regression":
        return np.full((*shape, 1), value, np.float32)
    logits = np.zeros((*shape, task.num_outputs), np.float32)
    logits[..., int(value)] = 1.0
    return logits


def prediction_of(task: Task, logits: np.ndarray) -> np.ndarray:
    """Per-pixel class ids (argmax) or values (regression) of ``[B, H, W, K]`` outputs;
    translation: the image itself, ``[B, H, W, 3]`` clipped to [0, 1]."""
    if task.kind == "translation":
        return np.clip(np.asarray(logits, np.float32), 0.0, 1.0)
    return logits[..., 0] if task.kind == "regression" else logits.argmax(-1)


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]  # modality set -> metric -> value
    baseline: dict[str, float]
    scenes: int
    panels: dict[str, np.ndarray]  # modality set -> uint8 panel


def evaluate(task: Task, predict: Callable[[dict[str, Any]], Any],
             scenes: Iterable[Mapping[str, Any]], sets: Mapping[str, tuple[str, ...]], *,
             window: int, overlap: int, batch_windows: int, weighting: str = "uniform",
             baseline: int | float | tuple[float, ...] | None = None, panels: int = 0,
             total: int | None = None, presence: bool = False, progress: bool = False
             ) -> EvalResult:
    """Streams ``scenes`` (unbatched examples with the task's keys) through ``predict`` (role
    inputs of ``batch_windows`` windows -> ``[N, window, window, K]``), per modality set.

    ``presence`` (a model trained with both modalities): every set gets both inputs and a
    ``present`` ``[N, 2]`` (optical, SAR) mask of the set's modalities, which equals giving
    the present ones alone (``TaskModel``: the absent modality's keys are masked out of MMA
    and its features out of the head's input; tested to 2e-4) and compiles one program for
    every set instead of one per set."""
    stats = jax.jit(lambda logits, batch: task.batch_stats(logits, batch))
    metrics = {name: task.new_metric() for name in sets}
    reference = task.new_metric()
    kept: dict[str, list] = {name: [] for name in sets}
    count = 0
    for scene in tqdm.tqdm(scenes, total=total, desc="evaluating", unit="scene",
                           disable=not progress):
        batch = {key: np.asarray(value)[None] for key, value in scene.items()
                 if np.ndim(value) >= 2}
        labels = {key: jnp.asarray(batch[key]) for key in _label_keys(task)}
        for name, modalities in sets.items():
            inputs = task.model_inputs(batch, modalities)
            call = predict
            if presence:  # every set: both inputs, the absent one masked (one compile)
                inputs = task.model_inputs(batch, MODALITIES)
                call = _with_presence(predict, modalities)
            logits = sliding_window_predict(call, inputs, window=window, overlap=overlap,
                                            batch_windows=batch_windows, weighting=weighting,
                                            spatial_keys=list(inputs))
            if presence:
                inputs = task.model_inputs(batch, modalities)
            metrics[name].update(stats(jnp.asarray(logits), labels))
            if count < panels:
                kept[name].append((inputs, prediction_of(task, logits)))
        if baseline is not None:
            shape = tuple(np.shape(batch[task.label])[:3])
            reference.update(stats(jnp.asarray(constant_logits(task, baseline, shape)), labels))
        if count < panels:
            for name in sets:
                kept[name][-1] += (batch[task.label], np.asarray(task.target_mask(labels)))
        count += 1
    if not count:
        raise ValueError("evaluation got no scenes")
    return EvalResult({name: m.compute() for name, m in metrics.items()},
                      reference.compute() if baseline is not None else {}, count,
                      _panels(task, kept) if panels else {})


def _with_presence(predict: Callable, modalities: tuple[str, ...]) -> Callable:
    mask = np.array([[m in modalities for m in MODALITIES]])

    def call(inputs: dict[str, Any]) -> Any:
        rows = np.shape(inputs["valid"])[0]
        return predict(inputs | {"present": np.repeat(mask, rows, axis=0)})

    return call


def _panels(task: Task, kept: Mapping[str, list]) -> dict[str, np.ndarray]:
    from mars_jax.train.task_images import prediction_panel

    out = {}
    for name, rows in kept.items():
        if not rows:
            continue
        same = {tuple(np.shape(r[2])[1:3]) for r in rows}
        rows = rows if len(same) == 1 else rows[:1]  # scenes of one size share a panel
        inputs = {key: np.concatenate([r[0][key] for r in rows]) for key in rows[0][0]
                  if key != "valid"}
        out[name] = prediction_panel(task, inputs, np.concatenate([r[1] for r in rows]),
                                     np.concatenate([r[2] for r in rows]),
                                     np.concatenate([r[3] for r in rows]),
                                     max_examples=len(rows))
    return out
