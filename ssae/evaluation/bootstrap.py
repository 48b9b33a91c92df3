"""95 % percentile bootstrap intervals of pooled AUPRC and [DICE] over *subjects*.

Cases are resampled with replacement and the pooled metrics recomputed. To make a thousand
resamples cheap, each case's scores are reduced to counts in 4096 shared score bins (quantiles
of the pooled scores); point estimates come from the exact, unbinned scores elsewhere.
"""

from __future__ import annotations

import math

import numpy as np

BINS = 4096
BOOTSTRAP = 1000


def _binned_metrics(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """AUPRC and best Dice from per-bin counts (bins ordered from the highest score down)."""
    tp, fp = np.cumsum(positives), np.cumsum(negatives)
    total = tp[-1]
    if total == 0:
        return math.nan, math.nan
    nonempty = (positives + negatives) > 0
    tp, fp = tp[nonempty], fp[nonempty]
    precision = tp / (tp + fp)
    recall = tp / total
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return ap, float(np.max(2 * tp / (tp + fp + total)))


def bootstrap_intervals(
    per_case: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, resamples: int = BOOTSTRAP
) -> dict[str, tuple[float, float]]:
    """95 % bootstrap intervals of pooled AUPRC and [DICE], resampling cases with replacement."""
    pooled = np.concatenate([s for s, _ in per_case])
    edges = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, BINS + 1)))
    counts = []
    for scores, labels in per_case:
        index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 1)
        positives = np.bincount(index[labels], minlength=len(edges))[::-1]
        negatives = np.bincount(index[~labels], minlength=len(edges))[::-1]
        counts.append((positives, negatives))
    counts_p = np.stack([c[0] for c in counts])
    counts_n = np.stack([c[1] for c in counts])
    values = {"auprc": [], "best_dice": []}
    n = len(per_case)
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        ap, dice = _binned_metrics(counts_p[pick].sum(axis=0), counts_n[pick].sum(axis=0))
        if not math.isnan(ap):
            values["auprc"].append(ap)
            values["best_dice"].append(dice)
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (math.nan, math.nan) for k, v in values.items()}
