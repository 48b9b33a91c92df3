"""One model file: weights plus the model card, in safetensors (no pickle, no code execution).

The file is a plain safetensors file whose metadata holds the model card as JSON under
``ssae_model_card``. Loading never executes code from the file. The card stores a SHA-256 of
the weights, and a SHA-256 of the card itself sits beside it (``ssae_card_sha256``), so a file
whose weights *or* card were changed after training is refused rather than run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ssae.io.errors import SSAEError
from ssae.io.model_file import CARD_KEY, CHECKSUM_KEY, card_checksum, read_card, read_header
from ssae.io.writing import atomic_path, os_errors
from ssae.models.card import ModelCard
from ssae.models.networks import ScaleSpaceAutoencoder, build_model
from ssae.models.settings import Architecture


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
    card_text = json.dumps(card_dict, allow_nan=False)
    with atomic_path(path, overwrite) as tmp, os_errors(f"cannot write {path}"):
        save_file(state, str(tmp), metadata={CARD_KEY: card_text, CHECKSUM_KEY: card_checksum(card_text)})
    return path


@dataclass
class LoadedModel:
    model: ScaleSpaceAutoencoder
    card: ModelCard
    card_dict: dict[str, Any]
    path: Path


def read_model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The verified model card of a model file as a dict, without loading the weights.

    The card's checksum (format 2) is checked (:func:`ssae.io.model_file.read_card`) and every
    value the engine relies on is validated, so an edited card is refused like edited weights.
    """
    card = read_card(path)
    ModelCard.from_dict(card)  # every value checked, or an SSAEError that says which
    return card


def check_weights_fit_card(path: str | os.PathLike[str], card: dict[str, Any]) -> None:
    """Refuse a file whose tensors (names and shapes, from its header) are not those of the
    architecture its card describes, as loading would (``ssae info`` checks it without loading)."""
    path = Path(path)
    header, _ = read_header(path)
    stored = {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in build_model(Architecture.from_dict(card["architecture"])).state_dict().items()}
    if stored != expected:
        raise SSAEError(f"{path.name}: the weights do not fit the architecture its model card describes")


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
