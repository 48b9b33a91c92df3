"""The reproduction report: results table (CSV and Markdown with bootstrap intervals) and the
paper's figures (reconstruction fidelity per scale, precision-recall curves, input / reconstruction
/ residual panels)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ssae.evaluation.reproduction_plan import Profile, ResultRow
from ssae.io.cases import read_case_volumes
from ssae.models.checkpoint import read_model_card

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
    from ssae.preprocessing.slices import resample_to_grid

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
