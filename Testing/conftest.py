"""Shared fixtures: real MRI from Resources/SampleData and a tiny SSAE trained on it.

Everything is small (64 px slices, a few hundred optimiser steps) so that the whole suite runs
in minutes on two CPU cores; the science at full size lives in bench/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "Resources" / "SampleData" / "MSLUB"
sys.path.insert(0, str(REPO))
for module in ("SSAEAnomaly", "SSAETraining"):  # the Slicer modules' Lib packages, as Slicer's path has them
    sys.path.insert(0, str(REPO / module))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mslub_dir() -> Path:
    return SAMPLES


def downsample(image: sitk.Image, factor: float) -> sitk.Image:
    """Isotropic downsampling of a real scan (keeps physical extent and direction)."""
    size = [max(2, int(round(s / factor))) for s in image.GetSize()]
    spacing = [sp * s0 / s1 for sp, s0, s1 in zip(image.GetSpacing(), image.GetSize(), size)]
    reference = sitk.Image(size, image.GetPixelID())
    reference.SetSpacing(spacing)
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([(f - 1) / 2 for f in [factor] * 3]))
    interpolator = sitk.sitkNearestNeighbor if image.GetPixelID() == sitk.sitkUInt8 else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0)


@pytest.fixture(scope="session")
def small_cases(tmp_path_factory) -> Path:
    """Both MSLUB patients at 2 mm (FLAIR + consensus mask), one folder per case."""
    root = tmp_path_factory.mktemp("mslub2mm")
    for patient in ("patient07", "patient19"):
        folder = root / patient
        folder.mkdir()
        flair = sitk.ReadImage(str(SAMPLES / patient / "flair.nii.gz"))
        truth = sitk.ReadImage(str(SAMPLES / patient / "consensus_gt.nii.gz"))
        sitk.WriteImage(downsample(flair, 2.0), str(folder / "flair.nii.gz"))
        sitk.WriteImage(downsample(truth, 2.0), str(folder / "consensus_gt.nii.gz"))
    return root


@pytest.fixture(scope="session")
def tiny_config():
    from ssae.models.settings import Architecture
    from ssae.preprocessing.slices import PreprocessingSettings
    from ssae.scoring.score_maps import PostprocessingSettings
    from ssae.training.config import TrainingConfig

    return TrainingConfig(
        architecture=Architecture("dense", size=64, levels=3, base_filters=16, max_filters=64, latent_dim=64),
        preprocessing=PreprocessingSettings(size=64),
        postprocessing=PostprocessingSettings(median_size=3, brain_erosion=1, min_lesion_mm3=0.0),
        max_epochs=25,
        patience=25,
        batch_size=4,
        val_fraction=0.5,
        threshold_percentile=99.0,
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, small_cases, tiny_config) -> Path:
    """A 3-level dense SSAE at 64 px, ~375 steps per level on one sample patient (lesions excluded).

    With two subjects, one trains and one validates; the model knows its training subject's
    anatomy well, which is what the tests below lean on.
    """
    from ssae.io.cases import find_cases
    from ssae.training.trainer import train

    out = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    cache = tmp_path_factory.mktemp("cache")
    train(find_cases(small_cases), tiny_config, out, device="cpu", cache_dir=cache)
    return out


def make_volume(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def oblique_direction(degrees: float = 20.0) -> tuple[float, ...]:
    """A rotation about the left-right and then the superior axis (an oblique acquisition)."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return tuple((rz @ rx).ravel())


def cli_refuses(capsys, argv, message: str) -> str:
    """Run ``ssae argv`` in-process and check the refusal contract: exit 2, warnings first, then
    one line ``ssae: error: ...`` naming ``message``, no traceback. Returns the error line."""
    from ssae.app.cli import main

    code = main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    *warnings, err = lines
    assert err.startswith("ssae: error:") and message in err, lines
    assert all(w.startswith("ssae: warning:") for w in warnings), lines
    assert "Traceback" not in err
    return err
