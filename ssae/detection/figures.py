"""Figures for people: the demo/detection panel (input, reconstruction, residuals, mask)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssae.detection.detector import DetectionResult
from ssae.io.writing import atomic_path
from ssae.preprocessing.slices import resample_to_grid


def _interesting_slices(result: DetectionResult, truth: np.ndarray | None, count: int) -> list[int]:
    """Slices with the most ground-truth lesion, else with the highest score of the mask's map."""
    weight = truth if truth is not None and truth.any() else result.grid_scores[result.score_map]
    per_slice = weight.reshape(weight.shape[0], -1).sum(axis=1)
    order = np.argsort(-per_slice)
    chosen: list[int] = []
    for index in order:  # spread the picks over the volume
        if all(abs(int(index) - c) >= 6 for c in chosen):
            chosen.append(int(index))
        if len(chosen) == count:
            break
    return sorted(chosen)


def detection_figure(
    result: DetectionResult, path: Path, title: str, truth: np.ndarray | None = None, rows: int = 3, overwrite: bool = False
) -> Path:
    """Rows of slices; columns input / reconstruction / score per level / aggregated / the map
    that draws the mask / mask / truth.

    ``truth`` is a ground-truth mask already on the slice grid ([slices, size, size]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prepared, grid = result.prepared, result.grid_scores
    levels = sorted(int(name[5:]) for name in grid if name.startswith("level"))
    mask_grid = resample_to_grid(result.mask, prepared.grid, label=True, transform=prepared.transform).astype(bool)
    columns = [
        ("input", prepared.slices, "gray", (0, 1)),
        ("reconstruction", np.clip(result.residuals.reconstruction, 0, 1), "gray", (0, 1)),
    ]
    top = max(float(np.percentile(grid["aggregated"][prepared.brain], 99.9)), 1e-6)
    columns += [(f"score level {k}", grid[f"level{k}"], "inferno", (0, top)) for k in levels]
    columns.append(("aggregated score", grid["aggregated"], "inferno", (0, top)))
    if result.score_map != "aggregated":
        score = grid[result.score_map]
        score_top = max(float(np.percentile(score[prepared.brain], 99.9)), result.threshold * 1.5, 1e-6)
        columns.append((f"{result.score_map} score", score, "inferno", (0, score_top)))
    columns.append((f"mask ({result.rule.operating_point})", mask_grid, "Reds", (0, 1)))
    if truth is not None:
        columns.append(("ground truth", truth, "Greens", (0, 1)))
    picks = _interesting_slices(result, truth, rows)
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(1.9 * len(columns), 2.0 * len(picks) + 0.6), squeeze=False)
    for r, z in enumerate(picks):
        for c, (name, volume, cmap, (lo, hi)) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(volume[z], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"slice {z}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
