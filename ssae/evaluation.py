"""Evaluating a model on labelled scans: per case and pooled over the data set.

Voxels counted: the brain mask plus every labelled lesion voxel (a lesion outside the brain
mask still counts as missed). Everything is measured on the input volume's own grid, the grid
a user's mask lives on. For every score map we report

* AUPRC pooled over the data set,
* the oracle [DICE] (best threshold picked on the test labels: an upper bound),
* Dice, precision and recall at the model's label-free calibrated threshold (pooled, and per
  case in the CSV),

and the same AUPRC / [DICE] for the FLAIR intensity-threshold baseline on the same voxels.
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

from .baselines import intensity_score
from .datasets import Case, read_case_volumes
from .detection import Detector
from .metrics import average_precision, best_dice, overlap, precision_recall
from .volume_io import atomic_path, refuse_existing, write_json, write_text

BASELINE = "intensity baseline"
AGGREGATED = "aggregated"


def level_name(level: int) -> str:
    return f"level {level}"


def _level_threshold(detector: Detector, name: str) -> float | None:
    if name == BASELINE:
        return None
    return detector.card.threshold_for(name.replace(" ", ""))


@dataclass
class CaseResult:
    name: str
    lesion_voxels: int
    lesion_ml: float
    auprc: dict[str, float]
    at_threshold: dict[str, float]  # dice/precision/recall of the aggregated map at the calibrated threshold
    predicted_ml: float


@dataclass
class EvaluationReport:
    threshold: float
    cases: list[CaseResult]
    pooled: dict[str, dict[str, float]]  # map name -> metrics
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # map -> (recall, precision)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "pooled": self.pooled,
            "cases": [case.__dict__ for case in self.cases],
            "settings": self.settings,
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


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(image)


def evaluate(
    detector: Detector,
    cases: list[Case],
    threshold: float | None = None,
    scales: bool = True,
    log: Callable[[str], None] = print,
) -> EvaluationReport:
    """Detect on every labelled case and compute the metrics described in the module doc."""
    chosen = detector.card.threshold.value if threshold is None else threshold
    pool = _Pool()
    results = []
    for index, case in enumerate(cases):
        log(f"evaluating {case.name} ({index + 1}/{len(cases)})")
        image, brain, label = read_case_volumes(case, need_label=True)
        assert label is not None
        result = detector.detect(image, brain, threshold=chosen, scales=scales)
        truth = _array(label).astype(bool)
        counted = _array(result.prepared.brain_mask).astype(bool) | truth
        maps = {AGGREGATED: _array(result.aggregated)[counted]}
        maps.update({level_name(k): _array(img)[counted] for k, img in result.scales.items()})
        maps[BASELINE] = intensity_score(image, result.prepared)[counted]
        labels = truth[counted]
        pool.add(labels, maps)
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        predicted = _array(result.mask).astype(bool)
        results.append(
            CaseResult(
                name=case.name,
                lesion_voxels=int(truth.sum()),
                lesion_ml=float(truth.sum()) * voxel_ml,
                auprc={name: average_precision(values, labels) if labels.any() else math.nan for name, values in maps.items()},
                at_threshold=overlap(predicted & counted, truth).to_dict(),
                predicted_ml=float(predicted.sum()) * voxel_ml,
            )
        )
    pooled: dict[str, dict[str, float]] = {}
    curves = {}
    for name in pool.scores:
        scores, labels = pool.metrics(name)
        oracle = best_dice(scores, labels)
        entry = {"auprc": average_precision(scores, labels), "best_dice": oracle.dice, "best_dice_threshold": oracle.threshold}
        map_threshold = chosen if name == AGGREGATED else _level_threshold(detector, name)
        if map_threshold is not None:
            entry["threshold"] = map_threshold
            entry.update({f"{k}_at_threshold": v for k, v in overlap(scores > map_threshold, labels).to_dict().items()})
        pooled[name] = entry
        precision, recall, _ = precision_recall(scores, labels)
        step = max(1, len(recall) // 2000)
        curves[name] = (recall[::step], precision[::step])
    return EvaluationReport(
        threshold=chosen,
        cases=results,
        pooled=pooled,
        curves=curves,
        settings={
            "model": detector.card.architecture.name,
            "threshold_method": detector.card.threshold.method if threshold is None else "given by the user",
            "postprocessing": detector.card.postprocessing.to_dict(),
            "voxels": "brain mask plus labelled lesion voxels, on each input volume's grid",
        },
    )


def cases_csv(report: EvaluationReport) -> str:
    buffer = io.StringIO()
    names = list(report.pooled)
    writer = csv.writer(buffer)
    writer.writerow(
        ["case", "lesion_voxels", "lesion_ml", "predicted_ml", "dice_at_threshold", "precision_at_threshold", "recall_at_threshold"]
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
            + [_fmt(case.auprc.get(n, math.nan)) for n in names]
        )
    return buffer.getvalue()


def _fmt(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def pr_curve_figure(report: EvaluationReport, path: Path, title: str, overwrite: bool) -> Path:
    """Precision-recall curves of every map and the baseline, pooled over the data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (recall, precision) in report.curves.items():
        style = "--" if name == BASELINE else "-"
        ax.plot(
            recall, precision, style, label=f"{name} (AUPRC {report.pooled[name]['auprc']:.3f})", linewidth=2 if name == AGGREGATED else 1.2
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def write_report(report: EvaluationReport, folder: Path, title: str, overwrite: bool) -> dict[str, Path]:
    paths = {"metrics": folder / "metrics.json", "cases": folder / "cases.csv", "pr_curve": folder / "pr_curve.png"}
    refuse_existing(list(paths.values()), overwrite)
    write_json(report.to_dict(), paths["metrics"], overwrite)
    write_text(cases_csv(report), paths["cases"], overwrite)
    pr_curve_figure(report, paths["pr_curve"], title, overwrite)
    return paths
