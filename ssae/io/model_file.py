"""Reading a model file's card without PyTorch (the Slicer panel shows it before torch exists).

A model file is a safetensors file: 8 bytes of header length (little-endian), a JSON header
whose ``__metadata__`` holds the model card (JSON text under ``ssae_model_card``) and the card's
SHA-256 (``ssae_card_sha256``), then the weights. Reading the card and verifying the weights'
SHA-256 need nothing but the standard library (``ssae info`` and the Slicer panel run before
torch exists); loading the weights is :mod:`ssae.models.checkpoint`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from ssae.io.errors import SSAEError

CARD_KEY = "ssae_model_card"


CHECKSUM_KEY = "ssae_card_sha256"


FORMAT = "ssae-model"


FORMAT_VERSION = 4


READABLE_VERSIONS = (1, 2, 3, 4)


# Card sections that format 1 never had (it kept one "threshold" and "level_thresholds"): a card
# labelled format 1 that holds one was relabelled, which would also skip the checksum that every
# later format carries (a checksum present in the file is verified whatever the label says).
LATER_SECTIONS = ("thresholds", "calibration", "adaptation", "healthy_tails", "healthy_tails_grid", "operating_points", "healthy_candidates")


MAX_HEADER_BYTES = 100_000_000


# safetensors dtype -> torch's name of it: the weights' SHA-256 hashes the torch name
# (ssae.models.checkpoint.weights_digest), so that both readers agree byte for byte.
TORCH_DTYPES = {
    "F64": "torch.float64",
    "F32": "torch.float32",
    "F16": "torch.float16",
    "BF16": "torch.bfloat16",
    "I64": "torch.int64",
    "I32": "torch.int32",
    "I16": "torch.int16",
    "I8": "torch.int8",
    "U8": "torch.uint8",
    "BOOL": "torch.bool",
}


def card_checksum(card_text: str) -> str:
    return hashlib.sha256(card_text.encode("utf-8")).hexdigest()


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header."""
    metadata = read_header(path)[0].get("__metadata__") or {}
    return metadata if isinstance(metadata, dict) else {}


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header and where its data start, checked against the file size."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= MAX_HEADER_BYTES:
                raise ValueError("no safetensors header")
            header_bytes = handle.read(length)
            if len(header_bytes) < length:
                raise ValueError("the header is truncated")
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
        header = json.loads(header_bytes.decode("utf-8"), parse_constant=_no_constants)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        data_end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if size < 8 + length + data_end:
            raise ValueError(f"the file ends at {size} bytes, its header declares {8 + length + data_end}")
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as exc:
        raise SSAEError(f"{path.name} is not an SSAE model file (unreadable, truncated or another format: {exc})") from None
    return header, 8 + length


def verify_weights(path: str | os.PathLike[str], card: dict[str, Any]) -> None:
    """Check the weights against the card's SHA-256 without torch (same digest as
    :func:`ssae.models.checkpoint.weights_digest`: name, shape, dtype and bytes, in name order)."""
    path = Path(path)
    header, start = read_header(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for name in sorted(k for k in header if k != "__metadata__"):
                entry = header[name]
                begin, end = (int(v) for v in entry["data_offsets"])
                shape = tuple(int(v) for v in entry["shape"])
                digest.update(f"{name}|{shape}|{TORCH_DTYPES[entry['dtype']]}|".encode())
                handle.seek(start + begin)
                digest.update(handle.read(end - begin))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise SSAEError(f"{path.name}: cannot read the weights (truncated or corrupt file: {exc})") from None
    if digest.hexdigest() != card.get("weights_sha256"):
        raise SSAEError(f"{path.name}: the weights do not match the model card's checksum (the file was modified or is corrupt)")


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of a model file, its format and (format 2) its checksum verified."""
    path = Path(path)
    if path.is_dir():
        raise SSAEError(f"{path} is a folder; give the model file (.safetensors)")
    if not path.exists():
        raise SSAEError(f"model file not found: {path}")
    if not path.is_file():
        raise SSAEError(f"{path} is not a regular file (a device, pipe or socket); give the model file (.safetensors)")
    metadata = read_metadata(path)
    if CARD_KEY not in metadata:
        raise SSAEError(f"{path.name} is a safetensors file but not an SSAE model (it has no SSAE model card)")
    try:
        card = json.loads(metadata[CARD_KEY], parse_constant=_no_constants)
    except (json.JSONDecodeError, ValueError, TypeError):
        raise SSAEError(f"{path.name} has a corrupt model card") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise SSAEError(f"{path.name} is not an SSAE model (format {card.get('format') if isinstance(card, dict) else None!r})")
    version = card.get("format_version")
    if version not in READABLE_VERSIONS:
        raise SSAEError(
            f"{path.name} has model format version {version}; this ssae reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    if (version >= 2 or CHECKSUM_KEY in metadata) and metadata.get(CHECKSUM_KEY) != card_checksum(metadata[CARD_KEY]):
        raise SSAEError(f"{path.name}: the model card does not match its checksum (the file was modified or is corrupt)")
    later = [name for name in LATER_SECTIONS if name in card] if version == 1 else []
    if later:
        raise SSAEError(
            f"{path.name}: its card says model format 1 but holds sections of a later format ({', '.join(later)}); "
            "the file was modified or is corrupt"
        )
    return card


def card_thresholds(card: dict[str, Any]) -> dict[str, float]:
    """Thresholds per map of the model as trained (format 1 cards: aggregated and levels)."""
    if card.get("format_version") == 1:
        return {"aggregated": card["threshold"]["value"], **card.get("level_thresholds", {})}
    return dict(card["thresholds"])


def adapted_thresholds(card: dict[str, Any]) -> dict[str, float]:
    adaptation = card.get("adaptation") or {}
    return dict(adaptation.get("thresholds") or {})


def calibration_method(card: dict[str, Any]) -> str:
    """How the card's percentile thresholds were calibrated, in words."""
    return card["threshold"]["method"] if card.get("format_version") == 1 else card["calibration"]["method"]
