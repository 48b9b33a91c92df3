"""SSAETraining's logic: the ssae train call, following its progress, cancel and resume."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from headless_slicer import headless_scene
from SSAETrainingLib import TrainingProgress, TrainingRequest, load_request, parameter_node, save_request, start_training

from ssae.app.processes import wait_for
from ssae.io.errors import SSAEError
from ssae.models.checkpoint import read_model_card


def _request(small_cases, tmp_path, **changes) -> TrainingRequest:
    base = TrainingRequest(
        data_folder=str(small_cases),
        output=str(tmp_path / "model.safetensors"),
        size=64,
        levels=2,
        epochs=2,
        patience=2,
        batch_size=8,
        atlas=False,
        bias_correction=False,
        device="cpu",
    )
    return replace(base, **changes)


def test_request_becomes_the_matching_command_line(small_cases, tmp_path):
    request = _request(small_cases, tmp_path, variant="vae", brain_masks_folder=str(small_cases))
    args = request.arguments(tmp_path / "p.jsonl")
    assert args[:4] == ["train", str(small_cases), "-o", str(tmp_path / "model.safetensors")]
    assert args[args.index("--variant") + 1] == "vae" and args[args.index("--levels") + 1] == "2"
    assert "--brain-masks" in args and "--resume" not in args and "--atlas" not in args
    assert {"--atlas", "--bias-correction"} <= set(replace(request, atlas=True, bias_correction=True).arguments(tmp_path / "p.jsonl"))
    with pytest.raises(SSAEError, match="healthy scans"):
        replace(request, data_folder=str(tmp_path / "missing")).check()
    with pytest.raises(SSAEError, match=".safetensors"):
        replace(request, output=str(tmp_path / "model.pt")).check()
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(SSAEError, match="already exists"):
        request.check()


def test_progress_fraction_follows_levels_coarsest_first():
    progress = TrainingProgress()
    progress.update(
        {
            "event": "start",
            "levels": 2,
            "max_epochs": 4,
            "model": "m",
            "train_slices": 10,
            "train_subjects": 2,
            "val_subjects": 1,
            "device": "CPU",
        }
    )
    progress.update({"event": "step", "level": 1, "epoch": 1, "step": 5, "steps": 10, "loss": 0.1, "eta_s": 30})
    assert progress.fraction == pytest.approx(1.5 / 4 / 2)
    progress.update({"event": "level_done", "level": 1, "epochs": 3, "best_val_loss": 0.1})
    assert progress.fraction == pytest.approx(0.5)
    progress.update(
        {"event": "epoch", "level": 0, "epoch": 2, "train_loss": 0.1, "val_loss": 0.2, "best_val_loss": 0.2, "bad_epochs": 0, "eta_s": 5}
    )
    assert progress.fraction == pytest.approx(0.75) and "validation 0.2" in progress.status
    progress.update({"event": "done", "model": "out.safetensors", "duration_s": 1.0})
    assert progress.finished and not progress.failed and progress.fraction == 1.0


def test_background_training_reports_progress_and_writes_the_model(small_cases, tmp_path):
    job = start_training(_request(small_cases, tmp_path))
    assert wait_for(job.command, timeout_s=300) == 0, "\n".join(job.command.new_lines())
    job.poll()
    assert job.progress.finished and not job.progress.failed and job.progress.fraction == 1.0
    assert len(job.progress.history) == 4  # 2 levels x 2 epochs
    assert read_model_card(job.progress.model)["architecture"]["levels"] == 2


def test_cancel_ends_the_process_and_the_run_resumes(small_cases, tmp_path):
    request = _request(small_cases, tmp_path, epochs=4, patience=4)
    job = start_training(request)
    deadline = time.monotonic() + 120
    while not job.progress.history and time.monotonic() < deadline:
        assert job.poll() is None, "\n".join(job.command.new_lines())
        time.sleep(0.2)
    assert job.progress.history, "no epoch finished in time"
    assert job.command.cancel() == 130
    job.poll()
    assert job.progress.failed and "--resume" in job.progress.status
    assert (tmp_path / "model.safetensors.resume.pt").exists() and not (tmp_path / "model.safetensors").exists()
    resumed = start_training(replace(request, resume=True))
    assert wait_for(resumed.command, timeout_s=300) == 0, "\n".join(resumed.command.new_lines())
    history = read_model_card(tmp_path / "model.safetensors")["training"]["history"]
    assert [h["level"] for h in history] == [1] * 4 + [0] * 4


def test_panel_state_is_kept_in_the_scene():
    scene, _ = headless_scene()
    request = TrainingRequest(
        data_folder="/data/healthy", output="/models/m.safetensors", variant="spatial", levels=4, size=256, epochs=30, overwrite=True
    )
    save_request(parameter_node(scene), request)
    assert load_request(parameter_node(scene)) == request
    assert load_request(parameter_node(headless_scene()[0])) == TrainingRequest("", "")


ORPHANING_PARENT = """
import json, os, sys, time
from pathlib import Path
sys.path[:0] = {paths!r}
from SSAETrainingLib import TrainingRequest, start_training
request = TrainingRequest(**json.loads({request!r}))
job = start_training(request)
print(job.command.process.pid, job.progress_log, flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline and not any(e.get("event") == "epoch" for e in job.command.new_events()):
    time.sleep(0.2)
os._exit(0)  # Slicer crashes or is killed: no aboutToQuit, no stop file
"""


def test_a_training_whose_slicer_died_stops_and_saves_its_resume_state(small_cases, tmp_path):
    """The run notices that the process which started it is gone and stops as if cancelled."""
    import dataclasses
    import json
    import subprocess
    import sys

    from conftest import REPO

    request = _request(small_cases, tmp_path, epochs=50, patience=50)
    paths = [str(REPO), str(REPO / "SSAETraining"), str(REPO / "SSAEAnomaly")]
    script = ORPHANING_PARENT.format(paths=paths, request=json.dumps(dataclasses.asdict(request)))
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert parent.returncode == 0, parent.stderr
    pid = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid), "the training outlived the process that started it"
    assert (tmp_path / "model.safetensors.resume.pt").exists() and not (tmp_path / "model.safetensors").exists()


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by init) counts as ended
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
