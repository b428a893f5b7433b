"""Optical-SAR registration scores, following the GUSO benchmark's protocol exactly.

GUSO (Yan et al., "Ultra-high-resolution SAR and optical image registration", 2026) scores one
image pair from three things: the initial matches ``(src_i, dst_i)`` a method proposes (optical
pixel -> SAR pixel), the subset its robust fit (RANSAC / FSC) keeps as inliers, and the
ground-truth transform ``T`` (optical pixel -> SAR pixel, 2x3 affine or 3x3 homography):

  error_i      = || T(src_i) - dst_i ||                                   (pixels)
  correct      = the matches with error < 3 px, duplicates of one ``dst`` point dropped
  NCM          = number of correct matches among the inliers
  RMSE         = sqrt(mean error^2) over those NCM matches; ``rmse_limit`` (5 px) when
                 NCM < 3, and clipped to ``rmse_limit``
  success      = RMSE < 3 px
  precision    = NCM / number of inliers (0 without inliers)
  recall       = NCM / number of correct initial matches (0 without any)

A pair with fewer than 3 initial matches scores success 0, NCM 0, RMSE ``rmse_limit``,
precision 0, recall 0. We add the **corner error** of the estimated transform: the mean
distance between the estimate's and the truth's images of the four image corners, which
scores the transform itself rather than its matches (inf when no transform was found).

``RegistrationScores`` accumulates pairs on the host (means over pairs, as GUSO reports them,
plus the median corner error) and saves its state as JSON-ready lists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CORRECT_PX = 3.0  # a match is correct when its ground-truth error is below this
SUCCESS_RMSE = 3.0
RMSE_LIMIT = 5.0


def as_matrix(transform: np.ndarray) -> np.ndarray:
    """A 2x3 affine or 3x3 homography as a 3x3 float64 matrix."""
    transform = np.asarray(transform, np.float64)
    if transform.shape == (2, 3):
        return np.vstack([transform, [0.0, 0.0, 1.0]])
    if transform.shape != (3, 3):
        raise ValueError(f"a transform is 2x3 (affine) or 3x3 (homography), got "
                         f"{transform.shape}")
    return transform


def apply_transform(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Maps [N, 2] pixel points (x, y) through a 2x3 or 3x3 transform (projective divide)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    mapped = np.c_[points, np.ones(len(points))] @ as_matrix(transform).T
    return mapped[:, :2] / mapped[:, 2:3]


def correct_matches(truth: np.ndarray, src: np.ndarray, dst: np.ndarray,
                    threshold: float = CORRECT_PX) -> np.ndarray:
    """Ground-truth errors of the correct matches (error < ``threshold``), one per distinct
    ``dst`` point (GUSO drops repeated target points, keeping the first in sorted order)."""
    src, dst = np.asarray(src, np.float64).reshape(-1, 2), np.asarray(dst, np.float64)
    dst = dst.reshape(-1, 2)
    errors = np.linalg.norm(apply_transform(truth, src) - dst, axis=1)
    keep = errors < threshold
    if not keep.any():
        return np.zeros(0)
    _, first = np.unique(dst[keep], axis=0, return_index=True)
    return errors[keep][first]


@dataclasses.dataclass(frozen=True)
class PairScore:
    """One pair's GUSO scores (module docstring) and the corner error."""

    success: int
    ncm: int
    rmse: float
    precision: float
    recall: float
    matches: int  # initial matches
    inliers: int  # matches the robust fit kept
    corner_error: float


def corner_error(estimate: np.ndarray | None, truth: np.ndarray,
                 image_size: tuple[int, int]) -> float:
    """Mean distance (px) between the estimate's and the truth's images of the corners of an
    (H, W) image (pixel centres (0, 0) .. (W-1, H-1)); inf without an estimate."""
    if estimate is None:
        return math.inf
    height, width = image_size
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]],
                       np.float64)
    gap = apply_transform(estimate, corners) - apply_transform(truth, corners)
    return float(np.linalg.norm(gap, axis=1).mean())


def score_pair(truth: np.ndarray, src: np.ndarray, dst: np.ndarray, inliers: np.ndarray,
               *, estimate: np.ndarray | None = None, image_size: tuple[int, int] | None = None,
               rmse_limit: float = RMSE_LIMIT, success_rmse: float = SUCCESS_RMSE,
               threshold: float = CORRECT_PX) -> PairScore:
    """GUSO's scores of one pair: ``src``/``dst`` [N, 2] initial matches (optical px -> SAR
    px), ``inliers`` [N] bool (the robust fit's), ``truth`` the ground-truth transform.
    ``estimate`` and ``image_size`` give the corner error (inf / NaN without them)."""
    src, dst = np.asarray(src, np.float64).reshape(-1, 2), np.asarray(dst, np.float64)
    dst = dst.reshape(-1, 2)
    inliers = np.asarray(inliers, bool).reshape(-1)
    if inliers.shape[0] != src.shape[0] or dst.shape != src.shape:
        raise ValueError(f"src {src.shape}, dst {dst.shape} and inliers {inliers.shape} "
                         "must describe the same matches")
    corners = (corner_error(estimate, truth, image_size) if image_size is not None
               else math.nan)
    if len(src) < 3:
        return PairScore(0, 0, float(rmse_limit), 0.0, 0.0, len(src), int(inliers.sum()),
                         corners)
    kept = correct_matches(truth, src[inliers], dst[inliers], threshold)
    ncm = len(kept)
    rmse = float(np.sqrt(np.mean(kept ** 2))) if ncm >= 3 else float(rmse_limit)
    rmse = min(rmse, float(rmse_limit))
    n_inliers = int(inliers.sum())
    correct_initial = len(correct_matches(truth, src, dst, threshold))
    return PairScore(success=int(rmse < success_rmse), ncm=ncm, rmse=rmse,
                     precision=ncm / n_inliers if n_inliers else 0.0,
                     recall=ncm / correct_initial if correct_initial else 0.0,
                     matches=len(src), inliers=n_inliers, corner_error=corners)


FIELDS = tuple(field.name for field in dataclasses.fields(PairScore))


class RegistrationScores:
    """Host accumulator of per-pair scores: GUSO's means over pairs, plus the median and
    mean corner error (over pairs where a transform was found) and the failure count."""

    def __init__(self) -> None:
        self.pairs: list[PairScore] = []

    def update(self, score: PairScore) -> None:
        self.pairs.append(score)

    def compute(self) -> dict[str, float]:
        if not self.pairs:
            return {name: math.nan for name in (
                "success_rate", "ncm", "rmse", "precision", "recall", "corner_error",
                "corner_error_median")} | {"count": 0, "failed": 0}
        table = {name: np.array([getattr(p, name) for p in self.pairs], np.float64)
                 for name in FIELDS}
        corners = table["corner_error"]
        found = corners[np.isfinite(corners)]
        return {
            "success_rate": float(table["success"].mean()),
            "ncm": float(table["ncm"].mean()),
            "rmse": float(table["rmse"].mean()),
            "precision": float(table["precision"].mean()),
            "recall": float(table["recall"].mean()),
            "corner_error": float(found.mean()) if found.size else math.inf,
            "corner_error_median": float(np.median(corners)) if corners.size else math.nan,
            "count": len(self.pairs),
            "failed": int((~np.isfinite(corners)).sum()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"pairs": [[getattr(p, name) for name in FIELDS] for p in self.pairs]}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Sequence[Sequence[Any]]]
                        ) -> RegistrationScores:
        scores = cls()
        for row in state["pairs"]:
            scores.update(PairScore(*row))
        return scores
