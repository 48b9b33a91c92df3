"""Python packages the engine needs inside Slicer, installed only after asking the user.

PyTorch comes through the PyTorch extension's ``PyTorchUtils`` when it is installed (it picks
the CUDA build that matches the machine), else from PyPI; the small pure-Python packages come
from PyPI with Slicer's own pip helper. Nothing is installed without a yes from the user.
"""

from __future__ import annotations

import importlib.util
import sys

PIP_PACKAGES = {"safetensors": "safetensors>=0.4", "scipy": "scipy>=1.10", "matplotlib": "matplotlib>=3.7"}


def installed(name: str) -> bool:
    """Whether ``import name`` would find the package (without importing it)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_packages() -> list[str]:
    """Import names of required packages that are not installed (``torch`` first if missing)."""
    return [name for name in ("torch", *PIP_PACKAGES) if not installed(name)]


def ensure_engine_dependencies(ask: bool = True) -> bool:
    """Install what is missing after confirmation; True when everything is importable."""
    import slicer

    missing = missing_packages()
    if not missing:
        return True
    if ask and not slicer.util.confirmOkCancelDisplay(
        "SSAE needs these Python packages, which are not installed yet: "
        + ", ".join(missing)
        + ".\n\nInstall them now? PyTorch is large (up to a few GB with GPU support) and may take several minutes.",
        "Install Python packages",
    ):
        return False
    if "torch" in missing:
        try:
            import PyTorchUtils  # from the PyTorch extension: chooses the right CUDA/CPU build
        except ModuleNotFoundError:
            slicer.util.pip_install("torch")
        else:
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                return False
    others = [PIP_PACKAGES[name] for name in missing if name in PIP_PACKAGES]
    if others:
        slicer.util.pip_install(" ".join(others))
    return not missing_packages()


def device_description() -> str:
    """What the UI shows about where the networks will run."""
    if not installed("torch"):
        return "PyTorch is not installed yet (you will be asked before it is)."
    import torch

    if torch.cuda.is_available():
        return f"GPU available: {torch.cuda.get_device_name(0)}"
    return "No CUDA GPU found: the networks run on the CPU."
