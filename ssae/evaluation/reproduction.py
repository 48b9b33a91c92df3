"""Reproducing the paper's comparisons: many models, the same data, the same budget.

Every variant (dense / spatial / variational; scale-space and plain at several sizes) is
trained with the same seed and epoch budget on the same healthy subjects, then evaluated per
scale and aggregated on the same labelled test cases, beside two references that need no
training: the FLAIR intensity threshold.

Everything expensive is done once and kept in the output folder: bias-corrected copies of every
scan, one atlas registration per scan (shared by all model sizes), and every trained model (a
finished model is not retrained, so an interrupted run resumes where it stopped).

Confidence intervals are bootstrap intervals over subjects (:mod:`ssae.evaluation.bootstrap`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ssae.detection.detector import DetectionResult, Detector
from ssae.evaluation.bootstrap import bootstrap_intervals
from ssae.evaluation.reproduction_plan import ModelPlan, Profile, ResultRow, plan_models
from ssae.evaluation.reproduction_report import fidelity_figure, panels_figure, pr_figure, results_csv, results_markdown
from ssae.io.cases import Case, find_cases, read_case_volumes
from ssae.io.writing import write_json, write_text
from ssae.models.checkpoint import read_model_card
from ssae.models.networks import count_parameters
from ssae.preprocessing.bias_field import bias_correct
from ssae.preprocessing.input_grid import to_input_grid_many
from ssae.preprocessing.slices import PreprocessingSettings, prepare_volume
from ssae.scoring.baselines import intensity_score
from ssae.scoring.metrics import average_precision, best_dice, overlap, precision_recall
from ssae.scoring.score_maps import PostprocessingSettings, anomaly_score, eroded_brain
from ssae.training.config import TrainingConfig
from ssae.training.slice_cache import cached_alignment
from ssae.training.trainer import train


@dataclass
class TestSet:
    name: str
    cases: list[Case]
    labels: str  # "manual" or "automatic"


def _corrected_case(case: Case, folder: Path) -> Case:
    """A bias-corrected copy of a case's image (labels and masks by reference), made once."""
    target = folder / case.name / "flair.nii.gz"
    if not target.exists():
        image, brain, _ = read_case_volumes(case)
        corrected = bias_correct(image, brain)
        target.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(corrected, str(target), True)
    return Case(name=case.name, image=target, brain_mask=case.brain_mask, label=case.label)


def prepare_sets(
    train_source: Path, test_sources: dict[str, tuple[Path, str]], folder: Path, log: Callable[[str], None]
) -> tuple[list[Case], list[TestSet]]:
    """Bias-corrected copies of the training scans and of every test set."""
    log("bias-correcting the scans (once)")
    train_cases = [_corrected_case(c, folder / "corrected" / "train") for c in find_cases(train_source)]
    sets = []
    for name, (source, labels) in test_sources.items():
        cases = [_corrected_case(c, folder / "corrected" / name) for c in find_cases(source) if c.label is not None]
        sets.append(TestSet(name, cases, labels))
    return train_cases, sets


def train_models(
    plans: list[ModelPlan], cases: list[Case], profile: Profile, folder: Path, seed: int, log: Callable[[str], None]
) -> dict[str, Path]:
    """Train every planned model (skipping finished ones) with the same data, seed and budget."""
    paths = {}
    for plan in plans:
        path = folder / "models" / f"{plan.name.replace(' ', '_')}.safetensors"
        config = TrainingConfig(
            architecture=plan.architecture,
            preprocessing=PreprocessingSettings(size=plan.architecture.size, atlas=True),
            postprocessing=PostprocessingSettings(),
            max_epochs=profile.max_epochs,
            patience=profile.patience,
            batch_size=profile.batch_size,
            seed=seed,
            threshold_percentile=profile.threshold_percentile,
        )
        if path.exists() and read_model_card(path)["training"]["config"] == config.to_dict():
            log(f"{plan.name}: already trained")
        else:
            log(f"training {plan.name} ({count_parameters(plan.architecture):,} parameters)")
            resume = path.with_name(path.name + ".resume.pt").exists()
            train(
                cases,
                config,
                path,
                device="auto",
                resume=resume,
                overwrite=True,
                cache_dir=folder / "cache",
                data_summary={"source": "suite"},
            )
        paths[plan.name] = path
    return paths


@dataclass
class MapScores:
    """One test case: scores of every map on the counted voxels, and what they are compared to."""

    labels: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)


def _plain_aggregate(results: list[DetectionResult], post: PostprocessingSettings, image: sitk.Image) -> sitk.Image:
    """Residuals of plain AEs at several sizes (their finished detections), brought to the
    largest one's grid and summed.

    Atlas slice grids are isotropic, so a smaller model also has fewer, thicker slices: each
    residual volume is resampled in atlas space onto the largest model's grid (the a_k recursion
    of Eq. 6 across models instead of across pyramid levels).
    """
    largest = max(results, key=lambda r: r.prepared.slices.shape[-1]).prepared
    total = np.zeros_like(largest.slices)
    for result in results:
        residual = sitk.GetImageFromArray(result.residuals.aggregated)
        residual.CopyInformation(result.prepared.grid)
        total += sitk.GetArrayFromImage(sitk.Resample(residual, largest.grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    score = anomaly_score(total, eroded_brain(largest.brain, post.brain_erosion), post)
    return to_input_grid_many({"aggregated": score}, largest.grid, image, largest.transform, largest.brain_mask)["aggregated"]


def score_case(case: Case, detectors: dict[str, Detector], cache: Path) -> tuple[MapScores, dict[str, DetectionResult]]:
    """Every model's maps (per scale and aggregated) and both baselines on one case's brain."""
    image, brain_mask, label = read_case_volumes(case, need_label=True)
    alignment = cached_alignment(case, image, brain_mask, False, cache)
    truth = sitk.GetArrayFromImage(label).astype(bool)
    counted = sitk.GetArrayFromImage(alignment.brain_mask if brain_mask is None else brain_mask).astype(bool) | truth
    scores = MapScores(labels=truth[counted])
    extras: dict[str, DetectionResult] = {}
    for name, detector in detectors.items():
        result = detector.detect(image, brain_mask, scales=detector.card.architecture.scale_space, alignment=alignment)
        scores.maps[f"{name}|aggregated"] = sitk.GetArrayFromImage(result.maps["aggregated"])[counted]
        for level in result.levels:
            size = detector.card.architecture.level_size(level)
            scores.maps[f"{name}|{size} px"] = sitk.GetArrayFromImage(result.maps[f"level{level}"])[counted]
        extras[name] = result
    for variant in sorted({n.split()[1] for n in detectors if n.startswith("AE ")}):
        plain = [n for n in detectors if n.startswith(f"AE {variant} ")]
        if len(plain) > 1:
            largest = max(plain, key=lambda n: detectors[n].card.architecture.size)
            combined = _plain_aggregate([extras[n] for n in plain], detectors[largest].card.postprocessing, image)
            scores.maps[f"AE {variant}|aggregated"] = sitk.GetArrayFromImage(combined)[counted]
    any_result = next(iter(extras.values()))
    scores.maps["FLAIR intensity|-"] = intensity_score(image, any_result.prepared)[counted]
    return scores, extras


def evaluate_sets(
    detectors: dict[str, Detector],
    sets: list[TestSet],
    cache: Path,
    baseline_thresholds: dict[str, float],
    seed: int,
    log: Callable[[str], None],
) -> tuple[list[ResultRow], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], dict[str, Any]]:
    """Rows for every (data set, model, map), PR curves, and per manually labelled data set the
    detection results of its case with the most lesion voxels (for the Fig. 2 panels)."""
    rows, curves = [], {}
    panel_sources: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(seed)
    for test in sets:
        per_case: list[MapScores] = []
        for case in test.cases:
            log(f"{test.name}: {case.name}")
            scores, extras = score_case(case, detectors, cache)
            per_case.append(scores)
            lesion_voxels = int(scores.labels.sum())
            if test.labels == "manual" and lesion_voxels > panel_sources.get(test.name, {}).get("lesion_voxels", 0):
                panel_sources[test.name] = {"case": case, "results": extras, "lesion_voxels": lesion_voxels}
        curves[test.name] = {}
        for key in per_case[0].maps:
            model, map_name = key.split("|")
            pooled_scores = np.concatenate([c.maps[key] for c in per_case])
            pooled_labels = np.concatenate([c.labels for c in per_case])
            oracle = best_dice(pooled_scores, pooled_labels)
            threshold = _calibrated_threshold(detectors, model, map_name, baseline_thresholds)
            at = overlap(pooled_scores > threshold, pooled_labels).dice if threshold is not None else None
            ci = bootstrap_intervals([(c.maps[key], c.labels) for c in per_case], rng)
            detector = detectors.get(model)
            rows.append(
                ResultRow(
                    dataset=test.name,
                    labels=test.labels,
                    model=model,
                    map=map_name,
                    auprc=average_precision(pooled_scores, pooled_labels),
                    auprc_ci=ci["auprc"],
                    best_dice=oracle.dice,
                    best_dice_ci=ci["best_dice"],
                    dice_at_threshold=at,
                    threshold=threshold,
                    cases=len(per_case),
                    parameters=count_parameters(detector.card.architecture) if detector else None,
                )
            )
            precision, recall, _ = precision_recall(pooled_scores, pooled_labels)
            step = max(1, len(recall) // 1500)
            curves[test.name][key] = (recall[::step], precision[::step])
    return rows, curves, panel_sources


def _calibrated_threshold(detectors: dict[str, Detector], model: str, map_name: str, baseline_thresholds: dict[str, float]) -> float | None:
    if model in baseline_thresholds:
        return baseline_thresholds[model]
    detector = detectors.get(model)
    if detector is None:
        return None  # combinations of models have no calibrated threshold
    if map_name == "aggregated":
        return detector.card.threshold_for("aggregated")
    size = int(map_name.split()[0])
    level = int(round(math.log2(detector.card.architecture.size / size)))
    return detector.card.threshold_for(f"level{level}")


def baseline_thresholds(
    train_cases: list[Case], val_subjects: list[str], percentile: float, settings: PreprocessingSettings, cache: Path
) -> dict[str, float]:
    """Label-free thresholds for the intensity baselines: the same percentile rule as the models,
    on the healthy validation subjects' brain voxels (lesion-labelled voxels left out)."""
    values: dict[str, list[np.ndarray]] = {"FLAIR intensity": []}
    for case in (c for c in train_cases if c.name in val_subjects):
        image, brain, label = read_case_volumes(case)
        alignment = cached_alignment(case, image, brain, False, cache)
        prepared = prepare_volume(image, settings, brain, alignment)
        keep = sitk.GetArrayFromImage(prepared.brain_mask).astype(bool)
        if label is not None:
            keep &= ~sitk.GetArrayFromImage(label).astype(bool)
        values["FLAIR intensity"].append(intensity_score(image, prepared)[keep])
    return {k: float(np.percentile(np.concatenate(v), percentile)) for k, v in values.items()}


def run_suite(
    train_source: Path,
    test_sources: dict[str, tuple[Path, str]],
    output: Path,
    profile: Profile,
    seed: int = 0,
    postprocessing: PostprocessingSettings | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Train (or reuse) every model, evaluate, and write the report into ``output``.

    ``postprocessing`` replaces the models' own post-processing at evaluation (the switches of
    the authors' code: median size, brain erosion, small components);
    the calibrated thresholds were chosen with the training-time settings.
    """
    started = time.time()
    output.mkdir(parents=True, exist_ok=True)
    work = output / "work"
    train_cases, sets = prepare_sets(train_source, test_sources, work, log)
    plans = plan_models(profile)
    model_paths = train_models(plans, train_cases, profile, work, seed, log)
    detectors = {name: Detector.from_file(path) for name, path in model_paths.items()}
    post = postprocessing or PostprocessingSettings()
    for detector in detectors.values():
        detector.card.postprocessing = post
    first = read_model_card(next(iter(model_paths.values())))
    val_subjects = first["training"]["data"]["val_subjects"]
    if "nichart-wmh" in test_sources:  # automatic WMH labels of the held-out subjects only
        for test in sets:
            if test.name == "nichart-wmh":
                test.cases = [c for c in test.cases if c.name in val_subjects]
    thresholds = baseline_thresholds(
        train_cases, val_subjects, profile.threshold_percentile, PreprocessingSettings(size=profile.ssae_size, atlas=True), work / "cache"
    )
    rows, curves, panel_sources = evaluate_sets(detectors, sets, work / "cache", thresholds, seed, log)
    paths = {
        "csv": output / "results.csv",
        "markdown": output / "results.md",
        "fidelity": output / "fidelity.png",
        "pr_curves": output / "pr_curves.png",
        "panels": output / "panels.png",
        "settings": output / "settings.json",
    }
    write_text(results_csv(rows, profile.name), paths["csv"], overwrite=True)
    write_text(results_markdown(rows, profile, post.to_dict()), paths["markdown"], overwrite=True)
    fidelity_figure(model_paths, paths["fidelity"])
    pr_figure(curves, rows, paths["pr_curves"])
    largest_plain = f"AE dense {max(profile.plain_sizes)}"
    if panel_sources and "SSAE dense" in detectors and largest_plain in detectors:
        panels_figure(panel_sources, largest_plain, "SSAE dense", paths["panels"])
    write_json(
        {
            "profile": asdict(profile),
            "postprocessing": post.to_dict(),
            "seed": seed,
            "train_source": str(train_source),
            "test_sets": {t.name: {"cases": [c.name for c in t.cases], "labels": t.labels} for t in sets},
            "baseline_thresholds": thresholds,
            "duration_s": round(time.time() - started, 1),
            "device": str(next(iter(detectors.values())).device),
        },
        paths["settings"],
        overwrite=True,
    )
    return paths
