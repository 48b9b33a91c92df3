"""Small lesions on the scan's own grid, on a real MS patient (MSLUB patient 19, 1 mm): the
candidates are the patient's small lesions and compact bright spots, the rule keeps those as
bright as the scan's own voxel-mask lesions, falls back to a healthy budget, and the mask the
engine draws is the voxel mask joined by them."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ssae.io.errors import SSAEError
from ssae.preprocessing.input_intensities import depth_in_brain
from ssae.scoring.lesion_metrics import lesion_counts
from ssae.scoring.mask_drawing import SmallLesionEvidence, draw_lesions
from ssae.scoring.operating_points import MaskRule, OperatingPoint
from ssae.scoring.small_lesions import (
    Candidates,
    HealthyCandidates,
    SmallLesionRule,
    brightness_ratio,
    find_candidates,
    reference_brightness,
    small_lesion_mask,
)

CONNECTIVITY = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def patient(mslub_dir):
    image = sitk.ReadImage(str(mslub_dir / "patient19" / "flair.nii.gz"), sitk.sitkFloat32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(mslub_dir / "patient19" / "consensus_gt.nii.gz"))) > 0
    values = sitk.GetArrayFromImage(image)
    brain = values > 0
    spacing = image.GetSpacing()
    ratio = brightness_ratio(values, brain)
    depth = depth_in_brain(brain, spacing)
    return image, truth, brain, ratio, depth, find_candidates(ratio, brain, depth, spacing)


def _lesions(truth, spacing, low, high):
    labels, n = ndimage.label(truth, CONNECTIVITY)
    sizes = np.bincount(labels.ravel())[1:] * float(np.prod(spacing))
    return labels, [k + 1 for k in range(n) if low <= sizes[k] < high]


def test_candidates_cover_most_small_lesions_and_describe_themselves(patient):
    image, truth, brain, ratio, depth, candidates = patient
    labels, small = _lesions(truth, image.GetSpacing(), 10.0, 50.0)
    covered = [k for k in small if (candidates.labels[labels == k] > 0).any()]
    assert len(small) > 30 and len(covered) >= 0.6 * len(small)  # the candidates hold what the model's slices lose
    assert candidates.count == candidates.peak.size == candidates.mm3.size == candidates.csf_mm.size == candidates.depth_mm.size
    for index in np.random.default_rng(0).choice(candidates.count, 5, replace=False):
        voxels = candidates.labels == index + 1
        assert candidates.mm3[index] == pytest.approx(voxels.sum() * float(np.prod(image.GetSpacing())))
        assert candidates.depth_mm[index] == pytest.approx(depth[voxels].max())
        assert candidates.peak[index] > 1.2  # brighter than the floor (smoothed, so not above the raw maximum necessarily)


def test_the_rule_keeps_spots_as_bright_as_the_scans_own_lesions(patient):
    image, truth, brain, ratio, depth, candidates = patient
    labels, large = _lesions(truth, image.GetSpacing(), 1000.0, np.inf)
    voxel_mask = np.isin(labels, large)  # stands in for the voxel mask's large confluent lesions
    rule = SmallLesionRule(brightness=1.0, fallback_budget=None, min_csf_mm=4.0, min_depth_mm=3.0, max_mm3=400.0)
    mask, outcome = small_lesion_mask(candidates, ratio, voxel_mask, rule, fallback=None)
    assert outcome.reference == pytest.approx(float(np.median(ratio[voxel_mask])))
    assert outcome.threshold == pytest.approx(outcome.reference)
    kept = np.unique(candidates.labels[mask])
    kept = kept[kept > 0] - 1
    assert kept.size > 0 and outcome.added > 0
    assert np.all(candidates.peak[kept] >= outcome.threshold)
    assert np.all(candidates.mm3[kept] <= 400.0) and np.all(candidates.csf_mm[kept] >= 4.0) and np.all(candidates.depth_mm[kept] >= 3.0)
    brighter, _ = small_lesion_mask(candidates, ratio, voxel_mask, SmallLesionRule(brightness=1.1, fallback_budget=None), fallback=None)
    assert brighter.sum() < mask.sum()  # a stricter brightness keeps fewer
    # Joined to the large lesions, what it adds is mostly lesions: far better than every candidate.
    counts = lesion_counts(voxel_mask | mask, truth, image.GetSpacing())
    everything = lesion_counts(voxel_mask | (candidates.labels > 0), truth, image.GetSpacing())
    alone = lesion_counts(voxel_mask, truth, image.GetSpacing())
    assert counts.precision > 0.5 > everything.precision
    assert counts.found > alone.found + 10 and counts.f1 > everything.f1


def test_without_voxel_mask_lesions_the_healthy_fallback_applies_or_nothing(patient):
    image, truth, brain, ratio, depth, candidates = patient
    nothing = np.zeros_like(brain)
    rule = SmallLesionRule(fallback_budget=None)
    mask, outcome = small_lesion_mask(candidates, ratio, nothing, rule, fallback=None)
    assert not mask.any() and outcome.reference is None and outcome.threshold is None
    mask, outcome = small_lesion_mask(candidates, ratio, nothing, SmallLesionRule(fallback_budget=5), fallback=1.6)
    assert outcome.threshold == 1.6 and mask.any()
    kept = np.unique(candidates.labels[mask])
    assert np.all(candidates.peak[kept[kept > 0] - 1] >= 1.6)


def test_healthy_candidates_give_the_fallback_and_the_false_lesions_of_a_brain():
    def scan(peaks):
        n = len(peaks)
        labels = np.arange(1, n + 1, dtype=np.int32).reshape(1, 1, n)
        return Candidates(labels, np.array(peaks, np.float32), np.full(n, 20.0, np.float32), np.full(n, 6.0, np.float32), np.full(n, 9.0, np.float32))

    scans = [scan([2.0, 1.9, 1.5, 1.3]), scan([1.8, 1.4]), scan([1.7, 1.6, 1.55])]
    keep = [np.ones(c.count, bool) for c in scans]
    keep[0][0] = False  # on a lesion label: not a healthy spot
    healthy = HealthyCandidates.from_scans(scans, keep)
    assert healthy.subjects == 3 and len(healthy.peak) == 8
    rule = SmallLesionRule(fallback_budget=2)
    # second-brightest per brain: 1.5, 1.4, 1.6 -> median 1.5
    assert healthy.fallback_threshold(rule) == pytest.approx(1.5)
    assert healthy.false_lesions_per_brain(rule, 1.45) == pytest.approx((2 + 1 + 3) / 3)
    assert healthy.fallback_threshold(SmallLesionRule(fallback_budget=None)) is None
    assert healthy.fallback_threshold(SmallLesionRule(fallback_budget=5)) == pytest.approx(1.2)  # fewer spots than the budget: the floor
    assert healthy.per_subject_peaks(SmallLesionRule(min_csf_mm=7.0)) == [pytest.approx([])] * 3  # none far enough from fluid
    again = HealthyCandidates.from_dict(healthy.to_dict())
    assert again.fallback_threshold(rule) == pytest.approx(1.5)


def test_the_engine_draws_the_voxel_mask_joined_by_the_small_lesions(patient):
    image, truth, brain, ratio, depth, candidates = patient
    labels, large = _lesions(truth, image.GetSpacing(), 1000.0, np.inf)
    score_array = np.where(np.isin(labels, large), 1.0, 0.0).astype(np.float32)
    score = sitk.GetImageFromArray(score_array)
    score.CopyInformation(image)
    small = SmallLesionRule(brightness=1.0, fallback_budget=None)
    rule = MaskRule(0.5, None, 0.0, "test", "test", small_lesions=small)
    evidence = SmallLesionEvidence(candidates, ratio)
    drawn, outcome = draw_lesions(score, rule, evidence)
    expected, _ = small_lesion_mask(candidates, ratio, score_array > 0.5, small, None)
    array = sitk.GetArrayFromImage(drawn)
    assert np.array_equal(array > 0, (score_array > 0.5) | expected)
    sizes = np.bincount(array.ravel())[1:]
    assert np.all(np.diff(sizes) <= 0)  # labelled largest first
    assert drawn.GetSpacing() == image.GetSpacing() and drawn.GetOrigin() == image.GetOrigin()
    voxel_only, none = draw_lesions(score, MaskRule(0.5, None, 0.0, "test", "test"), evidence)
    assert none is None and np.array_equal(sitk.GetArrayFromImage(voxel_only) > 0, score_array > 0.5)
    big_only, _ = draw_lesions(score, MaskRule(0.5, None, 60.0, "test", "test", small_lesions=small), evidence)
    counts = np.bincount(sitk.GetArrayFromImage(big_only).ravel())[1:]
    assert counts.size and counts.min() * float(np.prod(image.GetSpacing())) >= 60.0  # the minimum size applies to the joined mask


def test_rules_and_points_refuse_nonsense_and_survive_the_card():
    with pytest.raises(SSAEError):
        SmallLesionRule(brightness=0)
    with pytest.raises(SSAEError):
        SmallLesionRule(fallback_budget=0)
    with pytest.raises(SSAEError):
        SmallLesionRule(min_csf_mm=float("nan"))
    point = OperatingPoint(0.02, 0.0005, 0.0, SmallLesionRule(brightness=0.95, fallback_budget=20))
    again = OperatingPoint.from_dict(point.to_dict())
    assert again == point and "0.95 x the median brightness" in point.describe()
    with pytest.raises(SSAEError):
        OperatingPoint.from_dict({**point.to_dict(), "small_lesions": {"brightness": "bright"}})
    with pytest.raises(SSAEError):
        HealthyCandidates.from_dict({"subjects": 1, "rows": [[3, 1.5, 10, 4, 6]]})  # a subject that does not exist


def test_reference_brightness_is_the_median_inside_the_voxel_mask():
    ratio = np.array([[[1.0, 2.0, 3.0, 10.0]]], np.float32)
    assert reference_brightness(ratio, np.array([[[True, True, True, False]]])) == 2.0
    assert reference_brightness(ratio, np.zeros((1, 1, 4), bool)) is None
    with pytest.raises(SSAEError):
        brightness_ratio(np.zeros((2, 2, 2), np.float32), np.ones((2, 2, 2), bool))
