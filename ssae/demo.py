"""``ssae demo``: the whole pipeline on real data that ships with the repository.

The shipped dense SSAE (trained on the NiChart subjects' brains, WMH-labelled voxels excluded)
is adapted to MSLUB patient 19 (Lesjak et al. 2018, CC-BY) as its model card recommends, writes
every map, the lesion mask and a figure, and is scored against the manual consensus mask,
beside the two FLAIR intensity baselines on the same voxels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .baselines import intensity_score, strong_intensity_score
from .detection import Detector
from .detection_files import detection_summary, estimated_bytes, output_paths, write_detection
from .figures import detection_figure
from .input_grid import to_input_grid_many
from .metrics import average_precision, best_dice, overlap
from .preprocessing import resample_to_grid
from .resources import default_model_path, sample_case_dir
from .volume_io import check_output_folder, read_mask, read_volume, refuse_existing, write_json

STEM = "demo"


def run_demo(output_dir: Path, device: str = "auto", overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    model_path, case = default_model_path(), sample_case_dir()
    detector = Detector.from_file(model_path, device)
    card = detector.card
    image = read_volume(case / "flair.nii.gz", "sample FLAIR")
    truth_image = read_mask(case / "consensus_gt.nii.gz", image, "consensus lesion mask")
    levels = list(range(card.architecture.levels))
    planned = output_paths(output_dir, STEM, "nii.gz", levels, atlas=card.preprocessing.atlas)
    extra = {"figure": output_dir / "demo_figure.png", "metrics": output_dir / "demo_metrics.json"}
    refuse_existing([*planned.values(), *extra.values()], overwrite)  # before any work
    check_output_folder(output_dir, estimated_bytes(image, len(levels)))
    adaptation = detector.default_adaptation()
    log(f"model: {model_path} ({card.architecture.name}; mask from the {card.score_map} map)")
    log(f"input: {case / 'flair.nii.gz'} (MSLUB {case.name}, {image.GetSize()} voxels)")
    if adaptation is not None:
        log(f"adapting a copy of the model to this scan ({adaptation.epochs} epochs per level), then detecting")

    result = detector.detect(image, adaptation=adaptation)
    summary = detection_summary(result, str(case / "flair.nii.gz"), card.architecture.name, model_path.name)
    paths = write_detection(result, output_dir, STEM, "nii.gz", summary, overwrite)

    truth = sitk.GetArrayFromImage(truth_image).astype(bool)
    counted = sitk.GetArrayFromImage(result.prepared.brain_mask).astype(bool) | truth
    labels = truth[counted]
    at_threshold = overlap(sitk.GetArrayFromImage(result.mask).astype(bool) & counted, truth)
    strong = to_input_grid_many(
        {"strong": strong_intensity_score(result.prepared, card.postprocessing.brain_erosion)},
        result.prepared.grid,
        image,
        result.prepared.transform,
        result.prepared.brain_mask,
    )["strong"]
    scores = {
        f"SSAE {result.score_map} (drives the mask)": sitk.GetArrayFromImage(result.score)[counted],
        "SSAE aggregated": sitk.GetArrayFromImage(result.maps["aggregated"])[counted],
        "raw FLAIR baseline": intensity_score(image, result.prepared)[counted],
        "strong FLAIR baseline": sitk.GetArrayFromImage(strong)[counted],
    }
    metrics = {name: {"auprc": average_precision(s, labels), "best_dice": best_dice(s, labels).dice} for name, s in scores.items()}
    first = next(iter(metrics))
    metrics[first]["dice_at_threshold"] = at_threshold.dice
    truth_grid = resample_to_grid(truth_image, result.prepared.grid, label=True, transform=result.prepared.transform)
    detection_figure(result, extra["figure"], f"{card.architecture.name} on MSLUB {case.name}", truth_grid, overwrite=overwrite)
    write_json(
        {"metrics": metrics, "adaptation": summary["adaptation"], "score_map": result.score_map, "threshold": result.threshold},
        extra["metrics"],
        overwrite,
    )
    elapsed = time.perf_counter() - started

    log("")
    log(f"{'':40s}{'AUPRC':>8s}{'[DICE]':>9s}{'Dice@t':>9s}")
    for name, values in metrics.items():
        at = values.get("dice_at_threshold")
        log(f"{name:40s}{values['auprc']:8.3f}{values['best_dice']:9.3f}{'-' if at is None else format(at, '.3f'):>9s}")
    log("[DICE] chooses its threshold on this case's labels (an upper bound); Dice@t uses the model's label-free threshold.")
    lesion_ml = truth.sum() * np.prod(image.GetSpacing()) / 1000
    log(f"lesions found: {result.statistics.count}, {result.statistics.total_ml:.1f} ml (consensus mask: {lesion_ml:.1f} ml)")
    log("")
    for name, path in {**paths, **extra}.items():
        log(f"{name:>12s}: {path}")
    log(f"done in {elapsed:.1f} s" + (f" (adaptation {result.adaptation.seconds:.1f} s)" if result.adaptation else ""))
    return {"paths": paths, "metrics": metrics, "elapsed_s": elapsed}
