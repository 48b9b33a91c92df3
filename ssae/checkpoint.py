"""One model file: weights plus the model card, in safetensors (no pickle, no code execution).

The file is a plain safetensors file whose metadata holds the model card as JSON under
``ssae_model_card``. Loading never executes code from the file. The card stores a SHA-256 of
the weights, so a file whose bytes were changed after training is refused rather than run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .errors import SSAEError
from .models import Architecture, ScaleSpaceAutoencoder, build_model, count_parameters
from .postprocessing import PostprocessingSettings
from .preprocessing import PreprocessingSettings
from .volume_io import atomic_path

CARD_KEY = "ssae_model_card"
FORMAT = "ssae-model"
FORMAT_VERSION = 1


@dataclass
class Threshold:
    """The default lesion threshold and how it was chosen (never from test labels)."""

    value: float
    method: str
    percentile: float | None = None
    voxels: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "method": self.method, "percentile": self.percentile, "voxels": self.voxels}


@dataclass
class ModelCard:
    """What a model is, what it was trained on and how its outputs are post-processed."""

    architecture: Architecture
    preprocessing: PreprocessingSettings
    postprocessing: PostprocessingSettings
    aggregated_levels: list[int]
    threshold: Threshold
    level_thresholds: dict[str, float] = field(default_factory=dict)
    modality: str = "FLAIR"
    training: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def threshold_for(self, map_name: str) -> float | None:
        """Calibrated threshold of ``aggregated`` or ``levelK`` (None if that map has none)."""
        return self.threshold.value if map_name == "aggregated" else self.level_thresholds.get(map_name)

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
            "threshold": self.threshold.to_dict(),
            "level_thresholds": self.level_thresholds,
            "training": self.training,
            "fidelity": self.fidelity,
            "versions": self.versions or current_versions(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            threshold = data["threshold"]
            return cls(
                architecture=Architecture.from_dict(data["architecture"]),
                preprocessing=PreprocessingSettings.from_dict(data["preprocessing"]),
                postprocessing=PostprocessingSettings.from_dict(data["postprocessing"]),
                aggregated_levels=[int(k) for k in data["aggregated_levels"]],
                threshold=Threshold(
                    value=float(threshold["value"]),
                    method=str(threshold["method"]),
                    percentile=threshold.get("percentile"),
                    voxels=threshold.get("voxels"),
                ),
                level_thresholds={str(k): float(v) for k, v in data.get("level_thresholds", {}).items()},
                modality=data.get("modality", "FLAIR"),
                training=data.get("training", {}),
                fidelity=data.get("fidelity", {}),
                versions=data.get("versions", {}),
                description=data.get("description", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SSAEError(f"the model card is incomplete or malformed ({exc!s})") from None


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


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, shapes, dtypes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_model(model: ScaleSpaceAutoencoder, card: ModelCard, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write weights and model card to one safetensors file, atomically."""
    path = Path(path)
    state = {name: tensor.detach().cpu().clone(memory_format=torch.contiguous_format) for name, tensor in model.state_dict().items()}
    card_dict = card.to_dict()
    card_dict["weights_sha256"] = weights_digest(state)
    with atomic_path(path, overwrite) as tmp:
        save_file(state, str(tmp), metadata={CARD_KEY: json.dumps(card_dict)})
    return path


@dataclass
class LoadedModel:
    model: ScaleSpaceAutoencoder
    card: ModelCard
    card_dict: dict[str, Any]
    path: Path


def read_model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of a model file as a dict, without loading the weights."""
    path = Path(path)
    if not path.is_file():
        raise SSAEError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise SSAEError(f"{path.name} is not an SSAE model file (unreadable, truncated or another format: {exc})") from None
    if CARD_KEY not in metadata:
        raise SSAEError(f"{path.name} is a safetensors file but not an SSAE model (it has no SSAE model card)")
    try:
        card = json.loads(metadata[CARD_KEY])
    except json.JSONDecodeError:
        raise SSAEError(f"{path.name} has a corrupt model card") from None
    if card.get("format") != FORMAT:
        raise SSAEError(f"{path.name} is not an SSAE model (format {card.get('format')!r})")
    if card.get("format_version") != FORMAT_VERSION:
        raise SSAEError(f"{path.name} has model format version {card.get('format_version')}; this ssae reads version {FORMAT_VERSION}")
    return card


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> LoadedModel:
    """Load and verify a model file; every problem is an :class:`SSAEError` with the reason."""
    path = Path(path)
    card_dict = read_model_card(path)
    card = ModelCard.from_dict(card_dict)
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SSAEError(f"{path.name}: cannot read the weights (truncated or corrupt file: {exc})") from None
    if weights_digest(state) != card_dict.get("weights_sha256"):
        raise SSAEError(f"{path.name}: the weights do not match the model card's checksum (the file was modified or is corrupt)")
    model = build_model(card.architecture)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise SSAEError(f"{path.name}: the weights do not fit the architecture its model card describes") from None
    model.to(device).eval()
    return LoadedModel(model=model, card=card, card_dict=card_dict, path=path)
