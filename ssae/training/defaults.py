"""The defaults a user gets, in one place, with where they come from.

The shipped model was trained with exactly these settings (``ssae train`` and the SSAETraining
module default to them); the detection defaults were chosen by measurement on the development
data sets, never on the cases a result is claimed for (``bench/quality.py``, report/quality.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ssae.models.settings import AdaptationSettings
from ssae.scoring.operating_points import OperatingPoint
from ssae.scoring.small_lesions import SmallLesionRule

# Training recipe of the shipped model (README: "Re-train the shipped model").
TRAIN_SIZE = 128


TRAIN_LEVELS = 3


TRAIN_EPOCHS = 60


TRAIN_PATIENCE = 6


TRAIN_ATLAS = True


TRAIN_BIAS_CORRECTION = True


TRAIN_CLIP_MAX: float | None = None


# Detection: the map that draws the lesion mask, and scanner adaptation before detecting.
DEFAULT_SCORE_MAP = "prior"


DEFAULT_ADAPTATION = AdaptationSettings(epochs=10, learning_rate=3e-4, batch_size=8, exclude_percentile=90.0, seed=0)


DEFAULTS_EVIDENCE = {
    "chosen_by": (
        "bench/quality.py: every candidate (adaptation settings x score map x prior factor / percentile x fusion "
        "exponent x median size) scored on three development sets (MSLUB 2 MS patients, BraTS 4 gliomas, NiChart "
        "4 held-out subjects' automatic WMH masks); each set's figure comes from the candidate chosen on the other "
        "two (leave one data set out); the default is the candidate chosen on all three"
    ),
    "criterion": "mean over data sets of min(AUPRC, [DICE]) relative to the raw FLAIR intensity baseline",
    "report": "report/quality.md",
}


# Operating points: healthy false-positive budgets that turn a map into a mask (ssae.scoring.operating_points),
# joined by small lesions (ssae.scoring.small_lesions), chosen by bench/operating_point.py (report/operating_point.md).
# balanced: at most 2 % of a healthy brain above the threshold, each lesion holding a voxel above the 0.05 % level,
# joined by compact spots at least 1.05 x as bright as the scan's voxel-mask lesions (median), >= 4 mm from fluid and
# >= 3 mm deep, or, without such lesions, as bright as only 20 spots of a healthy brain; sensitive: small lesions down to
# 0.95 x that brightness (for readers counting MS lesions); specific: half the budget, no small lesions.
SMALL_LESIONS = SmallLesionRule(brightness=1.05, fallback_budget=20, min_csf_mm=4.0, min_depth_mm=3.0, max_mm3=400.0)


OPERATING_POINTS = {
    "sensitive": OperatingPoint(healthy_fpr=0.02, seed_fpr=0.0005, min_lesion_mm3=0.0, small_lesions=replace(SMALL_LESIONS, brightness=0.95)),
    "balanced": OperatingPoint(healthy_fpr=0.02, seed_fpr=0.0005, min_lesion_mm3=0.0, small_lesions=SMALL_LESIONS),
    "specific": OperatingPoint(healthy_fpr=0.01, seed_fpr=0.0005, min_lesion_mm3=0.0, small_lesions=None),
}


DEFAULT_OPERATING_POINT = "balanced"


OPERATING_POINTS_EVIDENCE = (
    "bench/operating_point.py: healthy budgets, hysteresis seeds and small-lesion rules (brightness against the scan's own "
    "lesions, distance from fluid, depth, a healthy fallback budget) scored on the mask on each scan's own grid (Dice beside "
    "the map's oracle, lesion-wise F1 by the MSSEG rule) on MSLUB, BraTS and NiChart WMH; balanced = highest mean lesion F1 "
    "with Dice >= 0.85 x [DICE] on every set, chosen on all three; each set's figure from the rule chosen on the other two "
    "(report/operating_point.md)"
)


def operating_points_section() -> dict[str, Any]:
    """The model card's ``operating_points`` section for these defaults."""
    return {"default": DEFAULT_OPERATING_POINT, "points": dict(OPERATING_POINTS), "chosen_by": OPERATING_POINTS_EVIDENCE}


# The label-free FLAIR rule reported beside every mask (ssae.scoring.baselines.flair_rule_mask): z-score K
# and minimum lesion size, chosen by the same study on all three development sets.
FLAIR_RULE = {"k": 1.25, "min_lesion_mm3": 10.0}
