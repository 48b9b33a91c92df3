"""The defaults a user gets, in one place, with where they come from.

The shipped model was trained with exactly these settings (``ssae train`` and the SSAETraining
module default to them); the detection defaults were chosen by measurement on the development
data sets, never on the cases a result is claimed for (``bench/quality.py``, report/quality.md).
"""

from __future__ import annotations

from .adaptation import AdaptationSettings

VARIANTS = ("dense", "spatial", "vae")  # the bottlenecks a model can have (ssae.models)

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
