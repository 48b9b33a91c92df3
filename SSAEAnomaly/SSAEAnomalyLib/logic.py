"""SSAEAnomaly's logic on a bare MRML scene: detect, show, threshold, export.

No Qt and no widgets: the module's widget, the Slicer self-test, the Python console and the
pytest suite (on ``slicer-core``) all drive this class. Detection runs either in this process
(:meth:`AnomalyLogic.detect`, for scripts and tests) or as a background ``ssae detect`` process
(:meth:`AnomalyLogic.start_detection` / :meth:`AnomalyLogic.load_detection`, for the GUI).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
import slicer

from ssae.background import BackgroundCommand
from ssae.checkpoint import read_model_card
from ssae.detection import Detector
from ssae.errors import SSAEError
from ssae.volume_io import atomic_path, check_volume, read_volume

from .parameters import AnomalyParameters
from .results import (
    LesionRows,
    add_atlas_transform,
    add_lesion_segmentation,
    add_score_volume,
    ensure_segment,
    fill_lesion_table,
    map_title,
    segment_id_of,
    segment_name,
    style_score_volume,
    update_segment,
)
from .volumes import array_from_volume_node, image_from_volume_node

LABELMAP_SUFFIXES = (".nrrd", ".nii.gz", ".nii")


@dataclass
class DetectionJob:
    """A background ``ssae detect`` run and the folder it works in."""

    command: BackgroundCommand
    workdir: Path
    input_name: str

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


class AnomalyLogic:
    """Everything SSAEAnomaly does to a scene."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self._detectors: dict[tuple[str, str], Detector] = {}
        self.registration: dict | None = None  # quality report of the last atlas registration, if any

    @property
    def parameters(self) -> AnomalyParameters:
        return AnomalyParameters.of_scene(self.scene)

    # model ------------------------------------------------------------------------------------
    @staticmethod
    def default_model_path() -> str:
        """The model shipped in the extension's Resources folder ('' if there is none)."""
        from ssae.resources import default_model_path

        try:
            return str(default_model_path())
        except SSAEError:
            return ""

    @staticmethod
    def model_summary(path: str) -> str:
        """What the "Model" section shows: training data, input size, levels, threshold."""
        card = read_model_card(path)
        data = card.get("training", {}).get("data", {})
        lines = [
            f"{card['name']} ({card['parameters']:,} parameters), expects {card.get('modality', 'FLAIR')}",
            f"Input: {card['preprocessing']['size']} px slices, {card['architecture']['levels']} pyramid level(s); aggregated levels {card['aggregated_levels']}",
            f"Trained on: {data.get('source', 'unknown')} ({data.get('subjects', '?')} subjects, {data.get('train_slices', '?')} slices)",
            f"Calibrated threshold: {card['threshold']['value']:.4g} ({card['threshold']['method']})",
        ]
        return "\n".join(lines)

    def _detector(self, model_path: str, device: str) -> Detector:
        key = (str(Path(model_path).resolve()), device)
        if key not in self._detectors:
            self._detectors = {key: Detector.from_file(model_path, device)}
        return self._detectors[key]

    # inputs -------------------------------------------------------------------------------------
    def _inputs(self) -> tuple[object, sitk.Image, sitk.Image | None, str]:
        params = self.parameters
        volume = params.input_volume
        if volume is None:
            raise SSAEError("select an input FLAIR volume")
        image = image_from_volume_node(volume)
        check_volume(image, f"volume {volume.GetName()}")
        mask = None
        if params.brain_mask is not None:
            mask = sitk.Cast(image_from_volume_node(params.brain_mask) > 0, sitk.sitkUInt8)
            if mask.GetSize() != image.GetSize():
                raise SSAEError(f"brain mask {params.brain_mask.GetName()} does not have the input volume's geometry")
            mask.CopyInformation(image)
        model_path = params.model_path or self.default_model_path()
        if not model_path:
            raise SSAEError("select a model file")
        read_model_card(model_path)  # refuses foreign or damaged files before any work
        return volume, image, mask, model_path

    # detection in this process ------------------------------------------------------------------
    def detect(
        self,
        replace_previous: bool = False,
        progress: Callable[[float, str], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> LesionRows:
        """Run the model on the input volume and show the results (blocks until done)."""
        volume, image, mask, model_path = self._inputs()
        detector = self._detector(model_path, self.parameters.device)
        result = detector.detect(image, mask, scales=True, progress=progress, should_cancel=should_cancel)
        maps = {"aggregated": result.aggregated, **{f"level{k}": img for k, img in result.scales.items()}}
        alignment = result.prepared.alignment
        self.registration = alignment.quality.to_dict() if alignment else None
        rows = self.show_results(volume, maps, model_path, replace_previous)
        if alignment is not None:
            add_atlas_transform(self.scene, alignment.transform, f"{volume.GetName()} atlas to scan")
        return rows

    # detection in a background process ----------------------------------------------------------
    def start_detection(self, python: str | None = None, env: dict[str, str] | None = None) -> DetectionJob:
        """Write the input to a temporary folder and start ``ssae detect`` on it."""
        volume, image, mask, model_path = self._inputs()
        workdir = Path(tempfile.mkdtemp(prefix="ssae-detect-"))
        sitk.WriteImage(image, str(workdir / "input.nrrd"))
        args = [
            "detect",
            model_path,
            str(workdir / "input.nrrd"),
            "-o",
            str(workdir / "out"),
            "--format",
            "nrrd",
            "--device",
            self.parameters.device,
            "--progress-log",
            str(workdir / "progress.jsonl"),
        ]
        if mask is not None:
            sitk.WriteImage(mask, str(workdir / "brain_mask.nrrd"))
            args += ["--brain-mask", str(workdir / "brain_mask.nrrd")]
        command = BackgroundCommand(args, python=python, env=env, progress_log=workdir / "progress.jsonl")
        command.start()
        return DetectionJob(command=command, workdir=workdir, input_name=volume.GetName())

    def load_detection(self, job: DetectionJob, replace_previous: bool = False) -> LesionRows:
        """Load a finished background detection into the scene and remove its folder."""
        try:
            out = job.workdir / "out"
            files = [out / "input_aggregated.nrrd", *sorted(out.glob("input_level*.nrrd"))]
            if not files[0].exists():
                raise SSAEError("the detection process wrote no results")
            maps = {p.name[len("input_") : -len(".nrrd")]: read_volume(p, "result") for p in files}
            summary = json.loads((out / "input_summary.json").read_text(encoding="utf-8"))
            self.registration = summary.get("registration")
            volume, _, _, model_path = self._inputs()
            rows = self.show_results(volume, maps, model_path, replace_previous)
            transform = out / "input_atlas_to_scan.tfm"
            if transform.exists():
                add_atlas_transform(self.scene, sitk.ReadTransform(str(transform)), f"{volume.GetName()} atlas to scan")
            return rows
        finally:
            job.cleanup()

    # results in the scene --------------------------------------------------------------------------
    def show_results(self, volume, maps: dict[str, sitk.Image], model_path: str, replace_previous: bool = False) -> LesionRows:
        """Score volumes, lesion segmentation and table for ``maps`` (name -> image on the input grid)."""
        params = self.parameters
        if replace_previous:
            self.remove_results()
        card = read_model_card(model_path)
        sizes = {f"level{k}": card["architecture"]["size"] >> k for k in range(card["architecture"]["levels"])}
        thresholds = {"aggregated": float(card["threshold"]["value"]), **{k: float(v) for k, v in card.get("level_thresholds", {}).items()}}
        segmentation = add_lesion_segmentation(self.scene, volume, f"{volume.GetName()} anomalies")
        params.segmentation = segmentation
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName(f"{volume.GetName()} lesions"))
        params.statistics_table = table
        for name in list(params.result_maps()):
            params.set_result_volume(name, None)
        rows = None
        for name, image in maps.items():
            threshold = thresholds.get(name, thresholds["aggregated"])
            node = add_score_volume(self.scene, volume, image, f"{volume.GetName()} anomaly {map_title(name, sizes)}", threshold)
            node.SetAttribute("SSAE.calibratedThreshold", repr(threshold))
            params.set_result_volume(name, node)
            params.set_threshold_of(name, threshold)
            segment_id = ensure_segment(segmentation, name, segment_name(name, sizes))
            lesions = update_segment(segmentation, segment_id, node, threshold, params.min_lesion_mm3)
            if name == params.score_map or (rows is None and name == "aggregated"):
                rows = lesions
        if params.score_map not in maps:
            params.score_map = "aggregated"
        assert rows is not None
        fill_lesion_table(table, rows)
        self._show_only_selected_segment()
        show_in_slice_views(self.scene, volume, params.result_volume(params.score_map))
        return rows

    def _show_only_selected_segment(self) -> None:
        """Overlapping segments of every scale would hide each other: show the selected map's."""
        params = self.parameters
        display = params.segmentation.GetDisplayNode()
        for name in params.result_maps():
            display.SetSegmentVisibility(segment_id_of(name), name == params.score_map)

    def remove_results(self) -> None:
        """Remove the nodes of the last detection (only when the user asked to replace them)."""
        params = self.parameters
        for node in [params.result_volume(n) for n in params.result_maps()] + [params.segmentation, params.statistics_table]:
            if node is not None:
                self.scene.RemoveNode(node)

    def threshold_range(self, map_name: str | None = None) -> tuple[float, float]:
        """Slider range for a map: 0 to its maximum score (at least 1.5x its calibrated threshold)."""
        params = self.parameters
        node = params.result_volume(map_name or params.score_map)
        if node is None:
            raise SSAEError("run the detection first")
        top = float(array_from_volume_node(node).max())
        calibrated = float(node.GetAttribute("SSAE.calibratedThreshold") or 0.0)
        return 0.0, max(top, 1.5 * calibrated, 1e-6)

    def apply_threshold(self, threshold: float | None = None, map_name: str | None = None) -> LesionRows:
        """Recompute one map's segment and the lesion table from its stored score volume."""
        params = self.parameters
        name = map_name or params.score_map
        node, segmentation, table = params.result_volume(name), params.segmentation, params.statistics_table
        if node is None or segmentation is None or table is None:
            raise SSAEError("run the detection first")
        if threshold is not None:
            params.set_threshold_of(name, threshold)
        value = params.threshold_of(name)
        style_score_volume(node, value)
        rows = update_segment(segmentation, ensure_segment(segmentation, name, segment_name(name)), node, value, params.min_lesion_mm3)
        if name == params.score_map:
            fill_lesion_table(table, rows)
            self._show_only_selected_segment()
        return rows

    # export ---------------------------------------------------------------------------------------------
    def export_labelmap(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """The current mask (the segment of the map that drives it) as a labelmap on the input grid."""
        params = self.parameters
        segmentation, volume = params.segmentation, params.input_volume
        if segmentation is None or volume is None:
            raise SSAEError("run the detection first")
        path = Path(path)
        if not path.name.lower().endswith(LABELMAP_SUFFIXES):
            raise SSAEError(f"labelmap files end with {', '.join(LABELMAP_SUFFIXES)}")
        labelmap = slicer.vtkMRMLLabelMapVolumeNode()
        self.scene.AddNode(labelmap)
        try:
            ids = _string_array([ensure_segment(segmentation, params.score_map, segment_name(params.score_map))])
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume):
                raise SSAEError("exporting the segment to a labelmap failed")
            return _write_with_storage_node(slicer.vtkMRMLVolumeArchetypeStorageNode(), labelmap, path, overwrite, self.scene)
        finally:
            self.scene.RemoveNode(labelmap)

    def export_segmentation(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Every segment (one per map) as a ``.seg.nrrd`` on the input grid."""
        params = self.parameters
        if params.segmentation is None:
            raise SSAEError("run the detection first")
        path = Path(path)
        if not path.name.lower().endswith(".seg.nrrd"):
            raise SSAEError("segmentation files end with .seg.nrrd")
        return _write_with_storage_node(slicer.vtkMRMLSegmentationStorageNode(), params.segmentation, path, overwrite, self.scene)


def _string_array(values: list[str]):
    import vtk

    array = vtk.vtkStringArray()
    for value in values:
        array.InsertNextValue(value)
    return array


def _write_with_storage_node(storage, node, path: Path, overwrite: bool, scene) -> Path:
    """Write through a Slicer storage node into a temporary sibling, then rename (atomic)."""
    with atomic_path(path, overwrite) as tmp:  # tmp keeps the extension that selects the format
        tmp.unlink()  # the storage node writes the file itself
        scene.AddNode(storage)
        try:
            storage.SetFileName(str(tmp))
            if not storage.WriteData(node):
                raise SSAEError(f"cannot write {path}")
        finally:
            scene.RemoveNode(storage)
    return path


def show_in_slice_views(scene, background, foreground, opacity: float = 0.6) -> None:
    """Input as background and a score map as foreground in every slice view of the scene."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(opacity)
