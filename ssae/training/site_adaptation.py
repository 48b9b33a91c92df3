"""``ssae adapt``: a model adapted to a site's own unlabelled scans, written as a new model file.

The scans are preprocessed exactly as for training (cached), every scan's brightest brain
voxels are left out of the loss (above its own ``exclude_percentile``-th intensity, where its
lesions would be), and a copy of the model is fine-tuned on all of them (:mod:`ssae.detection.adaptation`).

The adapted model's thresholds: a site-adapted model has seen scans like the ones it will
examine, as a per-scan adapted model has, so its default thresholds are the ones the original
model card calibrated on *adapted* healthy validation subjects (where the card has them). The
card records the site's data set (by name, not path), the settings and the loss before and
after; the model file given is never changed.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ssae.detection.adaptation import AdaptationReport, adapt_model, loss_weights
from ssae.io.cases import Case
from ssae.io.progress import ProgressLog
from ssae.models.checkpoint import LoadedModel, save_model
from ssae.models.settings import AdaptationSettings
from ssae.training.slice_cache import load_slice_stack


def adapt_to_site(
    loaded: LoadedModel,
    cases: list[Case],
    dataset: str,
    settings: AdaptationSettings,
    output: Path,
    device: torch.device,
    cache_dir: Path | None = None,
    overwrite: bool = False,
    progress: ProgressLog | None = None,
) -> AdaptationReport:
    """Adapt ``loaded`` to ``cases`` (named ``dataset`` in the card) and write the result to
    ``output``; returns what was done."""
    card = loaded.card
    progress = progress or ProgressLog(enabled=False)
    stack = load_slice_stack(cases, card.preprocessing, cache_dir, progress.message)
    slices = np.asarray(stack.slices, dtype=np.float32)
    brain = np.asarray(stack.brain).astype(bool)
    keep = np.concatenate(
        [loss_weights(slices[start:stop], brain[start:stop], settings.exclude_percentile) for start, stop in stack.volume_ranges.values()]
    )
    keep *= np.asarray(stack.loss_mask, dtype=np.float32)  # labelled lesions, where given, are left out too
    progress.message(f"adapting {card.architecture.name} to {len(cases)} scan(s), {len(slices)} slices")
    model, report = adapt_model(
        loaded.model, slices, keep, settings, device, lambda f, m: progress.event("progress", fraction=round(f, 4), message=m)
    )
    adapted = copy.deepcopy(card)
    if card.adaptation is not None:
        adapted.thresholds = dict(card.adaptation.thresholds)
    adapted.description = (card.description + " " if card.description else "") + f"Adapted to the scans of {dataset}."
    adapted.training = {
        **card.training,
        "site_adaptation": {
            **report.to_dict(),
            "data": {"dataset": dataset, "scans": len(cases)},
            "from_model": {"name": card.architecture.name, "weights_sha256": loaded.card_dict.get("weights_sha256")},
            "thresholds": "the original model card's thresholds for adapted scans" if card.adaptation else "unchanged",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        },
    }
    save_model(model, adapted, output, overwrite=overwrite)
    return report
