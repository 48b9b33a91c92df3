"""Python packages the engine needs inside Slicer, installed only after asking the user.

Nothing here imports PyTorch into Slicer's process: whether packages are installed is read from
their metadata, and where the networks run (GPU or CPU) is reported by the engine's own worker
process (:class:`ssae.app.worker_client.DetectionWorker`), so a missing or broken PyTorch (or its DLLs
on Windows) can never break the panel, and a later reinstall is not blocked by loaded libraries.

PyTorch comes through the PyTorch extension's ``PyTorchUtils`` when it is installed (it picks
the CUDA build that matches the machine), else from PyPI; the small pure-Python packages come
from PyPI with Slicer's own pip helper. Nothing is installed without a yes from the user, and a
failed or declined install leaves the panel as it was, with a message saying what to do next.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import subprocess
import sys

PIP_PACKAGES = {"safetensors": "safetensors>=0.4", "scipy": "scipy>=1.10", "matplotlib": "matplotlib>=3.7"}
MANUAL_INSTALL = (
    "To install by hand: open the Extensions Manager and install the PyTorch extension (it chooses the GPU or CPU build), "
    "restart Slicer, then in the Python console run: slicer.util.pip_install('safetensors scipy matplotlib'). "
    "Behind a proxy, set HTTPS_PROXY before starting Slicer."
)


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


def packages_summary(device_news: str = "starting the engine to see where the networks run...") -> str:
    """What a panel says about the engine's packages before the engine itself has said where the
    networks run (``device_news``: where the panel will learn that)."""
    missing = missing_packages()
    if "torch" in missing:
        return "PyTorch is not installed yet (you will be asked before it is)."
    if missing:
        return f"Missing Python packages: {', '.join(missing)} (you will be asked before they are installed)."
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return f"PyTorch {version} is installed; {device_news}"


def ensure_engine_dependencies(ask: bool = True) -> bool:
    """Install what is missing after confirmation; True when everything is importable.

    A declined or failed install returns False after telling the user what happened and what to
    do next (a dialog); it never raises.
    """
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
    try:
        if "torch" in missing:
            _install_torch(slicer)
        others = [PIP_PACKAGES[name] for name in missing if name in PIP_PACKAGES]
        if others:
            slicer.util.pip_install(" ".join(others))
    except (subprocess.CalledProcessError, RuntimeError, OSError, ImportError) as exc:
        logging.exception("SSAE: installing Python packages failed")
        slicer.util.errorDisplay(
            f"Installing the Python packages failed: {exc}\n\nNothing else was changed; the panel is ready to try again. {MANUAL_INSTALL}",
            "Install Python packages",
        )
        return False
    importlib.invalidate_caches()
    still = missing_packages()
    if still:
        slicer.util.errorDisplay(
            f"These packages are still missing after the install: {', '.join(still)}. Restart Slicer and try again. {MANUAL_INSTALL}",
            "Install Python packages",
        )
        return False
    return True


def _install_torch(slicer) -> None:
    """PyTorch through the PyTorch extension when present (the right CUDA build), else from PyPI."""
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        slicer.util.pip_install("torch")
    else:
        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)  # raises on failure
