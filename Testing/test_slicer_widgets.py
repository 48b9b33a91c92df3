"""Both modules' widget code on Slicer's real contracts: real scenes and slicer.util, header-derived
widget doubles that refuse what PythonQt refuses (Testing/slicer_double).

Each test drives a module the way Slicer does (import, startupCompleted, panel + setup, enter,
clicks, timers, exit, Close Scene, reload, unload) and checks what a user would see. A detection
job runs the real ``ssae detect`` command line the logic builds, in this process, instead of in
the worker; everything else is the modules' own code.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
import slicer
import vtk
from conftest import REPO
from headless_slicer import headless_scene
from slicer_double import QMessageBox, Session
from slicer_double.api import class_api
from slicer_double.qobject import REFUSED_CONNECTIONS
from slicer_double.widgets import QComboBox, QTimer, ctkPathLineEdit, ctkSliderWidget, qMRMLNodeComboBox
from SSAEAnomalyLib import update_volume_node_from_image
from SSAEAnomalyLib.compatibility import unsupported_reason

from ssae.app.cli import run as run_cli

ANOMALY = REPO / "SSAEAnomaly" / "SSAEAnomaly.py"
TRAINING = REPO / "SSAETraining" / "SSAETraining.py"


class FinishedRun:
    """A background run the poll timer finds finished (what a worker job looks like at its end)."""

    def __init__(self, args: list[str], code: int) -> None:
        self.command, self.code, self.cancel_requested_at = ["ssae worker job", *args], code, None

    def poll(self) -> int:
        return self.code

    def new_lines(self) -> list[str]:
        return []

    def new_events(self) -> list[dict]:
        return [{"event": "progress", "fraction": 1.0, "message": "done"}]

    def request_cancel(self) -> None:
        self.cancel_requested_at = time.monotonic()


@pytest.fixture()
def session(monkeypatch):
    scene, _ = headless_scene()
    session = Session(scene, monkeypatch, main_window=True)
    yield session
    session.close()


def _volume(scene, path: Path, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_volume_node_from_image(node, sitk.ReadImage(str(path)))
    node.CreateDefaultDisplayNodes()
    return node


def _anomaly_panel(session: Session, model: Path | None = None):
    harness = session.load_module("SSAEAnomaly", ANOMALY)
    session.startup_completed()
    widget = harness.create_widget()
    if model is not None:
        widget.ui.modelPathLineEdit.currentPath = str(model)  # as the user picks the file
    return harness, widget


def _run_jobs_in_process(monkeypatch, logic, codes: list[int] | None = None):
    """The logic's jobs run the ssae command line it built, here and now (not in the worker)."""
    submitted = []

    def submit(args, workdir, python, env):
        submitted.append(args)
        code = run_cli([str(a) for a in args])
        return FinishedRun(args, codes.pop(0) if codes else code)

    monkeypatch.setattr(logic, "_submit", submit)
    return submitted


def test_the_double_refuses_what_pythonqt_refuses_and_follows_the_headers():
    combo = qMRMLNodeComboBox()
    with pytest.raises(AttributeError, match="Slot 'currentNode' can not be overwritten"):
        combo.currentNode = None
    with pytest.raises(AttributeError, match="creating new attributes on C\\+\\+ objects is not allowed"):
        combo.someAttribute = 1
    with pytest.raises(AttributeError, match="not writable"):
        QComboBox().count = 3
    with pytest.raises(AttributeError, match="does not accept"):
        QComboBox().currentIndex = "1"
    REFUSED_CONNECTIONS.clear()
    assert combo.connect("currentNodeChanged(vtkMRMLNode*)", print)
    assert not combo.connect("currentNodeChanged(vtkMRMLScalarVolumeNode*)", print)
    assert REFUSED_CONNECTIONS == ["qMRMLNodeComboBox::currentNodeChanged(vtkMRMLScalarVolumeNode*)"]
    REFUSED_CONNECTIONS.clear()
    with pytest.raises(AttributeError, match="Slot 'singleShot'"):  # PythonQt ignores QTimer's singleShot property
        QTimer().singleShot = True
    assert "currentNode" not in class_api("qMRMLNodeComboBox").properties and "currentNodeID" in class_api("qMRMLNodeComboBox").properties
    path = ctkPathLineEdit()
    path.nameFilters = ["Models (*.safetensors)"]
    heard = []
    path.connect("currentPathChanged(QString)", heard.append)
    path.connect("validInputChanged(bool)", lambda valid: heard.append(valid))
    path.currentPath = "/a/model.safetensors"
    path.currentPath = "/a/model.txt"  # refused by the name filters: no currentPathChanged
    path.currentPath = ""  # emptied: validInputChanged only
    assert heard == [True, "/a/model.safetensors", False]
    slider = ctkSliderWidget()
    slider.decimals, slider.maximum, slider.value = 2, 1.0, 0.123456
    assert slider.value == 0.12
    slider.maximum = 0.1
    assert slider.value == 0.1


def test_the_anomaly_panel_sets_up_on_slicer_contracts(session, tiny_model):
    harness, widget = _anomaly_panel(session)
    assert REFUSED_CONNECTIONS == []
    logic = widget.logic
    assert type(logic).__mro__[1].__name__ == "ScriptedLoadableModuleLogic" and logic.moduleName == "SSAEAnomaly"
    assert logic.scene is session.scene
    assert logic.parameters.node.GetAttribute("ModuleName") == "SSAEAnomaly"
    assert widget.ui.modelPathLineEdit.currentPath == logic.default_model_path() != ""
    assert widget.ui.modelCardLabel.text.startswith("dense SSAE 128 px")
    assert not widget.ui.detectButton.enabled and widget.ui.batchVolumesButton.enabled
    assert widget.ui.deviceLabel.text.startswith("PyTorch ") and "installed" in widget.ui.deviceLabel.text
    sources = slicer.modules.sampleDataSources["SSAE (brain FLAIR anomalies)"]
    assert [s.sampleName for s in sources] == ["SSAE MSLUB patient 19", "SSAE MSLUB patient 7", "SSAE raw clinical FLAIR", "SSAE follow-up pair"]
    for source in sources:
        assert all(Path(uri[len("file://") :]).is_file() for uri in source.uris)
        assert all(
            slicer.util.computeChecksum("SHA256", uri[len("file://") :]) == c.split(":")[1] for uri, c in zip(source.uris, source.checksums)
        )
        assert set(source.loadFileTypes) <= {"VolumeFile", "SegmentationFile"}
    assert session.dialogs == []
    loaded = vtk.vtkStringArray()
    session.terminologies.GetLoadedTerminologyNames(loaded)  # Slicer's real Terminologies logic
    assert "SSAE anomaly segmentation category and type" in [loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())]


def test_the_parameter_node_and_the_panel_follow_each_other(session, small_cases, tiny_model):
    harness, widget = _anomaly_panel(session, tiny_model)
    params = widget.logic.parameters
    assert params.model_path == str(tiny_model)
    flair = _volume(session.scene, small_cases / "patient19" / "flair.nii.gz", "FLAIR 19")
    assert widget.ui.inputVolumeSelector.currentNode() is None and not widget.ui.detectButton.enabled
    widget.ui.inputVolumeSelector.setCurrentNode(flair)  # the user picks the volume
    assert params.input_volume is flair and widget.ui.detectButton.enabled
    widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findText("cpu")
    widget.ui.adaptComboBox.currentIndex = widget.ui.adaptComboBox.findData("off")
    assert (params.device, params.adapt) == ("cpu", "off")
    other = _volume(session.scene, small_cases / "patient07" / "flair.nii.gz", "FLAIR 07")
    params.input_volume = other  # a script (or a loaded scene) changes the parameter node
    assert widget.ui.inputVolumeSelector.currentNode() is other
    assert params.input_volume is other  # the quiet GUI update did not write back
    widget.ui.modelPathLineEdit.currentPath = ""  # the user clears the model path
    assert params.model_path == "" and not widget.ui.detectButton.enabled
    widget.ui.modelPathLineEdit.currentPath = str(tiny_model)
    broken = tiny_model.parent / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    widget.ui.modelPathLineEdit.currentPath = str(broken)
    assert widget.ui.modelCardLabel.text.startswith("Cannot use this file") and not widget.ui.detectButton.enabled


def test_closing_the_scene_leaves_a_panel_that_can_detect_again(session, small_cases, tiny_model):
    harness, widget = _anomaly_panel(session, tiny_model)
    params = widget.logic.parameters
    widget.ui.inputVolumeSelector.setCurrentNode(_volume(session.scene, small_cases / "patient19" / "flair.nii.gz", "FLAIR"))
    session.close_scene()
    assert params.node.GetAttribute("ModuleName") == "SSAEAnomaly"
    assert params.model_path == widget.logic.default_model_path()  # the shipped model is offered again
    assert widget.ui.inputVolumeSelector.currentNode() is None and not widget.ui.detectButton.enabled
    widget.ui.inputVolumeSelector.setCurrentNode(_volume(session.scene, small_cases / "patient19" / "flair.nii.gz", "FLAIR again"))
    assert widget.ui.detectButton.enabled


def _results_panel(session, monkeypatch, small_cases, tiny_model):
    harness, widget = _anomaly_panel(session, tiny_model)
    flair = _volume(session.scene, small_cases / "patient19" / "flair.nii.gz", "FLAIR")
    widget.ui.inputVolumeSelector.setCurrentNode(flair)
    widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findText("cpu")
    widget.ui.adaptComboBox.currentIndex = widget.ui.adaptComboBox.findData("off")
    submitted = _run_jobs_in_process(monkeypatch, widget.logic)
    widget.ui.detectButton.click()
    assert widget.job is not None and not widget.ui.detectButton.enabled and not widget.ui.inputVolumeSelector.enabled
    assert widget.timer._fire()
    return harness, widget, flair, submitted


def test_detect_loads_the_results_and_the_mask_follows_threshold_map_and_operating_point(
    session, monkeypatch, small_cases, tiny_model, tmp_path
):
    harness, widget, flair, submitted = _results_panel(session, monkeypatch, small_cases, tiny_model)
    args = submitted[0]
    assert args[0] == "detect" and args[args.index("--operating-point") + 1] == "balanced" and "--no-adapt" in args
    params = widget.logic.parameters
    assert widget.job is None and widget.ui.detectButton.enabled and widget.ui.inputVolumeSelector.enabled
    assert widget.ui.maskCollapsibleButton.enabled and widget.ui.scoreMapComboBox.count == len(params.result_maps())
    assert widget.ui.statusLabel.text.startswith("FLAIR: ")
    assert widget.ui.lesionTableView.mrmlTableNode() is params.statistics_table
    assert "balanced operating point" in widget.ui.lesionSummaryLabel.text
    assert "healthy brain" in widget.ui.thresholdMeaningLabel.text
    calibrated = params.threshold_of(params.score_map)
    assert widget.ui.thresholdSlider.value == pytest.approx(calibrated, rel=1e-3)

    moved = (calibrated or widget.ui.thresholdSlider.maximum) * 0.5
    widget.ui.thresholdSlider.value = moved  # the user drags the slider
    assert widget.thresholdTimer.isActive() and widget.thresholdTimer._fire()
    assert params.threshold_of(params.score_map) == pytest.approx(moved, rel=1e-3)
    assert "your threshold" in widget.ui.lesionSummaryLabel.text

    widget.ui.scoreMapComboBox.currentIndex = widget.ui.scoreMapComboBox.findText("aggregated")
    assert params.score_map == "aggregated"
    assert params.segmentation.GetDisplayNode().GetSegmentVisibility("SSAE_aggregated")
    volumes, thresholds = {}, {}
    for preset in ("sensitive", "specific"):  # smaller healthy budget: higher threshold, less volume
        widget.ui.operatingPointComboBox.currentIndex = widget.ui.operatingPointComboBox.findData(preset)
        assert params.operating_point == preset and f"{preset} operating point" in widget.ui.lesionSummaryLabel.text
        volumes[preset] = float(params.statistics_table.GetAttribute("SSAE.totalVolumeMl"))
        thresholds[preset] = widget.ui.thresholdSlider.value
        assert widget.ui.minLesionSizeSlider.value == params.min_lesion_mm3
    assert thresholds["specific"] > thresholds["sensitive"] and volumes["specific"] <= volumes["sensitive"]

    session.answers["save_file"] += [str(tmp_path / "mask.nii.gz"), str(tmp_path / "lesions.csv")]
    widget.ui.exportLabelmapButton.click()
    (tmp_path / "lesions.csv").write_text("an older file the user chose to replace in the dialog", encoding="utf-8")
    widget.ui.exportTableButton.click()
    assert (tmp_path / "mask.nii.gz").is_file()
    assert (tmp_path / "lesions.csv").read_text(encoding="utf-8").startswith("lesion,volume_ml,size_band,voxels,longest_axis_mm,peak_score")
    assert [d.kind for d in session.dialogs] == ["save file", "save file"]  # no second "replace?" question
    assert REFUSED_CONNECTIONS == [] and widget.ui.thresholdSlider._d["refused_steps"] == []
    nodes = session.scene.GetNumberOfNodes()
    session.answers["save_file"] += [str(tmp_path / "mask2.nii.gz")]
    widget.ui.exportLabelmapButton.click()
    assert session.scene.GetNumberOfNodes() == nodes, "an export left nodes in the scene"


def test_a_failed_results_load_shows_the_error_and_unlocks_the_panel(session, monkeypatch, small_cases, tiny_model):
    harness, widget = _anomaly_panel(session, tiny_model)
    widget.ui.inputVolumeSelector.setCurrentNode(_volume(session.scene, small_cases / "patient19" / "flair.nii.gz", "FLAIR"))
    monkeypatch.setattr(widget.logic, "_submit", lambda args, workdir, python, env: FinishedRun(args, 0))  # ends without results
    widget.ui.detectButton.click()
    assert not widget.ui.inputVolumeSelector.enabled
    widget.timer._fire()
    assert any("wrote no results" in text for text in session.message_texts("error"))
    assert widget.job is None and widget.ui.detectButton.enabled and widget.ui.inputVolumeSelector.enabled
    assert not widget.ui.progressBar.visible and not widget.ui.cancelButton.visible
    assert "failed" in widget.ui.statusLabel.text


def test_a_failed_or_declined_install_leaves_the_panel_usable(session, monkeypatch, small_cases, tiny_model):
    import SSAEAnomalyLib.dependencies as dependencies

    harness, widget = _anomaly_panel(session, tiny_model)
    widget.ui.inputVolumeSelector.setCurrentNode(_volume(session.scene, small_cases / "patient19" / "flair.nii.gz", "FLAIR"))
    monkeypatch.setattr(dependencies, "missing_packages", lambda: ["scipy"])
    session.answers["message"].append(QMessageBox.Cancel)
    widget.ui.detectButton.click()
    assert session.dialogs[-1].kind == "question" and "scipy" in session.dialogs[-1].text and session.installed == []
    session.pip_failures.append("scipy")
    widget.ui.detectButton.click()  # OK this time, and pip fails
    error = session.dialogs[-1]
    assert error.kind == "error" and "Installing the Python packages failed" in error.text and "light_the_torch" in error.text
    assert len(session.message_texts("error")) == 1, "one failure, one dialog (Slicer 5.12's pip_install has one of its own)"
    assert widget.job is None and widget.ui.detectButton.enabled and session.app.cursors == []


@pytest.mark.parametrize("version", [(5, 10), (5, 12)])
def test_pytorch_comes_in_the_range_that_works_on_slicer_in_its_own_process(monkeypatch, version):
    """light-the-torch (the PyTorch extension's tool: the build for the machine's GPU) runs as its
    own PythonSlicer process with torch < 2.13 (2.13 breaks on Slicer 5.12); a failure is one dialog."""
    import types

    import SSAEAnomalyLib.dependencies as dependencies

    scene, _ = headless_scene()
    session = Session(scene, monkeypatch, version=version, main_window=True)
    monkeypatch.setattr(dependencies, "missing_packages", lambda: ["torch"])
    really_installed = dependencies.installed
    monkeypatch.setattr(dependencies, "installed", lambda name: name != "light_the_torch" and really_installed(name))
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        return types.SimpleNamespace(returncode=1, stdout="ERROR: no matching distribution", stderr="")

    monkeypatch.setattr(dependencies.subprocess, "run", run)
    assert dependencies.ensure_engine_dependencies(ask=False) is False
    assert session.installed == [dependencies.LIGHT_THE_TORCH]
    assert commands and commands[0][1:4] == ["-m", "light_the_torch", "install"] and commands[0][4] == dependencies.TORCH_REQUIREMENT
    assert "<2.13" in dependencies.TORCH_REQUIREMENT
    errors = session.dialogs
    assert len(errors) == 1 and errors[0].kind == "error" and "no matching distribution" in errors[0].detail
    assert session.app.cursors == []


def test_leaving_the_module_releases_the_worker_and_cleanup_stops_everything(session, small_cases, tiny_model):
    harness, widget = _anomaly_panel(session, tiny_model)
    harness.enter()
    worker = widget.logic.worker
    assert worker is not None and widget.engineTimer.isActive()
    deadline = time.monotonic() + 120
    while widget.engineTimer.isActive() and time.monotonic() < deadline:
        widget.engineTimer._fire()
        time.sleep(0.2)
    assert widget.ui.deviceLabel.text.startswith(("No CUDA GPU found", "GPU available")), widget.ui.deviceLabel.text
    harness.exit()
    assert widget.logic.worker is None
    worker.process.wait(30)
    refreshed = widget.ui.modelCardLabel.text
    widget.logic.parameters.model_path = ""  # hidden: the panel does not follow the parameter node
    assert widget.ui.modelCardLabel.text == refreshed
    harness.enter()
    assert widget.ui.modelCardLabel.text == "No model selected."
    harness.unload()  # Slicer quits: cleanup
    assert not any(t.isActive() for t in (widget.timer, widget.thresholdTimer, widget.engineTimer))
    assert widget.logic.worker is None


def test_reload_gives_a_working_panel_and_the_old_one_lets_go(session, small_cases, tiny_model):
    harness, widget = _anomaly_panel(session, tiny_model)
    old = widget
    new = harness.reload()
    assert new is not old and new.logic is not None and old.timer.isActive() is False
    new.ui.inputVolumeSelector.setCurrentNode(_volume(session.scene, small_cases / "patient19" / "flair.nii.gz", "FLAIR"))
    assert new.ui.detectButton.enabled
    assert REFUSED_CONNECTIONS == []


def test_batch_over_ticked_volumes_loads_each_result_and_the_cohort_table(session, monkeypatch, small_cases, tiny_model):
    harness, widget = _anomaly_panel(session, tiny_model)
    volumes = [_volume(session.scene, small_cases / p / "flair.nii.gz", p) for p in ("patient19", "patient07")]
    widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findText("cpu")
    widget.ui.adaptComboBox.currentIndex = widget.ui.adaptComboBox.findData("off")
    for volume in volumes:
        widget.ui.batchVolumesCheckableSelector.check(volume)
    _run_jobs_in_process(monkeypatch, widget.logic)
    widget.ui.batchVolumesButton.click()
    widget.timer._fire()
    assert widget.ui.statusLabel.text.startswith("Batch done: 2 of 2")
    assert widget.ui.cohortTableView.mrmlTableNode().GetTable().GetNumberOfRows() == 2


def test_compare_with_a_prior_scan_runs_from_the_panel_and_shows_the_changes(session, monkeypatch, small_cases, tiny_model):
    harness, widget = _anomaly_panel(session, tiny_model)
    prior = _volume(session.scene, small_cases / "patient19" / "flair.nii.gz", "FLAIR 2019")
    followup = _volume(session.scene, small_cases / "patient19" / "flair.nii.gz", "FLAIR 2020")
    widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findText("cpu")
    widget.ui.adaptComboBox.currentIndex = widget.ui.adaptComboBox.findData("off")
    widget.ui.inputVolumeSelector.setCurrentNode(followup)
    assert not widget.ui.compareButton.enabled  # no prior scan yet
    widget.ui.priorVolumeSelector.setCurrentNode(prior)
    assert widget.ui.compareButton.enabled
    submitted = _run_jobs_in_process(monkeypatch, widget.logic)
    widget.ui.compareButton.click()
    assert not widget.ui.priorVolumeSelector.enabled  # locked while the job runs
    widget.timer._fire()
    args = submitted[0]
    assert args[0] == "compare" and "--no-adapt" in args and args[args.index("--device") + 1] == "cpu"
    assert widget.job is None and widget.ui.priorVolumeSelector.enabled
    assert widget.ui.statusLabel.text.startswith("FLAIR 2020 vs FLAIR 2019: 0 new, 0 enlarging")  # the same scan twice
    table = widget.ui.changeTableView.mrmlTableNode()
    assert table is not None and table.GetName().startswith("FLAIR 2020 lesion changes")
    assert widget.ui.compareSummaryLabel.text == widget.ui.statusLabel.text


def test_an_interrupted_run_over_pairs_continues_from_the_panel_and_keeps_finished_pairs(session, monkeypatch, small_cases, tiny_model, tmp_path):
    """Results written inside the pairs folder are never taken for a pair; a second run into the
    same folder asks, and continues with ``--resume`` (finished pairs untouched) or starts nothing."""
    harness, widget = _anomaly_panel(session, tiny_model)
    widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findText("cpu")
    widget.ui.adaptComboBox.currentIndex = widget.ui.adaptComboBox.findData("off")
    pairs, scan = tmp_path / "pairs", small_cases / "patient19" / "flair.nii.gz"
    for name in ("p1", "p2"):
        (pairs / name).mkdir(parents=True)
        for study in ("study1", "study2"):
            shutil.copy(scan, pairs / name / f"{study}.nii.gz")
    shutil.move(pairs / "p2", tmp_path / "later")  # p2 arrives after the first run
    output = pairs / "changes"
    widget.ui.pairsPathLineEdit.currentPath, widget.ui.pairsOutputLineEdit.currentPath = str(pairs), str(output)
    submitted = _run_jobs_in_process(monkeypatch, widget.logic)
    widget.ui.comparePairsButton.click()
    widget.timer._fire()
    assert widget.ui.statusLabel.text.startswith("Pairs done: 1 of 1"), widget.ui.statusLabel.text
    assert "--resume" not in submitted[-1] and not session.message_texts("question")
    first = {p.name: p.stat().st_mtime_ns for p in (output / "p1").iterdir()}

    shutil.move(tmp_path / "later", pairs / "p2")
    session.answers["message"].append(QMessageBox.No)
    widget.ui.comparePairsButton.click()  # declined: nothing starts
    assert len(submitted) == 1 and "earlier run" in session.message_texts("question")[-1]
    session.answers["message"].append(QMessageBox.Yes)
    widget.ui.comparePairsButton.click()
    widget.timer._fire()
    assert "--resume" in submitted[-1]
    assert widget.ui.statusLabel.text.startswith("Pairs done: 2 of 2"), widget.ui.statusLabel.text
    assert {p.name: p.stat().st_mtime_ns for p in (output / "p1").iterdir()} == first  # kept, not redone
    assert (output / "p2").is_dir()


def test_an_older_slicer_shows_a_message_instead_of_a_traceback(monkeypatch):
    scene, _ = headless_scene()
    session = Session(scene, monkeypatch, version=(5, 8))
    for name, path in (("SSAEAnomaly", ANOMALY), ("SSAETraining", TRAINING)):
        harness = session.load_module(name, path)
        session.startup_completed()
        widget = harness.create_widget()
        labels = [c for c in harness.panel.children() if c.className() == "QLabel"]
        assert len(labels) == 1 and "needs 3D Slicer 5.10 or newer" in labels[0].text and "Slicer 5.8" in labels[0].text
        harness.enter()
        harness.exit()
        harness.unload()
        assert widget.ui is None
    session.close()
    assert unsupported_reason((3, 9, 10), (5, 10)) is not None and unsupported_reason((3, 12, 10), (5, 12)) is None


def _training_panel(session):
    harness = session.load_module("SSAETraining", TRAINING)
    session.startup_completed()
    return harness, harness.create_widget()


class FakeTrainingCommand:
    """A training process whose JSON-lines events the test hands out, as the log file would."""

    def __init__(self, events: list[dict], code: int | None) -> None:
        self.events, self.code, self.cancelled, self.stopped = events, code, False, False
        self.running = code is None

    def poll(self):
        return self.code

    def new_lines(self):
        return ["a log line"]

    def new_events(self):
        events, self.events = self.events, []
        return events

    def request_cancel(self):
        self.cancelled = True

    def stop_in_background(self):
        self.stopped = True


def test_the_training_panel_trains_follows_progress_and_hands_the_model_over(session, monkeypatch, small_cases, tmp_path):
    from SSAETrainingLib import TrainingJob, TrainingProgress

    harness, widget = _training_panel(session)
    assert REFUSED_CONNECTIONS == [] and "the training log names the device" in widget.ui.deviceLabel.text
    widget.ui.dataFolderLineEdit.currentPath = str(small_cases)
    widget.ui.outputPathLineEdit.currentPath = str(tmp_path / "model.safetensors")
    widget.ui.levelsSpinBox.value = 2
    started = []
    command = FakeTrainingCommand(
        [
            {
                "event": "start",
                "levels": 2,
                "max_epochs": 2,
                "model": "m",
                "train_slices": 1,
                "train_subjects": 1,
                "val_subjects": 1,
                "device": "CPU",
            }
        ],
        None,
    )

    def start_training(request, python=None):
        started.append(request)
        return TrainingJob(command=command, progress=TrainingProgress(), progress_log=tmp_path / "run" / "progress.jsonl")

    monkeypatch.setattr(harness.python_module, "start_training", start_training)
    widget.ui.trainButton.click()
    assert started[0].levels == 2 and started[0].data_folder == str(small_cases)
    assert not widget.ui.trainButton.enabled and widget.ui.cancelButton.visible
    widget.timer._fire()
    assert "training m" in widget.ui.statusLabel.text and widget.ui.logTextEdit.toPlainText() == "a log line"
    command.events.append({"event": "done", "model": str(tmp_path / "model.safetensors"), "duration_s": 1.0})
    command.code = 0
    widget.timer._fire()
    assert widget.ui.useModelButton.enabled and widget.ui.trainButton.enabled
    widget.ui.useModelButton.click()
    from SSAEAnomalyLib import AnomalyParameters

    assert AnomalyParameters.of_scene(session.scene).model_path == str(tmp_path / "model.safetensors")
    assert session.app.main_window.selected == ["SSAEAnomaly"]


def test_a_reload_keeps_a_running_training_and_quitting_stops_it(session, monkeypatch, small_cases, tmp_path):
    from SSAETrainingLib import RUNNING, TrainingJob, TrainingProgress

    harness, widget = _training_panel(session)
    command = FakeTrainingCommand([], None)
    monkeypatch.setattr(RUNNING, "job", None)
    monkeypatch.setattr(
        harness.python_module,
        "start_training",
        lambda request, python=None: TrainingJob(command=command, progress=TrainingProgress(), progress_log=tmp_path / "p.jsonl"),
    )
    widget.ui.dataFolderLineEdit.currentPath = str(small_cases)
    widget.ui.outputPathLineEdit.currentPath = str(tmp_path / "model.safetensors")
    widget.ui.trainButton.click()
    reloaded = harness.reload()
    assert not command.stopped and reloaded.job is RUNNING.job is not None and reloaded.timer.isActive()
    assert not reloaded.ui.trainButton.enabled
    harness.unload()
    assert command.stopped and RUNNING.job is None


def test_a_training_that_cannot_start_says_why_and_unlocks(session, tmp_path):
    harness, widget = _training_panel(session)
    widget.ui.dataFolderLineEdit.currentPath = str(tmp_path / "missing")
    widget.ui.outputPathLineEdit.currentPath = str(tmp_path / "model.safetensors")
    widget.ui.trainButton.click()
    assert any("healthy scans" in text for text in session.message_texts("error"))
    assert widget.ui.trainButton.enabled and widget.job is None


SOURCE_FOLDERS = ("ssae", "SSAEAnomaly", "SSAETraining")


def test_every_file_parses_on_the_oldest_python_the_extension_claims():
    """The engine claims Python 3.10 (pyproject.toml) and Slicer 5.10 (Python 3.12); the files that
    decide whether to show the 'too old' message must parse on Slicer 5.8's Python 3.9."""
    assert 'requires-python = ">=3.10"' in (REPO / "pyproject.toml").read_text(encoding="utf-8")
    first_run = {ANOMALY, TRAINING, REPO / "SSAEAnomaly" / "SSAEAnomalyLib" / "compatibility.py"}
    for folder in SOURCE_FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 9) if path in first_run else (3, 10))


def _interpreters(version: str) -> list[str]:
    """Real interpreters of ``version``: pyenv's builds, then one on PATH (not a pyenv shim)."""
    found = [str(p) for p in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python"))]
    on_path = shutil.which(f"python{version}")
    return found + ([on_path] if on_path and "shims" not in on_path else [])


@pytest.mark.parametrize("version", ["3.10", "3.12"])
def test_every_file_compiles_with_the_oldest_engine_python_and_with_slicers(version, tmp_path):
    """With a real interpreter of the claimed minimum (3.10) and of Slicer 5.10-5.12 (3.12), where
    this machine has one (pyenv's on the CI machines of this project)."""
    candidates = _interpreters(version)
    if not candidates:
        pytest.skip(f"no Python {version} on this machine")
    files = [str(p) for folder in SOURCE_FOLDERS for p in (REPO / folder).rglob("*.py")]
    done = subprocess.run(
        [candidates[0], "-c", "import py_compile, sys\nfor f in sys.argv[1:]: py_compile.compile(f, doraise=True, cfile=f + '.check')"]
        + files,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    for f in files:
        Path(f + ".check").unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("module", ["SSAEAnomaly", "SSAETraining"])
def test_the_self_test_says_it_was_skipped_where_the_engine_is_missing(session, monkeypatch, module):
    """Slicer's Test button calls ``runTest`` inside ``tryWithErrorDisplay``: a ``SkipTest`` raised
    there would be an error dialog; the test says what it skipped instead (and ctest's unittest
    path still sees a skip)."""
    import logging
    import unittest

    import SSAEAnomalyLib.dependencies as dependencies

    harness = session.load_module(module, ANOMALY if module == "SSAEAnomaly" else TRAINING)
    session.startup_completed()
    widget = harness.create_widget()
    monkeypatch.setattr(dependencies, "missing_packages", lambda: ["torch"])
    messages = []
    monkeypatch.setattr(logging, "info", lambda message, *args: messages.append(str(message)))
    try:
        widget.onTest()
    except unittest.SkipTest:  # what pytest would report as a skip: here it is Slicer's error dialog
        pytest.fail(f"Test raised SkipTest into tryWithErrorDisplay: {session.message_texts('error')}")
    assert session.message_texts("error") == [] and any("skipped" in m and "torch" in m for m in messages), messages
    with pytest.raises(unittest.SkipTest):
        getattr(harness.python_module, module + "Test")().setUp()
