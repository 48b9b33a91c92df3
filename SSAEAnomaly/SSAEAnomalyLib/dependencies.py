"""Python packages the engine needs inside Slicer, installed only after asking the user.

Nothing here imports PyTorch into Slicer's process: whether packages are installed is read from
their metadata, and where the networks run (GPU or CPU) is reported by the engine's own worker
process (:class:`ssae.app.worker_client.DetectionWorker`), so a missing or broken PyTorch (or its DLLs
on Windows) can never break the panel, and a later reinstall is not blocked by loaded libraries.

PyTorch is installed by light-the-torch, the tool the PyTorch extension uses to pick the CUDA
build that matches the machine, run as a separate ``PythonSlicer`` process: the extension's
``installTorch`` would end with ``import torch`` in Slicer's process. The version range is
:data:`TORCH_REQUIREMENT`: torch 2.13 installs but fails to import on Slicer 5.12 with Python
3.12 (Slicer/light-the-torch#176, July 2026: "set the torch version to <2.13.0"). The small
pure-Python packages come from PyPI with Slicer's pip helper. Nothing is installed without a
yes from the user; a failed or declined install leaves the panel as it was, with one message
(Slicer 5.12's ``slicer.packaging.pip_install`` shows a dialog of its own before raising unless
asked not to) saying what to do next.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import shutil
import subprocess
import sys

PIP_PACKAGES = {"safetensors": "safetensors>=0.4", "scipy": "scipy>=1.10", "matplotlib": "matplotlib>=3.7"}
TORCH_REQUIREMENT = "torch>=2.2,<2.13"  # the engine needs 2.2; 2.13 breaks on Slicer 5.12 (see the module doc)
LIGHT_THE_TORCH = "light-the-torch>=0.7"
MANUAL_INSTALL = (
    "To install by hand, in Slicer's Python console run: "
    f"slicer.util.pip_install('{LIGHT_THE_TORCH}') and then slicer.util._executePythonModule('light_the_torch', ['install', '{TORCH_REQUIREMENT}']) "
    "(it chooses the GPU or CPU build), then slicer.util.pip_install('safetensors scipy matplotlib'), and restart Slicer. "
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


def self_test_skip_reason() -> str | None:
    """Why a module's self-test cannot run in this Slicer (None: it can).

    The tests check it twice: ``setUp`` raises ``SkipTest`` with it (ctest runs each ``test_*``
    through unittest, which reports a skip), and ``runTest`` returns early with a message, because
    Slicer's *Reload and Test* calls ``runTest`` inside ``tryWithErrorDisplay``, where a
    ``SkipTest`` would be an error dialog.
    """
    missing = missing_packages()
    if not missing:
        return None
    return f"the engine's Python packages are not installed ({', '.join(missing)}); the panel offers to install them"


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
        with slicer.util.WaitCursor():  # the busy cursor while the blocking install runs
            if "torch" in missing:
                _install_torch(slicer)
            others = [PIP_PACKAGES[name] for name in missing if name in PIP_PACKAGES]
            if others:
                _pip_install(slicer, others)
    except (subprocess.CalledProcessError, RuntimeError, OSError, ImportError) as exc:
        logging.exception("SSAE: installing Python packages failed")
        output = getattr(exc, "output", None) or ""
        slicer.util.errorDisplay(
            f"Installing the Python packages failed: {exc}\n\nNothing else was changed; the panel is ready to try again. {MANUAL_INSTALL}",
            "Install Python packages",
            detailedText=output[-4000:] if isinstance(output, str) else "",
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
    """:data:`TORCH_REQUIREMENT` through light-the-torch (the CUDA build that matches the
    machine's driver, else the CPU build), in a ``PythonSlicer`` process of its own."""
    if not installed("light_the_torch"):
        _pip_install(slicer, [LIGHT_THE_TORCH])
        importlib.invalidate_caches()
    python = shutil.which("PythonSlicer") or sys.executable
    command = [python, "-m", "light_the_torch", "install", TORCH_REQUIREMENT]
    result = subprocess.run(command, check=False, capture_output=True, text=True, encoding="utf-8", errors="replace")
    logging.info("SSAE: %s\n%s", " ".join(command), result.stdout + result.stderr)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, command, output=result.stdout + result.stderr)


def _pip_install(slicer, requirements: list[str]) -> None:
    """Slicer's pip helper without a dialog of its own: Slicer 5.12+ (``slicer.packaging``) would
    show "Package installation failed" and then raise, and the caller shows the one message
    that says what to do next. Slicer 5.10's ``slicer.util.pip_install`` shows nothing."""
    if installed("slicer.packaging"):
        importlib.import_module("slicer.packaging").pip_install(requirements, show_progress=False)
    else:
        slicer.util.pip_install(" ".join(requirements))
