"""Where the shipped model and sample data live.

They sit in the repository's top-level ``Resources/`` folder (shared with the Slicer
extension), beside the ``ssae`` package in a source checkout or an editable install. Set
``SSAE_RESOURCES`` to use another copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SSAEError

DEFAULT_MODEL = Path("Models") / "ssae-dense-nichart.safetensors"
SAMPLE_CASE = Path("SampleData") / "MSLUB" / "patient19"


def resources_dir() -> Path:
    configured = os.environ.get("SSAE_RESOURCES")
    folder = Path(configured) if configured else Path(__file__).resolve().parent.parent / "Resources"
    if not (folder / DEFAULT_MODEL).is_file():
        raise SSAEError(
            f"the shipped model is not at {folder / DEFAULT_MODEL}; run from a source checkout "
            "(pip install -e .) or set SSAE_RESOURCES to the repository's Resources folder"
        )
    return folder


def default_model_path() -> Path:
    return resources_dir() / DEFAULT_MODEL


def sample_case_dir() -> Path:
    return resources_dir() / SAMPLE_CASE
