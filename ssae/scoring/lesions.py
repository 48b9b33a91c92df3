"""Lesions: the connected components of a thresholded score map, and their table.

Torch-free on purpose: the Slicer module recomputes masks and lesion tables from stored score
volumes when the threshold slider moves, without the engine's deep-learning dependencies.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk


SIZE_BANDS: tuple[tuple[float, float], ...] = ((10.0, 50.0), (50.0, 200.0), (200.0, math.inf))  # mm3, the bands lesions are counted in


def band_name(low: float, high: float) -> str:
    return f"{low:g}-{high:g} mm3" if math.isfinite(high) else f">= {low:g} mm3"


def size_band(mm3: float) -> str:
    """The size band a lesion of ``mm3`` falls in (``< 10 mm3`` below the first)."""
    for low, high in SIZE_BANDS:
        if low <= mm3 < high:
            return band_name(low, high)
    return f"< {SIZE_BANDS[0][0]:g} mm3"


def voxel_volume_mm3(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing()))


@dataclass
class LesionStatistics:
    """Connected components of a lesion mask, volumes in millilitres."""

    count: int
    total_ml: float
    component_ml: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"lesion_count": self.count, "total_volume_ml": self.total_ml, "lesion_volumes_ml": self.component_ml}


@dataclass
class LesionTable:
    """One row per lesion, largest first: volume (ml), size band (:data:`SIZE_BANDS`, the bands
    lesions are counted in), voxels, longest axis (mm), peak score, centroid in RAS (mm, Slicer's
    world coordinates; ITK's LPS with the first two axes negated).

    The longest axis is the longest side of the lesion's box along its principal axes (MS
    criteria count lesions of at least 3 mm); the peak score is the map's highest value in it.
    """

    statistics: LesionStatistics
    voxels: list[int]
    longest_axis_mm: list[float]
    peak_scores: list[float]
    centroids_ras: list[tuple[float, float, float]]

    COLUMNS = ("lesion", "volume_ml", "size_band", "voxels", "longest_axis_mm", "peak_score", "centroid_r_mm", "centroid_a_mm", "centroid_s_mm")

    def rows(self) -> list[tuple]:
        return [
            (index + 1, ml, size_band(1000.0 * ml), voxels, axis, peak, *centroid)
            for index, (ml, voxels, axis, peak, centroid) in enumerate(
                zip(self.statistics.component_ml, self.voxels, self.longest_axis_mm, self.peak_scores, self.centroids_ras)
            )
        ]

    def to_csv(self) -> str:
        return lesion_rows_csv(self.rows())


def lesion_rows_csv(rows: list[tuple]) -> str:
    """Lesion table rows (:meth:`LesionTable.rows`) as the CSV that ``ssae detect`` and Slicer write."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LesionTable.COLUMNS)
    for lesion, ml, band, voxels, axis, peak, r, a, s in rows:
        writer.writerow([int(lesion), f"{ml:.4f}", band, int(voxels), f"{axis:.1f}", f"{peak:.4g}", f"{r:.2f}", f"{a:.2f}", f"{s:.2f}"])
    return buffer.getvalue()


def lesion_table(labels: sitk.Image, score: sitk.Image) -> LesionTable:
    """The lesions of a :func:`label_lesions` image as table rows, with the peak of ``score``."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputeOrientedBoundingBoxOn()
    shape.Execute(labels)
    peaks = sitk.LabelStatisticsImageFilter()
    peaks.Execute(sitk.Cast(score, sitk.sitkFloat32), labels)
    voxels, axes, peak, centroids = [], [], [], []
    for label in shape.GetLabels():
        voxels.append(int(shape.GetNumberOfPixels(label)))
        axes.append(float(max(shape.GetOrientedBoundingBoxSize(label))))
        peak.append(float(peaks.GetMaximum(label)))
        x, y, z = shape.GetCentroid(label)  # LPS mm
        centroids.append((-x, -y, z))
    return LesionTable(statistics=lesion_statistics(labels), voxels=voxels, longest_axis_mm=axes, peak_scores=peak, centroids_ras=centroids)


def label_lesions(score: sitk.Image, threshold: float, min_lesion_mm3: float, seed_threshold: float | None = None) -> sitk.Image:
    """Connected lesions of ``score > threshold`` (26-connected), labelled 1..n largest first.

    Components smaller than ``min_lesion_mm3`` are dropped; with ``seed_threshold`` (hysteresis)
    so are those without a voxel above it.
    """
    components = sitk.ConnectedComponent(sitk.Cast(score > threshold, sitk.sitkUInt8), True)
    if seed_threshold is not None and seed_threshold > threshold:
        seeded = sitk.LabelStatisticsImageFilter()
        seeded.Execute(sitk.Cast(score, sitk.sitkFloat32), components)
        unseeded = [label for label in seeded.GetLabels() if label and seeded.GetMaximum(label) <= seed_threshold]
        if unseeded:
            components = sitk.ChangeLabel(components, changeMap={label: 0 for label in unseeded})
    return _by_size(components, score, min_lesion_mm3)


def relabel_by_size(mask: sitk.Image, min_lesion_mm3: float) -> sitk.Image:
    """The 26-connected components of a binary ``mask``, labelled 1..n largest first, without
    those smaller than ``min_lesion_mm3``."""
    return _by_size(sitk.ConnectedComponent(sitk.Cast(mask > 0, sitk.sitkUInt8), True), mask, min_lesion_mm3)


def _by_size(components: sitk.Image, reference: sitk.Image, min_lesion_mm3: float) -> sitk.Image:
    min_voxels = int(np.ceil(min_lesion_mm3 / voxel_volume_mm3(reference))) if min_lesion_mm3 > 0 else 0
    labels = sitk.RelabelComponent(components, minimumObjectSize=min_voxels, sortByObjectSize=True)
    labels.CopyInformation(reference)
    return labels


def lesion_statistics(labels: sitk.Image) -> LesionStatistics:
    """Count and volumes of the lesions of a :func:`label_lesions` image."""
    ml = voxel_volume_mm3(labels) / 1000.0
    volumes = [float(c) * ml for c in np.bincount(sitk.GetArrayViewFromImage(labels).ravel())[1:] if c > 0]
    return LesionStatistics(count=len(volumes), total_ml=float(sum(volumes)), component_ml=volumes)


def lesion_mask(labels: sitk.Image) -> sitk.Image:
    mask = sitk.Cast(labels > 0, sitk.sitkUInt8)
    mask.CopyInformation(labels)
    return mask
