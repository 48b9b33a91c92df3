"""Lesion-wise scores of a mask, counted as the MSSEG challenges count them, made safe from merging.

Voxel Dice says how much volume agrees; a radiologist counts lesions. Touching is not enough to
count: with a rule where a mask component is true when it touches any reference voxel and a
lesion is found when any mask voxel touches it, one component covering the whole brain finds
every lesion with precision 1. The MSSEG challenges (Commowick et al., Sci Rep 8:13650, 2018)
count a detection only when the two overlap enough *and* the detection lies mostly on the
lesion. This module follows the detection test of Anima's ``animaSegPerfAnalyzer``
(``SegPerfCAnalyzer::getTruePositiveLesions`` and ``falsePositiveRatioTester``) with its
command-line defaults (:data:`MSSEG`), with two changes that close the ways it can be inflated:

* lesions are the 26-connected components of the reference and of the mask; components of at
  most ``min_component_mm3`` (3 mm3) are ignored on both sides, their voxels treated as
  background (Anima);
* a reference lesion is **found** when the mask covers more than ``min_overlap`` (10 %) of it
  and the mask components that cover it, taken largest overlap first until they account for
  ``min_covering`` (65 %) of the covered part, each lie at most ``max_outside`` (70 %) outside
  **this lesion**. (Anima takes the share outside *every* reference lesion. FLAIR above 1.4 x
  the brain median of MSLUB patient 19 finds 30 of its 57 lesions with 152 false ones, F1 0.25;
  the same mask with its components joined into one by one-voxel lines lies 70 % outside the
  reference, and under Anima's test that one component finds 50 lesions with no false one, F1
  0.94. Taken per lesion, a component still finds the two or three lesions it merges, not the
  dozens it reaches: F1 0.)
* a mask lesion is **true** by Anima's test with the roles swapped: more than 10 % of it on the
  reference, and the reference lesions under it (largest overlap first, 65 % of it) each at most
  70 % outside the mask; every other mask lesion is a **false positive**;
* sensitivity is found / reference lesions; precision is found / (found + false-positive mask
  lesions), the lesion-wise F1 of the MSSEG-2 and Shifts challenges (F1 = TP / (TP + (FP + FN) / 2)),
  not Anima's true mask lesions / mask lesions, which rises when a correct detection is cut into
  pieces. Here a lesion drawn in pieces counts once.

So a whole-brain mask scores 0, a lesion cut into pieces is still one found lesion, and a
component that joins many lesions, or a lesion and much healthy tissue, finds none of them.
(Joining a false lesion to another, or to a detection that stays mostly on its lesion, lowers
the false count, as in every count-based rule.)

Sensitivity is counted over reference lesions of at least ``min_true_mm3`` (10 mm3, this
project's convention since its first lesion counts; MSLUB's smallest manual lesions are specks
readers do not count), overall and per size band (:data:`SIZE_BANDS`); reference lesions of
3-10 mm3 are still reference voxels, so a mask lesion on one is not a false positive. Counts add
up over cases, so a data set is scored pooled as well as per case.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from scipy import ndimage

from ssae.scoring.lesions import SIZE_BANDS, band_name

MIN_TRUE_LESION_MM3 = 10.0


@dataclass(frozen=True)
class DetectionRule:
    """When a mask component and a reference lesion count as a detection (see the module doc)."""

    min_overlap: float = 0.10  # Anima's alpha (-x, MinOverlapRatio)
    max_outside: float = 0.70  # beta (-y, MaxFalsePositiveRatio)
    min_covering: float = 0.65  # gamma (-z, MaxFalsePositiveRatioModerator)
    min_component_mm3: float = 3.0  # -v, MinLesionVolume: components of at most this volume are ignored
    min_true_mm3: float = MIN_TRUE_LESION_MM3  # reference lesions counted for sensitivity (this project)

    def describe(self) -> str:
        return (
            f"MSSEG rule (Anima animaSegPerfAnalyzer defaults): 26-connected components larger than {self.min_component_mm3:g} mm3; "
            f"a reference lesion is found when the mask covers more than {self.min_overlap:.0%} of it and the mask lesions covering "
            f"{self.min_covering:.0%} of that part each lie at most {self.max_outside:.0%} outside that lesion; a mask lesion is "
            f"true by the same test with the roles swapped, else a false positive; sensitivity over reference lesions of at least "
            f"{self.min_true_mm3:g} mm3, precision = found / (found + false-positive mask lesions)"
        )


MSSEG = DetectionRule()


RULE = MSSEG.describe()


_CONNECTIVITY = np.ones((3, 3, 3), bool)


BAND_NAMES = tuple(band_name(*band) for band in SIZE_BANDS)


def _zeros() -> tuple[int, ...]:
    return (0,) * len(SIZE_BANDS)


@dataclass
class LesionCounts:
    """Lesion and volume counts of one case, or summed over cases (see the module doc)."""

    true_lesions: int = 0
    found: int = 0
    mask_lesions: int = 0
    false_positive_lesions: int = 0
    cases: int = 0
    true_ml: float = 0.0
    mask_ml: float = 0.0
    overlap_ml: float = 0.0
    band_true: tuple[int, ...] = field(default_factory=_zeros)  # reference lesions per size band (SIZE_BANDS)
    band_found: tuple[int, ...] = field(default_factory=_zeros)

    def __add__(self, other: LesionCounts) -> LesionCounts:
        summed = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            summed[f.name] = tuple(x + y for x, y in zip(a, b)) if isinstance(a, tuple) else a + b
        return LesionCounts(**summed)

    @property
    def sensitivity(self) -> float:
        return self.found / self.true_lesions if self.true_lesions else float("nan")

    @property
    def precision(self) -> float:
        """Found lesions among found lesions and false-positive mask lesions (NaN for an empty mask)."""
        shown = self.found + self.false_positive_lesions
        return self.found / shown if shown else float("nan")

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN): 0 when nothing was found (an empty mask misses every lesion)."""
        if not self.true_lesions:
            return float("nan")
        return 2 * self.found / (self.true_lesions + self.found + self.false_positive_lesions)

    @property
    def dice(self) -> float:
        total = self.mask_ml + self.true_ml
        return 2 * self.overlap_ml / total if total else float("nan")

    @property
    def false_positive_lesions_per_case(self) -> float:
        return self.false_positive_lesions / self.cases if self.cases else float("nan")

    @property
    def volume_difference(self) -> float:
        """|mask volume - true volume| / true volume."""
        return abs(self.mask_ml - self.true_ml) / self.true_ml if self.true_ml else float("nan")

    def band_sensitivity(self) -> dict[str, float]:
        """Sensitivity per reference size band (NaN where the band holds no lesion)."""
        return {name: (f / t if t else float("nan")) for name, t, f in zip(BAND_NAMES, self.band_true, self.band_found)}

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
        counts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        bands = {name: _defined(value) for name, value in self.band_sensitivity().items()}
        return {**counts, **{k: _defined(v) for k, v in scores.items()}, "sensitivity_by_size": bands}


def _defined(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class _Components:
    labels: np.ndarray  # 0 = background (including ignored small components), 1..n
    sizes: np.ndarray  # voxels per label, index 0 unused

    @property
    def count(self) -> int:
        return int(self.sizes.size - 1)


def _components(mask: np.ndarray, min_voxels: int) -> _Components:
    """26-connected components with more than ``min_voxels`` voxels, relabelled 1..n."""
    labels, n = ndimage.label(mask, _CONNECTIVITY)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes > min_voxels
    keep[0] = False
    relabel = np.zeros(n + 1, np.int64)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return _Components(relabel[labels], np.concatenate([[0], sizes[keep]]))


def _detected(sizes: np.ndarray, pairs: np.ndarray, outside: np.ndarray, rule: DetectionRule) -> np.ndarray:
    """Anima's test for every component of one side (``sizes``, index 0 unused): ``pairs`` holds
    rows (this side's label, the other side's label, shared voxels) and ``outside`` the share of
    the other side's component lying outside (per pair: see :func:`lesion_counts`)."""
    found = np.zeros(sizes.size, bool)
    order = np.lexsort((-pairs[:, 2], pairs[:, 0]))  # by label, largest overlap first
    pairs, outside = pairs[order], outside[order]
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]) if pairs.size else np.zeros(0, int)
    for start, stop in zip(starts, np.r_[starts[1:], len(pairs)]):
        label, shared = pairs[start, 0], pairs[start:stop, 2]
        covered = shared.sum()
        if covered / sizes[label] <= rule.min_overlap:
            continue
        weight, ok = 0.0, True
        for voxels, share_outside in zip(shared, outside[start:stop]):
            if weight >= rule.min_covering:
                break
            if share_outside > rule.max_outside:
                ok = False
                break
            weight += voxels / covered
        found[label] = ok
    return found


def lesion_counts(mask: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], rule: DetectionRule = MSSEG) -> LesionCounts:
    """Lesion-wise counts of a binary ``mask`` against the reference ``truth`` (same [z, y, x]
    grid; ``spacing`` in mm, x first as SimpleITK gives it) under ``rule``."""
    mask, truth = np.asarray(mask, bool), np.asarray(truth, bool)
    if mask.shape != truth.shape:
        raise ValueError(f"mask {mask.shape} and reference {truth.shape} differ in shape")
    voxel_mm3 = float(np.prod(spacing))
    min_voxels = int(math.floor(rule.min_component_mm3 / voxel_mm3))  # Anima: strictly more than the minimum volume
    reference, drawn = _components(truth, min_voxels), _components(mask, min_voxels)
    both = (reference.labels > 0) & (drawn.labels > 0)
    pair_keys, shared = np.unique(reference.labels[both] * (drawn.count + 1) + drawn.labels[both], return_counts=True)
    ref_of, drawn_of = pair_keys // (drawn.count + 1), pair_keys % (drawn.count + 1)
    on_mask = np.bincount(ref_of, weights=shared, minlength=reference.count + 1)
    outside_this_lesion = 1.0 - shared / drawn.sizes[drawn_of]  # a covering mask component, outside the lesion it finds
    outside_the_mask = 1.0 - on_mask[ref_of] / reference.sizes[ref_of]  # a reference lesion under a mask component
    found = _detected(reference.sizes, np.stack([ref_of, drawn_of, shared], 1), outside_this_lesion, rule)
    true_positive = _detected(drawn.sizes, np.stack([drawn_of, ref_of, shared], 1), outside_the_mask, rule)
    volumes = reference.sizes * voxel_mm3
    counted = np.flatnonzero(volumes >= rule.min_true_mm3)
    counted = counted[counted > 0]
    band_true, band_found = [], []
    for low, high in SIZE_BANDS:
        in_band = counted[(volumes[counted] >= low) & (volumes[counted] < high)]
        band_true.append(int(in_band.size))
        band_found.append(int(found[in_band].sum()))
    ml = voxel_mm3 / 1000.0
    return LesionCounts(
        true_lesions=int(counted.size),
        found=int(found[counted].sum()),
        mask_lesions=drawn.count,
        false_positive_lesions=int(drawn.count - true_positive[1:].sum()),
        cases=1,
        true_ml=float(truth.sum()) * ml,
        mask_ml=float(mask.sum()) * ml,
        overlap_ml=float((mask & truth).sum()) * ml,
        band_true=tuple(band_true),
        band_found=tuple(band_found),
    )
