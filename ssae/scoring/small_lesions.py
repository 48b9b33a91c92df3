"""Small lesions as lesions: compact bright spots on the scan's own grid, as bright as the scan's
own lesions.

The voxel mask (a score map above a healthy false-positive budget, with seeds) finds large and
confluent lesions; a lesion of 10-50 mm3 seldom has a voxel above the seed level, and lowering
the threshold over the whole map brings in bright spots of healthy tissue by the hundred. So
small lesions are judged one by one, as a reader does:

* **candidates** are the compact bright spots of the scan's own voxels (:func:`find_candidates`):
  the FLAIR, in units of the scan's median brain intensity and lightly smoothed
  (:data:`SMOOTHING_MM`), is taken apart into domes, each voxel's height above the saddle that
  joins it to brighter surroundings (grey-level reconstruction, ITK's ``HConvex`` with height
  :data:`DOME_HEIGHT`); a candidate is a 26-connected component of voxels in the upper part of a
  dome (above :data:`CORE_SHARE` of its height) that are brighter than :data:`FLOOR`. Each is
  described by its peak brightness, volume, distance to cerebrospinal fluid (darker than
  :data:`CSF_LEVEL`: the cortical ribbon and the ventricle lining hug it) and depth below the
  brain's surface (bright rims of the brain mask, fat and flow artefacts lie at the surface);
* a candidate **counts** (:class:`SmallLesionRule`) when it is compact (at most ``max_mm3``),
  lies at least ``min_csf_mm`` from fluid and ``min_depth_mm`` below the surface, and its peak
  is at least ``brightness`` times the median brightness of the lesions the voxel mask found in
  this scan: a patient's lesions look alike, and a reference taken from the scan itself carries
  over between scanners, sequences and intensity scalings where a fixed cut-off does not;
* where the voxel mask found no lesion there is no such reference: then a candidate must be as
  bright as only ``fallback_budget`` candidates of a healthy brain are
  (:class:`HealthyCandidates`, measured when the model is calibrated).

Why not score candidates by the autoencoder's residual: on the MSLUB development patients, among
candidates of this kind the residual separates lesions from healthy spots barely better than
chance (area under the ROC curve 0.44-0.69 for the post-processed aggregated score, 0.71-0.77
for the raw one) against 0.87-0.93 for the peak brightness (research notes in
report/operating_point.md): at 1.55 mm the model cannot tell a 20 mm3 lesion from a bright fold
of cortex. Its evidence enters through the reference, the scan's own voxel-mask lesions.

Torch- and SciPy-free (SimpleITK does the image work): the Slicer module loads it, and
recomputes masks from stored volumes, before either exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import SimpleITK as sitk

from ssae.io.errors import SSAEError

SMOOTHING_MM = 0.5  # Gaussian sigma before the domes: one speckle voxel is not a lesion
DOME_HEIGHT = 0.25  # in units of the brain median: about the contrast of grey matter against white matter
CORE_SHARE = 0.3  # a candidate is the part of a dome above 30 % of its height
FLOOR = 1.2  # no candidate darker than 1.2 x the brain median (healthy white and grey matter)
CSF_LEVEL = 0.75  # darker than 0.75 x the brain median: cerebrospinal fluid


@dataclass(frozen=True)
class SmallLesionRule:
    """Which small-lesion candidates become lesions (see the module doc)."""

    brightness: float = 1.0
    fallback_budget: int | None = 5
    min_csf_mm: float = 3.0
    min_depth_mm: float = 5.0
    max_mm3: float = 400.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.brightness) and self.brightness > 0):
            raise SSAEError(f"the small-lesion brightness must be a positive number, got {self.brightness}")
        if self.fallback_budget is not None and (isinstance(self.fallback_budget, bool) or int(self.fallback_budget) != self.fallback_budget or self.fallback_budget < 1):
            raise SSAEError(f"the small-lesion fallback budget must be a whole number >= 1, got {self.fallback_budget}")
        for name in ("min_csf_mm", "min_depth_mm", "max_mm3"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SSAEError(f"{name} must be a number >= 0, got {value}")

    def describe(self) -> str:
        fallback = (
            f"; in a scan without such lesions, as bright as only {self.fallback_budget} spots of a healthy brain"
            if self.fallback_budget is not None
            else ""
        )
        return (
            f"spots up to {self.max_mm3:g} mm3, >= {self.min_csf_mm:g} mm from fluid and >= {self.min_depth_mm:g} mm deep, "
            f"peaking at >= {self.brightness:g} x the median brightness of the scan's voxel-mask lesions{fallback}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmallLesionRule:
        try:
            values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            budget = values.get("fallback_budget")
            values = {k: (float(v) if k != "fallback_budget" else v) for k, v in values.items()}
            values["fallback_budget"] = None if budget is None else int(budget)
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise SSAEError(f"the model card's small-lesion rule is malformed ({exc})") from None


@dataclass
class Candidates:
    """Small-lesion candidates of one scan: a label image and one entry per candidate (label - 1)."""

    labels: np.ndarray  # [z, y, x] int32, 0 = no candidate
    peak: np.ndarray  # peak brightness, in units of the brain median
    mm3: np.ndarray
    csf_mm: np.ndarray  # largest distance from fluid inside the candidate
    depth_mm: np.ndarray  # largest depth below the brain's surface inside the candidate

    @property
    def count(self) -> int:
        return int(self.peak.size)

    def eligible(self, rule: SmallLesionRule) -> np.ndarray:
        """Compact, away from fluid and deep enough (brightness aside)."""
        return (self.mm3 <= rule.max_mm3) & (self.csf_mm >= rule.min_csf_mm) & (self.depth_mm >= rule.min_depth_mm)

    def mask(self, keep: np.ndarray) -> np.ndarray:
        """The voxels of the kept candidates."""
        return np.concatenate([[False], keep])[self.labels]


def brightness_ratio(values: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Intensities in units of the brain median (0 outside the brain)."""
    median = float(np.median(values[brain])) if brain.any() else 0.0
    if not (math.isfinite(median) and median > 0):
        raise SSAEError("the brain's median intensity is not positive; cannot measure brightness")
    return np.where(brain, values / median, 0.0).astype(np.float32)


def find_candidates(ratio: np.ndarray, brain: np.ndarray, depth_mm: np.ndarray, spacing: tuple[float, ...]) -> Candidates:
    """The compact bright spots of a scan (see the module doc). ``ratio`` is the FLAIR in units of
    the brain median, ``depth_mm`` each brain voxel's depth below the surface, ``spacing`` x, y, z."""
    spacing = tuple(float(s) for s in spacing)

    def image(array: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(array)
        result.SetSpacing(spacing)
        return result

    smooth = sitk.SmoothingRecursiveGaussian(image(ratio.astype(np.float32)), SMOOTHING_MM)
    domes = sitk.GetArrayFromImage(sitk.HConvex(smooth, DOME_HEIGHT, True))
    bright = sitk.GetArrayFromImage(smooth)
    core = brain & (depth_mm > 0) & (domes > CORE_SHARE * DOME_HEIGHT) & (bright > FLOOR)
    labels = sitk.ConnectedComponent(image(core.astype(np.uint8)), True)
    count = int(sitk.GetArrayViewFromImage(labels).max()) if core.any() else 0
    label_array = sitk.GetArrayFromImage(labels).astype(np.int32)
    if count == 0:
        empty = np.zeros(0, np.float32)
        return Candidates(label_array, empty, empty, empty, empty)
    fluid = image(((ratio < CSF_LEVEL) | ~brain).astype(np.uint8))
    from_fluid = sitk.SignedMaurerDistanceMap(fluid, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)

    def peaks(values: sitk.Image) -> np.ndarray:
        statistics = sitk.LabelStatisticsImageFilter()
        statistics.Execute(sitk.Cast(values, sitk.sitkFloat32), labels)
        return np.array([statistics.GetMaximum(k) for k in range(1, count + 1)], np.float32)

    return Candidates(
        labels=label_array,
        peak=peaks(smooth),
        mm3=np.bincount(label_array.ravel(), minlength=count + 1)[1:].astype(np.float32) * float(np.prod(spacing)),
        csf_mm=peaks(from_fluid),
        depth_mm=peaks(image(depth_mm.astype(np.float32))),
    )


def reference_brightness(ratio: np.ndarray, voxel_mask: np.ndarray) -> float | None:
    """The median brightness of the voxel mask's lesions (None where it holds none)."""
    return float(np.median(ratio[voxel_mask])) if voxel_mask.any() else None


@dataclass(frozen=True)
class HealthyCandidates:
    """The small-lesion candidates of healthy calibration subjects (lesion-labelled ones left out):
    what a rule would call a lesion in a brain that has none."""

    subjects: int
    subject: tuple[int, ...]  # which subject (0..subjects-1) each candidate belongs to
    peak: tuple[float, ...]
    mm3: tuple[float, ...]
    csf_mm: tuple[float, ...]
    depth_mm: tuple[float, ...]

    def __post_init__(self) -> None:
        sizes = {len(self.subject), len(self.peak), len(self.mm3), len(self.csf_mm), len(self.depth_mm)}
        if self.subjects < 1 or len(sizes) != 1 or any(not 0 <= s < self.subjects for s in self.subject):
            raise SSAEError("the model card's healthy candidates are malformed")
        if not all(math.isfinite(v) for column in (self.peak, self.mm3, self.csf_mm, self.depth_mm) for v in column):
            raise SSAEError("the model card's healthy candidates hold a non-finite number")

    @classmethod
    def from_scans(cls, scans: list[Candidates], keep: list[np.ndarray]) -> HealthyCandidates:
        """One entry per kept candidate of each healthy scan (``keep``: not on a lesion label)."""
        def column(name: str) -> tuple[float, ...]:
            return tuple(float(v) for c, k in zip(scans, keep) for v in getattr(c, name)[k])

        return cls(
            subjects=len(scans),
            subject=tuple(index for index, k in enumerate(keep) for _ in range(int(np.count_nonzero(k)))),
            peak=column("peak"),
            mm3=column("mm3"),
            csf_mm=column("csf_mm"),
            depth_mm=column("depth_mm"),
        )

    def per_subject_peaks(self, rule: SmallLesionRule) -> list[np.ndarray]:
        """Each subject's eligible candidates' peaks, brightest first."""
        subject, peak = np.asarray(self.subject), np.asarray(self.peak)
        ok = (np.asarray(self.mm3) <= rule.max_mm3) & (np.asarray(self.csf_mm) >= rule.min_csf_mm) & (np.asarray(self.depth_mm) >= rule.min_depth_mm)
        return [np.sort(peak[ok & (subject == s)])[::-1] for s in range(self.subjects)]

    def fallback_threshold(self, rule: SmallLesionRule) -> float | None:
        """The brightness that only ``rule.fallback_budget`` eligible candidates of a healthy brain
        exceed: the median over subjects of each one's budget-th brightest (None: no fallback)."""
        if rule.fallback_budget is None:
            return None
        budget = int(rule.fallback_budget)
        return float(np.median([p[budget - 1] if p.size >= budget else FLOOR for p in self.per_subject_peaks(rule)]))

    def false_lesions_per_brain(self, rule: SmallLesionRule, threshold: float) -> float:
        """Mean count per healthy brain of eligible candidates brighter than ``threshold``."""
        return float(np.mean([(p > threshold).sum() for p in self.per_subject_peaks(rule)]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "subjects": self.subjects,
            "columns": ["subject", "peak", "mm3", "csf_mm", "depth_mm"],
            "rows": [[s, round(p, 4), round(v, 2), round(c, 2), round(d, 2)] for s, p, v, c, d in zip(self.subject, self.peak, self.mm3, self.csf_mm, self.depth_mm)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthyCandidates:
        try:
            rows = data["rows"]
            return cls(
                subjects=int(data["subjects"]),
                subject=tuple(int(r[0]) for r in rows),
                peak=tuple(float(r[1]) for r in rows),
                mm3=tuple(float(r[2]) for r in rows),
                csf_mm=tuple(float(r[3]) for r in rows),
                depth_mm=tuple(float(r[4]) for r in rows),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SSAEError(f"the model card's healthy candidates are malformed ({exc})") from None


@dataclass(frozen=True)
class SmallLesionOutcome:
    """What the small-lesion rule did on one scan."""

    reference: float | None  # median brightness of the voxel mask's lesions (None: none found)
    threshold: float | None  # the peak brightness a candidate needed (None: the rule could not apply)
    candidates: int
    added: int  # candidates kept that are not part of a voxel-mask lesion

    def to_dict(self) -> dict[str, Any]:
        return {"reference_brightness": self.reference, "threshold": self.threshold, "candidates": self.candidates, "added": self.added}


def small_lesion_mask(
    candidates: Candidates, ratio: np.ndarray, voxel_mask: np.ndarray, rule: SmallLesionRule, fallback: float | None
) -> tuple[np.ndarray, SmallLesionOutcome]:
    """The candidates that count under ``rule`` (see the module doc), as a voxel mask, and what happened."""
    reference = reference_brightness(ratio, voxel_mask)
    threshold = rule.brightness * reference if reference is not None else fallback
    if threshold is None:
        return np.zeros_like(voxel_mask), SmallLesionOutcome(reference, None, candidates.count, 0)
    keep = candidates.eligible(rule) & (candidates.peak >= threshold)
    mask = candidates.mask(keep)
    touching = np.unique(candidates.labels[voxel_mask & (candidates.labels > 0)])
    added = int(keep.sum() - keep[touching[touching > 0] - 1].sum()) if keep.any() else 0
    return mask, SmallLesionOutcome(reference, float(threshold), candidates.count, added)
