"""What a trained model is measured on before it leaves training: healthy validation scans.

Every healthy subject is processed exactly as a scan at detection time (on its own grid, with a
copy of the model adapted to it where detection adapts), and with lesion-labelled voxels (e.g.
automatic WMH masks of elderly subjects) left out:

* every score map's **healthy tail** (:class:`ssae.scoring.operating_points.HealthyTail`): the
  share of healthy brain voxels above each score, on the scans' own grids, from which the card's
  operating points (healthy false-positive budgets) turn into thresholds, and any threshold into
  an expected false-positive volume on a healthy brain;
* every score map's percentile threshold, chosen **without any lesion labels**: the
  ``percentile``-th percentile of the map's scores over the brain voxels of the healthy subjects.
  At 99.9, about one healthy voxel in a thousand exceeds it. (A sparse map, such as the
  aggregated score under the hyper-intensity prior, may be 0 on more healthy voxels than the
  percentile leaves; then its threshold is the median of its positive healthy scores, or the
  aggregated map's threshold where there are none.) Both are calibrated twice: for the model as
  trained, and for the model adapted to each subject;
* the **small-lesion candidates** of the healthy subjects (:class:`ssae.scoring.small_lesions.HealthyCandidates`),
  from which a small-lesion rule's fallback brightness is set;
* what each **operating point** means in lesions: its whole rule applied to every healthy
  subject, and the false lesions it draws there (components that touch no lesion label), per
  brain;
* reconstruction fidelity (paper, Fig. 3): mean absolute error ``|I_k - Î_k|`` per pixel at
  every pyramid level, over brain pixels of the healthy slices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ssae.detection.detector import Detector, small_lesion_evidence
from ssae.models.card import TAILS_ON_INPUT_GRID, AdaptationDefaults, Calibration, ModelCard
from ssae.models.settings import AdaptationSettings
from ssae.preprocessing.pyramid import decompose
from ssae.scoring.mask_drawing import SmallLesionEvidence, draw_lesions
from ssae.scoring.operating_points import HealthyTail
from ssae.scoring.score_maps import input_grid_maps
from ssae.scoring.small_lesions import HealthyCandidates
from ssae.training import defaults
from ssae.training.slice_cache import HealthyScan, SliceStack

HealthyScans = Callable[[], Iterable[HealthyScan]]  # the healthy subjects, one at a time, anew for each pass


@dataclass
class HealthySubject:
    """What lesion counting needs of one healthy subject after a pass: its card map on its own
    grid, its small-lesion evidence and its lesion labels."""

    score: sitk.Image
    evidence: SmallLesionEvidence
    labelled: np.ndarray


@dataclass
class HealthyCalibration:
    """One calibration pass: how it was done, a percentile threshold and a healthy tail per map,
    and each subject's card map for lesion counts."""

    calibration: Calibration
    thresholds: dict[str, float]
    tails: dict[str, HealthyTail]
    subjects: list[HealthySubject]


def calibrate_thresholds(
    detector: Detector,
    scans: HealthyScans,
    percentile: float,
    adaptation: AdaptationSettings | None = None,
    log=lambda message: None,
) -> HealthyCalibration:
    """Label-free thresholds and healthy tails of every score map from healthy subjects, each
    processed as a scan at detection time (with ``adaptation``, a copy of the model is first
    adapted to that subject: adaptation lowers the residuals, so thresholds calibrated without it
    would be too high for adapted runs)."""
    card = detector.card
    healthy: dict[str, list[np.ndarray]] = {}
    subjects: list[HealthySubject] = []
    brain_ml: list[float] = []
    for index, scan in enumerate(scans()):
        prepared = scan.prepared
        model = detector
        if adaptation is not None:
            log(f"adapting to healthy subject {scan.name} ({index + 1})")
            model, _ = detector.adapted_to(prepared.slices, prepared.brain, adaptation)
        residuals = model.slice_residuals(prepared.slices, scales=True)
        maps, intensities = input_grid_maps(model.grid_score_maps(prepared, residuals), prepared, card.postprocessing, detector.device)
        counted = intensities.inside & ~scan.labelled
        for name, image in maps.items():
            healthy.setdefault(name, []).append(sitk.GetArrayViewFromImage(image)[counted])
        brain_ml.append(float(intensities.brain.sum()) * intensities.voxel_mm3 / 1000.0)
        subjects.append(HealthySubject(maps[card.score_map], small_lesion_evidence(intensities), scan.labelled))
    if not subjects:
        raise ValueError("calibration needs at least one healthy subject")
    values = {key: np.concatenate(parts) for key, parts in healthy.items()}
    voxels = int(values["aggregated"].size)
    calibration = Calibration(
        method=(
            f"{percentile:g}th percentile of each score map over {voxels} brain voxels of {len(subjects)} healthy validation "
            "subjects on their own grids (lesion-labelled voxels excluded); no lesion labels used"
        ),
        percentile=percentile,
        voxels=voxels,
    )
    aggregated = _label_free_threshold(values["aggregated"], percentile, fallback=0.0)
    mean_brain_ml = float(np.mean(brain_ml))
    return HealthyCalibration(
        calibration=calibration,
        thresholds={key: _label_free_threshold(v, percentile, fallback=aggregated) for key, v in values.items()},
        tails={key: HealthyTail.from_scores(v, mean_brain_ml) for key, v in values.items()},
        subjects=subjects,
    )


def false_lesions_per_brain(card: ModelCard, point: str, adapted: bool, subjects: list[HealthySubject]) -> float:
    """Mean count per healthy subject of the lesions the operating point ``point`` draws there
    that touch no lesion label."""
    rule = card.mask_rule(card.score_map, adapted, point)
    counts = []
    for subject in subjects:
        labels, _ = draw_lesions(subject.score, rule, subject.evidence)
        array = sitk.GetArrayViewFromImage(labels)
        touching = np.unique(array[subject.labelled & (array > 0)])
        counts.append(int(array.max()) - int(touching.size))
    return float(np.mean(counts))


def calibrate_card(
    card: ModelCard,
    detector: Detector,
    scans: HealthyScans,
    percentile: float,
    adaptation: AdaptationSettings,
    adapt_by_default: bool,
    log=lambda message: None,
) -> None:
    """Fill ``card`` with everything calibrated on healthy subjects (see the module doc), as
    trained and adapted, and the operating points of :mod:`ssae.training.defaults`."""
    log("calibrating on healthy validation subjects")
    trained = calibrate_thresholds(detector, scans, percentile, log=log)
    log("calibrating on adapted healthy validation subjects")
    adapted = calibrate_thresholds(detector, scans, percentile, adaptation, log=log)
    card.calibration, card.thresholds = trained.calibration, trained.thresholds
    card.adaptation = AdaptationDefaults(settings=adaptation, enabled=adapt_by_default, thresholds=adapted.thresholds)
    card.healthy_tails = {"trained": trained.tails, "adapted": adapted.tails}
    card.healthy_tails_grid = TAILS_ON_INPUT_GRID
    subjects = adapted.subjects if adapt_by_default else trained.subjects
    card.healthy_candidates = HealthyCandidates.from_scans(
        [s.evidence.candidates for s in subjects], [~_on_labels(s) for s in subjects]
    )
    section = defaults.operating_points_section()
    section["small_lesion_fallback"] = {
        name: card.healthy_candidates.fallback_threshold(point.small_lesions) if point.small_lesions is not None else None
        for name, point in section["points"].items()
    }
    card.operating_points = section
    section["healthy_false_lesions"] = {
        name: round(false_lesions_per_brain(card, name, adapt_by_default, subjects), 2) for name in section["points"]
    }


def _on_labels(subject: HealthySubject) -> np.ndarray:
    """Which of a subject's small-lesion candidates touch its lesion labels."""
    candidates = subject.evidence.candidates
    touched = np.unique(candidates.labels[subject.labelled & (candidates.labels > 0)])
    on = np.zeros(candidates.count, bool)
    on[touched[touched > 0] - 1] = True
    return on


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
