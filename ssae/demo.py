"""``ssae demo``: the whole pipeline on real data that ships with the repository.

The shipped dense SSAE (trained on the NiChart subjects' brains, WMH-labelled voxels excluded)
runs on MSLUB patient 19 (Lesjak et al. 2018, CC-BY), writes every map, the lesion mask and a
figure, and compares the result with the manual consensus mask, beside the FLAIR
intensity-threshold baseline on the same voxels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .baselines import intensity_score
from .detection import Detector
from .detection_files import detection_summary, write_detection
from .figures import detection_figure
from .metrics import average_precision, best_dice, overlap
from .preprocessing import resample_to_grid
from .resources import default_model_path, sample_case_dir
from .volume_io import read_mask, read_volume, write_json


def run_demo(output_dir: Path, device: str = "auto", overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    model_path, case = default_model_path(), sample_case_dir()
    detector = Detector.from_file(model_path, device)
    log(f"model: {model_path} ({detector.card.architecture.name}, threshold {detector.card.threshold.value:.4f})")
    image = read_volume(case / "flair.nii.gz", "sample FLAIR")
    truth_image = read_mask(case / "consensus_gt.nii.gz", image, "consensus lesion mask")
    log(f"input: {case / 'flair.nii.gz'} (MSLUB {case.name}, {image.GetSize()} voxels)")

    result = detector.detect(image, scales=True)
    summary = detection_summary(result, str(case / "flair.nii.gz"), detector.card.architecture.name, detector.card.threshold.method)
    paths = write_detection(result, output_dir, "demo", "nii.gz", summary, overwrite)

    truth = sitk.GetArrayViewFromImage(truth_image).astype(bool)
    counted = sitk.GetArrayViewFromImage(result.prepared.brain_mask).astype(bool) | truth
    labels = truth[counted]
    model_scores = sitk.GetArrayViewFromImage(result.aggregated)[counted]
    baseline_scores = intensity_score(image, result.prepared)[counted]
    at_threshold = overlap(sitk.GetArrayViewFromImage(result.mask).astype(bool) & counted, truth)
    metrics = {
        "model": {
            "auprc": average_precision(model_scores, labels),
            "best_dice": best_dice(model_scores, labels).dice,
            "dice_at_calibrated_threshold": at_threshold.dice,
        },
        "intensity_baseline": {
            "auprc": average_precision(baseline_scores, labels),
            "best_dice": best_dice(baseline_scores, labels).dice,
        },
    }
    truth_grid = resample_to_grid(truth_image, result.prepared.grid, label=True, transform=result.prepared.transform)
    figure = detection_figure(
        result, output_dir / "demo_figure.png", f"{detector.card.architecture.name} on MSLUB {case.name}", truth_grid, overwrite=overwrite
    )
    write_json(metrics, output_dir / "demo_metrics.json", overwrite)
    elapsed = time.perf_counter() - started

    log("")
    log(f"{'':28s}{'AUPRC':>8s}{'[DICE]':>9s}{'Dice@t':>9s}")
    m, b = metrics["model"], metrics["intensity_baseline"]
    log(f"{'SSAE aggregated':28s}{m['auprc']:8.3f}{m['best_dice']:9.3f}{m['dice_at_calibrated_threshold']:9.3f}")
    log(f"{'FLAIR intensity baseline':28s}{b['auprc']:8.3f}{b['best_dice']:9.3f}{'-':>9s}")
    log("[DICE] chooses its threshold on this case's labels (an upper bound); Dice@t uses the model's label-free threshold.")
    log(
        f"lesions found: {result.statistics.count}, {result.statistics.total_ml:.1f} ml (consensus mask: {truth.sum() * np.prod(image.GetSpacing()) / 1000:.1f} ml)"
    )
    log("")
    for name, path in {**paths, "figure": figure, "metrics": output_dir / "demo_metrics.json"}.items():
        log(f"{name:>12s}: {path}")
    log(f"done in {elapsed:.1f} s")
    return {"paths": paths, "metrics": metrics, "elapsed_s": elapsed}
