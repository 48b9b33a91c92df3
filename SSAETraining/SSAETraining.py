"""SSAE Training: train a scale-space (or plain) autoencoder on healthy scans from 3D Slicer.

Training runs as a separate ``ssae train`` process, so Slicer stays responsive; the panel
follows the engine's JSON-lines progress log (level, epoch, losses, ETA), shows the log, and
Cancel ends the process tree after the engine has saved its resume state. A run outlives a
developer's Reload of this module (the new panel picks it up again) but not Slicer itself.
Nothing here imports PyTorch; Slicer 5.10 or newer (``SSAEAnomalyLib.compatibility``).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


def _make_engine_importable() -> None:
    """In a source checkout the ``ssae`` package and SSAEAnomaly sit beside this module's folder."""
    root = Path(__file__).resolve().parent.parent
    for folder in (root, root / "SSAEAnomaly"):
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


_make_engine_importable()

from SSAEAnomalyLib.compatibility import unsupported_reason  # noqa: E402 (paths set above)

UNSUPPORTED = unsupported_reason(sys.version_info, (slicer.app.majorVersion, slicer.app.minorVersion))
if UNSUPPORTED is None:
    from SSAEAnomalyLib.dependencies import ensure_engine_dependencies, packages_summary, self_test_skip_reason
    from SSAETrainingLib import RUNNING, TrainingRequest, load_request, parameter_node, save_request, start_training

    from ssae.models.settings import VARIANTS

MODES = {"train": "Train a new model on healthy scans", "adapt": "Adapt a model to my scans"}
SIZES = ("64", "128", "256")
DEVICES = ("auto", "cpu", "cuda")
POLL_MS = 500


class SSAETraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SSAE Training"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["SSAEAnomaly"]
        self.parent.contributors = ["SSAE for 3D Slicer contributors"]
        self.parent.helpText = (
            "Train a Scale-Space Autoencoder on a folder of healthy FLAIR scans in a background process "
            "(progress, log, cancel and resume), then use the model in SSAE Anomaly."
        )
        self.parent.acknowledgementText = "Method: Baur et al., MICCAI 2020."


class SSAETrainingWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.job = None
        self.ui = None
        self.lastModel = ""
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        if UNSUPPORTED is not None:
            message = qt.QLabel()
            message.wordWrap = True
            message.text = UNSUPPORTED
            self.layout.addWidget(message)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SSAETraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for key, label in MODES.items():
            self.ui.modeComboBox.addItem(label, key)
        self.ui.modeComboBox.connect("currentIndexChanged(int)", self.onModeChanged)
        self.ui.variantComboBox.addItems(list(VARIANTS))
        self.ui.sizeComboBox.addItems(list(SIZES))
        self.ui.deviceComboBox.addItems(list(DEVICES))
        self.ui.deviceLabel.text = packages_summary("the training log names the device it runs on (auto: the GPU where PyTorch sees one).")
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.useModelButton.connect("clicked(bool)", self.onUseModel)
        RUNNING.stop_when_application_quits(slicer.app)
        self.showRequest(load_request(parameter_node(slicer.mrmlScene)))
        if RUNNING.job is not None:  # a run started before a developer's Reload of this module
            self._follow(RUNNING.job)

    def cleanup(self):
        """The panel goes (Reload or quit): it stops following the run. A Reload leaves the run
        going and the new panel follows it; quitting Slicer stops it (``RUNNING.stop``, connected
        to ``aboutToQuit()`` once per process)."""
        self.timer.stop()

    def onModeChanged(self, index=None):
        adapting = self.ui.modeComboBox.currentData == "adapt"
        self.ui.baseModelLineEdit.enabled = adapting
        for widget in (self.ui.modelCollapsibleButton, self.ui.resumeCheckBox):
            widget.enabled = not adapting  # the model to adapt fixes architecture and preprocessing
        self.ui.trainButton.text = "Adapt" if adapting else "Train"

    def showRequest(self, request: TrainingRequest):
        self.ui.modeComboBox.currentIndex = max(0, self.ui.modeComboBox.findData(request.mode))
        self.ui.baseModelLineEdit.currentPath = request.base_model
        self.onModeChanged()
        self.ui.dataFolderLineEdit.currentPath = request.data_folder
        self.ui.brainMasksFolderLineEdit.currentPath = request.brain_masks_folder
        self.ui.variantComboBox.currentIndex = max(0, self.ui.variantComboBox.findText(request.variant))
        self.ui.levelsSpinBox.value = request.levels
        self.ui.sizeComboBox.currentIndex = max(0, self.ui.sizeComboBox.findText(str(request.size)))
        self.ui.atlasCheckBox.checked = request.atlas
        self.ui.biasCorrectionCheckBox.checked = request.bias_correction
        self.ui.epochsSpinBox.value = request.epochs
        self.ui.patienceSpinBox.value = request.patience
        self.ui.batchSizeSpinBox.value = request.batch_size
        self.ui.deviceComboBox.currentIndex = max(0, self.ui.deviceComboBox.findText(request.device))
        self.ui.outputPathLineEdit.currentPath = request.output

    def currentRequest(self) -> TrainingRequest:
        return TrainingRequest(
            data_folder=self.ui.dataFolderLineEdit.currentPath,
            output=self.ui.outputPathLineEdit.currentPath,
            brain_masks_folder=self.ui.brainMasksFolderLineEdit.currentPath,
            variant=self.ui.variantComboBox.currentText,
            size=int(self.ui.sizeComboBox.currentText),
            levels=self.ui.levelsSpinBox.value,
            epochs=self.ui.epochsSpinBox.value,
            patience=self.ui.patienceSpinBox.value,
            batch_size=self.ui.batchSizeSpinBox.value,
            atlas=self.ui.atlasCheckBox.checked,
            bias_correction=self.ui.biasCorrectionCheckBox.checked,
            device=self.ui.deviceComboBox.currentText,
            resume=self.ui.resumeCheckBox.checked and self.ui.modeComboBox.currentData != "adapt",
            overwrite=self.ui.overwriteCheckBox.checked,
            mode=self.ui.modeComboBox.currentData or "train",
            base_model=self.ui.baseModelLineEdit.currentPath,
        )

    @contextmanager
    def _reportingErrors(self, message):
        """Show an error in a dialog and go on (``tryWithErrorDisplay`` re-raises: in a Qt slot
        that would skip the rest of the slot)."""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
                yield
        except Exception:  # noqa: BLE001 (shown to the user by tryWithErrorDisplay)
            logging.exception(message)

    def onTrain(self):
        request = self.currentRequest()
        save_request(parameter_node(slicer.mrmlScene), replace(request, resume=False, overwrite=False))
        if not ensure_engine_dependencies():  # declined or failed: it said why, the panel stays as it was
            return
        with self._reportingErrors("Cannot start training."):
            job = start_training(request, python=shutil.which("PythonSlicer") or sys.executable)
            RUNNING.job = job
            self.ui.logTextEdit.clear()
            self._follow(job)

    def _follow(self, job):
        self.job = job
        self.ui.progressBar.value = int(100 * job.progress.fraction)
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self.ui.cancelButton.enabled = True
        self.ui.trainButton.enabled = False
        self.ui.useModelButton.enabled = False
        self.ui.statusLabel.text = "Starting..." if not job.progress.history else job.progress.status
        self.timer.start()

    def onPoll(self):
        if self.job is None:
            return
        for line in self.job.command.new_lines():
            self.ui.logTextEdit.appendPlainText(line)
        code = self.job.poll()
        progress = self.job.progress
        self.ui.progressBar.value = int(100 * progress.fraction)
        eta = f" (at most {int(progress.eta_s // 60)} min left)" if progress.eta_s else ""
        self.ui.statusLabel.text = progress.status + eta
        if code is None:
            return
        self.timer.stop()
        for line in self.job.command.new_lines():
            self.ui.logTextEdit.appendPlainText(line)
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.ui.trainButton.enabled = True
        if code == 0 and progress.model:
            self.ui.useModelButton.enabled = True
            self.ui.statusLabel.text = f"Done: {progress.model}"
        elif code == 130:
            self.ui.statusLabel.text = "Stopped. Tick 'Resume' and click Train to continue this run."
        else:
            self.ui.statusLabel.text = f"Training failed (exit code {code}): {progress.status}. See the log."
        shutil.rmtree(self.job.progress_log.parent, ignore_errors=True)
        self.lastModel = progress.model
        self.job = None
        RUNNING.job = None

    def onCancel(self):
        """Ask the run to stop (it saves its resume state); the timer sees it end. Never waits here."""
        if self.job is not None and self.job.command.running:
            self.ui.statusLabel.text = "Stopping (saving the resume state)..."
            self.ui.cancelButton.enabled = False
            self.job.command.request_cancel()

    def onUseModel(self):
        from SSAEAnomalyLib import AnomalyParameters

        AnomalyParameters.of_scene(slicer.mrmlScene).model_path = self.lastModel
        with self._reportingErrors("Cannot switch to SSAE Anomaly; select it in the module list."):
            slicer.util.selectModule("SSAEAnomaly")


class SSAETrainingLogic(ScriptedLoadableModuleLogic):
    """Training is the engine's job; see ``SSAETrainingLib.start_training``."""


class SSAETrainingTest(ScriptedLoadableModuleTest):
    """Trains a tiny model on the shipped MSLUB sample in a background process, inside Slicer.

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
            self.delayDisplay(f"SSAE Training self-test skipped: {reason}.")
            return
        self.setUp()
        self.test_train_cancel_resume()

    def test_train_cancel_resume(self):
        from ssae.app.processes import wait_for
        from ssae.io.resources import sample_case_dir
        from ssae.models.checkpoint import read_model_card

        self.delayDisplay("Training a tiny model in the background")
        folder = Path(tempfile.mkdtemp())
        request = TrainingRequest(
            data_folder=str(sample_case_dir().parent),
            output=str(folder / "tiny.safetensors"),
            size=64,
            levels=2,
            epochs=2,
            patience=2,
            batch_size=8,
            atlas=False,
            bias_correction=False,
            device="cpu",
        )
        python = shutil.which("PythonSlicer") or sys.executable
        job = start_training(request, python=python)
        self.assertEqual(wait_for(job.command, timeout_s=900), 0)
        job.poll()
        self.assertTrue(job.progress.finished and not job.progress.failed)
        self.assertEqual(read_model_card(folder / "tiny.safetensors")["architecture"]["levels"], 2)
        shutil.rmtree(folder)
        self.delayDisplay("Test passed")
