"""SSAE Anomaly: detect, inspect, threshold and export brain FLAIR anomalies in 3D Slicer.

Thin layer over ``SSAEAnomalyLib`` (scene adapters, testable without Qt) and the ``ssae``
engine: the widget loads its .ui, mirrors the parameter node and runs detection as
``ssae detect`` jobs in a background worker process polled by a timer, so Slicer stays
responsive; the worker starts (and loads the model) when the module is opened. Nothing here
imports PyTorch: a factory Slicer shows the panel and offers to install the engine's packages
when the user first asks for a detection.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import sys
import tempfile
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

from SSAEAnomalyLib import AnomalyLogic  # noqa: E402 (the engine's path is set just above)
from SSAEAnomalyLib.dependencies import device_description, ensure_engine_dependencies, missing_packages  # noqa: E402
from SSAEAnomalyLib.results import TERMINOLOGY_FILE  # noqa: E402
from SSAEAnomalyLib.sample_data import sample_data_sources  # noqa: E402

from ssae.errors import SSAEError  # noqa: E402

DEVICES = ("auto", "cpu", "cuda")
ADAPT_LABELS = {"model": "As the model recommends", "on": "Yes", "off": "No"}
POLL_MS = 200


class SSAEAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SSAE Anomaly"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SSAE for 3D Slicer contributors"]
        self.parent.helpText = (
            "Unsupervised anomaly segmentation in brain FLAIR MRI with Scale-Space Autoencoders: select a FLAIR "
            "volume and a model, click Detect anomalies, then inspect the score maps per scale and combined, move the "
            "threshold and export the lesion mask and table. Batch: several loaded volumes or a folder of scans. "
            "See the extension's README."
        )
        self.parent.acknowledgementText = (
            "Method: C. Baur, B. Wiestler, S. Albarqouni, N. Navab, Scale-Space Autoencoders for Unsupervised "
            "Anomaly Segmentation in Brain MRI, MICCAI 2020. Sample data: MSLUB (Lesjak et al. 2018, CC-BY)."
        )
        slicer.app.connect("startupCompleted()", _register_terminology_and_sample_data)


def _register_terminology_and_sample_data() -> None:
    """The extension's segment terminology (lesion, region brain) and its MSLUB sample."""
    try:
        slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    except AttributeError:  # a Slicer without the Terminologies module: segments keep their tags
        pass
    try:
        import SampleData
    except ImportError:
        return
    for source in sample_data_sources():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)


class SSAEAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self._updating = False
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPollJob)
        self.thresholdTimer = qt.QTimer()
        self.thresholdTimer.setSingleShot(True)
        self.thresholdTimer.setInterval(150)
        self.thresholdTimer.connect("timeout()", self.onApplyThreshold)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SSAEAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SSAEAnomalyLogic()

        self.ui.deviceComboBox.addItems(list(DEVICES))
        for key, label in ADAPT_LABELS.items():
            self.ui.adaptComboBox.addItem(label, key)
        self.ui.deviceLabel.text = device_description()
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.ui.lesionTableView.setMRMLScene(slicer.mrmlScene)
        self.ui.cohortTableView.setMRMLScene(slicer.mrmlScene)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.brainMaskSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.adaptComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
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

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndClose)
        self.observeParameterNode()
        if not self.logic.parameters.model_path and self.logic.default_model_path():
            self.logic.parameters.model_path = self.logic.default_model_path()
        self.updateGUIFromParameterNode()

    def enter(self):
        """Start the detection worker now, with the model loaded, so that the first detection
        does not wait for PyTorch to start (only when the engine's packages are installed)."""
        if not missing_packages():
            try:
                self.logic.warm_worker(python=self._python())
            except (OSError, SSAEError) as exc:  # the first detection starts it again and reports
                logging.warning(f"SSAE Anomaly: the detection worker did not start ahead of time: {exc}")

    def cleanup(self):
        """Slicer is closing or the module reloads: end a running job and the worker without waiting."""
        if self.job is not None:
            self.timer.stop()
            self.job.cleanup()
            self.job = None
        self.logic.close_worker(kill=True)
        self.removeObservers()

    # parameter node <-> GUI -----------------------------------------------------------------------
    def observeParameterNode(self):
        self.removeObservers(self.updateGUIFromParameterNode)
        self.addObserver(self.logic.parameters.node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneEndClose(self, caller=None, event=None):
        self.observeParameterNode()
        self.updateGUIFromParameterNode()

    def _set_quietly(self, widget, prop, value):
        """Set a widget property without its signals firing (no refresh loops, no timer restarts)."""
        was_blocked = widget.blockSignals(True)
        try:
            setattr(widget, prop, value)
        finally:
            widget.blockSignals(was_blocked)

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._updating:
            return
        self._updating = True
        try:
            params = self.logic.parameters
            running = self.job is not None
            self._set_quietly(self.ui.inputVolumeSelector, "currentNode", params.input_volume)
            self._set_quietly(self.ui.brainMaskSelector, "currentNode", params.brain_mask)
            self._set_quietly(self.ui.modelPathLineEdit, "currentPath", params.model_path)
            self._set_quietly(self.ui.deviceComboBox, "currentIndex", max(0, self.ui.deviceComboBox.findText(params.device)))
            self._set_quietly(self.ui.adaptComboBox, "currentIndex", max(0, self.ui.adaptComboBox.findData(params.adapt)))
            for widget in (
                self.ui.inputVolumeSelector,
                self.ui.brainMaskSelector,
                self.ui.modelPathLineEdit,
                self.ui.deviceComboBox,
                self.ui.adaptComboBox,
            ):
                widget.enabled = not running  # a running job's inputs are locked
            self.ui.modelCardLabel.text = self._modelSummary(params.model_path)
            self.ui.detectButton.enabled = params.input_volume is not None and bool(params.model_path) and not running
            self.ui.batchVolumesButton.enabled = self.ui.batchFolderButton.enabled = bool(params.model_path) and not running
            maps = params.result_maps()
            self.ui.maskCollapsibleButton.enabled = bool(maps)
            self.ui.scoreMapComboBox.blockSignals(True)
            try:
                self.ui.scoreMapComboBox.clear()
                for name in maps:
                    self.ui.scoreMapComboBox.addItem(name)
                self.ui.scoreMapComboBox.currentIndex = max(0, self.ui.scoreMapComboBox.findText(params.score_map))
            finally:
                self.ui.scoreMapComboBox.blockSignals(False)
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
        was_blocked = slider.blockSignals(True)
        try:
            # enough decimals that the calibrated threshold is shown (and kept) to 4 significant digits
            slider.decimals = min(10, max(4, 4 - int(math.floor(math.log10(max(value, high * 1e-6, 1e-12))))))
            slider.minimum, slider.maximum = low, high
            slider.singleStep = (high - low) / 1000.0
            slider.value = value
        finally:
            slider.blockSignals(was_blocked)
        self._set_quietly(self.ui.minLesionSizeSlider, "value", params.min_lesion_mm3)

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
        if not path:
            return "No model selected."
        try:
            return self.logic.model_summary(path)
        except Exception as error:  # a foreign or damaged file: say so in the panel
            return f"Cannot use this file: {error}"

    def _showSummary(self):
        table = self.logic.parameters.statistics_table
        if table is not None:
            count = table.GetAttribute("SSAE.lesionCount") or "0"
            volume = float(table.GetAttribute("SSAE.totalVolumeMl") or 0.0)
            self.ui.lesionSummaryLabel.text = f"{count} lesion(s), {volume:.2f} ml in total"

    # actions ---------------------------------------------------------------------------------------------
    def onDefaultModel(self):
        path = self.logic.default_model_path()
        if not path:
            slicer.util.errorDisplay("This installation has no shipped model; select a model file.")
            return
        self.logic.parameters.model_path = path

    def _python(self):
        return shutil.which("PythonSlicer") or sys.executable

    def _startJob(self, start):
        if not ensure_engine_dependencies():
            return
        self.ui.deviceLabel.text = device_description()
        with slicer.util.tryWithErrorDisplay("Cannot start the detection.", waitCursor=True):
            self.job = start()
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.cancelButton.show()
            self.ui.cancelButton.enabled = True
            self.ui.statusLabel.text = f"Starting ({self.job.input_name})..."
            self.timer.start()
        self.updateGUIFromParameterNode()

    def onDetect(self):
        self._startJob(lambda: self.logic.start_detection(python=self._python()))

    def onBatchVolumes(self):
        volumes = list(self.ui.batchVolumesCheckableSelector.checkedNodes())
        self._startJob(lambda: self.logic.start_batch_detection(volumes=volumes, python=self._python()))

    def onBatchFolder(self):
        folder, output = self.ui.batchFolderLineEdit.currentPath, self.ui.batchOutputLineEdit.currentPath
        self._startJob(lambda: self.logic.start_batch_detection(folder=folder, output_folder=output or None, python=self._python()))

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
        if job.command.cancel_requested_at is not None:
            job.cleanup()
            self.ui.statusLabel.text = "Detection cancelled."
        elif code not in (0, 1) or (code == 1 and not job.cohort):
            job.cleanup()
            self.ui.statusLabel.text = "Detection failed: see the Python console for the message."
            slicer.util.errorDisplay("The detection failed; the message is in the Python console.")
        else:
            with slicer.util.tryWithErrorDisplay("Cannot load the results.", waitCursor=True):
                self.ui.statusLabel.text = self._loadJob(job)
        self.updateGUIFromParameterNode()

    def _loadJob(self, job):
        """Results into the scene, bound to the job's own inputs; returns the status line."""
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
        with slicer.util.tryWithErrorDisplay("Cannot show this map.", waitCursor=True):
            params.score_map = self.ui.scoreMapComboBox.currentText
            self.logic.apply_threshold()
            slicer.util.setSliceViewerLayers(foreground=params.result_volume(params.score_map))

    def onThresholdMoved(self, value):
        if not self._updating:
            self.thresholdTimer.start()

    def onApplyThreshold(self):
        if self._updating or not self.logic.parameters.result_maps():
            return
        params = self.logic.parameters
        with slicer.util.tryWithErrorDisplay("Cannot update the mask.", waitCursor=True):
            with params.batch():
                params.min_lesion_mm3 = self.ui.minLesionSizeSlider.value
                self.logic.apply_threshold(self.ui.thresholdSlider.value)
        self._showSummary()

    def _askPath(self, title, default_name, file_filter):
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), title, default_name, file_filter)
        if not path:
            return None, False
        overwrite = os.path.exists(path)
        if overwrite and not slicer.util.confirmYesNoDisplay(f"{path} exists. Replace it?"):
            return None, False
        return path, overwrite

    def _export(self, title, suffix, file_filter, write):
        volume = self.logic.parameters.input_volume
        name = volume.GetName() if volume is not None else "SSAE"
        path, overwrite = self._askPath(title, f"{name}{suffix}", file_filter)
        if path:
            with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
                write(path, overwrite=overwrite)
                self.ui.statusLabel.text = f"Written: {path}"

    def onExportLabelmap(self):
        self._export("Export lesion mask", "_lesion_mask.nrrd", "Labelmap (*.nrrd *.nii.gz *.nii)", self.logic.export_labelmap)

    def onExportSegmentation(self):
        self._export("Export segmentation", "_anomalies.seg.nrrd", "Segmentation (*.seg.nrrd)", self.logic.export_segmentation)

    def onExportTable(self):
        self._export("Export lesion table", "_lesions.csv", "CSV (*.csv)", self.logic.export_lesion_table)


class SSAEAnomalyLogic(ScriptedLoadableModuleLogic, AnomalyLogic):
    """The module's logic on the application's scene (see ``SSAEAnomalyLib.AnomalyLogic``)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        AnomalyLogic.__init__(self, slicer.mrmlScene)


class SSAEAnomalyTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer on the shipped MSLUB sample with the shipped model (about a minute on a CPU)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("PyTorch is not installed: SSAEAnomalyTest is skipped (Detect anomalies offers to install it).")
            return
        self.setUp()
        self.test_detect_threshold_export()
        self.setUp()
        self.test_background_detection()

    def _load_sample(self):
        from ssae.resources import sample_case_dir

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
        from ssae.background import wait_for

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
