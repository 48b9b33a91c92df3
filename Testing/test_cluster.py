"""Cohorts on a Dask cluster (``--scheduler``): the same files as one process, nothing lost when a
worker dies or the run is interrupted, inputs refused before any work.

Real scans (the two MSLUB patients at 2 mm, each twice under another case name) and the tiny
real model; the clusters are real ``LocalCluster`` s of worker processes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_refuses

from ssae.app.cli import main

# Both engines run every scan on one thread: the same thread count gives the same files
# (ssae.models.devices.set_compute_threads), whatever the machine's core count.
ONE_THREAD = ["--threads-per-scan", "1"]
ENGINE_FACTS = {"seconds", "results"}  # table cells that are the engine's, not the scan's


def _cohort(small_cases: Path, folder: Path, copies: int = 2) -> Path:
    """``copies`` cases per MSLUB patient (real scans under other case names)."""
    for patient in ("patient07", "patient19"):
        for copy in range(copies):
            target = folder / f"{patient}_{copy}"
            target.mkdir(parents=True)
            shutil.copy(small_cases / patient / "flair.nii.gz", target / "flair.nii.gz")
    return folder


def _rows(table: Path) -> dict[str, dict[str, str]]:
    with open(table, newline="", encoding="utf-8") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


RUN_FACTS = {"files", "timings", "timings_s", "seconds"}  # summary keys that say where files went and how long steps took


def _scan_facts(value):
    """A summary without what depends on the run, not on the scan."""
    if isinstance(value, dict):
        return {k: _scan_facts(v) for k, v in value.items() if k not in RUN_FACTS}
    if isinstance(value, list):
        return [_scan_facts(v) for v in value]
    return value


def _result_files(out: Path) -> list[Path]:
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())


def _detect(model: Path, scans: Path, out: Path, *extra: str) -> list[str]:
    return ["detect", str(model), str(scans), "-o", str(out), "--device", "cpu", "--no-scales", *extra]


def test_a_local_cluster_writes_the_same_files_and_rows_as_one_process(tiny_model, small_cases, tmp_path):
    scans = _cohort(small_cases, tmp_path / "scans", copies=1)
    (scans / "broken").mkdir()
    (scans / "broken" / "flair.nii.gz").write_bytes(b"not a volume")
    alone, cluster = tmp_path / "alone", tmp_path / "cluster"
    log = tmp_path / "progress.jsonl"
    assert main(_detect(tiny_model, scans, alone, *ONE_THREAD)) == 1  # the broken scan is its row's error
    assert main(_detect(tiny_model, scans, cluster, *ONE_THREAD, "--scheduler", "local:2", "--progress-log", str(log))) == 1

    assert _result_files(alone) == _result_files(cluster)
    for path in _result_files(alone):
        if path.name.endswith("_summary.json"):
            facts = [_scan_facts(json.loads((o / path).read_text(encoding="utf-8"))) for o in (alone, cluster)]
            assert facts[0] == facts[1], path
        elif path.name != "cohort.csv":
            assert (alone / path).read_bytes() == (cluster / path).read_bytes(), f"{path} differs between the engines"
    rows_alone, rows_cluster = _rows(alone / "cohort.csv"), _rows(cluster / "cohort.csv")
    assert list(rows_alone) == list(rows_cluster) == ["broken", "patient07_0", "patient19_0"]
    for case in rows_alone:
        assert {k: v for k, v in rows_alone[case].items() if k not in ENGINE_FACTS} == {
            k: v for k, v in rows_cluster[case].items() if k not in ENGINE_FACTS
        }
    assert rows_cluster["broken"]["status"] == "error" and "broken" in rows_cluster["broken"]["error"]

    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    loads = [e for e in events if e["event"] == "model_loaded"]
    started = [e for e in events if e["event"] == "started"]
    assert len(started) == 3 and len(loads) == len({e["pid"] for e in started}) <= 2  # one model load per worker, not per scan
    assert events[-1]["event"] == "done"


def _start_cli(arguments: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssae", *arguments], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_event(log: Path, wanted, process: subprocess.Popen, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text(encoding="utf-8").splitlines():
                event = json.loads(line)
                if wanted(event):
                    return event
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.1)
    raise AssertionError("the event never came")


def _complete(out: Path, case: str) -> bool:
    summary = out / case / "flair_summary.json"
    if not summary.is_file():
        return False
    files = json.loads(summary.read_text(encoding="utf-8"))["files"]
    return all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in files.values())


def _no_partial_files(out: Path) -> None:
    """Nothing half-written anywhere: no staging folder, no temporary file, and every case
    folder either holds its complete result set or no result file at all."""
    assert not [p for p in out.rglob("*") if ".ssae-partial-" in p.name or ".partial" in p.name]
    for folder in (p for p in out.iterdir() if p.is_dir()):
        assert _complete(out, folder.name) or not any(folder.iterdir()), f"{folder} holds part of a result set"


def test_a_worker_killed_mid_scan_costs_time_not_results(tiny_model, small_cases, tmp_path):
    scans = _cohort(small_cases, tmp_path / "scans")
    out, log = tmp_path / "out", tmp_path / "progress.jsonl"
    process = _start_cli(_detect(tiny_model, scans, out, "--scheduler", "local:2", "--progress-log", str(log)), tmp_path)
    try:
        victim = _wait_for_event(log, lambda e: e["event"] == "started", process)
        time.sleep(0.5)  # inside the scan (bias correction and registration take seconds)
        os.kill(victim["pid"], signal.SIGKILL)
        output, _ = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, output
    rows = _rows(out / "cohort.csv")
    assert sorted(rows) == sorted(p.name for p in scans.iterdir()) and all(r["status"] == "ok" for r in rows.values()), rows
    assert all(_complete(out, case) for case in rows)
    _no_partial_files(out)
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    again = [e for e in events if e["event"] == "started" and e["name"] == victim["name"] and e["attempt"] == 2]
    assert again and again[0]["pid"] != victim["pid"], "the killed worker's scan was not run again elsewhere"


def test_ctrl_c_stops_the_cluster_run_cleanly_and_resume_finishes_the_rest(tiny_model, small_cases, tmp_path):
    scans = _cohort(small_cases, tmp_path / "scans")
    out, log = tmp_path / "out", tmp_path / "progress.jsonl"
    arguments = _detect(tiny_model, scans, out, "--scheduler", "local:2", "--progress-log", str(log))
    process = _start_cli(arguments, tmp_path)
    try:
        first = _wait_for_event(log, lambda e: e["event"] == "progress" and "done" in e["message"], process)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "interrupted" in output and not (out / "cohort.csv").exists()
    _no_partial_files(out)
    finished = first["message"].split(":")[0]
    assert _complete(out, finished)
    kept = (out / finished / "flair_summary.json").stat().st_mtime_ns

    resumed = subprocess.run([sys.executable, "-m", "ssae", *arguments, "--resume"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{finished}: already done" in resumed.stdout
    assert (out / finished / "flair_summary.json").stat().st_mtime_ns == kept
    rows = _rows(out / "cohort.csv")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows.values())
    _no_partial_files(out)


def test_a_running_scheduler_is_joined_by_address_or_scheduler_file(tiny_model, small_cases, tmp_path, monkeypatch):
    """As with a cluster that dask-jobqueue started: relative paths reach its workers as absolute
    ones, each worker runs scans on the threads Dask gave it, and the table names the paths as given."""
    from distributed import Client, LocalCluster

    _cohort(small_cases, tmp_path / "scans", copies=1)
    monkeypatch.chdir(tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        client.write_scheduler_file(str(tmp_path / "scheduler.json"))
        assert main(["detect", str(tiny_model), "scans", "-o", "by_file", "--device", "cpu", "--no-scales", "--scheduler", "scheduler.json"]) == 0
        assert main(["detect", str(tiny_model), "scans", "-o", "by_address", "--device", "cpu", "--no-scales", "--scheduler", cluster.scheduler_address]) == 0
    for out in ("by_file", "by_address"):
        rows = _rows(tmp_path / out / "cohort.csv")
        assert all(r["status"] == "ok" and not Path(r["image"]).is_absolute() and r["results"].startswith(out) for r in rows.values()), rows
        assert all(_complete(tmp_path / out, case) for case in rows)
    for path in _result_files(tmp_path / "by_file"):
        if path.suffix == ".gz":
            assert (tmp_path / "by_file" / path).read_bytes() == (tmp_path / "by_address" / path).read_bytes(), path


def test_pairs_run_on_a_cluster_as_in_one_process(tiny_model, small_cases, tmp_path):
    """``ssae compare`` with a folder of pairs: the same files on a local cluster."""
    pairs = tmp_path / "pairs"
    for name in ("first", "second"):
        (pairs / name).mkdir(parents=True)
        shutil.copy(small_cases / "patient19" / "flair.nii.gz", pairs / name / "1_baseline.nii.gz")
        shutil.copy(small_cases / "patient07" / "flair.nii.gz", pairs / name / "2_followup.nii.gz")
    (pairs / "second" / "2_followup.nii.gz").write_bytes(b"truncated")
    alone, cluster = tmp_path / "alone", tmp_path / "cluster"
    command = ["compare", str(tiny_model), str(pairs), "--device", "cpu", "--no-adapt", *ONE_THREAD]
    assert main([*command, "-o", str(alone)]) == 1
    assert main([*command, "-o", str(cluster), "--scheduler", "local:1"]) == 1
    assert _result_files(alone) == _result_files(cluster)
    for path in _result_files(alone):
        if path.suffix in (".gz", ".tfm") or path.name.endswith("changes.csv"):
            assert (alone / path).read_bytes() == (cluster / path).read_bytes(), path
    with open(cluster / "comparisons.csv", newline="", encoding="utf-8") as handle:
        rows = {row["pair"]: row for row in csv.DictReader(handle)}
    assert rows["first"]["status"] == "ok" and rows["second"]["status"] == "error"


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [("local:0", "at least one worker"), ("local", "local:N"), ("not a scheduler", "give local:N"), ("missing.json", "no such scheduler file")],
)
def test_a_bad_scheduler_is_refused_before_any_work(tiny_model, small_cases, tmp_path, capsys, scheduler, message):
    cli_refuses(capsys, [*_detect(tiny_model, small_cases, tmp_path / "out"), "--scheduler", scheduler], message)
    assert not (tmp_path / "out").exists()


def test_engine_flags_are_for_cohorts_only(tiny_model, small_cases, tmp_path, capsys):
    one = small_cases / "patient19" / "flair.nii.gz"
    cli_refuses(capsys, ["detect", tiny_model, one, "-o", tmp_path / "o", "--scheduler", "local:1"], "folder or CSV of scans")
    cli_refuses(capsys, ["detect", tiny_model, small_cases, "-o", tmp_path / "o", "--threads-per-scan", "0"], "must be at least 1")
    cli_refuses(capsys, ["compare", tiny_model, one, one, "-o", tmp_path / "c", "--scheduler", "local:1"], "CSV or folder of pairs")


def test_an_unreachable_scheduler_is_an_error_not_a_traceback(tiny_model, small_cases, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ssae.detection.cluster.CONNECT_TIMEOUT_S", 2)
    code = main([*_detect(tiny_model, small_cases, tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:9"])
    error = capsys.readouterr().err
    assert code == 2 and "cannot reach the Dask scheduler" in error and "Traceback" not in error


def test_without_dask_the_cluster_engine_says_how_to_install_it(tiny_model, small_cases, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    cli_refuses(capsys, [*_detect(tiny_model, small_cases, tmp_path / "out"), "--scheduler", "local:1"], 'pip install -e ".[cluster]"')


def test_a_run_without_scheduler_never_imports_dask(tiny_model, small_cases, tmp_path):
    scans = _cohort(small_cases, tmp_path / "scans", copies=1)
    script = (
        "import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
        "from ssae.app.cli import main\n"
        f"sys.exit(main({_detect(tiny_model, scans, tmp_path / 'out', '--no-adapt')!r}))"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(r["status"] == "ok" for r in _rows(tmp_path / "out" / "cohort.csv").values())


def test_staging_folders_of_dead_attempts_are_removed(tmp_path):
    from ssae.detection.cluster import remove_dead_attempts

    folder = tmp_path / "case"
    (folder / ".flair.ssae-partial-abc").mkdir(parents=True)
    (folder / ".flair.ssae-partial-abc" / "flair_prior.nii.gz").write_bytes(b"half")
    (folder / "flair_prior.nii.gz").write_bytes(b"a finished result")
    remove_dead_attempts([folder, tmp_path / "never-made"])
    assert [p.name for p in folder.iterdir()] == ["flair_prior.nii.gz"]


def _worker_settings(dask_worker) -> dict:
    import dask

    return {
        "profiler": "profile" in dask_worker.periodic_callbacks or dask.config.get("distributed.worker.profile.enabled"),
        "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
    }


def test_local_workers_start_without_the_dask_defaults_that_slow_a_scan(monkeypatch):
    """Two of Dask's worker defaults were measured to slow a scan (docs/cluster.md): the
    statistical profiler (5 %) and an immediate malloc trim (1.5 x). A local cluster's workers
    run without them, with the scan's thread count in the OpenMP variable, even when this
    process's environment holds other values (a Dask cluster started earlier in the process
    leaves its workers' variables there); and the process's environment is as it was afterwards."""
    from ssae.detection.cluster import _client, parse_scheduler

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = dict(os.environ)
    with _client(parse_scheduler("local:1"), 1) as client:
        settings = list(client.run(_worker_settings).values())
    assert settings == [{"profiler": False, "trim": None, "omp": "1"}]
    assert dict(os.environ) == before
