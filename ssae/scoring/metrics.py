"""Segmentation metrics from voxel scores, computed from one sort of the pooled scores.

* AUPRC is average precision, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score
  thresholds, exactly as scikit-learn's ``average_precision_score`` defines it.
* The oracle [DICE] of the paper is the best Dice over all thresholds for a whole data set:
  after sorting the scores once, the Dice at every distinct threshold is
  ``2 TP / (TP + FP + P)`` from cumulative sums, so the search is exact and costs one sort,
  not one detection per threshold. It picks the threshold on the test labels, so it is an
  upper bound that no user can reach; we always report it beside the Dice at a threshold
  fixed without labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CurvePoints:
    """Cumulative counts at each distinct score threshold, highest threshold first."""

    thresholds: np.ndarray  # a voxel is positive when score >= threshold
    true_positives: np.ndarray
    false_positives: np.ndarray
    positives: int
    next_lower: np.ndarray  # the next lower distinct score (-inf after the last)


def _curve(scores: np.ndarray, labels: np.ndarray) -> CurvePoints:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError("scores and labels must have the same number of voxels")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tp = np.cumsum(sorted_labels)[last_of_group]
    fp = (last_of_group + 1) - tp
    thresholds = sorted_scores[last_of_group]
    return CurvePoints(
        thresholds=thresholds,
        true_positives=tp,
        false_positives=fp,
        positives=int(sorted_labels.sum()),
        next_lower=np.r_[thresholds[1:], -np.inf],
    )


def precision_recall(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and thresholds (highest threshold first) for a PR curve plot."""
    c = _curve(scores, labels)
    precision = c.true_positives / np.maximum(c.true_positives + c.false_positives, 1)
    recall = c.true_positives / max(c.positives, 1)
    return precision, recall, c.thresholds


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve (scikit-learn's average precision)."""
    c = _curve(scores, labels)
    if c.positives == 0:
        return float("nan")
    precision = c.true_positives / (c.true_positives + c.false_positives)
    recall = c.true_positives / c.positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass
class BestDice:
    dice: float
    threshold: float  # a voxel is positive when score > threshold


def best_dice(scores: np.ndarray, labels: np.ndarray) -> BestDice:
    """Oracle Dice: the best Dice over every threshold, and the threshold that gives it."""
    c = _curve(scores, labels)
    if c.positives == 0:
        return BestDice(dice=float("nan"), threshold=float("nan"))
    dice = 2.0 * c.true_positives / (c.true_positives + c.false_positives + c.positives)
    best = int(np.argmax(dice))
    upper, lower = c.thresholds[best], c.next_lower[best]
    threshold = (upper + lower) / 2.0 if np.isfinite(lower) else np.nextafter(upper, -np.inf)
    return BestDice(dice=float(dice[best]), threshold=float(threshold))


@dataclass
class OverlapScores:
    dice: float
    precision: float
    recall: float

    def to_dict(self) -> dict[str, float]:
        return {"dice": self.dice, "precision": self.precision, "recall": self.recall}


def overlap(prediction: np.ndarray, truth: np.ndarray) -> OverlapScores:
    """Dice, precision and recall of a binary prediction (NaN where undefined)."""
    prediction = np.asarray(prediction).astype(bool).ravel()
    truth = np.asarray(truth).astype(bool).ravel()
    tp = float(np.count_nonzero(prediction & truth))
    predicted, actual = float(prediction.sum()), float(truth.sum())
    nan = float("nan")
    return OverlapScores(
        dice=2 * tp / (predicted + actual) if predicted + actual else nan,
        precision=tp / predicted if predicted else nan,
        recall=tp / actual if actual else nan,
    )
