"""What a model card records about how a model is built and adapted, without PyTorch (the Slicer
modules and ``ssae.training.defaults`` read these before PyTorch exists): the architecture and the
scanner-adaptation settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from ssae.io.errors import SSAEError

VARIANTS = ("dense", "spatial", "vae")  # the bottlenecks a model can have (ssae.models)


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a model's layers; stored in the model card."""

    variant: str = "dense"
    size: int = 256
    levels: int = 4
    base_filters: int = 32
    max_filters: int = 128
    bottleneck_grid: int = 8
    latent_dim: int = 128
    dense_channels: int = 16

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise SSAEError(f"unknown model variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.levels < 1:
            raise SSAEError("a model needs at least one level")
        coarsest = self.size >> (self.levels - 1)
        if self.size % (1 << (self.levels - 1)) or coarsest < 2 * self.bottleneck_grid:
            raise SSAEError(
                f"input size {self.size} cannot hold {self.levels} levels: the coarsest level "
                f"must be a multiple of 2 and at least {2 * self.bottleneck_grid} pixels"
            )
        if self.size & (self.size - 1):
            raise SSAEError(f"input size must be a power of two, got {self.size}")

    @property
    def scale_space(self) -> bool:
        """True for an SSAE (one network per pyramid level), False for a plain autoencoder."""
        return self.levels > 1

    def level_size(self, level: int) -> int:
        """Side length in pixels of pyramid level ``level`` (0 is full resolution)."""
        return self.size >> level

    @property
    def name(self) -> str:
        """Short human name, e.g. ``dense SSAE 256 px, 4 levels`` or ``spatial AE 128 px``."""
        family = {"dense": "dense", "spatial": "spatial", "vae": "dense"}[self.variant]
        kind = {"dense": "AE", "spatial": "AE", "vae": "VAE"}[self.variant]
        if self.scale_space:
            kind = "SSVAE" if self.variant == "vae" else "SSAE"
            return f"{family} {kind} {self.size} px, {self.levels} levels"
        return f"{family} {kind} {self.size} px"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SSAEError(f"model card has unknown architecture fields: {sorted(unknown)}")
        return cls(**data)

    def with_width(self, base_filters: int, max_filters: int) -> Architecture:
        return replace(self, base_filters=base_filters, max_filters=max_filters)


@dataclass(frozen=True)
class AdaptationSettings:
    """How a copy of a model is fine-tuned on the examined scans; recorded in every result."""

    epochs: int = 10
    learning_rate: float = 3e-4
    batch_size: int = 8
    exclude_percentile: float = 95.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise SSAEError("adaptation needs at least 1 epoch and a batch size of at least 1")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise SSAEError(f"the adaptation learning rate must be a positive number, got {self.learning_rate}")
        if not 50.0 <= self.exclude_percentile <= 100.0:
            raise SSAEError(f"the exclusion percentile must be in [50, 100], got {self.exclude_percentile}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptationSettings:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
