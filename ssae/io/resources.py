"""Where the shipped model, atlas and sample data live.

They sit in the repository's top-level ``Resources/`` folder (shared with the Slicer
extension), beside the ``ssae`` package in a source checkout, an editable install or an
installed Slicer extension. Set ``SSAE_RESOURCES`` to use another copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssae.io.errors import SSAEError

DEFAULT_MODEL = Path("Models") / "ssae-dense-nichart.safetensors"


SAMPLE_CASE = Path("SampleData") / "MSLUB" / "patient19"


def resources_dir() -> Path:
    configured = os.environ.get("SSAE_RESOURCES")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "Resources"


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise SSAEError(
            f"the {what} is not at {path}; run from a source checkout (pip install -e .) "
            "or set SSAE_RESOURCES to the repository's Resources folder"
        )
    return path


def default_model_path() -> Path:
    return _existing(resources_dir() / DEFAULT_MODEL, "shipped model")


def sample_case_dir() -> Path:
    return _existing(resources_dir() / SAMPLE_CASE, "sample data")


def atlas_folder() -> Path:
    return _existing(resources_dir() / "Atlas", "atlas")
