"""SSAE Anomaly: detect, inspect, threshold and export brain FLAIR anomalies in 3D Slicer.

Thin layer over ``SSAEAnomalyLib`` (scene adapters, testable without Qt) and the ``ssae``
engine: the widget loads its .ui, mirrors the parameter node and runs detection as
``ssae detect`` jobs in a background worker process polled by a timer, so Slicer stays
responsive; the worker starts (and loads the model) when the module is shown and ends when it
is left. Nothing here imports PyTorch: where the networks run is reported by the worker, and a
factory Slicer shows the panel and offers to install the engine's packages when the user first
asks for a detection. Supported: Slicer 5.10 and newer (``SSAEAnomalyLib.compatibility``); an
older Slicer shows a message instead of the panel.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _make_engine_importable() -> None:
    """In a source checkout the ``ssae`` package sits one folder above the module."""
    root = Path(__file__).resolve().parent.parent
    if (root / "ssae" / "__init__.py").exists() and str(root) not in sys.path:
        sys.path.insert(0, str(root))


_make_engine_importable()

from SSAEAnomalyLib.compatibility import unsupported_reason  # noqa: E402 (the engine's path is set just above)

UNSUPPORTED = unsupported_reason(sys.version_info, (slicer.app.majorVersion, slicer.app.minorVersion))
if UNSUPPORTED is None:
    from SSAEAnomalyLib import AnomalyLogic, ComparisonJob
    from SSAEAnomalyLib.dependencies import ensure_engine_dependencies, missing_packages, packages_summary, self_test_skip_reason
    from SSAEAnomalyLib.followup import finished_pairs
    from SSAEAnomalyLib.results import TERMINOLOGY_FILE
    from SSAEAnomalyLib.sample_data import sample_data_sources

    from ssae.io.errors import SSAEError
else:  # an older Slicer: the panel shows UNSUPPORTED and builds nothing that needs the engine
    AnomalyLogic = object

DEVICES = ("auto", "cpu", "cuda")
ADAPT_LABELS = {"model": "As the model recommends", "on": "Yes", "off": "No"}
OPERATING_POINT_LABELS = {
    "model": "As the model recommends",
    "sensitive": "Sensitive (more lesion volume)",
    "balanced": "Balanced",
    "specific": "Specific (fewer false lesions)",
}
POLL_MS = 200
ENGINE_POLL_MS = 500


class SSAEAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SSAE Anomaly"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SSAE for 3D Slicer contributors"]
        self.parent.helpText = (
            "Unsupervised anomaly segmentation in brain FLAIR MRI with Scale-Space Autoencoders: select a FLAIR "
            "volume and a model, click Detect anomalies, then inspect the score maps per scale and combined, choose "
            "the operating point or move the threshold, and export the lesion mask and table. Batch: several loaded "
            "volumes or a folder of scans. Needs Slicer 5.10 or newer. See the extension's README."
        )
        self.parent.acknowledgementText = (
            "Method: C. Baur, B. Wiestler, S. Albarqouni, N. Navab, Scale-Space Autoencoders for Unsupervised "
            "Anomaly Segmentation in Brain MRI, MICCAI 2020. Sample data: MSLUB (Lesjak et al. 2018, CC-BY)."
        )
        if UNSUPPORTED is None:
            slicer.app.connect("startupCompleted()", _register_terminology_and_sample_data)


def _register_terminology_and_sample_data() -> None:
    """The extension's segment terminology (lesion, region brain) and its samples; a failure is
    logged and skipped (the module works without them)."""
    try:
        slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    except AttributeError:  # a Slicer without the Terminologies module: segments keep their tags
        pass
    try:
        import SampleData
    except ImportError:
        return
    for source in sample_data_sources():
        try:
            SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)
        except Exception:  # noqa: BLE001 (one bad sample must not hide the others or break start-up)
            logging.exception(f"SSAE: could not register the sample {source['sampleName']!r}")


class SSAEAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self.job = None
        self._updating = False
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPollJob)
        self.thresholdTimer = qt.QTimer()
        self.thresholdTimer.setSingleShot(True)
        self.thresholdTimer.setInterval(150)
        self.thresholdTimer.connect("timeout()", self.onApplyThreshold)
        self.engineTimer = qt.QTimer()
        self.engineTimer.setInterval(ENGINE_POLL_MS)
        self.engineTimer.connect("timeout()", self.onPollEngine)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        if UNSUPPORTED is not None:
            message = qt.QLabel()
            message.wordWrap = True
            message.text = UNSUPPORTED
            self.layout.addWidget(message)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SSAEAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SSAEAnomalyLogic()

        self.ui.deviceComboBox.addItems(list(DEVICES))
        for key, label in ADAPT_LABELS.items():
            self.ui.adaptComboBox.addItem(label, key)
        for key, label in OPERATING_POINT_LABELS.items():
            self.ui.operatingPointComboBox.addItem(label, key)
        self.ui.deviceLabel.text = packages_summary()
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.ui.lesionTableView.setMRMLScene(slicer.mrmlScene)
        self.ui.cohortTableView.setMRMLScene(slicer.mrmlScene)
        self.ui.changeTableView.setMRMLScene(slicer.mrmlScene)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.brainMaskSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        # an emptied path emits only validInputChanged(false) (ctkPathLineEdit::updateHasValidInput)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.connect("validInputChanged(bool)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.adaptComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.operatingPointComboBox.connect("currentIndexChanged(int)", self.onOperatingPointChanged)
        self.ui.defaultModelButton.connect("clicked(bool)", self.onDefaultModel)
        self.ui.detectButton.connect("clicked(bool)", self.onDetect)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.scoreMapComboBox.connect("currentIndexChanged(int)", self.onScoreMapChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdMoved)
        self.ui.minLesionSizeSlider.connect("valueChanged(double)", self.onThresholdMoved)
        self.ui.exportLabelmapButton.connect("clicked(bool)", self.onExportLabelmap)
        self.ui.exportSegmentationButton.connect("clicked(bool)", self.onExportSegmentation)
        self.ui.exportTableButton.connect("clicked(bool)", self.onExportTable)
        self.ui.batchVolumesButton.connect("clicked(bool)", self.onBatchVolumes)
        self.ui.batchFolderButton.connect("clicked(bool)", self.onBatchFolder)
        self.ui.priorVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateGUIFromParameterNode)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.comparePairsButton.connect("clicked(bool)", self.onComparePairs)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndClose)
        self.observeParameterNode()
        self._applyDefaultModel()
        self.updateGUIFromParameterNode()

    def enter(self):
        """Shown: follow the parameter node again and start the detection worker with the model
        loaded, so that the first detection does not wait for PyTorch (only when the engine's
        packages are installed); the panel learns from the worker where the networks run."""
        if self.logic is None:
            return
        self.observeParameterNode()
        self.updateGUIFromParameterNode()
        if missing_packages():
            return
        with self._reportingErrors("The detection worker did not start ahead of time (the first detection starts it again)."):
            self.logic.warm_worker(python=self._python())
            self.ui.deviceLabel.text = "Starting the engine..."
            self.engineTimer.start()

    def exit(self):
        """Hidden: stop following the parameter node and let the idle worker (with the model in
        memory) end; a running job keeps its worker and is still followed."""
        if self.logic is None:
            return
        self.removeObservers(self.updateGUIFromParameterNode)
        self.engineTimer.stop()
        self.thresholdTimer.stop()
        if self.job is None:
            self.logic.close_worker()

    def cleanup(self):
        """Slicer is closing or the module reloads: end a running job and the worker without waiting."""
        for timer in (self.timer, self.thresholdTimer, self.engineTimer):
            timer.stop()
        if self.job is not None:
            self.job.cleanup()
            self.job = None
        if self.logic is not None:
            self.logic.close_worker(kill=True)
        self.removeObservers()

    # parameter node <-> GUI -----------------------------------------------------------------------
    def observeParameterNode(self):
        self.removeObservers(self.updateGUIFromParameterNode)
        self.addObserver(self.logic.parameters.node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneEndClose(self, caller=None, event=None):
        """File > Close Scene keeps the parameter node but clears it: offer the shipped model again."""
        self.observeParameterNode()
        self._applyDefaultModel()
        self.updateGUIFromParameterNode()

    def _applyDefaultModel(self):
        params = self.logic.parameters
        if not params.model_path and self.logic.default_model_path():
            params.model_path = self.logic.default_model_path()

    @contextmanager
    def _quiet(self, widget):
        """Change a widget without its signals firing (no refresh loops, no timer restarts)."""
        was_blocked = widget.blockSignals(True)
        try:
            yield widget
        finally:
            widget.blockSignals(was_blocked)

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._updating or self.ui is None:
            return
        self._updating = True
        try:
            params = self.logic.parameters
            running = self.job is not None
            with self._quiet(self.ui.inputVolumeSelector) as selector:
                selector.setCurrentNode(params.input_volume)
            with self._quiet(self.ui.brainMaskSelector) as selector:
                selector.setCurrentNode(params.brain_mask)
            with self._quiet(self.ui.modelPathLineEdit) as edit:
                edit.currentPath = params.model_path
            with self._quiet(self.ui.deviceComboBox) as combo:
                combo.currentIndex = max(0, combo.findText(params.device))
            with self._quiet(self.ui.adaptComboBox) as combo:
                combo.currentIndex = max(0, combo.findData(params.adapt))
            with self._quiet(self.ui.operatingPointComboBox) as combo:
                combo.currentIndex = max(0, combo.findData(params.operating_point))
            for widget in (
                self.ui.inputVolumeSelector,
                self.ui.brainMaskSelector,
                self.ui.modelPathLineEdit,
                self.ui.defaultModelButton,
                self.ui.deviceComboBox,
                self.ui.adaptComboBox,
                self.ui.priorVolumeSelector,
            ):
                widget.enabled = not running  # a running job's inputs are locked
            summary, model_ok = self._modelSummary(params.model_path)
            self.ui.modelCardLabel.text = summary
            self.ui.detectButton.enabled = params.input_volume is not None and model_ok and not running
            self.ui.batchVolumesButton.enabled = self.ui.batchFolderButton.enabled = model_ok and not running
            prior = self.ui.priorVolumeSelector.currentNode()
            self.ui.compareButton.enabled = bool(params.input_volume is not None and prior is not None and model_ok and not running)
            self.ui.comparePairsButton.enabled = model_ok and not running
            maps = params.result_maps()
            self.ui.maskCollapsibleButton.enabled = bool(maps)
            with self._quiet(self.ui.scoreMapComboBox) as combo:
                combo.clear()
                for name in maps:
                    combo.addItem(name)
                combo.currentIndex = max(0, combo.findText(params.score_map))
            if maps and params.score_map in maps and params.has_threshold(params.score_map):
                self._showThreshold(params)
                self.ui.lesionTableView.setMRMLTableNode(params.statistics_table)
                self._showSummary()
            self.ui.cohortTableView.setMRMLTableNode(params.cohort_table)
        finally:
            self._updating = False

    def _showThreshold(self, params):
        low, high = self.logic.threshold_range()
        value = params.threshold_of(params.score_map)
        slider = self.ui.thresholdSlider
        with self._quiet(slider):
            # enough decimals that the threshold is shown (and kept) to 4 significant digits
            slider.decimals = min(10, max(4, 4 - int(math.floor(math.log10(max(value, high * 1e-6, 1e-12))))))
            slider.minimum, slider.maximum = low, high
            slider.singleStep = (high - low) / 1000.0
            slider.value = value
        with self._quiet(self.ui.minLesionSizeSlider) as size:
            size.value = params.min_lesion_mm3
        self.ui.thresholdMeaningLabel.text = self.logic.threshold_meaning()

    def updateParameterNodeFromGUI(self, *args):
        if self._updating:
            return
        params = self.logic.parameters
        with params.batch():
            params.input_volume = self.ui.inputVolumeSelector.currentNode()
            params.brain_mask = self.ui.brainMaskSelector.currentNode()
            params.model_path = self.ui.modelPathLineEdit.currentPath
            params.device = self.ui.deviceComboBox.currentText or "auto"
            params.adapt = self.ui.adaptComboBox.currentData or "model"

    def _modelSummary(self, path):
        """The model panel's text, and whether the file can run a detection."""
        if not path:
            return "No model selected.", False
        try:
            return self.logic.model_summary(path), True
        except Exception as error:  # noqa: BLE001 (a foreign or damaged file: say so in the panel)
            return f"Cannot use this file: {error}", False

    def _showSummary(self):
        table = self.logic.parameters.statistics_table
        if table is not None:
            count = table.GetAttribute("SSAE.lesionCount") or "0"
            volume = float(table.GetAttribute("SSAE.totalVolumeMl") or 0.0)
            drawn = table.GetAttribute("SSAE.operatingPoint") or ""
            by = f" (mask: {'your threshold' if drawn == 'threshold' else drawn + ' operating point'})" if drawn else ""
            self.ui.lesionSummaryLabel.text = f"{count} lesion(s), {volume:.2f} ml in total{by}"

    @contextmanager
    def _reportingErrors(self, message):
        """Show an error in a dialog and go on: ``slicer.util.tryWithErrorDisplay`` shows it and
        re-raises, which inside a Qt slot would skip the code after the block (the panel could
        stay locked); here the error is shown, logged, and the caller's next line still runs."""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
                yield
        except Exception:  # noqa: BLE001 (shown to the user by tryWithErrorDisplay)
            logging.exception(message)

    # actions ---------------------------------------------------------------------------------------------
    def onDefaultModel(self):
        path = self.logic.default_model_path()
        if not path:
            slicer.util.errorDisplay("This installation has no shipped model; select a model file.")
            return
        self.logic.parameters.model_path = path

    def onPollEngine(self):
        """Until the worker is ready (or has died): show where the networks run, or why not."""
        worker = self.logic.worker
        if worker is None:
            self.engineTimer.stop()
            return
        for line in worker.new_lines():
            print(line)
        if worker.ready.is_set():
            self.engineTimer.stop()
            self.ui.deviceLabel.text = worker.device
        elif not worker.alive:
            self.engineTimer.stop()
            self.ui.deviceLabel.text = "The engine did not start (is PyTorch installed and working?): see the Python console."

    def _python(self):
        return shutil.which("PythonSlicer") or sys.executable

    def _startJob(self, start):
        if not ensure_engine_dependencies():  # declined or failed: it said why, the panel stays as it was
            return
        with self._reportingErrors("Cannot start the detection."):
            self.job = start()
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.cancelButton.show()
            self.ui.cancelButton.enabled = True
            self.ui.statusLabel.text = f"Starting ({self.job.input_name})..."
            self.timer.start()
            self.engineTimer.start()
        self.updateGUIFromParameterNode()

    def onDetect(self):
        self._startJob(lambda: self.logic.start_detection(python=self._python()))

    def onBatchVolumes(self):
        volumes = list(self.ui.batchVolumesCheckableSelector.checkedNodes())
        self._startJob(lambda: self.logic.start_batch_detection(volumes=volumes, python=self._python()))

    def onBatchFolder(self):
        folder, output = self.ui.batchFolderLineEdit.currentPath, self.ui.batchOutputLineEdit.currentPath
        self._startJob(lambda: self.logic.start_batch_detection(folder=folder, output_folder=output or None, python=self._python()))

    def onCompare(self):
        prior = self.ui.priorVolumeSelector.currentNode()
        self._startJob(lambda: self.logic.followup.start(prior, python=self._python()))

    def onComparePairs(self):
        source, output = self.ui.pairsPathLineEdit.currentPath, self.ui.pairsOutputLineEdit.currentPath
        if not source or not output:
            slicer.util.errorDisplay("Choose the folder of pairs and a folder for the results.")
            return
        finished = finished_pairs(output)
        resume = bool(finished)
        if resume and not slicer.util.confirmYesNoDisplay(
            f"{output} holds the results of an earlier run ({len(finished)} pair folder(s)). Continue that run? "
            "Finished pairs are kept and the others compared. Choose No to pick another folder.",
            windowTitle="Compare pairs",
        ):
            return
        self._startJob(lambda: self.logic.followup.start_pairs(source, output, resume=resume, python=self._python()))

    def onPollJob(self):
        job = self.job
        if job is None:
            return
        for line in job.command.new_lines():
            print(line)
        for event in job.command.new_events():
            if event.get("event") == "progress":
                self.ui.progressBar.value = int(100 * event["fraction"])
                if job.command.cancel_requested_at is None:
                    self.ui.statusLabel.text = event.get("message", "")
        code = job.command.poll()
        if code is None:
            return
        self.timer.stop()
        self.job = None
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        try:
            if job.command.cancel_requested_at is not None:
                job.cleanup()
                self.ui.statusLabel.text = "Detection cancelled."
            elif code not in (0, 1) or (code == 1 and not job.cohort):
                job.cleanup()
                self.ui.statusLabel.text = "Detection failed: see the Python console for the message."
                slicer.util.errorDisplay("The detection failed; the message is in the Python console.")
            else:
                self.ui.statusLabel.text = "Loading the results failed: see the message."
                with self._reportingErrors("Cannot load the results."):
                    self.ui.statusLabel.text = self._loadJob(job)
        finally:
            self.updateGUIFromParameterNode()  # whatever happened, the panel is unlocked

    def _loadJob(self, job):
        """Results into the scene, bound to the job's own inputs; returns the status line."""
        if isinstance(job, ComparisonJob):
            return self._loadComparison(job)
        if job.cohort:
            rows = self.logic.load_batch(job)
            failed = [row["case"] for row in rows if row["status"] != "ok"]
            where = f" Results: {job.output}." if job.keep_output else ""
            return (
                f"Batch done: {len(rows) - len(failed)} of {len(rows)} scan(s)."
                + (f" Failed: {', '.join(failed)}." if failed else "")
                + where
            )
        lesions = self.logic.load_detection(job, replace_previous=self.ui.replaceResultsCheckBox.checked)
        return (
            f"{job.input_name}: {lesions.statistics.count} lesion(s), {lesions.statistics.total_ml:.2f} ml." + self._registrationWarnings()
        )

    def _loadComparison(self, job):
        if job.cohort:
            rows = self.logic.followup.load_pairs(job)
            failed = [row["pair"] for row in rows if row["status"] != "ok"]
            return (
                f"Pairs done: {len(rows) - len(failed)} of {len(rows)}."
                + (f" Failed: {', '.join(failed)}." if failed else "")
                + f" Results: {job.output}."
            )
        nodes = self.logic.followup.load(job)
        self.ui.changeTableView.setMRMLTableNode(nodes.table)
        counts = nodes.summary
        text = (
            f"{job.input_name}: {counts['new']} new, {counts['enlarging']} enlarging, {counts['shrinking']} shrinking, "
            f"{counts['resolved']} resolved lesion(s)."
        )
        self.ui.compareSummaryLabel.text = text
        if counts.get("warnings"):
            slicer.util.warningDisplay("\n".join(counts["warnings"]), "SSAE Anomaly")
            text += " " + " ".join(counts["warnings"])
        return text

    def _registrationWarnings(self):
        report = self.logic.registration
        if not report:
            return ""
        warnings = [] if report.get("passed", True) else [f"Registration check: {report['message']}. Inspect the results."]
        if report.get("contrast_warning"):
            warnings.append(f"The model expects FLAIR, but {report['contrast_warning']}.")
        if warnings:
            slicer.util.warningDisplay("\n".join(warnings), "SSAE Anomaly")
        return " " + " ".join(warnings)

    def onCancel(self):
        """Ask the background process to stop; the timer sees it end (never waits here)."""
        if self.job is not None:
            self.job.command.request_cancel()
            self.ui.cancelButton.enabled = False
            self.ui.statusLabel.text = "Stopping..."

    def onScoreMapChanged(self, index):
        if self._updating or index < 0:
            return
        params = self.logic.parameters
        with self._reportingErrors("Cannot show this map."):
            params.score_map = self.ui.scoreMapComboBox.currentText
            self.logic.apply_threshold()
            slicer.util.setSliceViewerLayers(foreground=params.result_volume(params.score_map))

    def onOperatingPointChanged(self, index):
        """A preset for the next detection; with results shown, also their mask at once."""
        if self._updating or index < 0:
            return
        params = self.logic.parameters
        choice = self.ui.operatingPointComboBox.currentData or "model"
        with self._reportingErrors("Cannot apply this operating point."):
            with params.batch():
                params.operating_point = choice
                if params.result_maps():
                    self.logic.apply_operating_point("" if choice == "model" else choice)
        self._showSummary()

    def onThresholdMoved(self, value):
        if not self._updating:
            self.thresholdTimer.start()

    def onApplyThreshold(self):
        if self._updating or not self.logic.parameters.result_maps():
            return
        params = self.logic.parameters
        with self._reportingErrors("Cannot update the mask."):
            with params.batch():
                params.min_lesion_mm3 = self.ui.minLesionSizeSlider.value
                self.logic.apply_threshold(self.ui.thresholdSlider.value)
        self.ui.thresholdMeaningLabel.text = self.logic.threshold_meaning()
        self._showSummary()

    def _export(self, title, suffix, file_filter, write):
        """Ask where (the file dialog itself confirms replacing a file) and write there."""
        volume = self.logic.parameters.input_volume
        name = volume.GetName() if volume is not None else "SSAE"
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), title, f"{name}{suffix}", file_filter)
        if not path:
            return
        with self._reportingErrors("Export failed."):
            write(path, overwrite=True)
            self.ui.statusLabel.text = f"Written: {path}"

    def onExportLabelmap(self):
        self._export("Export lesion mask", "_lesion_mask.nrrd", "Labelmap (*.nrrd *.nii.gz *.nii)", self.logic.export_labelmap)

    def onExportSegmentation(self):
        self._export("Export segmentation", "_anomalies.seg.nrrd", "Segmentation (*.seg.nrrd)", self.logic.export_segmentation)

    def onExportTable(self):
        self._export("Export lesion table", "_lesions.csv", "CSV (*.csv)", self.logic.export_lesion_table)


class SSAEAnomalyLogic(ScriptedLoadableModuleLogic, AnomalyLogic):
    """The module's logic on the application's scene (see ``SSAEAnomalyLib.AnomalyLogic``);
    ``ScriptedLoadableModuleLogic.__init__`` reaches ``AnomalyLogic.__init__`` through ``super()``."""


class SSAEAnomalyTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer on the shipped MSLUB sample with the shipped model (about a minute on a CPU).

    Skipped, and says so, where the engine's packages are missing (``self_test_skip_reason``).
    """

    def setUp(self):
        reason = self_test_skip_reason()
        if reason:
            self.skipTest(reason)
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        reason = self_test_skip_reason()
        if reason:
            self.delayDisplay(f"SSAE Anomaly self-test skipped: {reason}.")
            return
        self.setUp()
        self.test_detect_threshold_export()
        self.setUp()
        self.test_background_detection()

    def _load_sample(self):
        from ssae.io.resources import sample_case_dir

        return slicer.util.loadVolume(str(sample_case_dir() / "flair.nii.gz"))

    def _logic(self, volume):
        logic = SSAEAnomalyLogic()
        params = logic.parameters
        params.input_volume, params.model_path, params.device, params.adapt = volume, logic.default_model_path(), "cpu", "off"
        return logic

    def test_detect_threshold_export(self):
        self.delayDisplay("Detecting anomalies in the MSLUB sample")
        volume = self._load_sample()
        logic = self._logic(volume)
        params = logic.parameters
        lesions = logic.detect()
        maps = params.result_maps()
        self.assertEqual(maps[0], "aggregated")
        self.assertIn("prior", maps)
        for name in maps:
            node = params.result_volume(name)
            self.assertEqual(node.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        segmentation = params.segmentation.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), len(maps))
        lower = logic.apply_threshold(params.threshold_of(params.score_map) * 0.5)
        self.assertGreaterEqual(lower.statistics.total_ml, lesions.statistics.total_ml)
        folder = Path(tempfile.mkdtemp())
        labelmap = logic.export_labelmap(folder / "mask.nrrd")
        loaded = slicer.util.loadLabelVolume(str(labelmap))
        self.assertEqual(loaded.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        logic.export_segmentation(folder / "anomalies.seg.nrrd")
        logic.export_lesion_table(folder / "lesions.csv")
        with self.assertRaises(SSAEError):
            logic.export_segmentation(folder / "anomalies.seg.nrrd")  # never overwrites without asking
        shutil.rmtree(folder)
        self.delayDisplay("Test passed")

    def test_background_detection(self):
        from ssae.app.processes import wait_for

        self.delayDisplay("Detecting twice in the background detection worker")
        volume = self._load_sample()
        logic = self._logic(volume)
        python = shutil.which("PythonSlicer") or sys.executable
        try:
            for replace in (False, True):
                job = logic.start_detection(python=python)
                self.assertEqual(wait_for(job.command, timeout_s=300), 0)
                lesions = logic.load_detection(job, replace_previous=replace)
                self.assertGreaterEqual(lesions.statistics.count, 0)
                self.assertTrue(logic.parameters.segmentation.GetName().startswith(volume.GetName()))
            self.assertEqual(logic.worker.starts, 1)  # the second detection reused the running worker
        finally:
            logic.close_worker(kill=True)
        self.delayDisplay("Test passed")
