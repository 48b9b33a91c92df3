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

import SimpleITK as sitk

from ssae.detection.detector import Detector, small_lesion_evidence
from ssae.detection.figures import detection_figure
from ssae.detection.result_files import detection_summary, estimated_bytes, output_paths, write_detection
from ssae.io.resources import default_model_path, sample_case_dir
from ssae.io.volumes import read_mask, read_volume
from ssae.io.writing import check_output_folder, refuse_existing, write_json
from ssae.preprocessing.input_grid import to_input_grid_many
from ssae.preprocessing.slices import resample_to_grid
from ssae.scoring.baselines import flair_rule_mask, intensity_score, strong_intensity_score
from ssae.scoring.lesion_metrics import RULE, lesion_counts
from ssae.scoring.mask_drawing import draw_lesions
from ssae.scoring.metrics import average_precision, best_dice
from ssae.training import defaults

STEM = "demo"


def run_demo(output_dir: Path, device: str = "auto", overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    model_path, case = default_model_path(), sample_case_dir()
    detector = Detector.from_file(model_path, device)
    card = detector.card
    image = read_volume(case / "flair.nii.gz", "sample FLAIR")
    truth_image = read_mask(case / "consensus_gt.nii.gz", image, "consensus lesion mask")
    levels = list(range(card.architecture.levels))
    planned = output_paths(output_dir, STEM, "nii.gz", levels, atlas=card.preprocessing.atlas, small_lesions=bool(card.small_lesion_rules(False)))
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
    rule = defaults.FLAIR_RULE
    masks = {f"SSAE mask ({result.rule.operating_point})": sitk.GetArrayFromImage(result.mask).astype(bool)}
    for point in sorted(set(card.operating_points.get("points", {})) - {result.rule.operating_point}):
        point_rule = card.mask_rule(result.score_map, adaptation is not None, point)
        evidence = small_lesion_evidence(result.intensities) if point_rule.small_lesions is not None else None
        masks[f"SSAE mask ({point})"] = sitk.GetArrayFromImage(draw_lesions(result.score, point_rule, evidence)[0]) > 0
    masks |= {
        f"FLAIR rule (z > {rule['k']:g})": sitk.GetArrayFromImage(
            flair_rule_mask(image, result.prepared.brain_mask, rule["k"], rule["min_lesion_mm3"])
        ).astype(bool),
    }
    lesions = {name: lesion_counts(mask, truth, image.GetSpacing()).to_dict() for name, mask in masks.items()}
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
    truth_grid = resample_to_grid(truth_image, result.prepared.grid, label=True, transform=result.prepared.transform)
    detection_figure(result, extra["figure"], f"{card.architecture.name} on MSLUB {case.name}", truth_grid, overwrite=overwrite)
    write_json(
        {
            "metrics": metrics,
            "masks": lesions,
            "lesion_rule": RULE,
            "adaptation": summary["adaptation"],
            "score_map": result.score_map,
            "mask_rule": result.rule.to_dict(),
        },
        extra["metrics"],
        overwrite,
    )
    elapsed = time.perf_counter() - started

    log("")
    log(f"{'maps':40s}{'AUPRC':>8s}{'[DICE]':>9s}")
    for name, values in metrics.items():
        log(f"{name:40s}{values['auprc']:8.3f}{values['best_dice']:9.3f}")
    log("[DICE] chooses its threshold on this case's labels (an upper bound nobody can use).")
    log("")
    log(f"{'masks (label-free)':40s}{'Dice':>7s}{'lesions found':>15s}{'10-50 mm3':>11s}{'false':>7s}{'precision':>11s}{'F1':>6s}{'ml':>7s}")
    for name, d in lesions.items():
        found = f"{d['found']}/{d['true_lesions']}"
        small = f"{d['band_found'][0]}/{d['band_true'][0]}"
        log(
            f"{name:40s}{d['dice']:7.3f}{found:>15s}{small:>11s}{d['false_positive_lesions']:7d}{_fmt(d['lesion_precision']):>11s}"
            f"{_fmt(d['lesion_f1']):>6s}{d['mask_ml']:7.1f}"
        )
    log(f"consensus mask: {d['true_ml']:.1f} ml. Lesions counted with the {RULE}.")
    for name, d in lesions.items():
        if name.startswith("SSAE"):
            half = d["found"] * 2 >= d["true_lesions"] and (d["lesion_precision"] or 0.0) >= 0.5
            log(
                f"The {name} finds {d['found']} of the {d['true_lesions']} lesions of at least 10 mm3 with precision "
                f"{_fmt(d['lesion_precision'])}: {'at least half at precision 0.5 or better' if half else 'short of half at precision 0.5'}."
            )
    log("")
    for name, path in {**paths, **extra}.items():
        log(f"{name:>12s}: {path}")
    log(f"done in {elapsed:.1f} s" + (f" (adaptation {result.adaptation.seconds:.1f} s)" if result.adaptation else ""))
    return {"paths": paths, "metrics": metrics, "masks": lesions, "elapsed_s": elapsed}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
