"""Render what SSAE Anomaly shows in Slicer's axial view, headless, for the README.

Loads a shipped sample into a bare MRML scene, runs the shipped model through SSAEAnomalyLib
exactly as the module does, and renders Slicer's Red slice view (Slicer's own slice logic and
segmentation displayable manager):

* ``slicer_views.png``: MSLUB patient 19 at the three label-free operating points (balanced, the
  default; sensitive; specific), with what each threshold means on healthy brains, through the
  slice with the most consensus-lesion voxels;
* ``clinical_raw.png``: the raw clinical FLAIR (skull, oblique, 4 mm slices) on its own grid
  with the default score map and mask, at the default operating point and with the slider lowered;
* ``followup.png``: *Compare with a prior scan* on the shipped follow-up pair (raw clinical
  FLAIRs of one MS patient, months apart): the prior scan on the follow-up's grid, the
  follow-up, and the follow-up with the change segments, through the slice with most change;
* ``batch_results.png``: one background batch run over three loaded volumes (both MSLUB
  patients and the raw clinical scan), each volume's own results in its axial view, and the
  cohort table the module shows.

Every run uses the model card's defaults, as a user clicking "Detect anomalies" gets them
(scanner adaptation, the default score map and its label-free threshold).

    python bench/render_slicer_views.py [--output-dir Resources/Screenshots]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "SSAEAnomaly"), str(REPO / "Testing")]

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
import vtk
from headless_slicer import SliceViewRenderer, headless_scene
from SSAEAnomalyLib import AnomalyLogic, update_volume_node_from_image
from SSAEAnomalyLib.scene_results import show_in_slice_views
from SSAEAnomalyLib.volumes import array_from_volume_node

from ssae.io.resources import default_model_path, sample_case_dir


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
    logic.detect()
    chosen = params.score_map

    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "consensus_gt.nii.gz")))
    k = int(np.argmax(truth.reshape(truth.shape[0], -1).sum(axis=1)))
    offset = image.TransformIndexToPhysicalPoint((0, 0, k))[2]  # LPS and RAS share S

    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for point in ("balanced", "sensitive", "specific"):
            rows = logic.apply_operating_point(point)
            threshold = params.threshold_of(chosen)
            meaning = logic.threshold_meaning()
            panels.append(
                (
                    renderer.save_png(Path(tmp) / f"{point}.png", offset),
                    f"{point}{' (default)' if point == 'balanced' else ''}, threshold {threshold:.3f}: "
                    f"{rows.statistics.count} lesions, {rows.statistics.total_ml:.1f} ml\n" + "\n".join(textwrap.wrap(meaning, 62)),
                )
            )
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 6.8))
        for ax, (path, title) in zip(axes, panels):
            ax.imshow(plt.imread(path))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        truth_ml = float(truth.sum()) * float(np.prod(image.GetSpacing())) / 1000.0
        fig.suptitle(
            f"SSAE Anomaly, Slicer's axial view rendered headless: the {chosen} map as heat overlay and the mask segment at each "
            f"label-free operating point, after scanner adaptation (consensus lesions: {truth_ml:.1f} ml)",
            fontsize=9,
        )
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        args.output_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.output_dir / "slicer_views.png", dpi=100)
    print(f"wrote {args.output_dir / 'slicer_views.png'}")
    render_clinical(args.output_dir / "clinical_raw.png", args.device)
    render_batch(args.output_dir / "batch_results.png", args.device)
    render_followup(args.output_dir / "followup.png", args.device)


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
    chosen = params.score_map
    calibrated = params.threshold_of(chosen)
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
            f"Raw clinical FLAIR (skull, oblique, 0.72x0.72x4 mm) on its own grid: {chosen} map (heat) and mask at the default operating point (top) "
            f"and slider lowered (bottom); registration check {'passed' if quality.get('passed') else 'FAILED'}",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(output, dpi=100)
    print(f"wrote {output}")


def render_batch(output: Path, device: str) -> None:
    """The batch section's result: every loaded volume with its own maps, and the cohort table."""
    from ssae.app.processes import wait_for

    scene, app_logic = headless_scene()
    renderer = SliceViewRenderer(scene, app_logic, 360, 360)
    sources = {
        "MSLUB patient07": sample_case_dir().parent / "patient07" / "flair.nii.gz",
        "MSLUB patient19": sample_case_dir() / "flair.nii.gz",
        "clinical FLAIR": REPO / "Resources" / "SampleData" / "ClinicalRaw" / "patient01_study1_FLAIR.nii.gz",
    }
    volumes, images = [], []
    for name, path in sources.items():
        image = sitk.ReadImage(str(path))
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        update_volume_node_from_image(volume, image)
        volume.CreateDefaultDisplayNodes()
        volumes.append(volume)
        images.append(image)
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.model_path, params.device = str(default_model_path()), device
    job = logic.start_batch_detection(volumes=volumes)
    if wait_for(job.command, timeout_s=900) != 0:
        raise SystemExit("\n".join(job.command.new_lines()))
    rows = logic.load_batch(job)
    chosen = params.score_map
    segmentations = list(scene.GetNodesByClass("vtkMRMLSegmentationNode"))
    with tempfile.TemporaryDirectory() as tmp:
        fig = plt.figure(figsize=(12, 6.4))
        grid = fig.add_gridspec(2, 3, height_ratios=[4, 1.3])
        for column, (volume, image) in enumerate(zip(volumes, images)):
            score = next(
                n
                for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
                if n.GetName().startswith(f"{volume.GetName()} anomaly")
                and n.GetAttribute("SSAE.calibratedThreshold")
                and chosen in n.GetName().lower()
            )
            show_in_slice_views(scene, volume, score)
            for segmentation in segmentations:  # only this volume's lesions
                segmentation.GetDisplayNode().SetVisibility(segmentation.GetName().startswith(volume.GetName()))
            mask = array_from_volume_node(score) > float(score.GetAttribute("SSAE.calibratedThreshold"))
            k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1))) if mask.any() else image.GetSize()[2] // 2
            centre = [s / 2 for s in image.GetSize()]
            offset = image.TransformContinuousIndexToPhysicalPoint((centre[0], centre[1], k))[2]
            ax = fig.add_subplot(grid[0, column])
            ax.imshow(plt.imread(renderer.save_png(Path(tmp) / f"{column}.png", offset)))
            ax.set_title(f"{volume.GetName()} (slice {k})", fontsize=9)
            ax.axis("off")
        columns = ["volume", "status", "lesion_count", "total_volume_ml", "threshold", "adapted", "registration_check"]
        names = {f"scan{index + 1:03d}": volume.GetName() for index, volume in enumerate(volumes)}
        cells = [[names.get(row["case"], row["case"]) if c == "volume" else row.get(c, "") for c in columns] for row in rows]
        ax = fig.add_subplot(grid[1, :])
        ax.axis("off")
        ax.table(cellText=cells, colLabels=columns, loc="center", fontsize=9).scale(1, 1.3)
        fig.suptitle(
            f"SSAE Anomaly batch: three loaded volumes in one background run, each with its own {chosen} map and lesion segment; the cohort table",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(output, dpi=100)
    print(f"wrote {output}")


def render_followup(output: Path, device: str) -> None:
    """The follow-up reading as Slicer draws it: prior (on the follow-up grid), follow-up, changes."""
    from ssae.app.processes import wait_for

    scene, app_logic = headless_scene()
    renderer = SliceViewRenderer(scene, app_logic, 420, 420)
    raw = REPO / "Resources" / "SampleData" / "ClinicalRaw"
    volumes = {}
    for key, name in (("study1", "FLAIR 1 (prior)"), ("study2", "FLAIR 2 (follow-up)")):
        image = sitk.ReadImage(str(raw / f"patient01_{key}_FLAIR.nii.gz"))
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        update_volume_node_from_image(volume, image)
        volume.CreateDefaultDisplayNodes()
        volumes[key] = (volume, image)
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.input_volume, params.model_path, params.device = volumes["study2"][0], str(default_model_path()), device
    try:
        job = logic.followup.start(volumes["study1"][0])
        if wait_for(job.command, timeout_s=900) != 0:
            raise SystemExit("\n".join(job.command.new_lines()))
        nodes = logic.followup.load(job)
    finally:
        logic.close_worker(kill=True)
    followup, image = volumes["study2"]
    segmentation = nodes.segmentation
    changed = np.zeros(array_from_volume_node(followup).shape, dtype=bool)
    for segment_id in ("SSAE_change_1", "SSAE_change_2"):
        changed |= slicer_segment_array(segmentation, segment_id, followup)
    k = int(np.argmax(changed.reshape(changed.shape[0], -1).sum(axis=1)))
    centre = [s / 2 for s in image.GetSize()]
    offset = image.TransformContinuousIndexToPhysicalPoint((centre[0], centre[1], k))[2]
    composite = scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetItemAsObject(0)
    display = segmentation.GetDisplayNode()
    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for title, opacity, show in (
            (f"prior scan on the follow-up's grid ({nodes.baseline.GetName()})", 1.0, False),
            (f"follow-up ({followup.GetName()})", 0.0, False),
            ("follow-up with the changes: red new or enlarging, blue shrinking or resolved", 0.0, True),
        ):
            composite.SetForegroundOpacity(opacity)
            display.SetVisibility(show)
            panels.append((renderer.save_png(Path(tmp) / f"{len(panels)}.png", offset), title))
        fig, axes = plt.subplots(1, 3, figsize=(15, 5.6))
        for ax, (path, title) in zip(axes, panels):
            ax.imshow(plt.imread(path))
            ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
            ax.axis("off")
        s = nodes.summary
        fig.suptitle(
            f"SSAE Anomaly, Compare with a prior scan (Slicer's axial view, headless), acquired slice {k}: {s['new']} new, "
            f"{s['enlarging']} enlarging, {s['shrinking']} shrinking, {s['resolved']} resolved lesion(s); registration correlation "
            f"{s['registration']['correlation']:.2f}",
            fontsize=9,
        )
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        fig.savefig(output, dpi=100)
    print(f"wrote {output}")


def slicer_segment_array(segmentation_node, segment_id: str, reference) -> np.ndarray:
    """A segment as a boolean array on ``reference``'s grid ([z, y, x])."""
    import slicer

    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    labelmap.CopyOrientation(reference)
    segmentation_node.GetScene().AddNode(labelmap)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference)
    values = array_from_volume_node(labelmap) > 0
    segmentation_node.GetScene().RemoveNode(labelmap)
    return values


if __name__ == "__main__":
    main()
