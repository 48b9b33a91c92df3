"""The detection worker: one long-lived process that runs ``ssae`` commands one after another
(ssae.app.worker in the child, ssae.app.worker_client.DetectionWorker in the parent)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import SimpleITK as sitk

from ssae.app.processes import wait_for
from ssae.app.worker_client import DetectionWorker
from ssae.detection.detector import cached_detector
from ssae.io.errors import SSAEError
from ssae.models.checkpoint import load_model, save_model


@pytest.fixture()
def worker():
    running = DetectionWorker()
    yield running
    running.kill()


def _detect_args(model: Path, image: Path, output: Path, *extra: str) -> list[str]:
    return ["detect", str(model), str(image), "-o", str(output), "--device", "cpu", "--no-adapt", *extra]


def _long_job_under_way(worker: DetectionWorker, model: Path, image: Path, output: Path):
    """A detection with a long adaptation, once its first progress event has arrived."""
    log = output.parent / f"{output.name}.jsonl"
    args = ["detect", str(model), str(image), "-o", str(output), "--device", "cpu", "--adapt", "--adapt-epochs", "200"]
    job = worker.submit([*args, "--progress-log", str(log)], log)
    deadline = time.monotonic() + 120
    while not job.new_events() and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def test_jobs_run_one_after_another_in_one_process_with_the_results_of_the_command(worker, tiny_model, small_cases, tmp_path):
    image = small_cases / "patient19" / "flair.nii.gz"
    codes = []
    for name in ("first", "second"):
        job = worker.submit(
            _detect_args(tiny_model, image, tmp_path / name, "--progress-log", str(tmp_path / f"{name}.jsonl")), tmp_path / f"{name}.jsonl"
        )
        codes.append(wait_for(job, timeout_s=300, poll_s=0.05))
        assert codes[-1] == 0, "\n".join(job.new_lines())
        assert any("lesion(s)" in line for line in job.new_lines())  # the command's own output, routed to its job
        assert [e["event"] for e in job.new_events()][-1] == "done"
    assert worker.starts == 1 and worker.alive
    first, second = (json.loads((tmp_path / n / "flair_summary.json").read_text()) for n in ("first", "second"))
    assert first["lesion_count"] == second["lesion_count"] and first["total_volume_ml"] == pytest.approx(second["total_volume_ml"])
    for name in ("aggregated", "prior"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "first" / f"flair_{name}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "second" / f"flair_{name}.nii.gz")))
        assert (a == b).all()


def test_a_failing_job_reports_like_the_command_and_the_worker_goes_on(worker, tiny_model, small_cases, tmp_path):
    job = worker.submit(_detect_args(tiny_model, tmp_path / "missing.nii.gz", tmp_path / "out"))
    assert wait_for(job, timeout_s=120, poll_s=0.05) == 2
    assert any("missing.nii.gz" in line for line in job.new_lines())
    worker._send({"nonsense": True})  # a malformed request is ignored
    job = worker.submit(_detect_args(tiny_model, small_cases / "patient19" / "flair.nii.gz", tmp_path / "out"))
    assert wait_for(job, timeout_s=300, poll_s=0.05) == 0
    assert worker.starts == 1


def test_a_cancelled_job_stops_through_its_stop_file_and_the_worker_takes_the_next(worker, tiny_model, small_cases, tmp_path):
    image = small_cases / "patient19" / "flair.nii.gz"
    job = _long_job_under_way(worker, tiny_model, image, tmp_path / "cancelled")
    started = time.perf_counter()
    job.request_cancel()
    assert time.perf_counter() - started < 0.1
    assert wait_for(job, timeout_s=60, poll_s=0.05) == 130 and not job.killed
    assert not (tmp_path / "cancelled").exists() or not any(p.name.startswith("flair_") for p in (tmp_path / "cancelled").iterdir())
    assert not job.stop_file.exists()
    job = worker.submit(_detect_args(tiny_model, image, tmp_path / "next"))
    assert wait_for(job, timeout_s=300, poll_s=0.05) == 0 and worker.starts == 1


def test_a_worker_that_dies_ends_its_job_and_the_next_job_gets_a_fresh_worker(worker, tiny_model, small_cases, tmp_path):
    image = small_cases / "patient19" / "flair.nii.gz"
    job = _long_job_under_way(worker, tiny_model, image, tmp_path / "crashed")
    worker.kill()  # as a crash would
    code = wait_for(job, timeout_s=60, poll_s=0.05)
    assert code != 0 and any("worker ended during the job" in line for line in job.new_lines())
    assert not (tmp_path / "crashed").exists() or not any(p.name.startswith("flair_") for p in (tmp_path / "crashed").iterdir())
    job = worker.submit(_detect_args(tiny_model, image, tmp_path / "after"))
    assert wait_for(job, timeout_s=300, poll_s=0.05) == 0
    assert worker.starts == 2


def test_two_threads_submitting_at_once_get_one_job_and_one_refusal(tiny_model, small_cases, tmp_path):
    """The busy check, the start and the new job are one step: a second submit racing the first
    is refused, never given a worker process of its own (whose job nothing could end)."""
    image = small_cases / "patient19" / "flair.nii.gz"
    for attempt in range(3):
        worker = DetectionWorker()
        barrier = threading.Barrier(2)
        jobs, refusals = [], []

        def submit(name: str, worker=worker, barrier=barrier, jobs=jobs, refusals=refusals) -> None:
            barrier.wait()
            try:
                jobs.append(worker.submit(_detect_args(tiny_model, image, tmp_path / f"{attempt}{name}")))
            except SSAEError as error:
                refusals.append(str(error))

        threads = [threading.Thread(target=submit, args=(name,)) for name in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        try:
            assert len(jobs) == 1 and len(refusals) == 1 and "busy" in refusals[0]
            assert worker.starts == 1
            assert wait_for(jobs[0], timeout_s=300, poll_s=0.05) == 0
            assert not jobs[0].stop_file.exists()
        finally:
            worker.kill()


def test_the_worker_ends_when_its_parent_closes_its_input(worker):
    worker.start()
    assert worker.ready.wait(120)
    worker.close()
    worker.process.wait(30)
    assert not worker.alive


def test_a_cached_detector_is_kept_for_the_same_model_and_reloaded_for_another(tiny_model, tmp_path):
    copy = tmp_path / "model.safetensors"
    shutil.copy(tiny_model, copy)
    first = cached_detector(copy, "cpu")
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched, same model
    assert cached_detector(copy, "cpu") is first
    loaded = load_model(copy, "cpu")
    loaded.card.postprocessing = replace(loaded.card.postprocessing, min_lesion_mm3=loaded.card.postprocessing.min_lesion_mm3 + 5)
    save_model(loaded.model, loaded.card, copy, overwrite=True)  # a recalibrated model under the same name
    second = cached_detector(copy, "cpu")
    assert second is not first
    assert second.card.postprocessing.min_lesion_mm3 == first.card.postprocessing.min_lesion_mm3 + 5
