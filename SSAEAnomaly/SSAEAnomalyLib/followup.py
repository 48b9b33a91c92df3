"""SSAEAnomaly's follow-up reading on a bare MRML scene: compare the selected FLAIR with a prior
scan of the same patient, or every pair of a folder, through the detection worker.

A comparison is an ``ssae compare`` job of the module's worker (progress, Cancel, a fresh
worker after a crash, as detection). Like a detection job it carries its inputs: the two volume
nodes' IDs and names, the model and its card. Its results come into the scene on the
follow-up's grid, in one subject-hierarchy folder under the follow-up's study:

* a segmentation with two segments, *new or enlarging* (red) and *shrinking or resolved*
  (blue), the change overlay;
* the change map (noise SDs of the drift-corrected difference; positive = brighter now), with
  a diverging colour map, for those who want to see below the rule's threshold;
* the prior scan resampled onto the follow-up's grid, set as the slice views' foreground at
  opacity 0 beside the follow-up as background: the views' fade slider compares the two, voxel
  for voxel, at every position;
* the lesion-change table (status, volume at each time, centroid RAS).
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from ssae.app.processes import FollowedRun
from ssae.io.errors import SSAEError
from ssae.io.volumes import read_volume
from ssae.scoring.change import CHANGE_COLUMNS, CHANGE_LABELS, STATUSES, SUMMARY_SUFFIX

from .results import add_lesion_segmentation, fill_string_table, place_under_input_study
from .scene_ownership import oriented_image
from .scene_results import show_in_slice_views
from .volumes import update_volume_node_from_array, update_volume_node_from_image

CHANGE_COLORS = {1: (0.90, 0.10, 0.10), 2: (0.15, 0.45, 1.00)}
CHANGE_COLORMAP = "vtkMRMLColorTableNodefMRI"  # blue for negative, red-yellow for positive
PAIR_TABLE_COLUMNS = ("pair", "status", "new", "enlarging", "shrinking", "resolved", "stable", "registration_check", "warnings", "error")


@dataclass(frozen=True)
class ComparisonInputs:
    """What a comparison ran on, fixed when it starts (results are loaded against these)."""

    baseline_id: str
    baseline_name: str
    followup_id: str
    followup_name: str
    model_path: str
    card: dict[str, Any]


@dataclass
class ComparisonJob:
    """A background ``ssae compare`` run (one pair of loaded volumes, or a folder of pairs)."""

    command: FollowedRun
    workdir: Path
    output: Path
    inputs: ComparisonInputs | None = None  # None: a folder of pairs
    keep_output: bool = False

    @property
    def cohort(self) -> bool:
        """A folder of pairs (its exit code 1 means some pairs failed, the others are done)."""
        return self.inputs is None

    @property
    def input_name(self) -> str:
        return f"{self.inputs.followup_name} vs {self.inputs.baseline_name}" if self.inputs else "pairs"

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class ComparisonNodes:
    segmentation: Any
    change: Any
    baseline: Any
    table: Any
    summary: dict[str, Any]


class FollowupLogic:
    """Comparisons for an :class:`SSAEAnomalyLib.logic.AnomalyLogic` (its scene, model choice,
    adaptation, device and worker)."""

    def __init__(self, logic) -> None:
        self.logic = logic

    def _common_args(self, model_path: str, card: dict, progress_log: Path) -> list[str]:
        logic = self.logic
        args = ["--format", "nrrd", "--device", logic.parameters.device, "--progress-log", str(progress_log)]
        args += ["--adapt" if logic._adapt(card) else "--no-adapt"]
        operating_point = logic._job_operating_point(card)
        return args + (["--operating-point", operating_point] if operating_point else [])

    def start(self, baseline_volume, followup_volume=None, python: str | None = None, env: dict[str, str] | None = None) -> ComparisonJob:
        """``ssae compare`` of ``baseline_volume`` (the prior scan) and the follow-up (default:
        the panel's input volume), written to a temporary folder."""
        logic = self.logic
        followup_volume = followup_volume or logic.parameters.input_volume
        if followup_volume is None:
            raise SSAEError("select the follow-up FLAIR as the input volume")
        if baseline_volume is None:
            raise SSAEError("select the prior scan to compare with")
        if baseline_volume.GetID() == followup_volume.GetID():
            raise SSAEError("the prior scan and the follow-up are the same volume; select an earlier scan of this patient")
        baseline, followup = logic._volume_image(baseline_volume), logic._volume_image(followup_volume)
        model_path, card = logic._model()
        workdir = Path(tempfile.mkdtemp(prefix="ssae-compare-"))
        try:
            sitk.WriteImage(baseline, str(workdir / "baseline.nrrd"))
            sitk.WriteImage(followup, str(workdir / "followup.nrrd"))
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        args = ["compare", model_path, str(workdir / "baseline.nrrd"), str(workdir / "followup.nrrd"), "-o", str(workdir / "out")]
        args += self._common_args(model_path, card, workdir / "progress.jsonl")
        inputs = ComparisonInputs(
            baseline_volume.GetID(), baseline_volume.GetName(), followup_volume.GetID(), followup_volume.GetName(), model_path, card
        )
        command = logic._submit(args, workdir, python, env)
        return ComparisonJob(command=command, workdir=workdir, output=workdir / "out", inputs=inputs)

    def start_pairs(
        self,
        source: str | Path,
        output_folder: str | Path,
        resume: bool = False,
        python: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ComparisonJob:
        """``ssae compare`` over a CSV of pairs or a folder of pair folders; results stay in
        ``output_folder`` (one folder per pair and ``comparisons.csv``). A folder that holds an
        earlier run's results is refused unless ``resume`` (``--resume``: its finished pairs are
        kept, the others compared)."""
        source, output = Path(source), Path(output_folder)
        if not source.exists():
            raise SSAEError(f"not found: {source}")
        if not resume and ((output / "comparisons.csv").exists() or finished_pairs(output)):
            raise SSAEError(f"{output} holds the results of an earlier run; continue that run or choose another folder")
        model_path, card = self.logic._model()
        workdir = Path(tempfile.mkdtemp(prefix="ssae-pairs-"))
        args = ["compare", model_path, str(source), "-o", str(output), *self._common_args(model_path, card, workdir / "progress.jsonl")]
        command = self.logic._submit([*args, "--resume"] if resume else args, workdir, python, env)
        return ComparisonJob(command=command, workdir=workdir, output=output, keep_output=True)

    def load(self, job: ComparisonJob) -> ComparisonNodes:
        """A finished single-pair job into the scene, against the job's own volumes."""
        try:
            if job.inputs is None:
                raise SSAEError("a folder of pairs has no single result to load; see its comparisons table")
            return self._show(job.inputs, job.output, "followup")
        finally:
            job.cleanup()

    def load_pairs(self, job: ComparisonJob) -> list[dict[str, str]]:
        """The table of a folder of pairs into the scene; returns its rows."""
        try:
            table = job.output / "comparisons.csv"
            if not table.exists():
                raise SSAEError("the comparison of the pairs wrote no table")
            with table.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            node = self.logic.scene.AddNewNodeByClass("vtkMRMLTableNode", self.logic.scene.GenerateUniqueName("SSAE comparisons"))
            fill_string_table(node, PAIR_TABLE_COLUMNS, rows)
            return rows
        finally:
            job.cleanup()

    def _show(self, inputs: ComparisonInputs, folder: Path, stem: str) -> ComparisonNodes:
        scene = self.logic.scene
        followup = scene.GetNodeByID(inputs.followup_id)
        if followup is None or followup.GetName() != inputs.followup_name:
            raise SSAEError(f"the follow-up {inputs.followup_name!r} is no longer in the scene; the comparison was not loaded")
        summary = _read_summary(folder / f"{stem}_change_summary.json")
        change = read_volume(folder / f"{stem}_change.nrrd", "change map", allow_constant=True)
        labels = read_volume(folder / f"{stem}_change_mask.nrrd", "change mask", allow_constant=True)
        baseline = read_volume(folder / f"{stem}_baseline_on_followup.nrrd", "prior scan", allow_constant=True)
        name = inputs.followup_name
        change_node = scene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{name} change since {inputs.baseline_name}")
        )
        update_volume_node_from_image(change_node, change)
        change_node.CreateDefaultDisplayNodes()
        z = float(summary.get("change_rule", {}).get("z", 2.5))
        display = change_node.GetDisplayNode()
        display.SetAndObserveColorNodeID(CHANGE_COLORMAP)
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(-3 * z, 3 * z)
        baseline_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{inputs.baseline_name} on {name}"))
        update_volume_node_from_image(baseline_node, baseline)
        baseline_node.CreateDefaultDisplayNodes()
        segmentation = add_lesion_segmentation(scene, followup, f"{name} changes since {inputs.baseline_name}")
        _set_change_segments(segmentation, followup, sitk.GetArrayFromImage(labels))
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} lesion changes"))
        with (folder / f"{stem}_changes.csv").open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        fill_string_table(table, CHANGE_COLUMNS, rows)
        for key in STATUSES:
            table.SetAttribute(f"SSAE.{key}", str(summary.get(key, 0)))
        place_under_input_study(
            scene, followup, [segmentation, change_node, baseline_node, table], f"{name} SSAE changes since {inputs.baseline_name}"
        )
        show_in_slice_views(scene, followup, baseline_node, opacity=0.0)
        return ComparisonNodes(segmentation, change_node, baseline_node, table, summary)


def _set_change_segments(segmentation_node, reference, labels: np.ndarray) -> None:
    segmentation = segmentation_node.GetSegmentation()
    for value, title in CHANGE_LABELS.items():
        segment_id = f"SSAE_change_{value}"
        segmentation.AddEmptySegment(segment_id, title.capitalize(), CHANGE_COLORS[value])
        labelmap = slicer.vtkMRMLLabelMapVolumeNode()
        labelmap.CopyOrientation(reference)
        update_volume_node_from_array(labelmap, (labels == value).astype(np.uint8))
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            oriented_image(labelmap), segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        )


def _read_summary(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SSAEError("the comparison process wrote no results")
    return json.loads(path.read_text(encoding="utf-8"))


def finished_pairs(output_folder: str | Path) -> list[str]:
    """The pair folders in ``output_folder`` that hold a comparison's summary (an earlier run's
    results, finished or not: ``ssae compare --resume`` checks each pair's files)."""
    folder = Path(output_folder)
    if not folder.is_dir():
        return []
    return sorted(sub.name for sub in folder.iterdir() if sub.is_dir() and any(sub.glob(f"*{SUMMARY_SUFFIX}")))
