"""A cohort run, whichever engine runs it: scans (or pairs) planned and checked in this process,
then detected one after another here or as tasks on a Dask cluster (:mod:`ssae.detection.cluster`),
and one table row per item. ``ssae.detection.cohorts`` (scans) and
``ssae.detection.followup_runs`` (pairs) say what differs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch

from ssae.detection.cluster import ClusterJob, parse_scheduler, require_dask, run_on_cluster, scan_threads_on
from ssae.detection.cluster_tasks import ModelReference, TaskOutcome
from ssae.detection.detector import Detector
from ssae.io.errors import SSAEError
from ssae.io.progress import ProgressLog
from ssae.io.writing import check_output_folder, refuse_existing, write_text
from ssae.models.devices import set_compute_threads


@dataclass
class CohortSummary:
    """How a cohort run (scans, or pairs of scans) ended, where its table is, and when and where
    each task ran (the engine's facts: bench/cohort.py measures with them)."""

    total: int
    succeeded: int
    table: Path
    tasks: list[TaskOutcome] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.total - self.succeeded


@dataclass(frozen=True)
class CohortKind:
    """What a cohort of scans and a cohort of pairs differ in; :func:`run_cohort` does the rest."""

    noun: str  # "scan" or "pair"
    table_name: str
    columns: list[str]
    finished_row: Callable[[Any, Path, dict[str, Any]], dict[str, Any] | None]  # (item, folder, options)
    first_row: Callable[[Any, Path], dict[str, Any]]  # the row's identifying cells
    row: Callable[..., dict[str, Any]]  # (detector, item, folder, report, options): detect or compare, write, the row


def run_cohort(
    kind: CohortKind,
    detector: Detector,
    items: list[Any],
    output_dir: Path,
    options: dict[str, Any],
    *,
    progress_log: Path | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    scheduler: str | None = None,
    threads_per_scan: int | None = None,
) -> CohortSummary:
    """Every item into ``output_dir/<name>/`` and one table row each, in this process or, with
    ``scheduler`` (``local:N``, an address, a scheduler file), as tasks on a Dask cluster.

    Both engines plan the same way and write the same files: an item whose complete result set
    is already in its folder is kept with ``resume`` (its row from its summary) and an error row
    without it (or ``overwrite``, which redoes it). ``threads_per_scan`` fixes the thread count
    each scan runs with (:func:`ssae.models.devices.set_compute_threads`); the same count gives
    the same files in any engine."""
    cluster = parse_scheduler(scheduler) if scheduler is not None else None  # refused before any work
    if cluster is not None:
        require_dask()
        if detector.path is None:
            raise SSAEError("a cohort on a Dask cluster needs a model read from a file (the workers load it)")
    if threads_per_scan is not None and threads_per_scan < 1:
        raise SSAEError(f"--threads-per-scan must be at least 1, got {threads_per_scan}")
    table = output_dir / kind.table_name
    overwrite = bool(options.get("overwrite"))
    refuse_existing([table], overwrite or resume)
    check_output_folder(output_dir)
    rows: list[dict[str, Any] | None] = [None] * len(items)
    todo: list[ClusterJob] = []
    for index, item in enumerate(items):
        folder = output_dir / item.name
        finished = None if overwrite else kind.finished_row(item, folder, options)
        if finished is not None and resume:
            log(f"{item.name}: already done in {folder}")
            rows[index] = finished
        elif finished is not None:
            rows[index] = {**finished, "status": "error", "error": f"{folder} already holds results: pass --resume to keep them, --overwrite to redo them"}
            log(f"{item.name}: failed: {rows[index]['error']}")
        else:
            todo.append(ClusterJob(index, item.name, item, folder, kind.first_row(item, folder)))
    if cluster is not None and not cluster.is_local:  # a remote worker's working folder is not ours
        todo = [replace(job, item=_absolute(job.item), folder=job.folder.absolute()) for job in todo]
    progress = ProgressLog(progress_log) if progress_log else None
    outcomes: list[TaskOutcome] = []
    try:
        if not todo:
            finishing: Iterator[tuple[ClusterJob, TaskOutcome]] = iter(())
        elif cluster is None:
            finishing = _in_this_process(kind, detector, todo, options, threads_per_scan, log, progress, len(items))
        else:
            model = ModelReference(Path(str(detector.path)).absolute(), detector.device_request, detector.batch_size)
            record = (lambda event, fields: progress.event(event, **fields)) if progress is not None else None
            finishing = run_on_cluster(cluster, kind.row, model, todo, options, scan_threads_on(cluster, threads_per_scan), log, record)
        for done, (job, outcome) in enumerate(finishing, start=1):
            rows[job.index] = {**outcome.row, **job.row}  # the paths as given (a remote worker saw them absolute)
            outcomes.append(outcome)
            status = "done" if outcome.row["status"] == "ok" else f"failed: {outcome.row['error']}"
            if cluster is not None:
                log(f"{job.name}: {status} ({done}/{len(todo)})")
            elif outcome.row["status"] != "ok":
                log(f"  {status}")
            if progress is not None and cluster is not None:
                progress.event("progress", fraction=round(done / len(todo), 4), message=f"{job.name}: {status} ({done}/{len(todo)} {kind.noun}s)")
        write_text(table_csv([r for r in rows if r is not None], kind.columns), table, overwrite or resume)
        if progress is not None:
            progress.event("done", files={Path(kind.table_name).stem: str(table)})
    finally:
        if progress is not None:
            progress.close()
    return CohortSummary(total=len(items), succeeded=sum(r is not None and r["status"] == "ok" for r in rows), table=table, tasks=outcomes)


def _in_this_process(
    kind: CohortKind,
    detector: Detector,
    jobs: list[ClusterJob],
    options: dict[str, Any],
    threads: int | None,
    log: Callable[[str], None],
    progress: ProgressLog | None,
    total: int,
) -> Iterator[tuple[ClusterJob, TaskOutcome]]:
    """The one-process engine: each job in turn, with progress within each scan."""
    with compute_threads(threads):
        for job in jobs:
            log(f"{job.name} ({job.index + 1}/{total})")

            def report(fraction: float, message: str, job: ClusterJob = job) -> None:
                if progress is not None:
                    overall = (job.index + fraction) / total
                    progress.event("progress", fraction=round(overall, 4), message=f"{job.name} ({job.index + 1}/{total}): {message}")

            started = time.time()
            row = kind.row(detector, job.item, job.folder, report, options)
            yield job, TaskOutcome(row, started, time.time(), os.getpid())


def _absolute(item: Any) -> Any:
    """``item`` (a case or a pair) with every path absolute."""
    return replace(item, **{f.name: Path(v).absolute() for f in fields(item) if isinstance(v := getattr(item, f.name), Path)})


@contextlib.contextmanager
def compute_threads(threads: int | None) -> Iterator[None]:
    """``threads`` for the block (None: as the process has them), then the process's own again."""
    if threads is None:
        yield
        return
    before = (torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    set_compute_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])


def table_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A cohort's table (one row per scan or per pair) as CSV, ``columns`` in order, missing cells empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: row.get(column, "") for column in columns})
    return buffer.getvalue()
