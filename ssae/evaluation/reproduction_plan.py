"""What the reproduction of the paper's comparisons runs: the profiles (CPU-sized and paper-sized),
the models each trains, and the rows it reports."""

from __future__ import annotations

from dataclasses import dataclass

from ssae.models.settings import Architecture


@dataclass(frozen=True)
class Profile:
    """Sizes and budget of one reproduction run (stated in the report)."""

    name: str
    ssae_size: int
    ssae_levels: int
    plain_sizes: tuple[int, ...]
    max_epochs: int
    patience: int
    batch_size: int = 8
    variants: tuple[str, ...] = ("dense", "spatial", "vae")
    threshold_percentile: float = 99.9


PROFILES = {
    # 2 CPU cores, under an hour: the paper's shapes at half its resolution, a few epochs per level.
    "cpu": Profile("cpu", ssae_size=128, ssae_levels=3, plain_sizes=(32, 64, 128), max_epochs=6, patience=3),
    # A GPU: the paper's 256 px, 4 levels, plain models at 64/128/256, early stopping as in training.
    "full": Profile("full", ssae_size=256, ssae_levels=4, plain_sizes=(64, 128, 256), max_epochs=100, patience=5),
}


@dataclass(frozen=True)
class ModelPlan:
    name: str  # e.g. "SSAE dense" or "AE dense 64"
    variant: str
    architecture: Architecture

    @property
    def family(self) -> str:
        return f"{'SSAE' if self.architecture.scale_space else 'AE'} {self.variant}"


def plan_models(profile: Profile) -> list[ModelPlan]:
    """SSAE and plain models per variant (SSAE level widths 16/96, plain 32/128: comparable sizes)."""
    plans = []
    for variant in profile.variants:
        plans.append(ModelPlan(f"SSAE {variant}", variant, Architecture(variant, profile.ssae_size, profile.ssae_levels, 16, 96)))
        for size in profile.plain_sizes:
            plans.append(ModelPlan(f"AE {variant} {size}", variant, Architecture(variant, size, 1, 32, 128)))
    return plans


@dataclass
class ResultRow:
    dataset: str
    labels: str
    model: str
    map: str
    auprc: float
    auprc_ci: tuple[float, float]
    best_dice: float
    best_dice_ci: tuple[float, float]
    dice_at_threshold: float | None
    threshold: float | None
    cases: int
    parameters: int | None
