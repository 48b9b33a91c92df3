"""SSAE Anomaly: detect, inspect, threshold and export brain FLAIR anomalies in 3D Slicer.

Thin layer over ``SSAEAnomalyLib`` (scene adapters, testable without Qt) and the ``ssae``
engine: the widget loads its .ui, mirrors the parameter node and runs detection as a
background ``ssae detect`` process polled by a timer, so Slicer stays responsive.
"""

from __future__ import annotations

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

from SSAEAnomalyLib import AnomalyLogic
from SSAEAnomalyLib.dependencies import device_description, ensure_engine_dependencies

DEVICES = ("auto", "cpu", "cuda")
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
            "volume and a model, click Detect anomalies, then inspect the score maps per scale and aggregated, "
            "move the threshold and export the lesion mask. See the extension's README."
        )
        self.parent.acknowledgementText = (
            "Method: C. Baur, B. Wiestler, S. Albarqouni, N. Navab, Scale-Space Autoencoders for Unsupervised "
            "Anomaly Segmentation in Brain MRI, MICCAI 2020. Sample data: MSLUB (Lesjak et al. 2018, CC-BY)."
        )


class SSAEAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self._updating = False
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPollDetection)
        self.thresholdTimer = qt.QTimer()
        self.thresholdTimer.setSingleShot(True)
        self.thresholdTimer.setInterval(120)
        self.thresholdTimer.connect("timeout()", self.onApplyThreshold)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SSAEAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SSAEAnomalyLogic()

        self.ui.deviceComboBox.addItems(list(DEVICES))
        self.ui.deviceLabel.text = device_description()
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.ui.lesionTableView.setMRMLScene(slicer.mrmlScene)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.brainMaskSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.defaultModelButton.connect("clicked(bool)", self.onDefaultModel)
        self.ui.detectButton.connect("clicked(bool)", self.onDetect)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.scoreMapComboBox.connect("currentIndexChanged(int)", self.onScoreMapChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", lambda value: self.thresholdTimer.start())
        self.ui.minLesionSizeSlider.connect("valueChanged(double)", lambda value: self.thresholdTimer.start())
        self.ui.exportLabelmapButton.connect("clicked(bool)", self.onExportLabelmap)
        self.ui.exportSegmentationButton.connect("clicked(bool)", self.onExportSegmentation)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndClose)
        self.observeParameterNode()
        if not self.logic.parameters.model_path and self.logic.default_model_path():
            self.logic.parameters.model_path = self.logic.default_model_path()
        self.updateGUIFromParameterNode()

    def cleanup(self):
        self.onCancel()
        self.removeObservers()

    # parameter node <-> GUI -----------------------------------------------------------------------
    def observeParameterNode(self):
        self.removeObservers(self.updateGUIFromParameterNode)
        self.addObserver(self.logic.parameters.node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneEndClose(self, caller=None, event=None):
        self.observeParameterNode()
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._updating:
            return
        self._updating = True
        try:
            params = self.logic.parameters
            self.ui.inputVolumeSelector.setCurrentNode(params.input_volume)
            self.ui.brainMaskSelector.setCurrentNode(params.brain_mask)
            self.ui.modelPathLineEdit.currentPath = params.model_path
            self.ui.deviceComboBox.currentIndex = max(0, self.ui.deviceComboBox.findText(params.device))
            self.ui.modelCardLabel.text = self._modelSummary(params.model_path)
            self.ui.detectButton.enabled = params.input_volume is not None and bool(params.model_path) and self.job is None
            maps = params.result_maps()
            self.ui.maskCollapsibleButton.enabled = bool(maps)
            self.ui.scoreMapComboBox.clear()
            for name in maps:
                self.ui.scoreMapComboBox.addItem(name)
            if maps:
                self.ui.scoreMapComboBox.currentIndex = max(0, self.ui.scoreMapComboBox.findText(params.score_map))
                low, high = self.logic.threshold_range()
                self.ui.thresholdSlider.minimum, self.ui.thresholdSlider.maximum = low, high
                self.ui.thresholdSlider.singleStep = (high - low) / 1000.0
                self.ui.thresholdSlider.value = params.threshold_of(params.score_map)
                self.ui.minLesionSizeSlider.value = params.min_lesion_mm3
                self.ui.lesionTableView.setMRMLTableNode(params.statistics_table)
                self._showSummary()
        finally:
            self._updating = False

    def updateParameterNodeFromGUI(self, *args):
        if self._updating:
            return
        params = self.logic.parameters
        params.input_volume = self.ui.inputVolumeSelector.currentNode()
        params.brain_mask = self.ui.brainMaskSelector.currentNode()
        params.model_path = self.ui.modelPathLineEdit.currentPath
        params.device = self.ui.deviceComboBox.currentText or "auto"

    @staticmethod
    def _modelSummary(path):
        if not path:
            return "No model selected."
        try:
            return AnomalyLogic.model_summary(path)
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

    def onDetect(self):
        if not ensure_engine_dependencies():
            return
        self.ui.deviceLabel.text = device_description()
        with slicer.util.tryWithErrorDisplay("Cannot start the detection.", waitCursor=True):
            python = shutil.which("PythonSlicer") or sys.executable
            self.job = self.logic.start_detection(python=python)
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.cancelButton.show()
            self.ui.detectButton.enabled = False
            self.ui.statusLabel.text = "Starting..."
            self.timer.start()

    def onPollDetection(self):
        job = self.job
        if job is None:
            return
        for line in job.command.new_lines():
            print(line)
        for event in job.command.new_events():
            if event.get("event") == "progress":
                self.ui.progressBar.value = int(100 * event["fraction"])
                self.ui.statusLabel.text = event.get("message", "")
        code = job.command.poll()
        if code is None:
            return
        self.timer.stop()
        self.job = None
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        if code != 0:
            job.cleanup()
            self.ui.statusLabel.text = "Detection failed: see the Python console for the message."
            slicer.util.errorDisplay("The detection failed; the message is in the Python console.")
        else:
            with slicer.util.tryWithErrorDisplay("Cannot load the results.", waitCursor=True):
                rows = self.logic.load_detection(job, replace_previous=self.ui.replaceResultsCheckBox.checked)
                self.ui.statusLabel.text = (
                    f"Done: {rows.statistics.count} lesion(s), {rows.statistics.total_ml:.2f} ml." + self._registrationWarnings()
                )
                slicer.util.setSliceViewerLayers(
                    background=self.logic.parameters.input_volume,
                    foreground=self.logic.parameters.result_volume(self.logic.parameters.score_map),
                    foregroundOpacity=0.6,
                )
        self.updateGUIFromParameterNode()

    def _registrationWarnings(self):
        report = self.logic.registration
        if not report:
            return ""
        warnings = [] if report.get("passed", True) else [f"Registration check failed: {report['message']}. Inspect the results."]
        if report.get("contrast_warning"):
            warnings.append(f"The model expects FLAIR, but {report['contrast_warning']}.")
        if warnings:
            slicer.util.warningDisplay("\n".join(warnings), "SSAE Anomaly")
        return " " + " ".join(warnings)

    def onCancel(self):
        if self.job is not None:
            self.timer.stop()
            self.job.command.cancel()
            self.job.cleanup()
            self.job = None
            self.ui.progressBar.hide()
            self.ui.cancelButton.hide()
            self.ui.statusLabel.text = "Detection cancelled."
            self.updateGUIFromParameterNode()

    def onScoreMapChanged(self, index):
        if self._updating or index < 0:
            return
        params = self.logic.parameters
        params.score_map = self.ui.scoreMapComboBox.currentText
        self.logic.apply_threshold()
        slicer.util.setSliceViewerLayers(foreground=params.result_volume(params.score_map))

    def onApplyThreshold(self):
        if self._updating or not self.logic.parameters.result_maps():
            return
        params = self.logic.parameters
        params.min_lesion_mm3 = self.ui.minLesionSizeSlider.value
        with slicer.util.tryWithErrorDisplay("Cannot update the mask.", waitCursor=True):
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

    def onExportLabelmap(self):
        volume = self.logic.parameters.input_volume
        path, overwrite = self._askPath("Export lesion mask", f"{volume.GetName()}_lesion_mask.nrrd", "Labelmap (*.nrrd *.nii.gz *.nii)")
        if path:
            with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
                self.logic.export_labelmap(path, overwrite=overwrite)
                self.ui.statusLabel.text = f"Mask written to {path}"

    def onExportSegmentation(self):
        volume = self.logic.parameters.input_volume
        path, overwrite = self._askPath("Export segmentation", f"{volume.GetName()}_anomalies.seg.nrrd", "Segmentation (*.seg.nrrd)")
        if path:
            with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
                self.logic.export_segmentation(path, overwrite=overwrite)
                self.ui.statusLabel.text = f"Segmentation written to {path}"


class SSAEAnomalyLogic(ScriptedLoadableModuleLogic, AnomalyLogic):
    """The module's logic on the application's scene (see ``SSAEAnomalyLib.AnomalyLogic``)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        AnomalyLogic.__init__(self, slicer.mrmlScene)


class SSAEAnomalyTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer on the shipped MSLUB sample with the shipped model."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_detect_threshold_export()
        self.setUp()
        self.test_background_detection()

    def _load_sample(self):
        from ssae.resources import sample_case_dir

        return slicer.util.loadVolume(str(sample_case_dir() / "flair.nii.gz"))

    def test_detect_threshold_export(self):
        self.delayDisplay("Detecting anomalies in the MSLUB sample")
        volume = self._load_sample()
        logic = SSAEAnomalyLogic()
        params = logic.parameters
        params.input_volume = volume
        params.model_path = logic.default_model_path()
        params.device = "cpu"
        rows = logic.detect()
        maps = params.result_maps()
        self.assertEqual(maps[0], "aggregated")
        self.assertGreaterEqual(len(maps), 2)
        for name in maps:
            node = params.result_volume(name)
            self.assertEqual(node.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        segmentation = params.segmentation.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), len(maps))
        lower = logic.apply_threshold(params.threshold_of("aggregated") * 0.5)
        self.assertGreater(lower.statistics.total_ml, rows.statistics.total_ml)
        folder = Path(tempfile.mkdtemp())
        labelmap = logic.export_labelmap(folder / "mask.nrrd")
        loaded = slicer.util.loadLabelVolume(str(labelmap))
        self.assertEqual(loaded.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        logic.export_segmentation(folder / "anomalies.seg.nrrd")
        from ssae.errors import SSAEError

        with self.assertRaises(SSAEError):
            logic.export_segmentation(folder / "anomalies.seg.nrrd")  # never overwrites without asking
        shutil.rmtree(folder)
        self.delayDisplay("Test passed")

    def test_background_detection(self):
        from ssae.background import wait_for

        self.delayDisplay("Detecting in a background process")
        volume = self._load_sample()
        logic = SSAEAnomalyLogic()
        logic.parameters.input_volume = volume
        logic.parameters.model_path = logic.default_model_path()
        logic.parameters.device = "cpu"
        job = logic.start_detection(python=shutil.which("PythonSlicer") or sys.executable)
        self.assertEqual(wait_for(job.command, timeout_s=600), 0)
        rows = logic.load_detection(job)
        self.assertGreaterEqual(rows.statistics.count, 0)
        self.assertIsNotNone(logic.parameters.segmentation)
        self.delayDisplay("Test passed")
