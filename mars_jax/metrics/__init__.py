"""Evaluation metrics streamed over a data set, with no stored predictions.

Each metric has two halves. A device half, pure ``jnp`` and jit-compiled, turns one batch into
small integer / float sufficient statistics; with the batch sharded, each device reduces its
pixels and one all-reduce of a few numbers combines them. A host half, numpy in int64 /
float64, adds the batches and computes the metrics at the end, and saves / restores its state
as plain ints, floats and lists (``state_dict`` / ``from_state_dict``, JSON-ready):

    segmentation   batch_confusion -> [C, C]    ConfusionMatrix  miou, oa, mf1, macc, per class
                                                                 iou, precision, recall, f1
    binary         batch_counts    -> [4]       BinaryCounts     precision, recall, f1, iou, oa
    regression     batch_sums      -> dict      RegressionSums   mae, rmse, delta1-3, count
    image quality  batch_image_sums -> dict     ImageQualitySums  psnr, ssim (dm-pix's, means
                   (translation)                                  over images), l1, count
    streaming      MetricSet: named accumulators, one update, prefixed compute

Formulas and the rules for undefined values (0 / 0 -> NaN, left out of class means) are in
each module's docstring. Metrics know nothing of data, models or training (docs/architecture.md).
"""

from mars_jax.metrics.binary import BinaryCounts, batch_counts
from mars_jax.metrics.image_quality import ImageQualitySums, batch_image_sums
from mars_jax.metrics.regression import DELTA_THRESHOLDS, RegressionSums, batch_sums
from mars_jax.metrics.segmentation import ConfusionMatrix, batch_confusion
from mars_jax.metrics.streaming import MetricSet, accumulator_from_state_dict

__all__ = [
    "DELTA_THRESHOLDS",
    "BinaryCounts",
    "ConfusionMatrix",
    "ImageQualitySums",
    "MetricSet",
    "RegressionSums",
    "accumulator_from_state_dict",
    "batch_confusion",
    "batch_counts",
    "batch_image_sums",
    "batch_sums",
]
