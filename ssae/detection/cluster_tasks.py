"""What a Dask worker runs for a cohort (:mod:`ssae.detection.cluster` submits it): one scan's
detection or one pair's comparison, exactly as the one-process run does it
(:func:`ssae.detection.cohorts.cohort_row`, :func:`ssae.detection.followup_runs.pair_row`), so a
result set is the same file whichever engine wrote it.

Per worker process:

* the model is loaded once (:func:`ssae.detection.detector.cached_detector`) and kept for
  every later task;
* one scan at a time: a worker with several Dask threads still runs scans one after another
  (its threads would otherwise fight over the same cores, and adaptation seeds torch's global
  random generator), each with the scan's thread count (:func:`ssae.models.devices.set_compute_threads`);
* GPU workers take one GPU each: a local cluster's worker ``i`` of ``n`` uses GPU ``i mod G``;
  a worker started by a batch system uses the GPU that system gave it (``CUDA_VISIBLE_DEVICES``).

Nothing here imports Dask at import time (workers import this module by reference; every cohort
run imports it): Dask itself is imported only inside a task, that is only with ``--scheduler``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENT_TOPIC = "ssae-cohort"

_ONE_SCAN_AT_A_TIME = threading.Lock()
_LAST_DETECTOR: list[Any] = []  # the detector this worker process last announced


@dataclass(frozen=True)
class ModelReference:
    """The model a task runs, as every worker can load it: the file (on the shared file
    system), the device (``auto``, ``cpu``, ``cuda``) and the inference batch size."""

    path: Path
    device: str
    batch_size: int | None


def worker_facts() -> dict[str, Any]:
    """What the client checks (the ssae version) and reports (machine, GPUs) about a worker."""
    import torch

    import ssae

    return {"ssae": ssae.__version__, "host": platform.node(), "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}


@dataclass(frozen=True)
class TaskOutcome:
    """A task's table row, and when and in which process it ran (the engine's facts, kept out of
    the table so that the table is the same whichever engine made it)."""

    row: dict[str, Any]
    started: float
    finished: float
    pid: int


def run_task(row: Callable[..., dict[str, Any]], model: ModelReference, item: Any, folder: Path, options: dict[str, Any], threads: int | None) -> TaskOutcome:
    """One scan (or pair) of a cohort: ``row`` (:func:`ssae.detection.cohorts.cohort_row` or
    :func:`ssae.detection.followup_runs.pair_row`, sent by reference) detects or compares with the
    worker's model, writes the result set into ``folder`` and returns the item's table row."""
    with _scan_slot(item.name, threads) as started:
        table_row = row(_detector(model), item, folder, None, options)
    return TaskOutcome(table_row, started, time.time(), os.getpid())


@contextlib.contextmanager
def _scan_slot(name: str, threads: int | None) -> Iterator[float]:
    """Hold the worker process's scan lock with the scan's thread count set, and tell the client
    which worker started the scan (its PID: the log names where each scan ran)."""
    from distributed import get_worker

    from ssae.models.devices import set_compute_threads

    with _ONE_SCAN_AT_A_TIME:
        worker = get_worker()
        set_compute_threads(threads or worker.state.nthreads)
        started = time.time()
        worker.log_event(EVENT_TOPIC, {"started": name, "worker": worker.address, "pid": os.getpid(), "time": started})
        yield started


def _detector(model: ModelReference):
    """The worker's detector for ``model``, loaded on first use (and announced to the client):
    :func:`ssae.detection.detector.cached_detector` keeps one model, so another object than the
    last task's means it was loaded now."""
    from distributed import get_worker

    from ssae.detection.detector import cached_detector

    worker = get_worker()
    device = _worker_device(model.device, worker.name)
    detector = cached_detector(model.path, device, model.batch_size)
    if not any(detector is earlier for earlier in _LAST_DETECTOR):
        _LAST_DETECTOR[:] = [detector]
        worker.log_event(EVENT_TOPIC, {"loaded": str(model.path), "worker": worker.address, "pid": os.getpid(), "device": device})
    return detector


def _worker_device(requested: str, worker_name: object) -> str:
    """``cuda`` on a machine with several GPUs: a local cluster's worker ``i`` takes GPU ``i mod
    G``; any other worker the first GPU it sees (its batch system chose it)."""
    import torch

    if requested not in ("auto", "cuda") or not torch.cuda.is_available():
        return requested
    count = torch.cuda.device_count()
    index = worker_name % count if isinstance(worker_name, int) else 0
    return f"cuda:{index}"
