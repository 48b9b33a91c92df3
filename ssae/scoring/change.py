"""What changed between a baseline and a follow-up FLAIR of one patient, on the follow-up's grid.

Both scans arrive bias-corrected, the baseline already carried onto the follow-up's grid and
the follow-up made as sharp as the carried baseline (:mod:`ssae.preprocessing.pair_resampling`:
otherwise the sharper scan looks brighter), both on the follow-up's intensity scale with the
baseline matched to it (:func:`pair_normalised`: a scan stored with another offset or scale, or
z-scored, compares as the same scan). The rule, and the reason for each part:

* **Drift removed.** Two acquisitions differ by smooth intensity fields (residual bias, coil,
  contrast) that look like change everywhere; lesion changes are focal. The difference's smooth
  part (a Gaussian of ``drift_mm`` inside the brain, by normalised convolution) is added to the
  baseline before comparing.
* **Change in noise units.** The difference is divided by its own noise: the robust standard
  deviation (1.4826 x MAD) of the drift-corrected difference over the brain, which is mostly
  unchanged tissue. The change map written for users is this z-score (positive: brighter now).
  A change must also reach ``min_step`` (a tenth of the brain's median intensity): smaller
  differences are invisible to a reader, and where two scans are nearly identical (one scan
  loaded twice) the noise estimate goes to zero and interpolation alone would pass any z.
* **Registration tolerance.** A voxel is brighter now only if it is brighter than the baseline's
  brightest neighbour within ``tolerance_voxels`` (and the other way round): the edges of
  ventricles and sulci then do not light up from sub-voxel misregistration or from slices
  acquired at other positions ("subtraction with dilation"). Neighbours count along every axis
  whose voxels are no thicker than ``TOLERANCE_THICKNESS`` x the finest: in-plane only on thick
  slices (a neighbouring 4 mm slice is another place), in 3D on a near-isotropic grid, where
  misregistration is sub-voxel through the plane as well.
* **Lesion-like.** A voxel that became brighter must be brighter than ``brighter_than`` x the
  brain median now; one that became darker must have been that bright before: the model card's
  hyper-intensity prior, the same criterion that draws the prior map.
* **Size.** Connected changes (26-connected, per direction) smaller than ``min_change_mm3``, or
  than ``MIN_CHANGE_VOXELS`` voxels, are dropped: below about 3 mm across a change cannot be read
  reliably on 3-4 mm slices, and on a coarse grid (a 2.5 mm voxel is 15.6 mm3) one voxel alone
  is interpolation, not a lesion.

SciPy is imported where the rule runs: the Slicer panel reads this module's labels, statuses and
table columns in Slicer's own process, before the engine's packages are installed.

The defaults were chosen leave-one-pair-out on the two development pairs (`bench/followup.py`,
report/followup.md) among rules that differ only in these reasoned parts.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from ssae.io.errors import SSAEError

CHANGE_LABELS = {1: "new or enlarging", 2: "shrinking or resolved"}
STATUSES = ("new", "enlarging", "stable", "shrinking", "resolved")
SUMMARY_SUFFIX = "_change_summary.json"
MIN_CHANGE_VOXELS = 2  # no single voxel is a change, whatever its size in mm3 (see "Size")
TOLERANCE_THICKNESS = 1.5  # axes this much thicker than the finest get no registration tolerance  # a comparison's summary file: <follow-up stem><suffix>
_CONNECTED = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class ChangeRule:
    """How a difference becomes a change (see the module doc)."""

    z: float = 2.5
    tolerance_voxels: int = 1
    brighter_than: float = 1.3
    drift_mm: float = 10.0
    min_change_mm3: float = 15.0
    min_step: float = 0.1

    def __post_init__(self) -> None:
        if not (np.isfinite(self.z) and self.z > 0):
            raise SSAEError(f"the change threshold must be a positive number of noise SDs, got {self.z}")
        if self.tolerance_voxels < 0 or self.tolerance_voxels > 5:
            raise SSAEError(f"the registration tolerance must be 0-5 voxels, got {self.tolerance_voxels}")
        if not (np.isfinite(self.brighter_than) and self.brighter_than > 0):
            raise SSAEError(f"the lesion-like intensity factor must be positive, got {self.brighter_than}")
        if not (np.isfinite(self.drift_mm) and self.drift_mm > 0):
            raise SSAEError(f"the drift scale must be positive (mm), got {self.drift_mm}")
        if not (np.isfinite(self.min_step) and self.min_step >= 0):
            raise SSAEError(f"the smallest change must be >= 0 (in brain-median units), got {self.min_step}")
        if not (np.isfinite(self.min_change_mm3) and self.min_change_mm3 >= 0):
            raise SSAEError(f"the minimum change size must be >= 0 mm3, got {self.min_change_mm3}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"change above {self.z:g} noise SDs beyond a {self.tolerance_voxels}-voxel tolerance (in-plane on thick slices), in tissue brighter than "
            f"{self.brighter_than:g} x the brain median at the brighter time and by at least {self.min_step:g} x it, drift over "
            f"{self.drift_mm:g} mm removed, changes >= {self.min_change_mm3:g} mm3"
        )


@dataclass
class ChangeEvidence:
    """The change z-score map (0 outside the brain) and the voxels that changed each way."""

    score: np.ndarray  # float32 [z, y, x]
    increase: np.ndarray  # bool
    decrease: np.ndarray  # bool
    noise: float  # robust SD of the drift-corrected difference, in brain-median units


def pair_normalised(followup: np.ndarray, baseline: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both scans on the follow-up's intensity scale: 0 at detection's intensity offset (the
    brain's 0.5th percentile where that is negative, as in a z-scored scan; else 0, as for MR
    magnitudes) and 1 at the follow-up's brain median; the baseline matched to the follow-up by
    the median and interquartile range of the brain both share (mostly unchanged tissue).

    So a baseline stored with another intensity offset or scale (a rescaled export, another
    scanner's gain, a z-scored copy) compares as the same scan, and a step of 0.1 or a factor of
    1.3 means the same on any input, also where intensities are centred near zero."""
    after, before = followup[brain], baseline[brain]
    if after.size == 0:
        raise SSAEError("the two scans share no brain voxels: cannot compare their intensities")
    offset = min(float(np.percentile(after, 0.5)), 0.0)
    median = float(np.median(after)) - offset
    if not np.isfinite(median) or median <= 0:
        raise SSAEError("the follow-up's brain median intensity is not above its darkest voxels: cannot compare the two scans")
    q_after, q_before = np.percentile(after, (25, 50, 75)), np.percentile(before, (25, 50, 75))
    spread_after, spread_before = float(q_after[2] - q_after[0]), float(q_before[2] - q_before[0])
    if not (np.isfinite(spread_before) and spread_before > 0 and spread_after > 0):
        raise SSAEError("the brain intensities of one scan are constant: cannot compare the two scans")
    matched = (baseline - q_before[1]) * (spread_after / spread_before) + q_after[1]
    return ((followup - offset) / median).astype(np.float32), ((matched - offset) / median).astype(np.float32)


def _smooth_inside(values: np.ndarray, inside: np.ndarray, sigma_mm: float, spacing_xyz: tuple[float, ...]) -> np.ndarray:
    from scipy import ndimage

    sigma = [sigma_mm / s for s in spacing_xyz[::-1]]
    weight = inside.astype(np.float32)
    numerator = ndimage.gaussian_filter(values * weight, sigma)
    denominator = ndimage.gaussian_filter(weight, sigma)
    return np.where(denominator > 1e-3, numerator / np.maximum(denominator, 1e-3), 0.0).astype(np.float32)


def change_evidence(
    followup: np.ndarray, baseline: np.ndarray, brain: np.ndarray, spacing_xyz: tuple[float, ...], rule: ChangeRule
) -> ChangeEvidence:
    """The rule applied to brain-normalised arrays on one grid (``brain``: where both scans are
    brain and in view)."""
    from scipy import ndimage

    if followup.shape != baseline.shape or followup.shape != brain.shape:
        raise SSAEError("the follow-up, the baseline and the brain mask must be on one grid")
    if brain.sum() < 1000:
        raise SSAEError("the two scans share fewer than 1000 brain voxels after registration: nothing to compare")
    difference = followup - baseline
    baseline = baseline + _smooth_inside(difference, brain, rule.drift_mm, spacing_xyz)
    difference = np.where(brain, followup - baseline, 0.0).astype(np.float32)
    inside = difference[brain]
    noise = float(1.4826 * np.median(np.abs(inside - np.median(inside))))
    if noise <= 1e-6:  # the same scan twice: nothing changed
        empty = np.zeros(brain.shape, dtype=bool)
        return ChangeEvidence(np.zeros(brain.shape, np.float32), empty, empty.copy(), noise)
    window = tolerance_window(spacing_xyz, rule.tolerance_voxels)
    baseline_peak = ndimage.maximum_filter(baseline, size=window) if rule.tolerance_voxels else baseline
    followup_peak = ndimage.maximum_filter(followup, size=window) if rule.tolerance_voxels else followup
    step = max(rule.z * noise, rule.min_step)
    increase = brain & (followup > rule.brighter_than) & (followup - baseline_peak > step)
    decrease = brain & (baseline > rule.brighter_than) & (baseline - followup_peak > step)
    return ChangeEvidence((difference / noise).astype(np.float32), increase, decrease, noise)


def tolerance_window(spacing_xyz: tuple[float, ...], tolerance_voxels: int) -> tuple[int, ...]:
    """The neighbourhood ([z, y, x] sizes) of the registration tolerance (see the module doc)."""
    finest = min(spacing_xyz)
    return tuple(2 * tolerance_voxels + 1 if s <= TOLERANCE_THICKNESS * finest else 1 for s in spacing_xyz[::-1])


def _without_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    from scipy import ndimage

    if min_voxels <= 1 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def change_labels(evidence: ChangeEvidence, voxel_mm3: float, min_change_mm3: float) -> np.ndarray:
    """The change labelmap: 1 = new or enlarging, 2 = shrinking or resolved, 0 = no change."""
    min_voxels = max(int(np.ceil(min_change_mm3 / voxel_mm3)), MIN_CHANGE_VOXELS) if min_change_mm3 > 0 else 0
    labels = np.zeros(evidence.increase.shape, dtype=np.uint8)
    labels[_without_small(evidence.increase, min_voxels)] = 1
    labels[_without_small(evidence.decrease, min_voxels)] = 2
    return labels


@dataclass
class LesionChange:
    """One lesion of either time point (or a change that touches none), on the follow-up grid."""

    lesion: int
    status: str
    baseline_ml: float
    followup_ml: float
    increase_ml: float
    decrease_ml: float
    centroid_ras: tuple[float, float, float]


CHANGE_COLUMNS = (
    "lesion",
    "status",
    "baseline_ml",
    "followup_ml",
    "increase_ml",
    "decrease_ml",
    "centroid_r_mm",
    "centroid_a_mm",
    "centroid_s_mm",
)


def _status(baseline: int, followup: int, increase: int, decrease: int) -> str:
    if increase > decrease:
        return "new" if baseline == 0 else "enlarging"
    if decrease > increase:
        return "resolved" if followup == 0 else "shrinking"
    return "stable"


def lesion_changes(
    labels: np.ndarray, followup_lesions: np.ndarray, baseline_lesions: np.ndarray, reference: sitk.Image
) -> list[LesionChange]:
    """Every lesion of either time point with its status, largest change first.

    A lesion is a connected region of the union of the follow-up's lesions (its mask and what
    became brighter) and the baseline's (its mask on the follow-up grid and what became
    darker). Its volume at each time is the part that was lesion then; its status follows the
    larger of its increase and decrease: *new* (nothing there before), *enlarging*, *shrinking*,
    *resolved* (nothing left), else *stable*.
    """
    from scipy import ndimage

    increase, decrease = labels == 1, labels == 2
    now = followup_lesions | increase
    before = baseline_lesions | decrease
    components, count = ndimage.label(now | before, structure=_CONNECTED)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    ml = float(np.prod(reference.GetSpacing())) / 1000.0

    def per_component(mask: np.ndarray) -> np.ndarray:
        return np.asarray(ndimage.sum(mask, components, index))

    sums = {name: per_component(mask) for name, mask in (("before", before), ("now", now), ("up", increase), ("down", decrease))}
    centres = ndimage.center_of_mass(np.ones_like(components, dtype=np.uint8), components, index)
    rows = []
    for i, centre in enumerate(centres):
        x, y, z = reference.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre[::-1]])  # LPS mm
        counts = {name: int(values[i]) for name, values in sums.items()}
        rows.append(
            LesionChange(
                lesion=0,
                status=_status(counts["before"], counts["now"], counts["up"], counts["down"]),
                baseline_ml=counts["before"] * ml,
                followup_ml=counts["now"] * ml,
                increase_ml=counts["up"] * ml,
                decrease_ml=counts["down"] * ml,
                centroid_ras=(-x, -y, z),
            )
        )
    rows.sort(key=lambda r: (-(r.increase_ml + r.decrease_ml), -max(r.followup_ml, r.baseline_ml)))
    for number, row in enumerate(rows, start=1):
        row.lesion = number
    return rows


def status_counts(rows: list[LesionChange]) -> dict[str, int]:
    return {status: sum(1 for r in rows if r.status == status) for status in STATUSES}


def change_table_csv(rows: list[LesionChange]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CHANGE_COLUMNS)
    for r in rows:
        writer.writerow(
            [r.lesion, r.status, f"{r.baseline_ml:.4f}", f"{r.followup_ml:.4f}", f"{r.increase_ml:.4f}", f"{r.decrease_ml:.4f}"]
            + [f"{v:.2f}" for v in r.centroid_ras]
        )
    return buffer.getvalue()
