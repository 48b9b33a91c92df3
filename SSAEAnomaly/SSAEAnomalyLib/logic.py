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

The class is assembled from parts kept in their own modules: :mod:`.scene_results` (results in
the scene, threshold, map and operating point), :mod:`.batch_detection` (several scans, one
job), :mod:`.result_exports` (labelmap, segmentation and table files) and, as ``self.followup``,
:mod:`.followup` (comparison with a prior scan).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk
import slicer

from ssae.app.processes import FollowedRun
from ssae.app.worker_client import DetectionWorker
from ssae.io.errors import SSAEError
from ssae.io.model_file import card_thresholds, read_card
from ssae.io.volumes import check_volume, read_volume
from ssae.models.card_text import describe_card
from ssae.scoring.lesions import LesionTable
from ssae.scoring.operating_points import operating_points_from_card

from .batch_detection import BatchDetection
from .followup import FollowupLogic
from .jobs import DetectionJob, JobInputs, ScanInput
from .parameters import AnomalyParameters
from .result_exports import ResultExports
from .results import (
    add_atlas_transform,
    move_into_folder,
)
from .scene_ownership import results_folder_of
from .scene_results import SceneResults
from .volumes import image_from_volume_node


class AnomalyLogic(SceneResults, BatchDetection, ResultExports):
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
        lesions = self.show_results(
            volume, result.maps, card, adapt, replace_previous, None, result.brain_ml, operating_point, result.small_lesions_by_point
        )
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
        small_lesions = maps.get("small_lesions")
        maps = {name: image for name, image in maps.items() if name not in ("lesion_mask", "brainmask", "small_lesions")}
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
            small_lesions,
        )
        transform = folder / f"{stem}_atlas_to_scan.tfm"
        if transform.exists():
            self._add_transform(volume, sitk.ReadTransform(str(transform)))
        return lesions

    def _add_transform(self, volume, transform: sitk.Transform) -> None:
        """The atlas-to-scan transform as a node, in the results' subject-hierarchy folder."""
        node = add_atlas_transform(self.scene, transform, f"{volume.GetName()} atlas to scan")
        self.parameters.atlas_transform = node
        folder = results_folder_of(self.scene, self.parameters.segmentation)
        if folder:
            move_into_folder(self.scene, node, folder)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
