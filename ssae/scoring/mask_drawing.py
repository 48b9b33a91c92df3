"""The lesion mask a rule draws: the voxel mask of a score map, joined by the small lesions.

One function for every place a mask is drawn (detection, calibration, the benches, the Slicer
module's threshold slider), so that they cannot drift apart; and the small lesions of every
operating point in one volume (:func:`small_lesions_by_point`), so that the Slicer module can
switch points without the scan's own voxels. Torch- and SciPy-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ssae.scoring.lesions import label_lesions, relabel_by_size
from ssae.scoring.operating_points import OPERATING_POINT_NAMES, MaskRule
from ssae.scoring.small_lesions import Candidates, SmallLesionOutcome, small_lesion_mask

SMALL_LESION_BITS = {name: 1 << index for index, name in enumerate(OPERATING_POINT_NAMES)}  # sensitive 1, balanced 2, specific 4


@dataclass
class SmallLesionEvidence:
    """What the small-lesion rule reads from one scan: its candidates and its brightness (the FLAIR
    in units of the brain median, [z, y, x] on the score map's grid)."""

    candidates: Candidates
    ratio: np.ndarray


def draw_lesions(score: sitk.Image, rule: MaskRule, evidence: SmallLesionEvidence | None = None) -> tuple[sitk.Image, SmallLesionOutcome | None]:
    """Lesion labels (1..n, largest first) of ``score`` under ``rule``: components above its
    threshold (with its seeds and minimum size) and, where the rule has a small-lesion rule and
    ``evidence`` is given, the small lesions it keeps; and what the small-lesion rule did."""
    labels = label_lesions(score, rule.threshold, rule.min_lesion_mm3, rule.seed_threshold)
    if rule.small_lesions is None or evidence is None:
        return labels, None
    voxel_mask = sitk.GetArrayViewFromImage(labels) > 0
    small, outcome = small_lesion_mask(evidence.candidates, evidence.ratio, voxel_mask, rule.small_lesions, rule.small_lesion_fallback)
    if not small.any():
        return labels, outcome
    joined = sitk.GetImageFromArray((voxel_mask | small).astype(np.uint8))
    joined.CopyInformation(score)
    return relabel_by_size(joined, rule.min_lesion_mm3), outcome


def small_lesions_by_point(score: sitk.Image, rules: dict[str, MaskRule], evidence: SmallLesionEvidence) -> sitk.Image:
    """The small lesions each operating point's rule keeps beside its voxel mask, as one uint8
    volume on ``score``'s grid: a voxel holds :data:`SMALL_LESION_BITS` of every point that keeps
    it (``rules``: point name -> its rule)."""
    bits = np.zeros(sitk.GetArrayViewFromImage(score).shape, np.uint8)
    for name, rule in rules.items():
        if rule.small_lesions is None:
            continue
        voxel_mask = sitk.GetArrayFromImage(label_lesions(score, rule.threshold, rule.min_lesion_mm3, rule.seed_threshold)) > 0
        small, _ = small_lesion_mask(evidence.candidates, evidence.ratio, voxel_mask, rule.small_lesions, rule.small_lesion_fallback)
        bits[small] |= SMALL_LESION_BITS[name]
    image = sitk.GetImageFromArray(bits)
    image.CopyInformation(score)
    return image
