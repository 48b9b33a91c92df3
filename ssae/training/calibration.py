"""What a trained model is measured on before it leaves training: healthy validation volumes.

* Every score map's **healthy tail** (:class:`ssae.scoring.operating_points.HealthyTail`): the share of
  healthy brain voxels above each score, from which the card's operating points (healthy
  false-positive budgets) turn into thresholds, and any threshold into an expected
  false-positive volume on a healthy brain.
* Every score map's percentile threshold is chosen **without any lesion labels**: the ``percentile``-th
  percentile of the map's post-processed scores over the brain voxels of held-out healthy
  subjects (lesion-labelled voxels, e.g. automatic WMH masks, left out). At 99.9, about one
  healthy voxel in a thousand exceeds it on data like the validation set. (A sparse map, such
  as the aggregated score under the hyper-intensity prior, may be 0 on more healthy voxels than
  the percentile leaves; then its threshold is the median of its positive healthy scores, or
  the aggregated map's threshold where there are none.)
  Thresholds are calibrated twice: for the model as trained, and for the model adapted to each
  subject.
* Reconstruction fidelity (paper, Fig. 3): mean absolute error ``|I_k - Î_k|`` per pixel at
  every pyramid level, over brain pixels of the same healthy slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssae.detection.detector import Detector
from ssae.models.card import AdaptationDefaults, Calibration, ModelCard
from ssae.models.settings import AdaptationSettings
from ssae.preprocessing.pyramid import decompose
from ssae.preprocessing.slices import atlas_slice_grid
from ssae.scoring.operating_points import HealthyTail
from ssae.scoring.score_maps import eroded_brain, score_maps
from ssae.training import defaults
from ssae.training.slice_cache import SliceStack


@dataclass
class HealthyCalibration:
    """One calibration pass: how it was done, a percentile threshold and a healthy tail per map."""

    calibration: Calibration
    thresholds: dict[str, float]
    tails: dict[str, HealthyTail]


def calibrate_thresholds(
    detector: Detector,
    stack: SliceStack,
    subjects: list[str],
    percentile: float,
    adaptation: AdaptationSettings | None = None,
    voxel_ml: float | None = None,
    log=lambda message: None,
) -> HealthyCalibration:
    """Label-free thresholds and healthy tails of every score map from healthy validation subjects.

    Each subject is one 3D volume, processed exactly as a scan at detection time: with
    ``adaptation``, a copy of the model is first adapted to that subject (adaptation lowers
    the residuals, so thresholds calibrated without it would be too high for adapted runs).
    ``voxel_ml`` is the slice grid's voxel volume (the atlas grid's; None for native grids,
    whose tails then state shares of the brain but no volume).
    """
    post = detector.card.postprocessing
    healthy: dict[str, list[np.ndarray]] = {}
    for index, name in enumerate(subjects):
        start, stop = stack.volume_ranges[name]
        slices = np.asarray(stack.slices[start:stop])
        brain = np.asarray(stack.brain[start:stop]).astype(bool)
        model = detector
        if adaptation is not None:
            log(f"adapting to validation subject {name} ({index + 1}/{len(subjects)})")
            model, _ = detector.adapted_to(slices, brain, adaptation)
        residuals = model.slice_residuals(slices, scales=True)
        counted = eroded_brain(brain, post.brain_erosion) & np.asarray(stack.loss_mask[start:stop]).astype(bool)
        for key, score in score_maps(residuals.named(), slices, brain, post).items():
            healthy.setdefault(key, []).append(score[counted])
    values = {key: np.concatenate(parts) for key, parts in healthy.items()}
    voxels = int(values["aggregated"].size)
    brain_ml = voxels / len(subjects) * voxel_ml if voxel_ml else None
    calibration = Calibration(
        method=(
            f"{percentile:g}th percentile of each post-processed score map over {voxels} brain voxels "
            f"of {len(subjects)} healthy validation subjects (lesion-labelled voxels excluded); no lesion labels used"
        ),
        percentile=percentile,
        voxels=voxels,
    )
    aggregated = _label_free_threshold(values["aggregated"], percentile, fallback=0.0)
    return HealthyCalibration(
        calibration=calibration,
        thresholds={key: _label_free_threshold(v, percentile, fallback=aggregated) for key, v in values.items()},
        tails={key: HealthyTail.from_scores(v, brain_ml) for key, v in values.items()},
    )


def calibrate_card(
    card: ModelCard,
    detector: Detector,
    stack: SliceStack,
    subjects: list[str],
    percentile: float,
    adaptation: AdaptationSettings,
    adapt_by_default: bool,
    log=lambda message: None,
) -> None:
    """Fill ``card`` with everything calibrated on healthy subjects, as trained and adapted:
    percentile thresholds, healthy tails, and the operating points of :mod:`ssae.training.defaults`."""
    voxel_ml = float(np.prod(atlas_slice_grid(card.preprocessing).GetSpacing())) / 1000.0 if card.preprocessing.atlas else None
    log("calibrating on healthy validation subjects")
    trained = calibrate_thresholds(detector, stack, subjects, percentile, voxel_ml=voxel_ml, log=log)
    log("calibrating on adapted healthy validation subjects")
    adapted = calibrate_thresholds(detector, stack, subjects, percentile, adaptation, voxel_ml=voxel_ml, log=log)
    card.calibration, card.thresholds = trained.calibration, trained.thresholds
    card.adaptation = AdaptationDefaults(settings=adaptation, enabled=adapt_by_default, thresholds=adapted.thresholds)
    card.healthy_tails = {"trained": trained.tails, "adapted": adapted.tails}
    card.operating_points = defaults.operating_points_section()


def _label_free_threshold(healthy: np.ndarray, percentile: float, fallback: float) -> float:
    """The ``percentile``-th healthy score. A sparse map (the prior zeroes most voxels) can be 0
    there, and a threshold of 0 would mark every voxel with any score at all: then the median of
    its positive healthy scores, or, where healthy subjects have none, ``fallback`` (the
    aggregated map's threshold: the prior map never exceeds the aggregated map)."""
    value = float(np.percentile(healthy, percentile))
    if value > 0.0:
        return value
    positive = healthy[healthy > 0]
    return float(np.median(positive)) if positive.size else fallback


def reconstruction_fidelity(detector: Detector, stack: SliceStack, subjects: list[str]) -> dict[str, float]:
    """Mean l1 error per pixel at each level (``level0`` is full resolution), brain pixels only."""
    model, levels = detector.model, detector.card.architecture.levels
    sums = np.zeros(levels)
    counts = np.zeros(levels)
    rows = stack.rows_of(subjects)
    with torch.inference_mode():
        for start in range(0, len(rows), detector.batch_size):
            index = rows[start : start + detector.batch_size]
            x = torch.tensor(stack.slices[index], device=detector.device)[:, None]
            keep = torch.tensor(stack.brain[index] & stack.loss_mask[index], device=detector.device)[:, None].float()
            pyramid = decompose(x, levels)
            recon = model.reconstruct(pyramid)
            for k in range(levels):
                weight = keep if k == 0 else (F.avg_pool2d(keep, 2**k) > 0.5).float()
                sums[k] += float(((pyramid.lowpass[k] - recon[k]).abs() * weight).sum())
                counts[k] += float(weight.sum())
    return {f"level{k}": float(sums[k] / max(counts[k], 1.0)) for k in range(levels)}
