"""Metrics agree with scikit-learn and with a brute-force threshold sweep."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ssae.scoring.metrics import average_precision, best_dice, overlap, precision_recall


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auprc_matches_scikit_learn_including_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(5000) < 0.03
    scores = np.round(rng.random(5000) + labels * rng.random(5000), 2)  # rounding creates ties
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_oracle_dice_equals_the_best_of_a_brute_force_sweep():
    rng = np.random.default_rng(3)
    labels = rng.random(3000) < 0.05
    scores = np.round(rng.normal(size=3000) + 2 * labels, 1)
    brute = max(overlap(scores > t, labels).dice for t in np.unique(scores) - 1e-9)
    oracle = best_dice(scores, labels)
    assert oracle.dice == pytest.approx(brute)
    assert overlap(scores > oracle.threshold, labels).dice == pytest.approx(oracle.dice)


def test_perfect_and_useless_scores():
    labels = np.array([0, 0, 1, 1, 0], bool)
    assert average_precision(labels.astype(float), labels) == 1.0
    assert best_dice(labels.astype(float), labels).dice == 1.0
    assert np.isnan(average_precision(np.ones(5), np.zeros(5, bool)))
    precision, recall, thresholds = precision_recall(np.array([0.9, 0.1, 0.8]), np.array([1, 0, 0], bool))
    assert list(thresholds) == [0.9, 0.8, 0.1] and recall[0] == 1.0 and precision[-1] == pytest.approx(1 / 3)


def test_overlap_counts():
    pred = np.array([1, 1, 0, 0], bool)
    truth = np.array([1, 0, 1, 0], bool)
    o = overlap(pred, truth)
    assert (o.dice, o.precision, o.recall) == (0.5, 0.5, 0.5)
    assert np.isnan(overlap(np.zeros(3, bool), np.zeros(3, bool)).dice)
