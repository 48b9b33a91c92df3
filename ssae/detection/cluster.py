"""Cohorts on a Dask cluster: each scan (or pair) one task, on this machine's processes or on a
cluster's workers (``dask-jobqueue`` on SLURM / PBS / SGE / LSF, or ``dask scheduler`` and
``dask worker`` started by hand). See docs/cluster.md.

The client (this process) plans the run exactly as the one-process run does (inputs found and
validated, finished scans kept with ``--resume``, the output folder checked), submits one task
per remaining scan, and builds the table from what the tasks return. A task writes its scan's
result set into the shared output folder the way the one-process run does (staged, then moved
into place), so a worker that dies mid-scan leaves no file under a final name: Dask gives the
scan to another worker, up to :data:`ALLOWED_FAILURES` deaths, and the staging folders of dead
attempts are removed when the run ends.

Dask is an optional dependency (``pip install -e ".[cluster]"``), imported only here and only
when ``--scheduler`` is given; the Slicer modules never import this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ssae
from ssae.detection.cluster_tasks import EVENT_TOPIC, ModelReference, TaskOutcome, run_task, worker_facts
from ssae.io.errors import SSAEError

ALLOWED_FAILURES = 2  # worker deaths one scan may cost before it is reported as failed (Dask retries it on another worker)
CONNECT_TIMEOUT_S = 30
_LOCAL = re.compile(r"local:(\d+)")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # thread pools of OpenMP and the BLAS libraries


@dataclass(frozen=True)
class Scheduler:
    """Where the tasks run: ``local:N`` (a cluster of N worker processes on this machine), the
    address of a running Dask scheduler (``tcp://host:8786``), or its scheduler file (JSON)."""

    text: str
    local_workers: int | None = None
    scheduler_file: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.local_workers is not None


def parse_scheduler(text: str) -> Scheduler:
    """``--scheduler`` as given, validated before any work."""
    text = text.strip()
    local = _LOCAL.fullmatch(text)
    if local:
        workers = int(local.group(1))
        if workers < 1:
            raise SSAEError("--scheduler local:N needs at least one worker (local:1, local:2, ...)")
        return Scheduler(text, local_workers=workers)
    if text.startswith("local"):
        raise SSAEError(f"--scheduler {text!r}: a local cluster is local:N, N the number of worker processes")
    if text.lower().endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise SSAEError(f"--scheduler {text}: no such scheduler file")
        return Scheduler(text, scheduler_file=path)
    if not re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://\S+|[\w.\-\[\]:]+:\d+", text):
        raise SSAEError(f"--scheduler {text!r}: give local:N, a scheduler address (tcp://host:8786) or a scheduler file (.json)")
    return Scheduler(text)


def require_dask() -> None:
    """Refuse a cluster run before any work where Dask is not installed."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise SSAEError('--scheduler needs Dask: pip install -e ".[cluster]" (dask, distributed)') from None


def available_cores() -> int:
    """The cores this process may use (a batch job's allocation, not the whole node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def scan_threads_on(scheduler: Scheduler, requested: int | None) -> int | None:
    """The thread count of each scan: as requested; on a local cluster the cores shared out among
    its workers; on a remote one None (each worker uses as many threads as Dask gave it)."""
    if requested is not None or not scheduler.is_local:
        return requested
    return max(1, available_cores() // (scheduler.local_workers or 1))


@dataclass(frozen=True)
class ClusterJob:
    """One task to submit: the item (a case or a pair), its result folder, and the table row it
    starts from (a task that never returns is reported on it)."""

    index: int
    name: str
    item: Any
    folder: Path
    row: dict[str, Any]


def run_on_cluster(
    scheduler: Scheduler,
    row: Callable[..., dict[str, Any]],
    model: ModelReference,
    jobs: list[ClusterJob],
    options: dict[str, Any],
    threads: int | None,
    log: Callable[[str], None],
    record: Callable[[str, dict[str, Any]], None] | None = None,
) -> Iterator[tuple[ClusterJob, TaskOutcome]]:
    """Run ``row(detector, job.item, job.folder, None, options)`` on a worker for every job
    (:func:`ssae.detection.cluster_tasks.run_task`); yield each job
    with its outcome as it finishes (a failed task: its row with the error, no timings).
    ``log`` gets a line and ``record`` an event (for the progress log) when a worker loads the
    model or starts a scan."""
    finished = False
    try:
        with _client(scheduler, threads) as client:
            _check_workers(client, log)
            client.subscribe_topic(EVENT_TOPIC, _event_handler(log, record))
            futures = {client.submit(run_task, row, model, job.item, job.folder, options, threads, pure=False): job for job in jobs}
            try:
                from distributed import as_completed

                for future in as_completed(futures):
                    job = futures[future]
                    yield job, _outcome(future, job)
            except BaseException:
                client.cancel(list(futures), force=True)
                raise
            finally:
                client.unsubscribe_topic(EVENT_TOPIC)
        finished = True
    finally:
        if finished or scheduler.is_local:  # a local cluster's workers are gone by now; a remote one's may still write
            remove_dead_attempts([job.folder for job in jobs])


def _event_handler(
    log: Callable[[str], None], record: Callable[[str, dict[str, Any]], None] | None
) -> Callable[[tuple[float, dict[str, Any]]], None]:
    """Workers' events (model loaded, scan started), logged as they come (on Dask's thread); a
    scan started again was given up by a worker that stopped."""
    lock = threading.Lock()
    starts: dict[str, int] = {}

    def on_event(event: tuple[float, dict[str, Any]]) -> None:
        message = event[1]
        with lock:
            if "loaded" in message:
                log(f"  worker {message['worker']} (pid {message['pid']}) loaded the model on {message['device']}")
                if record is not None:
                    record("model_loaded", {key: message[key] for key in ("worker", "pid", "device")})
            elif "started" in message:
                attempt = starts[message["started"]] = starts.get(message["started"], 0) + 1
                note = f" again, attempt {attempt} (the worker that had it stopped)" if attempt > 1 else ""
                log(f"  {message['started']} started{note} on {message['worker']} (pid {message['pid']})")
                if record is not None:
                    record("started", {"name": message["started"], "worker": message["worker"], "pid": message["pid"], "attempt": attempt})

    return on_event


def remove_dead_attempts(folders: list[Path]) -> None:
    """Remove the staging folders (``.<name>.ssae-partial-*``) that attempts which never finished
    left in ``folders``; called only when no attempt of the run can still be writing."""
    for folder in folders:
        with contextlib.suppress(OSError):
            for staging in folder.glob(".*.ssae-partial-*"):
                if staging.is_dir():
                    shutil.rmtree(staging, ignore_errors=True)


def _outcome(future: Any, job: ClusterJob) -> TaskOutcome:
    """The task's outcome, or the job's row with the reason it has none."""
    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker:
        error = f"the worker running it stopped {ALLOWED_FAILURES + 1} times (out of memory? see the Dask worker logs)"
    except Exception as exc:  # noqa: BLE001 - a task's unexpected failure is that scan's error, not the run's end
        error = f"unexpected error on the worker: {type(exc).__name__}: {exc}"
    return TaskOutcome({**job.row, "status": "error", "error": error}, 0.0, 0.0, 0)


@contextlib.contextmanager
def _client(scheduler: Scheduler, threads: int | None) -> Iterator[Any]:
    """A Dask client for ``scheduler`` (a local cluster is started, and stopped afterwards)."""
    require_dask()
    import dask
    from distributed import Client, LocalCluster

    settings: dict[str, Any] = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}
    environment: dict[str, str] = {}
    if scheduler.is_local:
        # Dask's statistical profiler samples every worker thread's stack each 10 ms, holding the
        # GIL that adaptation's many small steps need (measured: 5 % of a scan's time).
        settings["distributed.worker.profile.enabled"] = False
        # Dask's worker environment also sets MALLOC_TRIM_THRESHOLD_=65536, which hands freed
        # memory back to the system at once: every large tensor of adaptation is then paged in
        # afresh (measured: a level's training steps 1.5-2 x slower in a worker). Replacing the
        # whole setting leaves it out.
        environment = {name: str(threads or 1) for name in THREAD_VARIABLES}
        settings["distributed.nanny.pre-spawn-environ"] = environment
    with dask.config.set(settings), _local_worker_environment(environment):
        if scheduler.is_local:
            cluster = LocalCluster(
                n_workers=scheduler.local_workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=0,  # one scan's peak decides, not an equal share of the machine
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
        else:
            cluster = None
            try:
                if scheduler.scheduler_file is not None:
                    client = Client(scheduler_file=str(scheduler.scheduler_file), timeout=CONNECT_TIMEOUT_S)
                else:
                    client = Client(scheduler.text, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise SSAEError(f"cannot reach the Dask scheduler at {scheduler.text}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


@contextlib.contextmanager
def _local_worker_environment(environment: dict[str, str]) -> Iterator[None]:
    """This process's environment as the local cluster's workers should inherit it, and as it was
    once the cluster is gone. A Dask nanny exports its workers' variables into its own process
    (here, the client's) before it spawns them, and an exported value wins over the
    configuration: a cluster started earlier in this process would otherwise hand its malloc
    trim to ours, and ours its thread counts to whatever this process runs next. Nothing to do
    for a remote cluster (no ``environment``)."""
    if not environment:
        yield
        return
    before = dict(os.environ)
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    os.environ.update(environment)
    try:
        yield
    finally:
        for name in set(os.environ) - set(before):
            del os.environ[name]
        os.environ.update(before)


def _check_workers(client: Any, log: Callable[[str], None]) -> None:
    """Every worker present runs this version of ssae; say what the cluster has."""
    try:
        facts = client.run(worker_facts)
    except Exception as exc:  # noqa: BLE001 - whatever a worker raises, the cluster cannot run this engine
        raise SSAEError(f"the Dask workers cannot run ssae ({type(exc).__name__}: {exc}); install it on every node") from None
    if not facts:
        log("the Dask scheduler has no worker yet; the tasks wait for one")
        return
    foreign = {address: f["ssae"] for address, f in facts.items() if f["ssae"] != ssae.__version__}
    if foreign:
        raise SSAEError(f"Dask workers run another ssae version than this one ({ssae.__version__}): {foreign}; install the same on every node")
    hosts = sorted({f["host"] for f in facts.values()})
    log(f"Dask: {len(facts)} worker(s) on {len(hosts)} machine(s), {sum(f['gpus'] for f in facts.values())} GPU(s) among them")
