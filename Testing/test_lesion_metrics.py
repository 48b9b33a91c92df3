"""Lesion-wise counting (MSSEG rule) on a real MS patient's manual lesion mask: it agrees with a
literal transcription of Anima's detection test, and no mask gains F1 by covering lesions with
healthy tissue, by merging detections or by cutting them into pieces."""

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ssae.scoring.lesion_metrics import MSSEG, DetectionRule, lesion_counts

CONNECTIVITY = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def patient19(mslub_dir):
    """FLAIR in units of its brain median, brain, manual lesion mask and spacing of MSLUB patient 19."""
    flair = sitk.ReadImage(str(mslub_dir / "patient19" / "flair.nii.gz"), sitk.sitkFloat32)
    truth = sitk.ReadImage(str(mslub_dir / "patient19" / "consensus_gt.nii.gz"))
    values = sitk.GetArrayFromImage(flair)
    brain = values > 0
    return values / np.median(values[brain]), brain, sitk.GetArrayFromImage(truth) > 0, truth.GetSpacing()


def _joined(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every component joined to the largest by a one-voxel 26-connected line."""
    labels, n = ndimage.label(mask, CONNECTIVITY)
    members = np.array(ndimage.maximum_position(mask, labels, range(1, n + 1)))  # one voxel of each component
    hub = members[int(np.argmax(np.bincount(labels.ravel())[1:]))]
    joined = mask.copy()
    for member in members:
        line = np.rint(np.linspace(member, hub, int(np.abs(member - hub).max()) + 1)).astype(int)
        joined[line[:, 0], line[:, 1], line[:, 2]] = True
    return joined


def _anima_detected(table: np.ndarray, rule: DetectionRule, per_lesion: bool) -> list[bool]:
    """Anima's getTruePositiveLesions / falsePositiveRatioTester, loop for loop: ``table[i][j]``
    counts voxels of row label i on column label j, row and column 0 the background. With
    ``per_lesion``, a column's share outside is taken outside row i, not outside every row."""
    rows, cols = table.shape
    row_tp = table[:, 1:].sum(axis=1)
    col_sum = table.sum(axis=0)
    detected = []
    for i in range(1, rows):
        tp, fn = row_tp[i], table[i, 0]
        if not tp / (tp + fn) > rule.min_overlap:
            detected.append(False)
            continue
        order = sorted(range(1, cols), key=lambda j: -table[i, j])
        weight, k, exit_ = 0.0, 0, False
        while weight < rule.min_covering and k < len(order) and not exit_:
            j = order[k]
            outside = (col_sum[j] - table[i, j]) if per_lesion else table[0, j]
            exit_ = outside / col_sum[j] > rule.max_outside
            if not exit_:
                weight += table[i, j] / tp
            k += 1
        detected.append(not exit_)
    return detected


def _literal_counts(mask: np.ndarray, truth: np.ndarray, spacing, rule: DetectionRule, anima: bool = False) -> tuple[int, int, int, int]:
    """Found lesions (>= min_true_mm3), reference lesions counted, mask lesions, false-positive mask
    lesions; as this project counts them, or with ``anima`` exactly as Anima does."""
    voxel = float(np.prod(spacing))
    min_voxels = math.floor(rule.min_component_mm3 / voxel) + 1

    def components(a):
        labels, n = ndimage.label(a, CONNECTIVITY)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = [k for k in range(1, n + 1) if sizes[k] >= min_voxels]
        relabel = np.zeros(n + 1, int)
        relabel[keep] = np.arange(1, len(keep) + 1)
        return relabel[labels], len(keep), sizes[keep]

    ref, n_ref, ref_sizes = components(truth)
    test, n_test, _ = components(mask)
    table = np.zeros((n_ref + 1, n_test + 1), np.int64)
    np.add.at(table, (ref.ravel(), test.ravel()), 1)
    found = _anima_detected(table, rule, per_lesion=not anima)
    true_test = _anima_detected(table.T.copy(), rule, per_lesion=False)
    counted = [k for k in range(n_ref) if ref_sizes[k] * voxel >= rule.min_true_mm3]
    return sum(found[k] for k in counted), len(counted), n_test, n_test - sum(true_test)


@pytest.mark.parametrize("k", [1.2, 1.3, 1.5, 1.8])
def test_counts_agree_with_a_literal_transcription_of_animas_test(patient19, k):
    flair, brain, truth, spacing = patient19
    mask = brain & (flair > k)
    counts = lesion_counts(mask, truth, spacing)
    found, true, drawn, false = _literal_counts(mask, truth, spacing, MSSEG)
    assert (counts.found, counts.true_lesions, counts.mask_lesions, counts.false_positive_lesions) == (found, true, drawn, false)
    assert sum(counts.band_true) == counts.true_lesions and sum(counts.band_found) == counts.found


def test_the_reference_scores_one_and_a_whole_brain_mask_about_zero(patient19):
    _, brain, truth, spacing = patient19
    perfect = lesion_counts(truth, truth, spacing)
    assert perfect.f1 == 1.0 and perfect.precision == 1.0 and perfect.dice == 1.0
    assert perfect.true_lesions == 57 and all(v == 1.0 for v in perfect.band_sensitivity().values())
    whole = lesion_counts(brain | truth, truth, spacing)
    assert whole.found == 0 and whole.f1 < 0.05


def test_lesions_swollen_with_healthy_tissue_are_not_found(patient19):
    """Each lesion drawn as a blob of ten times its volume: the old touching rule scored this F1 1."""
    _, brain, truth, spacing = patient19
    swollen = ndimage.binary_dilation(truth, CONNECTIVITY, iterations=4) & brain
    counts = lesion_counts(swollen, truth, spacing)
    assert counts.mask_ml > 4 * counts.true_ml
    assert counts.f1 < 0.1


@pytest.mark.parametrize("k", [1.3, 1.4, 1.5])
def test_merging_or_cutting_real_threshold_masks_does_not_raise_f1(patient19, k):
    """FLAIR above k x the brain median: its components joined into one by thin lines score about
    0; cut into axial slabs (every component crossing a cut falls apart) they never score better."""
    flair, brain, truth, spacing = patient19
    mask = brain & (flair > k)
    before = lesion_counts(mask, truth, spacing)
    assert before.found > 10 and before.false_positive_lesions > 10  # a real mask: lesions and false ones
    joined = lesion_counts(_joined(mask), truth, spacing)
    assert joined.mask_lesions == 1 and joined.f1 < 0.05
    for step in (2, 3):
        cut = mask.copy()
        cut[::step] = False
        assert lesion_counts(cut, truth, spacing).f1 <= before.f1
    pieces = truth.copy()
    pieces[::3] = False  # the reference itself in slabs: still every lesion found once, nothing false
    counts = lesion_counts(pieces, truth, spacing)
    assert counts.false_positive_lesions == 0 and counts.precision == 1.0 and counts.mask_lesions > 2 * counts.true_lesions


def test_anima_as_is_rewards_joining_components_and_this_rule_does_not(patient19):
    """The case in the module doc: why a covering component's share outside is taken per lesion."""
    flair, brain, truth, spacing = patient19
    mask = brain & (flair > 1.4)
    found, true, _, false = _literal_counts(mask, truth, spacing, MSSEG, anima=True)
    anima_before = 2 * found / (true + found + false)
    found, true, _, false = _literal_counts(_joined(mask), truth, spacing, MSSEG, anima=True)
    anima_joined = 2 * found / (true + found + false)
    assert anima_joined > 2 * anima_before and found > 20
    assert lesion_counts(_joined(mask), truth, spacing).f1 < 0.05 < lesion_counts(mask, truth, spacing).f1


def test_components_at_the_minimum_volume_are_ignored_on_both_sides():
    spacing = (1.0, 1.0, 1.0)
    truth = np.zeros((20, 20, 20), bool)
    truth[2:5, 2:5, 2:5] = True  # 27 mm3: a lesion to find
    truth[10, 10, 10:13] = True  # 3 mm3: not more than the minimum, background
    mask = np.zeros_like(truth)
    mask[10, 10, 10:13] = True  # on the speck: ignored, neither true nor false
    counts = lesion_counts(mask, truth, spacing)
    assert (counts.mask_lesions, counts.false_positive_lesions, counts.found, counts.true_lesions) == (0, 0, 0, 1)
    mask[15:17, 15:17, 15] = True  # 4 mm3 of healthy tissue: a false lesion
    counts = lesion_counts(mask, truth, spacing)
    assert (counts.mask_lesions, counts.false_positive_lesions) == (1, 1)
    assert counts.f1 == 0.0 and counts.to_dict()["lesion_f1"] == 0.0


def test_counts_add_up_over_cases_and_serialise_without_nan(patient19):
    _, _, truth, spacing = patient19
    one = lesion_counts(truth, truth, spacing)
    empty = lesion_counts(np.zeros_like(truth), np.zeros_like(truth), spacing)
    total = one + empty
    assert total.cases == 2 and total.true_lesions == one.true_lesions and total.band_true == one.band_true
    d = empty.to_dict()
    assert d["lesion_f1"] is None and d["lesion_precision"] is None and all(v is None for v in d["sensitivity_by_size"].values())
    with pytest.raises(ValueError):
        lesion_counts(truth[1:], truth, spacing)
