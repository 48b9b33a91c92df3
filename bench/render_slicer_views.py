"""Render what SSAE Anomaly shows in Slicer's axial view, headless, for the README.

Loads a shipped sample into a bare MRML scene, runs the shipped model through SSAEAnomalyLib
exactly as the module does, and renders Slicer's Red slice view (Slicer's own slice logic and
segmentation displayable manager):

* ``slicer_views.png``: MSLUB patient 19 at the calibrated threshold and after the user lowers
  the slider, through the slice with the most consensus-lesion voxels;
* ``clinical_raw.png``: the raw clinical FLAIR (skull, oblique, 4 mm slices) on its own grid
  with the aggregated score and mask, at the calibrated threshold, through three slices.

    python bench/render_slicer_views.py [--output-dir Resources/Screenshots]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "SSAEAnomaly")]

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
from SSAEAnomalyLib import AnomalyLogic, update_volume_node_from_image
from SSAEAnomalyLib.slice_rendering import SliceViewRenderer, headless_scene

from ssae.resources import default_model_path, sample_case_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "Resources" / "Screenshots")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    scene, app_logic = headless_scene()
    renderer = SliceViewRenderer(scene, app_logic, 480, 480)
    case = sample_case_dir()
    image = sitk.ReadImage(str(case / "flair.nii.gz"))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MSLUB patient19 FLAIR")
    update_volume_node_from_image(volume, image)
    volume.CreateDefaultDisplayNodes()
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.input_volume, params.model_path, params.device = volume, str(default_model_path()), args.device
    calibrated_rows = logic.detect()
    calibrated = params.threshold_of("aggregated")

    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "consensus_gt.nii.gz")))
    k = int(np.argmax(truth.reshape(truth.shape[0], -1).sum(axis=1)))
    offset = image.TransformIndexToPhysicalPoint((0, 0, k))[2]  # LPS and RAS share S

    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        panels.append(
            (
                renderer.save_png(Path(tmp) / "a.png", offset),
                f"calibrated threshold {calibrated:.3f}: {calibrated_rows.statistics.count} lesions, {calibrated_rows.statistics.total_ml:.1f} ml",
            )
        )
        lowered = logic.apply_threshold(calibrated * 0.6)
        panels.append(
            (
                renderer.save_png(Path(tmp) / "b.png", offset),
                f"slider at {calibrated * 0.6:.3f}: {lowered.statistics.count} lesions, {lowered.statistics.total_ml:.1f} ml",
            )
        )
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.4))
        for ax, (path, title) in zip(axes, panels):
            ax.imshow(plt.imread(path))
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(
            "SSAE Anomaly, Slicer's axial view rendered headless: aggregated score as heat overlay, segment 'Anomaly aggregated'",
            fontsize=9,
        )
        fig.tight_layout()
        args.output_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.output_dir / "slicer_views.png", dpi=100)
    print(f"wrote {args.output_dir / 'slicer_views.png'}")
    render_clinical(args.output_dir / "clinical_raw.png", args.device)


def render_clinical(output: Path, device: str) -> None:
    scene, app_logic = headless_scene()
    renderer = SliceViewRenderer(scene, app_logic, 420, 420)
    path = REPO / "Resources" / "SampleData" / "ClinicalRaw" / "patient01_study1_FLAIR.nii.gz"
    image = sitk.ReadImage(str(path))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "raw clinical FLAIR")
    update_volume_node_from_image(volume, image)
    volume.CreateDefaultDisplayNodes()
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.input_volume, params.model_path, params.device = volume, str(default_model_path()), device
    logic.detect()
    # three acquired slices through the brain (RAS S of slice centres; the volume is oblique)
    centre = [s / 2 for s in image.GetSize()]
    picks = [int(image.GetSize()[2] * f) for f in (0.45, 0.6, 0.75)]
    calibrated = params.threshold_of("aggregated")
    with tempfile.TemporaryDirectory() as tmp:
        fig, axes = plt.subplots(2, 3, figsize=(13, 9.4))
        for row, factor in enumerate((1.0, 0.6)):
            rows = logic.apply_threshold(calibrated * factor)
            for ax, k in zip(axes[row], picks):
                offset = image.TransformContinuousIndexToPhysicalPoint((centre[0], centre[1], k))[2]
                ax.imshow(plt.imread(renderer.save_png(Path(tmp) / f"{row}_{k}.png", offset)))
                ax.set_title(
                    f"acquired slice {k}; threshold {calibrated * factor:.3f}: {rows.statistics.count} lesions, {rows.statistics.total_ml:.2f} ml",
                    fontsize=8,
                )
                ax.axis("off")
        quality = logic.registration or {}
        fig.suptitle(
            "Raw clinical FLAIR (skull, oblique, 0.72x0.72x4 mm) on its own grid: aggregated score (heat) and mask (red), calibrated threshold (top) "
            f"and slider lowered (bottom); registration check {'passed' if quality.get('passed') else 'FAILED'}",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(output, dpi=100)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
