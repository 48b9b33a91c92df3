"""SSAEAnomaly's logic on a bare MRML scene: detect, show, threshold, export, batch.

No Qt and no widgets: the module's widget, the Slicer self-test, the Python console and the
pytest suite (on ``slicer-core``) all drive this class. Importing it needs neither PyTorch nor
safetensors (a factory Slicer must show the panel and offer to install them); the deep-learning
parts are imported where a detection runs in this process.

Detection runs either here (:meth:`AnomalyLogic.detect`, for scripts and tests) or as an
``ssae detect`` job in a background worker process (:meth:`AnomalyLogic.start_detection` /
:meth:`AnomalyLogic.load_detection`, for the GUI). The worker (:class:`ssae.app.worker`) stays up
between jobs with PyTorch, the atlas and the model loaded, so only the first detection of a
session pays the start-up; if it dies, the next job starts a fresh one. A background job carries its own inputs
(:mod:`.jobs`): its results are named after, and attached to, the volume it processed, with the
thresholds of the model it ran, whatever the panel shows when it ends. Several volumes or a
folder of scans run as one cohort job (:meth:`AnomalyLogic.start_batch_detection`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk
import slicer
import vtk

from ssae.app.processes import FollowedRun
from ssae.app.worker_client import DetectionWorker
from ssae.io.errors import SSAEError
from ssae.io.model_file import card_thresholds, read_card
from ssae.io.volumes import check_volume, read_volume
from ssae.io.writing import atomic_path, write_text
from ssae.models.card_text import describe_card
from ssae.scoring.lesions import LesionTable, lesion_rows_csv
from ssae.scoring.maps import map_order, map_title
from ssae.scoring.operating_points import HealthyTail, card_mask_rule, healthy_tail, mask_rule, operating_points_from_card

from .followup import FollowupLogic
from .jobs import DetectionJob, JobInputs, ScanInput
from .parameters import AnomalyParameters
from .results import (
    add_atlas_transform,
    add_lesion_segmentation,
    add_score_volume,
    ensure_segment,
    fill_lesion_table,
    move_into_folder,
    place_under_input_study,
    segment_id_of,
    segment_name,
    style_score_volume,
    update_segment,
)
from .volumes import array_from_volume_node, image_from_volume_node

LABELMAP_SUFFIXES = (".nrrd", ".nii.gz", ".nii")


def level_sizes(card: dict) -> dict[str, int]:
    return {f"level{k}": card["architecture"]["size"] >> k for k in range(card["architecture"]["levels"])}


class AnomalyLogic:
    """Everything SSAEAnomaly does to a scene.

    ``scene`` defaults to the application's scene. The constructor is cooperative (it calls
    ``super().__init__()`` and takes no other argument), as Slicer's
    ``ScriptedLoadableModuleLogic`` is: ``class SSAEAnomalyLogic(ScriptedLoadableModuleLogic,
    AnomalyLogic)`` reaches this ``__init__`` through the base's ``super().__init__()`` call.
    """

    def __init__(self, scene=None) -> None:
        super().__init__()
        self.scene = scene if scene is not None else slicer.mrmlScene
        self._detectors: dict[tuple[str, str], object] = {}
        self._card_cache: dict[tuple[str, float], dict] = {}
        self.registration: dict | None = None  # quality report of the last atlas registration, if any
        self.worker: DetectionWorker | None = None  # runs the background jobs (see the module doc)
        self.followup = FollowupLogic(self)  # comparisons with a prior scan (.followup)

    @property
    def parameters(self) -> AnomalyParameters:
        return AnomalyParameters.of_scene(self.scene)

    # model ------------------------------------------------------------------------------------
    @staticmethod
    def default_model_path() -> str:
        """The model shipped in the extension's Resources folder ('' if there is none)."""
        from ssae.io.resources import default_model_path

        try:
            return str(default_model_path())
        except SSAEError:
            return ""

    def model_card(self, path: str) -> dict:
        """The verified card of a model file, read once per file version (the panel asks often)."""
        key = (str(Path(path).resolve()), Path(path).stat().st_mtime if Path(path).exists() else 0.0)
        if key not in self._card_cache:
            self._card_cache = {key: read_card(path)}
        return self._card_cache[key]

    def model_summary(self, path: str) -> str:
        """What the "Model" section shows: the model card, for people."""
        return describe_card(self.model_card(path))

    def adapt_by_default(self, card: dict) -> bool:
        adaptation = card.get("adaptation") or {}
        return bool(adaptation.get("enabled"))

    def _adapt(self, card: dict) -> bool:
        choice = self.parameters.adapt
        return self.adapt_by_default(card) if choice == "model" else choice == "on"

    # inputs -------------------------------------------------------------------------------------
    def _model(self) -> tuple[str, dict]:
        model_path = self.parameters.model_path or self.default_model_path()
        if not model_path:
            raise SSAEError("select a model file")
        return model_path, self.model_card(model_path)  # refuses foreign or damaged files before any work

    def _volume_image(self, volume) -> sitk.Image:
        image = image_from_volume_node(volume)
        check_volume(image, f"volume {volume.GetName()}")
        return image

    def _inputs(self) -> tuple[object, sitk.Image, sitk.Image | None, str, dict]:
        params = self.parameters
        volume = params.input_volume
        if volume is None:
            raise SSAEError("select an input FLAIR volume")
        image = self._volume_image(volume)
        mask = None
        if params.brain_mask is not None:
            mask = sitk.Cast(image_from_volume_node(params.brain_mask) > 0, sitk.sitkUInt8)
            if mask.GetSize() != image.GetSize():
                raise SSAEError(f"brain mask {params.brain_mask.GetName()} does not have the input volume's geometry")
            mask.CopyInformation(image)
        model_path, card = self._model()
        return volume, image, mask, model_path, card

    # detection in this process ------------------------------------------------------------------
    def detect(
        self,
        replace_previous: bool = False,
        progress: Callable[[float, str], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> LesionTable:
        """Run the model on the input volume and show the results (blocks until done)."""
        volume, image, mask, model_path, card = self._inputs()
        detector = self._detector(model_path, self.parameters.device)
        adapt = self._adapt(card)
        adaptation = None
        if adapt:
            from ssae.training.defaults import DEFAULT_ADAPTATION

            adaptation = detector.card.adaptation.settings if detector.card.adaptation else DEFAULT_ADAPTATION
        operating_point = self._job_operating_point(card)
        result = detector.detect(
            image,
            mask,
            scales=True,
            progress=progress,
            should_cancel=should_cancel,
            adaptation=adaptation,
            operating_point=operating_point or None,
        )
        alignment = result.prepared.alignment
        self.registration = alignment.quality.to_dict() if alignment else None
        lesions = self.show_results(volume, result.maps, card, adapt, replace_previous, None, result.brain_ml, operating_point)
        if alignment is not None:
            self._add_transform(volume, alignment.transform)
        return lesions

    def _detector(self, model_path: str, device: str):
        from ssae.detection.detector import Detector  # PyTorch is needed from here on

        key = (str(Path(model_path).resolve()), device)
        if key not in self._detectors:
            self._detectors = {key: Detector.from_file(model_path, device)}
        return self._detectors[key]

    # detection in a background process ----------------------------------------------------------
    def _background(self, python: str | None, env: dict[str, str] | None) -> DetectionWorker:
        """The worker for ``python`` and ``env``, started on first use."""
        wanted = DetectionWorker(python, env)
        if self.worker is None or (self.worker.command, self.worker.env) != (wanted.command, wanted.env):
            self.close_worker(kill=False)
            self.worker = wanted
        return self.worker

    def warm_worker(self, python: str | None = None, env: dict[str, str] | None = None) -> None:
        """Start the worker and load the selected model into it, so that the first detection
        does not wait for the start-up either (the module does this when it is opened)."""
        model_path = self.parameters.model_path or self.default_model_path()
        if model_path and Path(model_path).is_file():
            self._background(python, env).warm(model_path, self.parameters.device)

    def close_worker(self, kill: bool = False) -> None:
        """End the worker: at once (``kill``), or after its running job has stopped."""
        if self.worker is not None:
            if kill:
                self.worker.kill()
            else:
                self.worker.stop_in_background()
            self.worker = None

    def _submit(self, args: list[str], workdir: Path, python: str | None, env: dict[str, str] | None) -> FollowedRun:
        """The job in the worker; a refused job (the worker is busy) leaves no temporary folder."""
        try:
            return self._background(python, env).submit(args, workdir / "progress.jsonl")
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def _command_args(self, inputs: JobInputs, source: Path, output: Path, progress_log: Path) -> list[str]:
        args = ["detect", inputs.model_path, str(source), "-o", str(output), "--format", "nrrd", "--device", inputs.device]
        args += ["--progress-log", str(progress_log), "--adapt" if inputs.adapt else "--no-adapt"]
        if inputs.score_map:
            args += ["--score-map", inputs.score_map]
        if inputs.operating_point:
            args += ["--operating-point", inputs.operating_point]
        return args

    def start_detection(self, python: str | None = None, env: dict[str, str] | None = None) -> DetectionJob:
        """Write the input to a temporary folder and start ``ssae detect`` on it."""
        volume, image, mask, model_path, card = self._inputs()
        workdir = Path(tempfile.mkdtemp(prefix="ssae-detect-"))
        sitk.WriteImage(image, str(workdir / "input.nrrd"))
        mask_path = None
        if mask is not None:
            mask_path = workdir / "brain_mask.nrrd"
            sitk.WriteImage(mask, str(mask_path))
        scan = ScanInput("input", workdir / "input.nrrd", volume.GetID(), volume.GetName(), mask_path)
        inputs = JobInputs(
            (scan,), model_path, card, self._adapt(card), self.parameters.device, self._job_score_map(card), self._job_operating_point(card)
        )
        args = self._command_args(inputs, scan.image, workdir / "out", workdir / "progress.jsonl")
        if mask_path is not None:
            args += ["--brain-mask", str(mask_path)]
        command = self._submit(args, workdir, python, env)
        return DetectionJob(command=command, workdir=workdir, inputs=inputs, output=workdir / "out")

    def _job_operating_point(self, card: dict) -> str:
        """The preset that draws the mask of a new run: the panel's choice, else the card's
        default ('' for a model without operating points: its percentile thresholds are used)."""
        points, default = operating_points_from_card(card)
        chosen = self.parameters.operating_point
        return chosen if chosen in points else default

    def _job_score_map(self, card: dict) -> str:
        """The map that draws the mask for a new run: the panel's choice if this model has it."""
        chosen = self.parameters.score_map
        return chosen if chosen in card_thresholds(card) and not chosen.startswith("level") else ""

    def load_detection(self, job: DetectionJob, replace_previous: bool = False) -> LesionTable:
        """Load a finished single-scan job into the scene, against the job's own inputs."""
        try:
            scan = job.inputs.scans[0]
            return self._load_scan_results(job.inputs, scan, job.output, "input", replace_previous)
        finally:
            job.cleanup()

    def _load_scan_results(self, inputs: JobInputs, scan: ScanInput, folder: Path, stem: str, replace_previous: bool) -> LesionTable:
        volume = self.scene.GetNodeByID(scan.volume_id)
        if volume is None or volume.GetName() != scan.volume_name:
            raise SSAEError(f"the volume {scan.volume_name!r} that was processed is no longer in the scene; its results were not loaded")
        maps = {
            p.name[len(stem) + 1 : -len(".nrrd")]: read_volume(p, "result", allow_constant=True)
            for p in sorted(folder.glob(f"{stem}_*.nrrd"))
        }
        maps = {name: image for name, image in maps.items() if name not in ("lesion_mask", "brainmask")}
        if "aggregated" not in maps:
            raise SSAEError("the detection process wrote no results")
        summary = _read_json(folder / f"{stem}_summary.json")
        self.registration = summary.get("registration")
        lesions = self.show_results(
            volume,
            maps,
            inputs.card,
            inputs.adapt,
            replace_previous,
            summary.get("score_map"),
            summary.get("brain_ml"),
            inputs.operating_point,
        )
        transform = folder / f"{stem}_atlas_to_scan.tfm"
        if transform.exists():
            self._add_transform(volume, sitk.ReadTransform(str(transform)))
        return lesions

    def _add_transform(self, volume, transform: sitk.Transform) -> None:
        """The atlas-to-scan transform as a node, in the results' subject-hierarchy folder."""
        node = add_atlas_transform(self.scene, transform, f"{volume.GetName()} atlas to scan")
        self.parameters.atlas_transform = node
        item = int(self.parameters.node.GetParameter("resultsFolderItem") or 0)
        if item:
            move_into_folder(self.scene, node, item)

    # batches -------------------------------------------------------------------------------------
    def start_batch_detection(
        self,
        volumes: list | None = None,
        folder: str | os.PathLike[str] | None = None,
        output_folder: str | os.PathLike[str] | None = None,
        python: str | None = None,
        env: dict[str, str] | None = None,
    ) -> DetectionJob:
        """One background ``ssae detect`` over several loaded volumes, or over a folder of scans.

        Loaded volumes are written to a temporary folder and listed in a CSV manifest; their
        results come back into the scene. A folder's results stay in ``output_folder`` (one
        result folder per scan and ``cohort.csv``); the cohort table comes into the scene.
        """
        model_path, card = self._model()
        if (volumes is None) == (folder is None):
            raise SSAEError("give either loaded volumes or a folder of scans")
        if volumes is not None and not volumes:
            raise SSAEError("select at least one volume")
        if folder is not None:
            source = Path(folder)
            if not source.exists():
                raise SSAEError(f"folder not found: {source}")
            if output_folder is None:
                raise SSAEError("choose a folder for the results of a folder of scans")
            output, keep = Path(output_folder), True
            if (output / "cohort.csv").exists():
                raise SSAEError(f"{output} already holds a cohort.csv; choose another folder")
        workdir = Path(tempfile.mkdtemp(prefix="ssae-batch-"))
        scans = []
        if volumes is not None:
            try:
                rows = ["case,image"]
                for index, volume in enumerate(volumes):
                    image = self._volume_image(volume)
                    case = f"scan{index + 1:03d}"
                    path = workdir / f"{case}.nrrd"
                    sitk.WriteImage(image, str(path))
                    scans.append(ScanInput(case, path, volume.GetID(), volume.GetName()))
                    rows.append(f"{case},{path.name}")
                source = workdir / "scans.csv"
                source.write_text("\n".join(rows) + "\n", encoding="utf-8")
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            output, keep = workdir / "out", False
        inputs = JobInputs(
            tuple(scans),
            model_path,
            card,
            self._adapt(card),
            self.parameters.device,
            self._job_score_map(card),
            self._job_operating_point(card),
        )
        command = self._submit(self._command_args(inputs, source, output, workdir / "progress.jsonl"), workdir, python, env)
        return DetectionJob(command=command, workdir=workdir, inputs=inputs, output=output, cohort=True, keep_output=keep)

    def load_batch(self, job: DetectionJob) -> list[dict[str, str]]:
        """The cohort table into the scene (and each loaded volume's results); returns its rows."""
        try:
            rows = job.cohort_rows()
            if not rows:
                raise SSAEError("the batch wrote no cohort table")
            self.parameters.cohort_table = self._cohort_table_node(rows, job.inputs)
            for scan in job.inputs.scans:
                row = next((r for r in rows if r["case"] == scan.case), None)
                if row is not None and row["status"] == "ok":
                    self._load_scan_results(job.inputs, scan, job.output / scan.case, scan.case, replace_previous=False)
            return rows
        finally:
            job.cleanup()  # the temporary folder; a folder of scans' results stay where the user put them

    def _cohort_table_node(self, rows: list[dict[str, str]], inputs: JobInputs):
        names = {scan.case: scan.volume_name for scan in inputs.scans}
        node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName("SSAE cohort"))
        columns = [
            "case",
            "volume",
            "status",
            "lesion_count",
            "total_volume_ml",
            "threshold",
            "adapted",
            "registration_check",
            "warnings",
            "error",
        ]
        table = node.GetTable()
        for column in columns:
            array = vtk.vtkStringArray()
            array.SetName(column)
            table.AddColumn(array)
        for row in rows:
            values = {**row, "volume": names.get(row["case"], row.get("image", ""))}
            table.InsertNextBlankRow()
            for index, column in enumerate(columns):
                table.SetValue(table.GetNumberOfRows() - 1, index, vtk.vtkVariant(str(values.get(column, ""))))
        node.Modified()
        return node

    # results in the scene --------------------------------------------------------------------------
    def show_results(
        self,
        volume,
        maps: dict[str, sitk.Image],
        card: dict,
        adapted: bool,
        replace_previous: bool = False,
        score_map: str | None = None,
        brain_ml: float | None = None,
        operating_point: str = "",
    ) -> LesionTable:
        """Score volumes, lesion segmentation and table for ``maps`` (name -> image on the input grid).

        ``card``, ``adapted`` and ``operating_point`` are those of the run that made the maps:
        they give the names, the thresholds (each map's at the operating point, or its
        percentile threshold for an older card) and what a threshold means on a healthy brain
        of ``brain_ml``. All parameter writes are one batch: the panel refreshes once.
        """
        params = self.parameters
        sizes = level_sizes(card)
        rules = {name: card_mask_rule(card, name, adapted, operating_point or None) for name in maps}
        names = sorted(maps, key=map_order)
        chosen = score_map or card.get("score_map", "aggregated")
        chosen = chosen if chosen in maps else "aggregated"
        with params.batch():
            if replace_previous:
                self.remove_results()
            segmentation = add_lesion_segmentation(self.scene, volume, f"{volume.GetName()} anomalies")
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName(f"{volume.GetName()} lesions"))
            for name in list(params.result_maps()):
                params.set_result_volume(name, None)
            params.segmentation, params.statistics_table = segmentation, table
            nodes, lesions = [segmentation, table], None
            params.min_lesion_mm3 = rules[chosen].min_lesion_mm3
            params.results_card = {"operating_points": card.get("operating_points") or {}, "postprocessing": card["postprocessing"]}
            for name in names:
                rule = rules[name]
                node = add_score_volume(
                    self.scene, volume, maps[name], f"{volume.GetName()} anomaly {map_title(name, sizes)}", rule.threshold
                )
                node.SetAttribute("SSAE.calibratedThreshold", repr(rule.threshold))
                tail = healthy_tail(card, name, adapted)
                node.SetAttribute("SSAE.healthyTail", json.dumps(tail.to_dict()) if tail is not None else "")
                node.SetAttribute("SSAE.brainMl", repr(float(brain_ml)) if brain_ml else "")
                params.set_rule_of(name, rule.threshold, rule.seed_threshold, rule.operating_point)
                params.set_result_volume(name, node)
                nodes.append(node)
                segment_id = ensure_segment(segmentation, name, segment_name(name, sizes))
                found = update_segment(segmentation, segment_id, node, rule.threshold, params.min_lesion_mm3, rule.seed_threshold)
                if name == chosen:
                    lesions = found
            params.score_map = chosen
            assert lesions is not None
            fill_lesion_table(table, lesions, rules[chosen].operating_point)
            self._show_only_selected_segment()
            item = place_under_input_study(self.scene, volume, nodes, f"{volume.GetName()} SSAE results")
            params.node.SetParameter("resultsFolderItem", str(item))
        show_in_slice_views(self.scene, volume, params.result_volume(chosen))
        return lesions

    def _show_only_selected_segment(self) -> None:
        """Overlapping segments of every map would hide each other: show the selected map's."""
        params = self.parameters
        display = params.segmentation.GetDisplayNode()
        for name in params.result_maps():
            display.SetSegmentVisibility(segment_id_of(name), name == params.score_map)

    def remove_results(self) -> None:
        """Remove the nodes of the last detection (only when the user asked to replace them)."""
        params = self.parameters
        nodes = [params.result_volume(n) for n in params.result_maps()] + [
            params.segmentation,
            params.statistics_table,
            params.atlas_transform,
        ]
        with params.batch():
            for node in nodes:
                if node is not None:
                    self.scene.RemoveNode(node)
            item = int(params.node.GetParameter("resultsFolderItem") or 0)
            if item:
                hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
                if hierarchy.GetNumberOfItemChildren(item) == 0:
                    hierarchy.RemoveItem(item)
                params.node.SetParameter("resultsFolderItem", "")

    def threshold_range(self, map_name: str | None = None) -> tuple[float, float]:
        """Slider range for a map: 0 to its maximum score (at least 1.5x its calibrated threshold)."""
        params = self.parameters
        node = params.result_volume(map_name or params.score_map)
        if node is None:
            raise SSAEError("run the detection first")
        top = float(array_from_volume_node(node).max())
        calibrated = float(node.GetAttribute("SSAE.calibratedThreshold") or 0.0)
        return 0.0, max(top, 1.5 * calibrated, 1e-6)

    def apply_threshold(self, threshold: float | None = None, map_name: str | None = None) -> LesionTable:
        """Recompute one map's segment and the lesion table from its stored score volume; a
        ``threshold`` given here is the user's own (no hysteresis seeds, the current minimum size)."""
        params = self.parameters
        name = map_name or params.score_map
        node, segmentation, table = params.result_volume(name), params.segmentation, params.statistics_table
        if node is None or segmentation is None or table is None:
            raise SSAEError("run the detection first")
        with params.batch():
            if threshold is not None:
                params.set_rule_of(name, threshold, None, "threshold")
            if not params.has_threshold(name):
                params.set_rule_of(name, float(node.GetAttribute("SSAE.calibratedThreshold") or 0.0), None, "threshold")
            value, seed, rule = params.threshold_of(name), params.seed_of(name), params.rule_name_of(name)
            style_score_volume(node, value)
            lesions = update_segment(
                segmentation, ensure_segment(segmentation, name, segment_name(name)), node, value, params.min_lesion_mm3, seed
            )
            if name == params.score_map:
                fill_lesion_table(table, lesions, rule)
                self._show_only_selected_segment()
        return lesions

    def apply_operating_point(self, operating_point: str) -> LesionTable:
        """The current map's mask at one of the results' operating points (threshold, seeds and
        minimum size of the preset, from the map's healthy tail)."""
        params = self.parameters
        name = params.score_map
        node = params.result_volume(name)
        if node is None:
            raise SSAEError("run the detection first")
        section = params.results_card
        points, default = operating_points_from_card(section)
        tail_text = node.GetAttribute("SSAE.healthyTail") or ""
        tail = HealthyTail.from_dict(json.loads(tail_text)) if tail_text else None
        calibrated = (float(node.GetAttribute("SSAE.calibratedThreshold") or 0.0), "as detected")
        fallback = float(section.get("postprocessing", {}).get("min_lesion_mm3", params.min_lesion_mm3))
        rule = mask_rule(points, default, tail, calibrated, fallback, False, operating_point if operating_point in points else None)
        with params.batch():
            params.min_lesion_mm3 = rule.min_lesion_mm3
            params.set_rule_of(name, rule.threshold, rule.seed_threshold, rule.operating_point)
            return self.apply_threshold(None, name)

    def threshold_meaning(self, threshold: float | None = None, map_name: str | None = None) -> str:
        """What a threshold of a map means without labels: the share of a healthy brain above it
        and the volume a healthy brain of this scan's size would show ('' where unknown)."""
        params = self.parameters
        node = params.result_volume(map_name or params.score_map)
        if node is None:
            return ""
        tail_text = node.GetAttribute("SSAE.healthyTail") or ""
        if not tail_text:
            return "This model has no healthy calibration tail for this map (recalibrate it with ssae calibrate)."
        tail = HealthyTail.from_dict(json.loads(tail_text))
        value = params.threshold_of(map_name or params.score_map) if threshold is None else threshold
        fraction = tail.fraction_above(value)
        brain_ml = float(node.GetAttribute("SSAE.brainMl") or 0.0)
        volume = f"about {fraction * brain_ml:.1f} ml of a healthy brain this size, " if brain_ml else ""
        return f"On healthy brains: {volume}{100 * fraction:.2g} % of its voxels would lie above this threshold."

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

    def export_lesion_table(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """The lesion table of the map that drives the mask as CSV (the same columns as
        ``ssae detect``'s ``*_lesions.csv``)."""
        params = self.parameters
        table = params.statistics_table
        if table is None:
            raise SSAEError("run the detection first")
        path = Path(path)
        if path.suffix.lower() != ".csv":
            raise SSAEError("lesion tables are written as .csv")
        return write_text(_table_csv(table.GetTable()), path, overwrite)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _table_csv(table) -> str:
    rows = [tuple(table.GetValue(r, c).ToDouble() for c in range(table.GetNumberOfColumns())) for r in range(table.GetNumberOfRows())]
    return lesion_rows_csv(rows)


def _string_array(values: list[str]):
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
