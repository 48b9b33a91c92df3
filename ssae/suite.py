"""Reproducing the paper's comparisons: many models, the same data, the same budget.

Every variant (dense / spatial / variational; scale-space and plain at several sizes) is
trained with the same seed and epoch budget on the same healthy subjects, then evaluated per
scale and aggregated on the same labelled test cases, beside two references that need no
training: the FLAIR intensity threshold.

Everything expensive is done once and kept in the output folder: bias-corrected copies of every
scan, one atlas registration per scan (shared by all model sizes), and every trained model (a
finished model is not retrained, so an interrupted run resumes where it stopped).

Confidence intervals are 95 % percentile bootstrap intervals over *subjects* (cases are
resampled with replacement and the pooled metrics recomputed). To make a thousand resamples
cheap, each case's scores are reduced to counts in 4096 shared score bins (quantiles of the
pooled scores); the point estimates come from the exact, unbinned scores.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .baselines import intensity_score
from .checkpoint import read_model_card
from .datasets import Case, cached_alignment, find_cases, read_case_volumes
from .detection import DetectionResult, Detector
from .input_grid import to_input_grid_many
from .metrics import average_precision, best_dice, overlap, precision_recall
from .models import Architecture, count_parameters
from .postprocessing import PostprocessingSettings, anomaly_score, eroded_brain
from .preprocessing import PreprocessingSettings, prepare_volume
from .registration import bias_correct
from .training import TrainingConfig, train
from .volume_io import write_json, write_text

BINS = 4096
BOOTSTRAP = 1000


@dataclass(frozen=True)
class Profile:
    """Sizes and budget of one reproduction run (stated in the report)."""

    name: str
    ssae_size: int
    ssae_levels: int
    plain_sizes: tuple[int, ...]
    max_epochs: int
    patience: int
    batch_size: int = 8
    variants: tuple[str, ...] = ("dense", "spatial", "vae")
    threshold_percentile: float = 99.9


PROFILES = {
    # 2 CPU cores, under an hour: the paper's shapes at half its resolution, a few epochs per level.
    "cpu": Profile("cpu", ssae_size=128, ssae_levels=3, plain_sizes=(32, 64, 128), max_epochs=6, patience=3),
    # A GPU: the paper's 256 px, 4 levels, plain models at 64/128/256, early stopping as in training.
    "full": Profile("full", ssae_size=256, ssae_levels=4, plain_sizes=(64, 128, 256), max_epochs=100, patience=5),
}


@dataclass(frozen=True)
class ModelPlan:
    name: str  # e.g. "SSAE dense" or "AE dense 64"
    variant: str
    architecture: Architecture

    @property
    def family(self) -> str:
        return f"{'SSAE' if self.architecture.scale_space else 'AE'} {self.variant}"


def plan_models(profile: Profile) -> list[ModelPlan]:
    """SSAE and plain models per variant (SSAE level widths 16/96, plain 32/128: comparable sizes)."""
    plans = []
    for variant in profile.variants:
        plans.append(ModelPlan(f"SSAE {variant}", variant, Architecture(variant, profile.ssae_size, profile.ssae_levels, 16, 96)))
        for size in profile.plain_sizes:
            plans.append(ModelPlan(f"AE {variant} {size}", variant, Architecture(variant, size, 1, 32, 128)))
    return plans


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


def _binned_metrics(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """AUPRC and best Dice from per-bin counts (bins ordered from the highest score down)."""
    tp, fp = np.cumsum(positives), np.cumsum(negatives)
    total = tp[-1]
    if total == 0:
        return math.nan, math.nan
    nonempty = (positives + negatives) > 0
    tp, fp = tp[nonempty], fp[nonempty]
    precision = tp / (tp + fp)
    recall = tp / total
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return ap, float(np.max(2 * tp / (tp + fp + total)))


def bootstrap_intervals(
    per_case: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, resamples: int = BOOTSTRAP
) -> dict[str, tuple[float, float]]:
    """95 % bootstrap intervals of pooled AUPRC and [DICE], resampling cases with replacement."""
    pooled = np.concatenate([s for s, _ in per_case])
    edges = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, BINS + 1)))
    counts = []
    for scores, labels in per_case:
        index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 1)
        positives = np.bincount(index[labels], minlength=len(edges))[::-1]
        negatives = np.bincount(index[~labels], minlength=len(edges))[::-1]
        counts.append((positives, negatives))
    counts_p = np.stack([c[0] for c in counts])
    counts_n = np.stack([c[1] for c in counts])
    values = {"auprc": [], "best_dice": []}
    n = len(per_case)
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        ap, dice = _binned_metrics(counts_p[pick].sum(axis=0), counts_n[pick].sum(axis=0))
        if not math.isnan(ap):
            values["auprc"].append(ap)
            values["best_dice"].append(dice)
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (math.nan, math.nan) for k, v in values.items()}


@dataclass
class ResultRow:
    dataset: str
    labels: str
    model: str
    map: str
    auprc: float
    auprc_ci: tuple[float, float]
    best_dice: float
    best_dice_ci: tuple[float, float]
    dice_at_threshold: float | None
    threshold: float | None
    cases: int
    parameters: int | None


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


# -- report -------------------------------------------------------------------------------------------

CSV_COLUMNS = [
    "profile",
    "dataset",
    "labels",
    "model",
    "map",
    "auprc",
    "auprc_ci_low",
    "auprc_ci_high",
    "best_dice",
    "best_dice_ci_low",
    "best_dice_ci_high",
    "dice_at_threshold",
    "threshold",
    "cases",
    "parameters",
]


def results_csv(rows: list[ResultRow], profile: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(
            [
                profile,
                r.dataset,
                r.labels,
                r.model,
                r.map,
                _num(r.auprc),
                _num(r.auprc_ci[0]),
                _num(r.auprc_ci[1]),
                _num(r.best_dice),
                _num(r.best_dice_ci[0]),
                _num(r.best_dice_ci[1]),
                _num(r.dice_at_threshold),
                _num(r.threshold),
                r.cases,
                r.parameters or "",
            ]
        )
    return buffer.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def results_markdown(rows: list[ResultRow], profile: Profile, settings: dict[str, Any]) -> str:
    """Table 2 layout: one row per model and map, AUPRC / [DICE] / Dice@t per data set."""
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    keys = list(dict.fromkeys((r.model, r.map) for r in rows))
    by = {(r.dataset, r.model, r.map): r for r in rows}
    header = (
        "| model | resolution | "
        + " | ".join(
            f"{d} ({next(r.labels for r in rows if r.dataset == d)} labels) AUPRC [95% CI] / [DICE] [95% CI] / Dice@t" for d in datasets
        )
        + " |"
    )
    lines = [
        f"# Reproduction report ({profile.name} profile)",
        "",
        f"Profile: SSAE {profile.ssae_size} px with {profile.ssae_levels} levels; plain AEs at {', '.join(map(str, profile.plain_sizes))} px; "
        f"at most {profile.max_epochs} epochs per level, patience {profile.patience}, batch {profile.batch_size}; variants {', '.join(profile.variants)}; "
        "trained on the NiChart subjects (WMH-labelled voxels left out), atlas-registered and N4-corrected.",
        "",
        "[DICE] picks its threshold on the test labels (an upper bound); Dice@t uses the label-free threshold calibrated on healthy validation subjects "
        f"({profile.threshold_percentile:g}th percentile; for the intensity baselines on the same subjects' normalised FLAIR). "
        "Intervals: 95 % bootstrap over subjects (few subjects: wide and crude).",
        "",
        "Test scans go through the same N4 correction, registration and brain mask as the training scans; the FLAIR intensity "
        "rows threshold that same corrected, normalised FLAIR inside the same brain mask. 'AE <variant>' without a size sums "
        "the plain AEs' residuals across sizes on the largest one's grid.",
        "",
        f"Post-processing: {json.dumps(settings)}",
        "",
        header,
        "|---|---|" + "---|" * len(datasets),
    ]
    for model, map_name in keys:
        cells = []
        for d in datasets:
            r = by.get((d, model, map_name))
            if r is None:
                cells.append("-")
                continue
            at = "-" if r.dice_at_threshold is None else f"{r.dice_at_threshold:.3f}"
            cells.append(
                f"{r.auprc:.3f} [{r.auprc_ci[0]:.2f}, {r.auprc_ci[1]:.2f}] / {r.best_dice:.3f} [{r.best_dice_ci[0]:.2f}, {r.best_dice_ci[1]:.2f}] / {at}"
            )
        lines.append(f"| {model} | {map_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fidelity_figure(model_paths: dict[str, Path], path: Path) -> None:
    """Fig. 3: l1 error per scale on healthy validation slices, SSAE vs plain AE per variant."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    families: dict[str, list[tuple[int, float]]] = {}
    for name, model in model_paths.items():
        card = read_model_card(model)
        size = card["architecture"]["size"]
        l1 = card["fidelity"]["l1_per_level"]
        family = name if name.startswith("SSAE") else " ".join(name.split()[:2])
        if name.startswith("SSAE"):
            families.setdefault(family, []).extend((size >> int(k[5:]), v) for k, v in l1.items())
        else:
            families.setdefault(family, []).append((size, l1["level0"]))
    for family, points in sorted(families.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "-o" if family.startswith("SSAE") else "--s", label=family)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("resolution (px)")
    ax.set_ylabel("mean l1 error per brain pixel (healthy validation slices)")
    ax.set_title("Reconstruction fidelity per scale (Fig. 3)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pr_figure(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], rows: list[ResultRow], path: Path) -> None:
    """PR curves per data set: every aggregated map and both baselines."""
    plt = _figure()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.8), squeeze=False)
    auprc = {(r.dataset, f"{r.model}|{r.map}"): r.auprc for r in rows}
    for ax, (dataset, maps) in zip(axes[0], curves.items()):
        for key, (recall, precision) in maps.items():
            if not (key.endswith("|aggregated") or key.endswith("|-")):
                continue
            style = "--" if key.endswith("|-") else "-"
            ax.plot(recall, precision, style, label=f"{key.split('|')[0]} ({auprc[(dataset, key)]:.3f})", linewidth=1.2)
        ax.set_title(dataset)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spread_slices(lesion_area: np.ndarray, count: int, gap: int) -> list[int]:
    """The slices with the most lesion, at least ``gap`` apart (neighbours look alike), top to bottom."""
    picks: list[int] = []
    for z in np.argsort(-lesion_area):
        if lesion_area[z] == 0 or len(picks) == count:
            break
        if all(abs(int(z) - p) >= gap for p in picks):
            picks.append(int(z))
    return sorted(picks, reverse=True)


def panels_figure(panel_sources: dict[str, dict[str, Any]], ae_name: str, ssae_name: str, path: Path, slices_per_case: int = 2) -> None:
    """Fig. 2: input, ground truth, AE reconstruction and residual, SSAE reconstruction and
    residual, on the most lesioned slices of each manually labelled data set's largest case."""
    from .preprocessing import resample_to_grid

    plt = _figure()
    panel_rows = []
    for source in panel_sources.values():
        case, results = source["case"], source["results"]
        ae, ssae = results[ae_name], results[ssae_name]
        truth_image = read_case_volumes(case, need_label=True)[2]
        truth = resample_to_grid(truth_image, ssae.prepared.grid, label=True, transform=ssae.prepared.transform)
        area = truth.reshape(truth.shape[0], -1).sum(axis=1)
        for z in _spread_slices(area, count=slices_per_case, gap=max(2, truth.shape[0] // 12)):
            panel_rows.append((f"{case.name}, slice {z}", z, truth, ae, ssae))
    if not panel_rows:
        return
    columns = ["input", "ground truth", "AE reconstruction", "AE residual", "SSAE reconstruction", "SSAE residual (aggregated)"]
    fig, axes = plt.subplots(len(panel_rows), len(columns), figsize=(2.2 * len(columns), 2.3 * len(panel_rows) + 0.5), squeeze=False)
    for r, (label, z, truth, ae, ssae) in enumerate(panel_rows):
        ae_z = min(round(z * ae.prepared.slices.shape[0] / truth.shape[0]), ae.prepared.slices.shape[0] - 1)  # same anatomy
        images = [
            (ssae.prepared.slices[z], "gray", 1.0),
            (truth[z], "Greens", 1.0),
            (np.clip(ae.residuals.reconstruction[ae_z], 0, 1), "gray", 1.0),
            (ae.grid_scores["aggregated"][ae_z], "inferno", _display_top(ae.grid_scores["aggregated"])),
            (np.clip(ssae.residuals.reconstruction[z], 0, 1), "gray", 1.0),
            (ssae.grid_scores["aggregated"][z], "inferno", _display_top(ssae.grid_scores["aggregated"])),
        ]
        for c, (image, cmap, top) in enumerate(images):
            axes[r, c].imshow(image, cmap=cmap, vmin=0, vmax=top, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(columns[c], fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(f"{ae_name} vs {ssae_name}: median-filtered positive residuals (Fig. 2 layout)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _display_top(volume: np.ndarray) -> float:
    """Colour-scale maximum of a score volume: its 99.9th percentile, robust to single hot voxels."""
    return max(float(np.percentile(volume, 99.9)), 1e-6)


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
