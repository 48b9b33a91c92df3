"""Follow-up reading: a baseline and a follow-up FLAIR of one patient, what changed between them.

Each scan is detected on its own (with the model's scanner adaptation, so both get their maps,
lesion masks, brain masks and atlas registrations) and bias-corrected again inside its brain
mask (the change is measured in the brain: a field fitted to the whole head, as detection does
before it has a brain mask, left more false changes on the development pairs), the baseline is registered
rigidly onto the follow-up (:mod:`ssae.preprocessing.pair_registration`, started from the two
atlas registrations), and the change rule of :mod:`ssae.scoring.change` compares the two on the
**follow-up's grid**: a change z-score map, a change labelmap (1 = new or enlarging, 2 =
shrinking or resolved) and one row per lesion of either time with its status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ssae.detection.detector import CancelCheck, DetectionCancelled, DetectionResult, Detector, ProgressCallback
from ssae.models.settings import AdaptationSettings
from ssae.preprocessing.bias_field import bias_correct
from ssae.preprocessing.pair_registration import PairAlignment, initial_pair_transform, register_pair
from ssae.preprocessing.pair_resampling import as_sharp_as_carried, carried_onto
from ssae.preprocessing.registration_check import alignment_warnings
from ssae.scoring.change import (
    ChangeEvidence,
    ChangeRule,
    LesionChange,
    change_evidence,
    change_labels,
    lesion_changes,
    pair_normalised,
    status_counts,
)


@dataclass
class PairOnGrid:
    """Both scans on the follow-up's grid, ready for a change rule: brain-normalised, bias-corrected
    intensities, the brain both share in view, and each time point's lesion mask."""

    followup: np.ndarray
    baseline: np.ndarray
    brain: np.ndarray
    followup_lesions: np.ndarray
    baseline_lesions: np.ndarray
    reference: sitk.Image  # the follow-up scan (its grid)


@dataclass
class RuleOutcome:
    evidence: ChangeEvidence
    labels: np.ndarray  # uint8: 1 new or enlarging, 2 shrinking or resolved
    lesions: list[LesionChange]


def apply_rule(pair: PairOnGrid, rule: ChangeRule) -> RuleOutcome:
    """A change rule on a registered pair (cheap: the detections and the registration are done)."""
    spacing = pair.reference.GetSpacing()
    evidence = change_evidence(pair.followup, pair.baseline, pair.brain, spacing, rule)
    labels = change_labels(evidence, float(np.prod(spacing)), rule.min_change_mm3)
    return RuleOutcome(evidence, labels, lesion_changes(labels, pair.followup_lesions, pair.baseline_lesions, pair.reference))


@dataclass
class Comparison:
    """Everything ``ssae compare`` writes, on the follow-up's grid, and how it was made."""

    followup: DetectionResult
    baseline: DetectionResult
    alignment: PairAlignment
    rule: ChangeRule
    change: sitk.Image  # float32 z-score of the drift-corrected difference, 0 outside the compared brain
    change_mask: sitk.Image  # uint8: 1 new or enlarging, 2 shrinking or resolved
    baseline_on_followup: sitk.Image  # the baseline scan as acquired, resampled onto the follow-up grid
    lesions: list[LesionChange]
    noise: float
    on_grid: PairOnGrid
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return status_counts(self.lesions)

    def change_ml(self) -> dict[str, float]:
        labels = sitk.GetArrayViewFromImage(self.change_mask)
        ml = float(np.prod(self.change_mask.GetSpacing())) / 1000.0
        return {"increase_ml": float((labels == 1).sum()) * ml, "decrease_ml": float((labels == 2).sum()) * ml}


def _on_grid(array: np.ndarray, reference: sitk.Image, pixel: int | None = None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return sitk.Cast(image, pixel) if pixel is not None else image


def compare_scans(
    detector: Detector,
    baseline: sitk.Image,
    followup: sitk.Image,
    baseline_mask: sitk.Image | None = None,
    followup_mask: sitk.Image | None = None,
    *,
    adaptation: AdaptationSettings | None = None,
    operating_point: str | None = None,
    min_lesion_mm3: float | None = None,
    rule: ChangeRule | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> Comparison:
    """Detect in both scans, register the baseline onto the follow-up and compare them."""
    report = progress or (lambda fraction, message: None)
    card = detector.card
    rule = rule or ChangeRule(brighter_than=card.postprocessing.prior_factor or ChangeRule.brighter_than)
    timings: dict[str, float] = {}

    def part(start: float, share: float, label: str) -> ProgressCallback:
        return lambda fraction, message: report(start + share * fraction, f"{label}: {message}")

    started = time.perf_counter()
    options = {
        "adaptation": adaptation,
        "operating_point": operating_point,
        "min_lesion_mm3": min_lesion_mm3,
        "scales": False,
        "should_cancel": should_cancel,
    }
    after = detector.detect(followup, followup_mask, progress=part(0.0, 0.42, "follow-up"), **options)
    before = detector.detect(baseline, baseline_mask, progress=part(0.42, 0.42, "baseline"), **options)
    timings["detect_s"] = time.perf_counter() - started
    if should_cancel is not None and should_cancel():
        raise DetectionCancelled("comparison cancelled")

    report(0.86, "bias correction inside the brain and registration of the baseline onto the follow-up")
    started = time.perf_counter()
    brain_after, brain_before = after.prepared.brain_mask, before.prepared.brain_mask
    corrected_after = sitk.Cast(bias_correct(followup, brain_after), sitk.sitkFloat32)
    corrected_before = sitk.Cast(bias_correct(baseline, brain_before), sitk.sitkFloat32)
    timings["bias_correction_s"] = time.perf_counter() - started
    started = time.perf_counter()
    initial = initial_pair_transform(
        brain_after,
        brain_before,
        after.prepared.alignment.transform if after.prepared.alignment else None,
        before.prepared.alignment.transform if before.prepared.alignment else None,
    )
    alignment = register_pair(corrected_after, corrected_before, brain_after, brain_before, initial)
    timings["registration_s"] = time.perf_counter() - started

    report(0.96, "comparing")
    started = time.perf_counter()
    on_grid = _pair_on_grid(followup, baseline, corrected_after, corrected_before, after, before, alignment.transform)
    outcome = apply_rule(on_grid, rule)
    timings["compare_s"] = time.perf_counter() - started

    warnings = [f"follow-up: {w}" for w in alignment_warnings(after.prepared.alignment, card.modality)]
    warnings += [f"baseline: {w}" for w in alignment_warnings(before.prepared.alignment, card.modality)]
    warnings += alignment.warnings()
    report(1.0, "done")
    return Comparison(
        followup=after,
        baseline=before,
        alignment=alignment,
        rule=rule,
        change=_on_grid(outcome.evidence.score, followup, sitk.sitkFloat32),
        change_mask=_on_grid(outcome.labels, followup, sitk.sitkUInt8),
        baseline_on_followup=sitk.Resample(baseline, followup, alignment.transform, sitk.sitkLinear, 0.0, baseline.GetPixelID()),
        lesions=outcome.lesions,
        noise=outcome.evidence.noise,
        on_grid=on_grid,
        warnings=warnings,
        timings=timings,
    )


def _pair_on_grid(
    followup: sitk.Image,
    baseline: sitk.Image,
    corrected_after: sitk.Image,
    corrected_before: sitk.Image,
    after: DetectionResult,
    before: DetectionResult,
    transform: sitk.Transform,
) -> PairOnGrid:
    """The baseline's corrected intensities, brain and lesion mask carried onto the follow-up grid,
    the follow-up made as sharp as the carried baseline (:mod:`ssae.preprocessing.pair_resampling`)
    and both put on one intensity scale (:func:`ssae.scoring.change.pair_normalised`); the
    compared brain is where both are brain and the baseline was in view."""
    moved = carried_onto(corrected_before, followup, transform)
    field_of_view = sitk.Image(baseline.GetSize(), sitk.sitkUInt8) + 1
    field_of_view.CopyInformation(baseline)

    def carried(mask: sitk.Image) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(mask, followup, transform, sitk.sitkNearestNeighbor, 0)) > 0

    brain = (sitk.GetArrayFromImage(after.prepared.brain_mask) > 0) & carried(before.prepared.brain_mask) & carried(field_of_view)
    sharpness_matched = as_sharp_as_carried(corrected_after, corrected_before, transform, brain)
    followup_values, baseline_values = pair_normalised(sitk.GetArrayFromImage(sharpness_matched), sitk.GetArrayFromImage(moved), brain)
    return PairOnGrid(
        followup=followup_values,
        baseline=baseline_values,
        brain=brain,
        followup_lesions=sitk.GetArrayFromImage(after.mask) > 0,
        baseline_lesions=carried(before.mask),
        reference=followup,
    )
