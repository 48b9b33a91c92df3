"""The model card: what a model is, what it was trained on, how its outputs become maps and masks,
and how that was chosen (validated on every load; :mod:`ssae.models.checkpoint` stores it beside
the weights).
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ssae import __version__
from ssae.io.errors import SSAEError
from ssae.io.model_file import FORMAT, FORMAT_VERSION
from ssae.models.networks import build_model, count_parameters
from ssae.models.settings import AdaptationSettings, Architecture
from ssae.preprocessing.slices import PreprocessingSettings
from ssae.scoring.maps import is_map_name
from ssae.scoring.operating_points import OPERATING_POINT_NAMES, HealthyTail, MaskRule, OperatingPoint, card_mask_rule
from ssae.scoring.score_maps import PostprocessingSettings
from ssae.scoring.small_lesions import HealthyCandidates

TAILS_ON_INPUT_GRID = "input"  # format 4: healthy tails measured on the scans' own grids (older cards: on the slice grid)


@dataclass
class Calibration:
    """How the label-free thresholds were chosen (never from test labels)."""

    method: str
    percentile: float | None = None
    voxels: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "percentile": self.percentile, "voxels": self.voxels}


@dataclass
class AdaptationDefaults:
    """Scanner adaptation as the model recommends it: the settings, whether detection adapts by
    default, and the thresholds calibrated on adapted healthy validation subjects (adaptation
    lowers every residual, so the thresholds of the unadapted model would be too high)."""

    settings: AdaptationSettings
    enabled: bool
    thresholds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings.to_dict(), "enabled": self.enabled, "thresholds": self.thresholds}


@dataclass
class ModelCard:
    """What a model is, what it was trained on and how its outputs are post-processed.

    ``thresholds`` holds one label-free threshold per score map (``aggregated``, ``levelK``,
    ``prior``, ``fused``, ``flair``); ``score_map`` is the map whose threshold draws the lesion
    mask by default; ``selection`` says how these defaults were chosen, with the evidence.
    ``healthy_tails`` (``trained`` and ``adapted``, one tail per map, measured on the healthy
    scans' own grids where ``healthy_tails_grid`` is ``"input"``, on the slice grid by older
    calibrations) and ``operating_points`` (the presets in healthy false-positive budgets, the
    default, the evidence, and what calibration measured of each: false lesions per healthy
    brain, the small-lesion fallback brightness) say which voxels become the mask and what a
    threshold means (:mod:`ssae.scoring.operating_points`); ``healthy_candidates`` are the
    small-lesion candidates of the healthy calibration subjects (:mod:`ssae.scoring.small_lesions`).
    """

    architecture: Architecture
    preprocessing: PreprocessingSettings
    postprocessing: PostprocessingSettings
    aggregated_levels: list[int]
    thresholds: dict[str, float]
    calibration: Calibration
    score_map: str = "aggregated"
    adaptation: AdaptationDefaults | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    modality: str = "FLAIR"
    training: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    description: str = ""
    healthy_tails: dict[str, dict[str, HealthyTail]] = field(default_factory=dict)
    operating_points: dict[str, Any] = field(default_factory=dict)  # {"default", "points": {name: OperatingPoint}, "chosen_by", ...}
    healthy_tails_grid: str = "slice"
    healthy_candidates: HealthyCandidates | None = None

    def __post_init__(self) -> None:
        for name, value in self.thresholds.items():
            if not is_map_name(name):
                raise SSAEError(f"the model card has a threshold for an unknown map {name!r}")
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SSAEError(f"the model card's threshold for {name} is {value!r}; a finite number >= 0 is needed")
        if self.adaptation is not None:
            for name, value in self.adaptation.thresholds.items():
                if not (is_map_name(name) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    raise SSAEError(f"the model card's adapted threshold for {name} is {value!r}; a finite number >= 0 is needed")
        if self.score_map not in self.thresholds:
            raise SSAEError(f"the model card's score map {self.score_map!r} has no threshold")
        if not self.aggregated_levels or any(not 0 <= k < self.architecture.levels for k in self.aggregated_levels):
            raise SSAEError(f"the model card's aggregated levels {self.aggregated_levels} do not fit {self.architecture.levels} level(s)")
        if set(self.healthy_tails) - {"trained", "adapted"} or any(not is_map_name(m) for t in self.healthy_tails.values() for m in t):
            raise SSAEError("the model card's healthy tails must be 'trained'/'adapted' tails of known maps")
        points = self.operating_points.get("points", {})
        if points and (set(points) - set(OPERATING_POINT_NAMES) or self.operating_points.get("default") not in points):
            raise SSAEError(
                f"the model card's operating points must be among {', '.join(OPERATING_POINT_NAMES)} with one of them the default"
            )

    def threshold_for(self, map_name: str, adapted: bool = False) -> float | None:
        """Label-free threshold of a map, for the unadapted or the adapted model (None if none)."""
        if adapted:
            return self.adaptation.thresholds.get(map_name) if self.adaptation is not None else None
        return self.thresholds.get(map_name)

    def mask_rule(
        self,
        map_name: str,
        adapted: bool,
        operating_point: str | None = None,
        threshold: float | None = None,
        min_lesion_mm3: float | None = None,
    ) -> MaskRule:
        """What draws ``map_name``'s mask (see :func:`ssae.scoring.operating_points.card_mask_rule`)."""
        return card_mask_rule(self.to_dict(), map_name, adapted, operating_point, threshold, min_lesion_mm3)

    def small_lesion_rules(self, adapted: bool, min_lesion_mm3: float | None = None) -> dict[str, MaskRule]:
        """The rule of every operating point with a small-lesion rule, on the card's map ({} where none has one)."""
        points = self.operating_points.get("points", {})
        return {
            name: self.mask_rule(self.score_map, adapted, name, min_lesion_mm3=min_lesion_mm3)
            for name, point in points.items()
            if point.small_lesions is not None and self.healthy_tails
        }

    def to_dict(self) -> dict[str, Any]:
        arch = self.architecture
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": arch.name,
            "description": self.description,
            "modality": self.modality,
            "architecture": arch.to_dict(),
            "parameters": count_parameters(arch),
            "layers": describe_layers(arch),
            "preprocessing": self.preprocessing.to_dict(),
            "postprocessing": self.postprocessing.to_dict(),
            "aggregated_levels": list(self.aggregated_levels),
            "aggregation": "a_k = u(a_{k+1}) + r_k from the coarsest aggregated level down to level 0 (Eq. 6)",
            "score_map": self.score_map,
            "thresholds": self.thresholds,
            "calibration": self.calibration.to_dict(),
            "adaptation": self.adaptation.to_dict() if self.adaptation is not None else None,
            "selection": self.selection,
            "healthy_tails": {kind: {m: t.to_dict() for m, t in tails.items()} for kind, tails in self.healthy_tails.items()},
            "healthy_tails_grid": self.healthy_tails_grid,
            "healthy_candidates": self.healthy_candidates.to_dict() if self.healthy_candidates is not None else None,
            "operating_points": {
                **self.operating_points,
                "points": {name: point.to_dict() for name, point in self.operating_points.get("points", {}).items()},
            },
            "training": self.training,
            "fidelity": self.fidelity,
            "versions": self.versions or current_versions(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            if data.get("format_version") == 1:  # one threshold for the aggregated map, one per level
                thresholds = {"aggregated": data["threshold"]["value"], **data.get("level_thresholds", {})}
                calibration = {k: v for k, v in data["threshold"].items() if k != "value"}
            else:
                thresholds, calibration = data["thresholds"], data["calibration"]
            adaptation = data.get("adaptation")
            return cls(
                architecture=Architecture.from_dict(data["architecture"]),
                preprocessing=PreprocessingSettings.from_dict(data["preprocessing"]),
                postprocessing=PostprocessingSettings.from_dict(data["postprocessing"]),
                aggregated_levels=[int(k) for k in data["aggregated_levels"]],
                thresholds={str(k): _number(v) for k, v in thresholds.items()},
                calibration=Calibration(
                    method=str(calibration["method"]), percentile=calibration.get("percentile"), voxels=calibration.get("voxels")
                ),
                score_map=str(data.get("score_map", "aggregated")),
                adaptation=AdaptationDefaults(
                    settings=AdaptationSettings.from_dict(adaptation["settings"]),
                    enabled=bool(adaptation["enabled"]),
                    thresholds={str(k): _number(v) for k, v in adaptation["thresholds"].items()},
                )
                if adaptation
                else None,
                selection=data.get("selection") or {},
                healthy_tails={
                    str(kind): {str(m): HealthyTail.from_dict(t) for m, t in tails.items()}
                    for kind, tails in (data.get("healthy_tails") or {}).items()
                },
                operating_points=_operating_points(data.get("operating_points") or {}),
                healthy_tails_grid=str(data.get("healthy_tails_grid", "slice")),
                healthy_candidates=HealthyCandidates.from_dict(data["healthy_candidates"]) if data.get("healthy_candidates") else None,
                modality=data.get("modality", "FLAIR"),
                training=data.get("training", {}),
                fidelity=data.get("fidelity", {}),
                versions=data.get("versions", {}),
                description=data.get("description", ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SSAEError(f"the model card is incomplete or malformed ({exc!s})") from None


def _operating_points(section: dict[str, Any]) -> dict[str, Any]:
    if not section:
        return {}
    return {**section, "points": {str(name): OperatingPoint.from_dict(p) for name, p in (section.get("points") or {}).items()}}


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def describe_layers(arch: Architecture) -> list[str]:
    """One line per level network, e.g. ``level 0 (256 px, band H_0): 5x conv ...``."""
    with torch.device("meta"):
        model = build_model(arch)
    lines = []
    for level, net in enumerate(model.nets):
        side = arch.level_size(level)
        what = "image I_%d" % level if level == arch.levels - 1 else "band H_%d" % level
        convs = [m for m in net.encoder if isinstance(m, torch.nn.Conv2d)]
        filters = ", ".join(str(c.out_channels) for c in convs)
        if arch.variant == "spatial":
            code = f"spatial code {convs[-1].out_channels}x{net.grid}x{net.grid}"
        else:
            code = f"1x1 conv to {arch.dense_channels}, dense z={arch.latent_dim}" + (
                " (mean, log-variance)" if arch.variant == "vae" else ""
            )
        params = sum(p.numel() for p in net.parameters())
        lines.append(
            f"level {level} ({side} px, {what}): {len(convs)} stride-2 5x5 convs [{filters}] to "
            f"{net.grid}x{net.grid}, {code}, mirrored 5x5 transposed convs, 1x1 linear output; {params} parameters"
        )
    return lines


def current_versions() -> dict[str, str]:
    import SimpleITK

    return {
        "ssae": __version__,
        "torch": torch.__version__,
        "simpleitk": SimpleITK.Version_VersionString(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
