"""Does a cohort run faster on a local Dask cluster than in one process, and what would 50 000
scans take?

The same 8 real scans (MSLUB patients 7 and 19 as shipped, two BraTS 2015 FLAIRs, the four raw
clinical FLAIRs of ``../shared/data/clinical-raw``: 1 mm MNI, z-scored, and oblique 3-4 mm
slices with skull) through ``ssae detect``'s cohort engine with the shipped model and its
default adaptation, side by side in one run on this machine:

* one process, every core to each scan in turn (``ssae detect MODEL cohort.csv``);
* ``--scheduler local:2`` (two worker processes, one thread each on two cores);
* ``--scheduler local:1`` (one worker process, every core), which shows the engine's own cost.

Every engine runs as a command of its own, in a fresh process that imports, loads the model and
(for a cluster) starts its workers, as a user's command does: wall time is that process's, from
start to exit. A shared machine drifts (the same one-process run took 166 s and then 139 s
within ten minutes here), so the engines run in a symmetric order, one process, local:2,
local:1, local:2, one process, and each engine is judged by the mean of its runs: a drift that
is linear in time then cancels. The scans are read once beforehand, so that no run pays for the
disk and the next one not.

For each engine: wall time, scans per hour, the mean time of one scan inside its task, and the
scheduling overhead per task: the mean gap between one task's end and the next task's start on
the same worker (the scheduler's round trip, the result's transfer), as a share of the mean
scan time. The one-off start (from the command's start to the first scan's: imports, model,
the cluster's processes) is listed on its own. The engines' files are compared: at the same
threads per scan they are identical (see Testing/test_cluster.py); here one process uses two
threads per scan and local:2 one, and how far that moves the maps and masks is reported.

From the measured per-scan time at one thread and the per-task overhead, the time of 50 000 scans
on K one-thread workers is projected: 50 000 x (scan + overhead) / K, plus the one-off start.

    python bench/cohort.py [--data ../shared/data] [--model FILE] [--output report/cohort.md]

About 14 minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from ssae.detection.cluster import available_cores
from ssae.detection.cohorts import detect_cohort
from ssae.detection.detector import cached_detector
from ssae.io.resources import default_model_path, resources_dir
from ssae.io.writing import write_text

PROJECTED_SCANS = 50_000
WORKER_COUNTS = (2, 16, 64, 256)
ONE_PROCESS = "one process"
RUNS = ((ONE_PROCESS, None), ("local:2", "local:2"), ("local:1", "local:1"), ("local:2", "local:2"), (ONE_PROCESS, None))


def scans(data: Path) -> dict[str, Path]:
    """The 8 real scans, by case name."""
    mslub = resources_dir() / "SampleData" / "MSLUB"
    chosen = {f"mslub_{p}": mslub / p / "flair.nii.gz" for p in ("patient07", "patient19")}
    chosen |= {
        f"brats_{c[-6:-2]}": data / "brats2015" / c / "flair_zscore.nii.gz" for c in ("brats_2013_pat0001_1", "brats_2013_pat0002_1")
    }
    chosen |= {f"clinical_{p.name.split('_FLAIR')[0]}": p for p in sorted((data / "clinical-raw").glob("*_FLAIR.nii.gz"))}
    missing = [str(p) for p in chosen.values() if not p.is_file()]
    if missing or len(chosen) != 8:
        raise SystemExit(f"bench/cohort.py needs ../shared/data (missing: {missing})")
    return chosen


def engine_command(model: Path, manifest: Path, out: Path, scheduler: str | None, facts: Path) -> list[str]:
    """This script as one engine's command (see :func:`run_engine_here`)."""
    command = [
        sys.executable,
        __file__,
        "--run-engine",
        str(facts),
        "--model",
        str(model),
        "--manifest",
        str(manifest),
        "--run-output",
        str(out),
    ]
    return command + (["--scheduler", scheduler] if scheduler else [])


def run_engine_here(model: Path, manifest: Path, out: Path, scheduler: str | None, facts: Path) -> None:
    """One engine's run, as ``ssae detect MODEL cohort.csv [--scheduler ...]`` does it: load the
    model, detect every scan; write each task's start, end and process, and this process's peak
    memory, to ``facts``."""
    detector = cached_detector(model, "cpu")
    summary = detect_cohort(
        detector, manifest, out, scheduler=scheduler, log=lambda line: None, adaptation=detector.default_adaptation(), scales=False
    )
    if summary.failed:
        raise SystemExit(f"{summary.failed} scan(s) failed: see {summary.table}")
    tasks = [{"started": t.started, "finished": t.finished, "pid": t.pid} for t in summary.tasks]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    facts.write_text(json.dumps({"tasks": tasks, "peak_gb": peak_gb}), encoding="utf-8")


def engine_figures(launched: float, ended: float, tasks: list[dict[str, float]]) -> dict[str, float]:
    """One command's figures: wall time; its one-off start (to the first scan's start); mean scan
    time and mean gap between tasks on one worker; throughput once running (workers x one scan
    per scan time and gap); and where the rest of the wall time went at the end: the idle tail
    (a worker done while another still runs its last scan) and the close (last scan's end to the
    command's exit)."""
    scan_s = [t["finished"] - t["started"] for t in tasks]
    workers = {t["pid"] for t in tasks}
    gaps, last_ends = [], []
    for pid in workers:
        mine = sorted((t for t in tasks if t["pid"] == pid), key=lambda t: t["started"])
        gaps += [later["started"] - earlier["finished"] for earlier, later in itertools.pairwise(mine)]
        last_ends.append(mine[-1]["finished"])
    gap_s = statistics.mean(gaps) if gaps else float("nan")
    mean_scan_s = statistics.mean(scan_s)
    return {
        "wall_s": ended - launched,
        "first_start_s": min(t["started"] for t in tasks) - launched,
        "scan_s": mean_scan_s,
        "gap_s": gap_s,
        "running_per_hour": len(workers) * 3600.0 / (mean_scan_s + (0.0 if np.isnan(gap_s) else gap_s)),
        "idle_tail_s": max(last_ends) - min(last_ends),
        "close_s": ended - max(last_ends),
        "workers": len(workers),
    }


def mean_figures(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.mean(run[key] for run in runs) for key in runs[0]}


def map_differences(first: Path, second: Path) -> tuple[float, int, int]:
    """Largest map difference and mask voxels that differ between two engines' result folders."""
    largest, differing, voxels = 0.0, 0, 0
    for path in sorted(first.rglob("*.nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(second / path.relative_to(first))))
        if path.name.endswith(("_lesion_mask.nii.gz", "_small_lesions.nii.gz")):
            differing += int((a != b).sum())
            voxels += a.size
        elif not path.name.endswith("_brainmask.nii.gz"):
            largest = max(largest, float(np.abs(a.astype(np.float64) - b).max()))
    return largest, differing, voxels


def run_all(model: Path, cases: dict[str, Path], root: Path) -> tuple[dict[str, list[dict[str, float]]], float, tuple[float, int, int]]:
    """Every run of :data:`RUNS` as a command of its own; each engine's figures per run, the
    one-process run's peak memory, and how far the first one-process and local:2 files differ."""
    manifest = root / "cohort.csv"
    manifest.write_text("case,image\n" + "".join(f"{name},{path}\n" for name, path in cases.items()), encoding="utf-8")
    for path in [model, *cases.values()]:
        path.read_bytes()  # into the page cache: no run pays for the disk
    runs: dict[str, list[dict[str, float]]] = {}
    peak_gb = float("nan")
    for number, (label, scheduler) in enumerate(RUNS, start=1):
        out, facts = root / f"run{number}", root / f"run{number}.json"
        launched = time.time()
        subprocess.run(engine_command(model, manifest, out, scheduler, facts), check=True)
        ended = time.time()
        measured = json.loads(facts.read_text(encoding="utf-8"))
        runs.setdefault(label, []).append(engine_figures(launched, ended, measured["tasks"]))
        if label == ONE_PROCESS:
            peak_gb = measured["peak_gb"]
        print(f"run {number}: {label}", {key: round(value, 2) for key, value in runs[label][-1].items()}, flush=True)
    first_local2 = 1 + [label for label, _ in RUNS].index("local:2")
    return runs, peak_gb, map_differences(root / "run1", root / f"run{first_local2}")


def report(
    model: Path, cases: dict[str, Path], runs: dict[str, list[dict[str, float]]], peak_gb: float, differences: tuple[float, int, int]
) -> str:
    figures = {label: mean_figures(each) for label, each in runs.items()}
    one, two = figures[ONE_PROCESS], figures["local:2"]
    speedup = two["running_per_hour"] / one["running_per_hour"]
    wall_speedup = one["wall_s"] / two["wall_s"]
    overhead = two["gap_s"] / two["scan_s"]
    per_task = two["scan_s"] + two["gap_s"]
    largest, differing, voxels = differences
    lines = [
        "# Cohorts: one process against a local Dask cluster",
        "",
        (
            f"Generated by `python bench/cohort.py` (do not edit by hand). Model: `{model.name}` with its default adaptation; "
            f"machine: {platform.machine()}, {available_cores()} cores, torch {torch.__version__}, Python {platform.python_version()}; "
            f"{len(cases)} real scans ({', '.join(cases)}). Each engine is a command of its own (imports, model load, cluster start "
            "included), run in the order " + ", ".join(label for label, _ in RUNS) + "; an engine's figures are the mean of its runs."
        ),
        "",
        (
            "| engine | mean scan s (in its task) | scans per hour once running | vs one process | runs: wall s | wall s (mean) | "
            "vs one process | one-off start s | idle tail s | close s | scheduling gap per task s (share of a scan) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, f in figures.items():
        walls = ", ".join(f"{run['wall_s']:.1f}" for run in runs[label])
        gap = "n/a (one task per worker)" if np.isnan(f["gap_s"]) else f"{f['gap_s']:.3f} ({f['gap_s'] / f['scan_s']:.2%})"
        lines.append(
            f"| {label} | {f['scan_s']:.1f} | {f['running_per_hour']:.0f} | {f['running_per_hour'] / one['running_per_hour']:.2f} x | "
            f"{walls} | {f['wall_s']:.1f} | {one['wall_s'] / f['wall_s']:.2f} x | {f['first_start_s']:.1f} | {f['idle_tail_s']:.1f} | "
            f"{f['close_s']:.1f} | {gap} |"
        )
    fixed = (two["wall_s"] - len(cases) * two["scan_s"] / two["workers"]) - (one["wall_s"] - len(cases) * one["scan_s"])
    lines += [
        "",
        (
            f"**local:2 against one process: {speedup:.2f} x the throughput once running** (goal: at least 1.2 x), "
            f"the rate a cohort of thousands sees; on this run of {len(cases)} scans, whose wall clock also counts the one-off "
            f"start and close, {wall_speedup:.2f} x (local:2 spent {fixed:.1f} s more than one process outside its scans: "
            "starting the workers, which import torch and ssae, waiting for the slower worker's last scan, stopping the cluster). "
            f"Scheduling overhead {overhead:.2%} of a scan's time (goal: under 2 %). One process peaked at {peak_gb:.1f} GB resident "
            "(model, one scan, adaptation): give each worker at least that (dask-jobqueue's `memory` per worker process)."
        ),
        "",
        (
            f"Files: one process ran each scan on two threads and local:2 on one, so float sums were added in another order: "
            f"the maps differ by at most {largest:.2g} and {differing} of {voxels} mask voxels differ. At the same "
            "`--threads-per-scan` every file is identical across engines (Testing/test_cluster.py)."
        ),
        "",
        f"## Projection: {PROJECTED_SCANS:,} scans",
        "",
        (
            f"From the measured local:2 figures: one scan {two['scan_s']:.1f} s at one thread plus {two['gap_s']:.2f} s scheduling per task, "
            f"one-off start {two['first_start_s']:.0f} s (a batch system's queue wait not included); "
            f"time = {PROJECTED_SCANS:,} x {per_task:.1f} s / K."
        ),
        "",
        "| one-thread workers K | projected time |",
        "|---|---|",
    ]
    for workers in WORKER_COUNTS:
        seconds = PROJECTED_SCANS * per_task / workers + two["first_start_s"]
        lines.append(f"| {workers} | {seconds / 3600:.1f} h ({seconds / 86400:.2f} days) |")
    lines += [
        "",
        (
            f"This assumes scans like these 8 (mean {two['scan_s']:.0f} s each here), CPU cores as fast as this machine's, "
            "and a shared file system that keeps up (each scan reads one volume and writes about 10)."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--output", type=Path, default=REPO / "report" / "cohort.md")
    parser.add_argument("--run-engine", type=Path, help=argparse.SUPPRESS)  # one engine's run, into this facts file
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scheduler", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_engine is not None:
        run_engine_here(args.model, args.manifest, args.run_output, args.scheduler, args.run_engine)
        return
    cases = scans(args.data)
    with tempfile.TemporaryDirectory(prefix="ssae-cohort-bench-") as temporary:
        runs, peak_gb, differences = run_all(args.model, cases, Path(temporary))
    text = report(args.model, cases, runs, peak_gb, differences)
    write_text(text, args.output, overwrite=True)
    print(text)


if __name__ == "__main__":
    main()
