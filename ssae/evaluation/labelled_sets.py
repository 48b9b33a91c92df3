"""Evaluating a model on labelled scans: per case and pooled over the data set.

Voxels counted: the brain mask plus every labelled lesion voxel (a lesion outside the brain
mask still counts as missed). Everything is measured on the input volume's own grid, the grid
a user's mask lives on. For every score map (and both FLAIR baselines, :mod:`ssae.scoring.baselines`)
we report

* AUPRC pooled over the data set,
* the oracle [DICE] (best threshold picked on the test labels: an upper bound),
* Dice, precision and recall at each map's label-free threshold.

And for the **mask** every user gets (the card's map at the chosen operating point), beside the
label-free FLAIR rule (:func:`ssae.scoring.baselines.flair_rule_mask`), per case and pooled: Dice,
lesion-wise sensitivity / precision / F1, false-positive lesions per scan, mask and true volume
and their difference (:mod:`ssae.scoring.lesion_metrics`, whose ``RULE`` says how lesions are counted).

A metric that is undefined (no lesion voxel in the whole set, say) is reported as null with a
warning, never as NaN.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ssae.detection.detector import Detector
from ssae.io.cases import Case, read_case_volumes
from ssae.io.writing import atomic_path, refuse_existing, write_json, write_text
from ssae.models.settings import AdaptationSettings
from ssae.preprocessing.input_grid import to_input_grid_many
from ssae.scoring.baselines import flair_rule_mask, intensity_score, strong_intensity_score
from ssae.scoring.lesion_metrics import BAND_NAMES, RULE, LesionCounts, lesion_counts
from ssae.scoring.metrics import average_precision, best_dice, overlap, precision_recall
from ssae.training import defaults

RAW_FLAIR = "raw FLAIR baseline"


STRONG_FLAIR = "strong FLAIR baseline"


BASELINES = (RAW_FLAIR, STRONG_FLAIR)


MASK = "mask"


FLAIR_RULE = "FLAIR rule"


def _defined(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class CaseResult:
    name: str
    lesion_voxels: int
    lesion_ml: float
    auprc: dict[str, float | None]
    at_threshold: dict[str, float | None]  # dice/precision/recall of the mask (score map at its threshold)
    predicted_ml: float
    lesions: dict[str, dict[str, Any]] = field(default_factory=dict)  # "mask" / "FLAIR rule" -> lesion counts and scores


@dataclass
class EvaluationReport:
    score_map: str
    threshold: float | None
    operating_point: str
    cases: list[CaseResult]
    pooled: dict[str, dict[str, float | None]]  # map name -> metrics
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # map -> (recall, precision)
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lesions: dict[str, LesionCounts] = field(default_factory=dict)  # "mask" / "FLAIR rule", summed over cases

    def to_dict(self) -> dict[str, Any]:
        return {
            "score_map": self.score_map,
            "threshold": self.threshold,
            "operating_point": self.operating_point,
            "pooled": self.pooled,
            "mask": {name: counts.to_dict() for name, counts in self.lesions.items()},
            "lesion_rule": RULE,
            "cases": [case.__dict__ for case in self.cases],
            "settings": self.settings,
            "warnings": self.warnings,
            "note": "[DICE] picks its threshold on the test labels (an upper bound); dice_at_threshold uses the model's label-free threshold.",
        }


class _Pool:
    """Scores and labels of the counted voxels of every case, per score map."""

    def __init__(self) -> None:
        self.scores: dict[str, list[np.ndarray]] = {}
        self.labels: list[np.ndarray] = []

    def add(self, labels: np.ndarray, maps: dict[str, np.ndarray]) -> None:
        self.labels.append(labels)
        for name, values in maps.items():
            self.scores.setdefault(name, []).append(values.astype(np.float32))

    def metrics(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.scores[name]), np.concatenate(self.labels)


def evaluate(
    detector: Detector,
    cases: list[Case],
    adaptation: AdaptationSettings | None = None,
    scales: bool = True,
    log: Callable[[str], None] = print,
    operating_point: str | None = None,
    min_lesion_mm3: float | None = None,
) -> EvaluationReport:
    """Detect on every labelled case and compute the metrics described in the module doc."""
    card = detector.card
    pool = _Pool()
    results = []
    threshold = None
    operating = ""
    rule = defaults.FLAIR_RULE
    totals = {MASK: LesionCounts(), FLAIR_RULE: LesionCounts()}
    for index, case in enumerate(cases):
        log(f"evaluating {case.name} ({index + 1}/{len(cases)})")
        image, brain, label = read_case_volumes(case, need_label=True)
        assert label is not None
        result = detector.detect(
            image, brain, scales=scales, adaptation=adaptation, operating_point=operating_point, min_lesion_mm3=min_lesion_mm3
        )
        threshold, operating = result.threshold, result.rule.operating_point
        truth = sitk.GetArrayFromImage(label).astype(bool)
        counted = sitk.GetArrayFromImage(result.prepared.brain_mask).astype(bool) | truth
        maps = {name: sitk.GetArrayFromImage(score)[counted] for name, score in result.maps.items()}
        maps[RAW_FLAIR] = intensity_score(image, result.prepared)[counted]
        strong = strong_intensity_score(result.prepared, card.postprocessing.brain_erosion)
        strong_image = to_input_grid_many(
            {"strong": strong}, result.prepared.grid, image, result.prepared.transform, result.prepared.brain_mask
        )
        maps[STRONG_FLAIR] = sitk.GetArrayFromImage(strong_image["strong"])[counted]
        labels = truth[counted]
        pool.add(labels, maps)
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        predicted = sitk.GetArrayFromImage(result.mask).astype(bool)
        flair_mask = sitk.GetArrayFromImage(flair_rule_mask(image, result.prepared.brain_mask, rule["k"], rule["min_lesion_mm3"])).astype(
            bool
        )
        counts = {
            MASK: lesion_counts(predicted, truth, image.GetSpacing()),
            FLAIR_RULE: lesion_counts(flair_mask, truth, image.GetSpacing()),
        }
        totals = {name: totals[name] + counts[name] for name in totals}
        results.append(
            CaseResult(
                name=case.name,
                lesion_voxels=int(truth.sum()),
                lesion_ml=float(truth.sum()) * voxel_ml,
                auprc={name: _defined(average_precision(values, labels)) if labels.any() else None for name, values in maps.items()},
                at_threshold={k: _defined(v) for k, v in overlap(predicted & counted, truth).to_dict().items()},
                predicted_ml=float(predicted.sum()) * voxel_ml,
                lesions={name: c.to_dict() for name, c in counts.items()},
            )
        )
    warnings = []
    if not any(r.lesion_voxels for r in results):
        warnings.append("no case has a labelled lesion voxel: AUPRC and [DICE] are undefined (null)")
    pooled: dict[str, dict[str, float | None]] = {}
    curves = {}
    adapted = adaptation is not None
    for name in pool.scores:
        scores, labels = pool.metrics(name)
        oracle = best_dice(scores, labels)
        entry: dict[str, float | None] = {
            "auprc": _defined(average_precision(scores, labels)),
            "best_dice": _defined(oracle.dice),
            "best_dice_threshold": _defined(oracle.threshold),
        }
        map_threshold = None
        if name not in BASELINES:
            map_threshold = card.threshold_for(name, adapted)
            map_threshold = card.threshold_for(name) if map_threshold is None else map_threshold
        if map_threshold is not None:
            entry["threshold"] = map_threshold
            entry.update({f"{k}_at_threshold": _defined(v) for k, v in overlap(scores > map_threshold, labels).to_dict().items()})
        pooled[name] = entry
        if labels.any():
            precision, recall, _ = precision_recall(scores, labels)
            step = max(1, len(recall) // 2000)
            curves[name] = (recall[::step], precision[::step])
    return EvaluationReport(
        score_map=card.score_map,
        threshold=threshold,
        operating_point=operating,
        cases=results,
        pooled=pooled,
        curves=curves,
        settings={
            "model": card.architecture.name,
            "adaptation": adaptation.to_dict() if adapted else None,
            "threshold_method": card.calibration.method + (" (adapted)" if adapted else ""),
            "postprocessing": card.postprocessing.to_dict(),
            "voxels": "brain mask plus labelled lesion voxels, on each input volume's grid",
            "flair_rule": f"brain FLAIR z-score > {rule['k']:g}, lesions >= {rule['min_lesion_mm3']:g} mm3 ({defaults.OPERATING_POINTS_EVIDENCE})",
        },
        warnings=warnings,
        lesions=totals,
    )


def cases_csv(report: EvaluationReport) -> str:
    buffer = io.StringIO()
    names = list(report.pooled)
    writer = csv.writer(buffer, lineterminator="\n")
    lesion_fields = (
        "true_lesions",
        "found",
        "mask_lesions",
        "false_positive_lesions",
        "lesion_sensitivity",
        "lesion_precision",
        "lesion_f1",
    )
    writer.writerow(
        ["case", "lesion_voxels", "lesion_ml", "predicted_ml", "dice_at_threshold", "precision_at_threshold", "recall_at_threshold"]
        + [f"{who} {f}" for who in (MASK, FLAIR_RULE) for f in ("dice", *lesion_fields)]
        + [f"{who} sensitivity {band}" for who in (MASK, FLAIR_RULE) for band in BAND_NAMES]
        + [f"auprc {n}" for n in names]
    )
    for case in report.cases:
        t = case.at_threshold
        writer.writerow(
            [
                case.name,
                case.lesion_voxels,
                f"{case.lesion_ml:.3f}",
                f"{case.predicted_ml:.3f}",
                _fmt(t["dice"]),
                _fmt(t["precision"]),
                _fmt(t["recall"]),
            ]
            + [_csv_value(case.lesions[who][f]) for who in (MASK, FLAIR_RULE) for f in ("dice", *lesion_fields)]
            + [_fmt(case.lesions[who]["sensitivity_by_size"][band]) for who in (MASK, FLAIR_RULE) for band in BAND_NAMES]
            + [_fmt(case.auprc.get(n)) for n in names]
        )
    return buffer.getvalue()


def _csv_value(value: float | int | None) -> str:
    return str(value) if isinstance(value, int) else _fmt(value)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def pr_curve_figure(report: EvaluationReport, path: Path, title: str, overwrite: bool) -> Path:
    """Precision-recall curves of every map and both baselines, pooled over the data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (recall, precision) in report.curves.items():
        style = "--" if name in BASELINES else "-"
        auprc = report.pooled[name]["auprc"]
        ax.plot(recall, precision, style, label=f"{name} (AUPRC {auprc:.3f})", linewidth=2 if name == report.score_map else 1.2)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if report.curves:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def report_paths(folder: Path) -> dict[str, Path]:
    return {"metrics": folder / "metrics.json", "cases": folder / "cases.csv", "pr_curve": folder / "pr_curve.png"}


def write_report(report: EvaluationReport, folder: Path, title: str, overwrite: bool) -> dict[str, Path]:
    paths = report_paths(folder)
    refuse_existing(list(paths.values()), overwrite)
    write_json(report.to_dict(), paths["metrics"], overwrite)
    write_text(cases_csv(report), paths["cases"], overwrite)
    pr_curve_figure(report, paths["pr_curve"], title, overwrite)
    return paths
