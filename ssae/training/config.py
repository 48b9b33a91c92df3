"""What a training run is asked to do (:class:`TrainingConfig`, recorded in the model card) and
which subjects train and which validate."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from ssae.io.errors import SSAEError
from ssae.models.settings import AdaptationSettings, Architecture
from ssae.preprocessing.slices import PreprocessingSettings
from ssae.scoring.maps import is_map_name
from ssae.scoring.score_maps import PostprocessingSettings
from ssae.training.defaults import DEFAULT_ADAPTATION, DEFAULT_SCORE_MAP

RESUME_SUFFIX = ".resume.pt"


@dataclass
class TrainingConfig:
    """Hyper-parameters of a run; recorded in the model card and checked on ``--resume``."""

    architecture: Architecture = field(default_factory=Architecture)
    preprocessing: PreprocessingSettings = field(default_factory=PreprocessingSettings)
    postprocessing: PostprocessingSettings = field(default_factory=PostprocessingSettings)
    max_epochs: int = 100
    patience: int = 5
    batch_size: int = 8
    learning_rate: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    kl_weight: float = 1.0
    threshold_percentile: float = 99.9
    amp: bool | None = None  # None: on for CUDA, off for CPU
    score_map: str = DEFAULT_SCORE_MAP
    adaptation: AdaptationSettings = field(default_factory=lambda: DEFAULT_ADAPTATION)
    adapt_by_default: bool = True

    def __post_init__(self) -> None:
        if self.preprocessing.size != self.architecture.size:
            raise SSAEError("preprocessing size and model input size differ")
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise SSAEError("epochs, patience and batch size must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise SSAEError("the validation fraction must be between 0 and 1")
        if not 50.0 <= self.threshold_percentile < 100.0:
            raise SSAEError("the threshold percentile must be in [50, 100)")
        if not is_map_name(self.score_map) or (self.score_map.startswith("level") and int(self.score_map[5:]) >= self.architecture.levels):
            raise SSAEError(f"unknown score map {self.score_map!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["architecture"] = self.architecture.to_dict()
        data["preprocessing"] = self.preprocessing.to_dict()
        data["postprocessing"] = self.postprocessing.to_dict()
        data["adaptation"] = self.adaptation.to_dict()
        return data


def split_subjects(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole subjects for validation (at least one, leaving at least one to train)."""
    if len(names) < 2:
        raise SSAEError(f"training needs at least 2 subjects (one is held out for validation and early stopping); found {len(names)}")
    order = list(names)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])
