"""The development sets of the studies (bench/quality.py, bench/operating_point.py), prepared once.

* MSLUB: 2 MS patients, manual consensus masks;
* BraTS: 4 gliomas, manual tumour labels;
* NiChart WMH: the model's held-out validation subjects, automatic WMH masks.

Slow steps (N4, atlas registration, scanner adaptation) are cached under ``work``, keyed by the
preprocessing version and the model file's digest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ssae.detection.detector import Detector
from ssae.io.cases import Case, find_cases, read_case_volumes
from ssae.io.model_file import read_card
from ssae.models.settings import AdaptationSettings
from ssae.preprocessing.bias_field import bias_correct
from ssae.preprocessing.slices import PreparedVolume, prepare_volume
from ssae.training.slice_cache import PREPROCESSING_VERSION, cached_alignment

ADAPTATIONS = {
    "none": None,
    "p95 5 ep": AdaptationSettings(epochs=5, exclude_percentile=95.0),
    "p95 10 ep": AdaptationSettings(epochs=10, exclude_percentile=95.0),
    "p90 5 ep": AdaptationSettings(epochs=5, exclude_percentile=90.0),
    "p90 10 ep": AdaptationSettings(epochs=10, exclude_percentile=90.0),
}


@dataclass
class DevCase:
    dataset: str
    case: Case
    image: sitk.Image
    prepared: PreparedVolume
    counted: np.ndarray
    labels: np.ndarray


def load_cases(data: Path, val_subjects: list[str], detector: Detector, work: Path, log) -> list[DevCase]:
    sets = {
        "MSLUB": find_cases(data / "mslub"),
        "BraTS": find_cases(data / "brats2015"),
        "NiChart WMH": [c for c in find_cases(data / "nichart") if c.name in val_subjects],
    }
    settings = detector.card.preprocessing
    out = []
    for dataset, cases in sets.items():
        for case in cases:
            log(f"preparing {dataset} {case.name}")
            image, brain, label = read_case_volumes(case, need_label=True)
            corrected_path = work / f"corrected-v{PREPROCESSING_VERSION}" / f"{case.name}.nii.gz"
            if corrected_path.exists():
                corrected = sitk.ReadImage(str(corrected_path))
            else:
                corrected = bias_correct(image, brain) if settings.bias_correction else image
                corrected_path.parent.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(corrected, str(corrected_path), True)
            alignment = cached_alignment(case, corrected, brain, settings.bias_correction, work / "cache") if settings.atlas else None
            prepared = prepare_volume(corrected, replace(settings, bias_correction=False), brain, alignment)
            prepared.input_reference = image
            truth = sitk.GetArrayFromImage(label).astype(bool)
            counted = sitk.GetArrayFromImage(prepared.brain_mask).astype(bool) | truth
            out.append(DevCase(dataset, case, image, prepared, counted, truth[counted]))
    return out


def weights_digest(model_path: Path) -> str:
    """What the residual cache is keyed by: the weights' SHA-256 from the model card (a
    recalibrated card changes the file, not the residuals)."""
    return read_card(model_path)["weights_sha256"][:12]


def residuals_for(detector: Detector, dev: DevCase, key: str, work: Path, digest: str, seconds: dict) -> dict[str, np.ndarray]:
    path = work / "residuals" / f"{digest}_v{PREPROCESSING_VERSION}_{dev.case.name}_{key.replace(' ', '')}.npz"
    if path.exists():
        cached = np.load(path)
        seconds.setdefault(key, []).append(float(cached["adapt_seconds"]))
        return {k: cached[k] for k in cached.files if k != "adapt_seconds"}
    settings = ADAPTATIONS[key]
    model, took = detector, 0.0
    if settings is not None:
        model, report = detector.adapted_to(dev.prepared.slices, dev.prepared.brain, settings)
        took = report.seconds
    residuals = model.slice_residuals(dev.prepared.slices, scales=True).named()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, adapt_seconds=took, **residuals)
    seconds.setdefault(key, []).append(took)
    return residuals
