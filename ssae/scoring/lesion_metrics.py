"""Lesion-wise scores of a mask, as MS readers and the MSSEG/ISBI challenges count them.

Voxel Dice says how much volume agrees; a radiologist counts lesions. The rule (:data:`RULE`):

* a **true lesion** is a 26-connected component of the reference mask of at least
  ``min_true_mm3`` (10 mm3 by default: smaller specks are not counted as lesions to find);
* a true lesion is **found** when the mask overlaps it by at least one voxel;
* a **mask lesion** is a 26-connected component of the mask as drawn (after its own minimum
  size); it is a **true positive** when it overlaps any reference voxel, else a **false
  positive** lesion.

Sensitivity = found / true lesions, precision = true-positive mask lesions / mask lesions, F1
their harmonic mean; plus the volumes (found and true, in ml) and the absolute volume
difference. Counts add up over cases, so a data set is scored pooled as well as per case.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

MIN_TRUE_LESION_MM3 = 10.0


RULE = (
    f"true lesions: 26-connected components of the reference of at least {MIN_TRUE_LESION_MM3:g} mm3, found when the mask "
    "overlaps them by at least one voxel; a mask lesion (26-connected component of the mask as drawn) is a true positive "
    "when it overlaps any reference voxel, else a false positive"
)


_CONNECTIVITY = np.ones((3, 3, 3), bool)


@dataclass
class LesionCounts:
    """Lesion and volume counts of one case, or summed over cases (see the module doc)."""

    true_lesions: int = 0
    found: int = 0
    mask_lesions: int = 0
    true_positive_lesions: int = 0
    cases: int = 0
    true_ml: float = 0.0
    mask_ml: float = 0.0
    overlap_ml: float = 0.0

    def __add__(self, other: LesionCounts) -> LesionCounts:
        return LesionCounts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    @property
    def sensitivity(self) -> float:
        return self.found / self.true_lesions if self.true_lesions else float("nan")

    @property
    def precision(self) -> float:
        return self.true_positive_lesions / self.mask_lesions if self.mask_lesions else float("nan")

    @property
    def f1(self) -> float:
        """0 when nothing was found or nothing drawn (an empty mask misses every lesion)."""
        if not self.true_lesions:
            return float("nan")
        s, p = self.sensitivity, self.precision if self.mask_lesions else 0.0
        return 2 * s * p / (s + p) if s + p > 0 else 0.0

    @property
    def dice(self) -> float:
        total = self.mask_ml + self.true_ml
        return 2 * self.overlap_ml / total if total else float("nan")

    @property
    def false_positive_lesions_per_case(self) -> float:
        return (self.mask_lesions - self.true_positive_lesions) / self.cases if self.cases else float("nan")

    @property
    def volume_difference(self) -> float:
        """|mask volume - true volume| / true volume."""
        return abs(self.mask_ml - self.true_ml) / self.true_ml if self.true_ml else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Counts and scores; undefined scores (no reference lesion) are None, never NaN."""
        scores = {
            "dice": self.dice,
            "lesion_sensitivity": self.sensitivity,
            "lesion_precision": self.precision,
            "lesion_f1": self.f1,
            "false_positive_lesions_per_case": self.false_positive_lesions_per_case,
            "volume_difference": self.volume_difference,
        }
        return {**asdict(self), **{k: (None if not np.isfinite(v) else float(v)) for k, v in scores.items()}}


def lesion_counts(
    mask: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], min_true_mm3: float = MIN_TRUE_LESION_MM3
) -> LesionCounts:
    """Lesion-wise counts of a binary ``mask`` against the reference ``truth`` (same [z, y, x]
    grid; ``spacing`` in mm, x first as SimpleITK gives it)."""
    mask, truth = np.asarray(mask, bool), np.asarray(truth, bool)
    voxel_mm3 = float(np.prod(spacing))
    truth_labels, n_truth = ndimage.label(truth, _CONNECTIVITY)
    sizes = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)[1:] * voxel_mm3
    counted = np.flatnonzero(sizes >= min_true_mm3) + 1
    hit = np.unique(truth_labels[mask & (truth_labels > 0)])
    mask_labels, n_mask = ndimage.label(mask, _CONNECTIVITY)
    touching = np.unique(mask_labels[truth & (mask_labels > 0)])
    ml = voxel_mm3 / 1000.0
    return LesionCounts(
        true_lesions=int(counted.size),
        found=int(np.isin(counted, hit).sum()),
        mask_lesions=int(n_mask),
        true_positive_lesions=int(touching.size),
        cases=1,
        true_ml=float(truth.sum()) * ml,
        mask_ml=float(mask.sum()) * ml,
        overlap_ml=float((mask & truth).sum()) * ml,
    )
