"""Label-free operating points: which voxels of a score map become the lesion mask, and what a
threshold means.

A threshold on a score map is only a number. What makes it usable without labels is how often
healthy brains exceed it: calibration keeps, for every map, the **healthy tail** (the fraction
of healthy validation brain voxels above each score, as trained and after adaptation) and the
healthy brain volume it was measured on. From the tail:

* an *operating point* is defined by a healthy false-positive budget (``healthy_fpr``: the
  share of a healthy brain's voxels allowed above the threshold), so it carries over to any map
  and any model; optionally a *seed* budget (``seed_fpr``, hysteresis: a component of the mask
  is kept only where some voxel also exceeds the stricter seed threshold), a minimum lesion
  size in mm3, and a rule for small lesions (:mod:`ssae.scoring.small_lesions`) that joins the
  voxel mask on the card's map;
* what a point means in lesions: calibration applies each point's whole rule to the healthy
  subjects and the card keeps the false lesions it draws per healthy brain (lesion-labelled
  voxels left out), beside the volume (:attr:`MaskRule.healthy_false_lesions`);
* any threshold, e.g. one set with Slicer's slider, gets a meaning: the share of a healthy brain
  above it (:meth:`HealthyTail.fraction_above`), i.e. the false-positive volume expected if this
  scan's brain were healthy (the share times its brain volume).

The model card names three operating points (*sensitive*, *balanced*, *specific*) and the
default; which budgets they use was chosen by ``bench/operating_point.py`` (leave one data set
out, scored on mask Dice and lesion-wise F1; report/operating_point.md) and lives in
:mod:`ssae.training.defaults`. Torch-free: the Slicer panel reads the card before PyTorch exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ssae.io.errors import SSAEError
from ssae.io.model_file import adapted_thresholds, calibration_method, card_thresholds
from ssae.scoring.small_lesions import SmallLesionRule

OPERATING_POINT_NAMES = ("sensitive", "balanced", "specific")


TAIL_LEVELS = 64  # survival levels kept per map: log-spaced from 1/2 down to one voxel in the calibration set


@dataclass(frozen=True)
class HealthyTail:
    """How much of a healthy brain exceeds each score of one map.

    ``scores`` ascend and ``fractions`` (the share of healthy brain voxels with a score above
    it) descend; between the stored points both are interpolated on a log scale of the fraction.
    """

    scores: tuple[float, ...]
    fractions: tuple[float, ...]
    brain_ml: float | None  # mean counted brain volume (ml) of the healthy subjects (None on native grids)
    voxels: int  # healthy voxels behind the tail (the smallest fraction it can state is 1/voxels)

    def __post_init__(self) -> None:
        scores, fractions = np.asarray(self.scores, float), np.asarray(self.fractions, float)
        if scores.size < 2 or scores.size != fractions.size:
            raise SSAEError("a healthy tail needs at least two (score, fraction) points of equal count")
        if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(fractions))):
            raise SSAEError("a healthy tail holds a non-finite number")
        if np.any(np.diff(scores) < 0) or np.any(np.diff(fractions) > 0) or fractions[0] > 1 or fractions[-1] <= 0:
            raise SSAEError("a healthy tail must have ascending scores and descending fractions in (0, 1]")
        if self.voxels <= 0 or (self.brain_ml is not None and not (math.isfinite(self.brain_ml) and self.brain_ml > 0)):
            raise SSAEError("a healthy tail needs a positive voxel count and, where given, a positive brain volume")

    @classmethod
    def from_scores(cls, healthy: np.ndarray, brain_ml: float | None) -> HealthyTail:
        """The tail of a map's healthy brain-voxel scores (lesion-labelled voxels already left out).

        Scores are the quantiles at log-spaced shares from 1/2 down to one voxel; each is stored
        with the exact share of voxels above it, so ties (a sparse map is 0 on most voxels) keep
        their true share (the share above 0 is that of the positive scores, not 1/2).
        """
        values = np.sort(np.asarray(healthy, dtype=np.float64).ravel())
        if values.size < 2:
            raise SSAEError("too few healthy voxels to calibrate a tail")
        levels = np.geomspace(0.5, max(1.0 / values.size, 1e-7), TAIL_LEVELS)
        scores = np.unique(np.quantile(values, 1.0 - levels))
        above = 1.0 - np.searchsorted(values, scores, side="right") / values.size
        keep = above > 0  # the top score has nothing above it: the last point is the highest with a share
        scores, above = scores[keep], above[keep]
        if scores.size < 2:  # (nearly) nothing above the top score: healthy brains never exceed it
            top = float(values[-1])
            scores, above = np.array([top, np.nextafter(top, np.inf)]), np.full(2, 1.0 / values.size)
        return cls(tuple(float(v) for v in scores), tuple(float(f) for f in above), brain_ml, int(values.size))

    def threshold_at(self, fraction: float) -> float:
        """The score that ``fraction`` of a healthy brain exceeds (the lowest stored score for a
        share larger than any stored: a sparse map cannot go below its positive share)."""
        if not 0 < fraction < 1:
            raise SSAEError(f"a healthy false-positive share must be between 0 and 1, got {fraction}")
        logs = np.log(self.fractions)[::-1]  # ascending for np.interp
        return float(np.interp(math.log(fraction), logs, np.asarray(self.scores)[::-1]))

    def fraction_above(self, threshold: float) -> float:
        """The share of a healthy brain's voxels above ``threshold``: interpolated between the
        stored points, the first point's share below them, the last point's beyond them (the
        calibration saw nothing rarer)."""
        scores = np.asarray(self.scores)
        if threshold < scores[0]:
            return float(self.fractions[0])
        return float(np.exp(np.interp(threshold, scores, np.log(self.fractions))))

    def expected_false_positive_ml(self, threshold: float) -> float | None:
        """The volume a healthy brain like the calibration subjects shows above ``threshold``
        (None where the tail knows no brain volume)."""
        return None if self.brain_ml is None else self.fraction_above(threshold) * self.brain_ml

    def to_dict(self) -> dict[str, Any]:
        return {"scores": list(self.scores), "fractions": list(self.fractions), "brain_ml": self.brain_ml, "voxels": self.voxels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthyTail:
        try:
            brain_ml = data.get("brain_ml")
            return cls(
                tuple(float(v) for v in data["scores"]),
                tuple(float(v) for v in data["fractions"]),
                None if brain_ml is None else float(brain_ml),
                int(data["voxels"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SSAEError(f"the model card's healthy tail is malformed ({exc})") from None


@dataclass(frozen=True)
class OperatingPoint:
    """A label-free rule for the mask, in healthy false-positive budgets (see the module doc)."""

    healthy_fpr: float
    seed_fpr: float | None = None
    min_lesion_mm3: float = 10.0
    small_lesions: SmallLesionRule | None = None

    def __post_init__(self) -> None:
        if not 0 < self.healthy_fpr < 1:
            raise SSAEError(f"healthy_fpr must be between 0 and 1, got {self.healthy_fpr}")
        if self.seed_fpr is not None and not 0 < self.seed_fpr <= self.healthy_fpr:
            raise SSAEError(f"seed_fpr must be in (0, healthy_fpr], got {self.seed_fpr}")
        if not (math.isfinite(self.min_lesion_mm3) and self.min_lesion_mm3 >= 0):
            raise SSAEError(f"min_lesion_mm3 must be a number >= 0, got {self.min_lesion_mm3}")

    def describe(self) -> str:
        seeds = f", each lesion holding a voxel above the {_percent(self.seed_fpr)} level" if self.seed_fpr else ""
        small = f"; small lesions: {self.small_lesions.describe()}" if self.small_lesions is not None else ""
        return f"{_percent(self.healthy_fpr)} of a healthy brain above the threshold{seeds}, lesions >= {self.min_lesion_mm3:g} mm3{small}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy_fpr": self.healthy_fpr,
            "seed_fpr": self.seed_fpr,
            "min_lesion_mm3": self.min_lesion_mm3,
            "small_lesions": self.small_lesions.to_dict() if self.small_lesions is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        try:
            seed, small = data.get("seed_fpr"), data.get("small_lesions")
            return cls(
                float(data["healthy_fpr"]),
                None if seed is None else float(seed),
                float(data.get("min_lesion_mm3", 10.0)),
                None if small is None else SmallLesionRule.from_dict(small),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SSAEError(f"the model card's operating point is malformed ({exc})") from None


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g} %"


@dataclass(frozen=True)
class MaskRule:
    """What draws one map's mask: thresholds in score units, the minimum size, small lesions, and why."""

    threshold: float
    seed_threshold: float | None
    min_lesion_mm3: float
    operating_point: str  # a preset's name, "threshold" when the user gave a number, "calibrated" for older cards
    method: str
    healthy_fraction: float | None = None  # share of a healthy brain above the threshold, where the map has a tail
    small_lesions: SmallLesionRule | None = None  # the small-lesion rule joining the voxel mask (the card's map only)
    small_lesion_fallback: float | None = None  # brightness a small lesion needs where the voxel mask finds none
    healthy_false_lesions: float | None = None  # false lesions per healthy calibration brain of this preset, as measured

    def expected_false_positive_ml(self, brain_ml: float) -> float | None:
        """What a healthy brain of ``brain_ml`` would show above the threshold."""
        return None if self.healthy_fraction is None else self.healthy_fraction * brain_ml

    def healthy_meaning(self, brain_ml: float | None) -> str:
        """What this rule draws on a healthy brain, in volume and in lesions ('' where unknown)."""
        parts = []
        volume = self.expected_false_positive_ml(brain_ml) if brain_ml else None
        if volume is not None:
            parts.append(f"about {volume:.1f} ml above the threshold in a healthy brain this size")
        if self.healthy_false_lesions is not None:
            parts.append(f"{self.healthy_false_lesions:.1f} false lesions per healthy calibration brain")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "operating_point": self.operating_point,
            "threshold": self.threshold,
            "seed_threshold": self.seed_threshold,
            "min_lesion_mm3": self.min_lesion_mm3,
            "method": self.method,
            "healthy_fraction_above_threshold": self.healthy_fraction,
            "small_lesions": self.small_lesions.to_dict() if self.small_lesions is not None else None,
            "small_lesion_fallback_brightness": self.small_lesion_fallback,
            "healthy_false_lesions_per_brain": self.healthy_false_lesions,
        }


def operating_points_from_card(card: dict[str, Any]) -> tuple[dict[str, OperatingPoint], str]:
    """The card's operating points and the default's name ({} for cards calibrated before them)."""
    section = card.get("operating_points") or {}
    points = {name: OperatingPoint.from_dict(value) for name, value in (section.get("points") or {}).items()}
    default = section.get("default", "")
    if points and default not in points:
        raise SSAEError(f"the model card's default operating point {default!r} is not one of {', '.join(points)}")
    return points, default


def healthy_tail(card: dict[str, Any], map_name: str, adapted: bool) -> HealthyTail | None:
    """The map's healthy tail for the adapted or the unadapted model (None if the card has none)."""
    tails = (card.get("healthy_tails") or {}).get("adapted" if adapted else "trained") or {}
    return HealthyTail.from_dict(tails[map_name]) if map_name in tails else None


def measured_in_lesions(section: dict[str, Any], name: str) -> tuple[float | None, float | None]:
    """What calibration measured for the point ``name`` of a card's ``operating_points``
    section: the small-lesion fallback brightness and the false lesions per healthy brain."""
    fallback = (section.get("small_lesion_fallback") or {}).get(name)
    lesions = (section.get("healthy_false_lesions") or {}).get(name)
    return (None if fallback is None else float(fallback)), (None if lesions is None else float(lesions))


def mask_rule(
    points: dict[str, OperatingPoint],
    default: str,
    tail: HealthyTail | None,
    calibrated: tuple[float, str] | None,
    fallback_min_mm3: float,
    adapted: bool,
    operating_point: str | None = None,
    threshold: float | None = None,
    section: dict[str, Any] | None = None,
    small_lesions: bool = False,
    min_lesion_mm3: float | None = None,
) -> MaskRule:
    """The rule that draws a map's mask: a user's ``threshold`` (no seeds, the operating point's
    minimum size), else the named (or the default) operating point, else, for a model calibrated
    before operating points, its percentile threshold (``calibrated``: value and method).

    ``small_lesions`` (the card's own map) adds the point's small-lesion rule, with the fallback
    brightness calibration measured (``section``: the card's ``operating_points``), to a preset
    and to a user's threshold alike; ``min_lesion_mm3`` replaces the point's minimum size (a
    reader's 3 mm rule, or none).
    """
    name = operating_point or default
    if operating_point is not None and operating_point not in points:
        known = ", ".join(points) if points else "none (this model predates operating points; recalibrate it with `ssae calibrate`)"
        raise SSAEError(f"unknown operating point {operating_point!r}; this model has: {known}")
    if min_lesion_mm3 is not None and not (math.isfinite(min_lesion_mm3) and min_lesion_mm3 >= 0):
        raise SSAEError(f"the minimum lesion size must be a number >= 0 (mm3), got {min_lesion_mm3}")
    point = points.get(name)
    min_mm3 = min_lesion_mm3 if min_lesion_mm3 is not None else point.min_lesion_mm3 if point is not None else fallback_min_mm3
    fallback, lesions = measured_in_lesions(section or {}, name)
    small = point.small_lesions if point is not None and small_lesions else None
    extras = {"small_lesions": small, "small_lesion_fallback": fallback if small is not None else None}
    if threshold is not None:
        if not (math.isfinite(threshold) and threshold > 0):
            raise SSAEError(f"the threshold must be a positive number, got {threshold}")
        fraction = tail.fraction_above(threshold) if tail is not None else None
        return MaskRule(float(threshold), None, min_mm3, "threshold", "given by the user", fraction, **extras)
    if point is not None and tail is not None:
        low = tail.threshold_at(point.healthy_fpr)
        seed = tail.threshold_at(point.seed_fpr) if point.seed_fpr is not None else None
        how = "adapted " if adapted else ""
        described = point.describe() if small is not None else replace(point, small_lesions=None).describe()
        method = f"operating point {name}: {described} ({how}healthy validation subjects; no lesion labels used)"
        counted = lesions if min_lesion_mm3 is None and (small is not None) == (point.small_lesions is not None) else None
        return MaskRule(low, seed, min_mm3, name, method, point.healthy_fpr, healthy_false_lesions=counted, **extras)
    if calibrated is None:
        raise SSAEError("the model card has no threshold for this map; pass --threshold")
    return MaskRule(calibrated[0], None, min_mm3, "calibrated", calibrated[1], None)


def card_mask_rule(
    card: dict[str, Any],
    map_name: str,
    adapted: bool,
    operating_point: str | None = None,
    threshold: float | None = None,
    min_lesion_mm3: float | None = None,
) -> MaskRule:
    """:func:`mask_rule` from a model card as read from the file (torch-free: the Slicer panel)."""
    points, default = operating_points_from_card(card)
    values = adapted_thresholds(card) if adapted else card_thresholds(card)
    value = values.get(map_name, card_thresholds(card).get(map_name))
    calibrated = None if value is None else (float(value), calibration_method(card))
    fallback = float(card["postprocessing"]["min_lesion_mm3"])
    rule = mask_rule(
        points,
        default,
        healthy_tail(card, map_name, adapted),
        calibrated,
        fallback,
        adapted,
        operating_point,
        threshold,
        section=card.get("operating_points") or {},
        small_lesions=map_name == card.get("score_map", "aggregated"),
        min_lesion_mm3=min_lesion_mm3,
    )
    if card.get("healthy_tails") and card.get("healthy_tails_grid", "slice") != "input":
        rule = replace(rule, method=rule.method + f"; {SLICE_GRID_TAILS}")
    return rule


SLICE_GRID_TAILS = (
    "this model was calibrated on its slice grid by an older version (the mask is drawn on the scan's own grid, where newer "
    "calibrations measure the healthy tails, small-lesion candidates and false lesions per healthy brain): recalibrate it with "
    "`ssae calibrate`"
)
