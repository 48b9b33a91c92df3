"""Running an ``ssae`` command in a child process and following it, for GUIs.

A GUI (the Slicer modules) must not run minutes of training or detection on its own event
loop. It starts the command line in a separate process, polls this object from a timer, and
shows what comes back: log lines (read by a thread, so the child never blocks on a full pipe)
and JSON-lines progress events (:mod:`ssae.progress`).

Cancelling works the same on every platform and never blocks the caller: the parent creates a
*stop file* (its path is in the child's ``SSAE_STOP_FILE``); the child notices it within a
fraction of a second and stops as after Ctrl-C (``ssae train`` saves its resume state, ``ssae
detect`` removes what it was writing). If the child has not ended ``grace_s`` seconds later,
the next :meth:`BackgroundCommand.poll` ends the whole process tree. No console signals are
involved, so a child without a console window (Windows) is cancelled like any other.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

STOP_FILE_VARIABLE = "SSAE_STOP_FILE"
WORKER_PREFIX = "@ssae-worker "  # starts the lines of :mod:`ssae.worker`'s protocol on its stdout


def engine_environment() -> dict[str, str]:
    """The current environment, with this ``ssae`` package importable and output unbuffered
    UTF-8 (the parent reads it as UTF-8 whatever locale the host application set)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _process_options() -> dict[str, Any]:
    if os.name == "nt":  # no console window; its own group, so nothing reaches the parent
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}  # type: ignore[attr-defined]
    return {"start_new_session": True}  # its own process group: the kill reaches its children too


def _start_child(command: list[str], env: dict[str, str], stdin: int) -> subprocess.Popen[str]:
    """A child in its own process group whose stdout and stderr come back as UTF-8 lines."""
    return subprocess.Popen(
        command,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=env,
        **_process_options(),
    )


def _kill_tree(process: subprocess.Popen) -> None:
    """End a child started with :func:`_process_options` and everything it started."""
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.Popen(  # noqa: S603 (a fixed system tool)
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **_process_options(),
        )
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _drain(lines: queue.Queue[str]) -> list[str]:
    """Everything in ``lines`` now, without waiting."""
    drained = []
    while True:
        try:
            drained.append(lines.get_nowait())
        except queue.Empty:
            return drained


def _new_stop_file(owner: object) -> Path:
    return Path(tempfile.gettempdir()) / f"ssae-stop-{os.getpid()}-{id(owner)}-{time.time_ns()}"


class FollowedRun:
    """What a GUI does with a run in the background, whoever runs it: read its new output lines
    and progress events, poll for its exit code, ask it to stop, end it. Subclasses say how
    the run ends (:meth:`poll`, :attr:`running`, :meth:`kill`)."""

    command: list[str]

    def __init__(self, progress_log: Path | None, grace_s: float) -> None:
        self.stop_file = _new_stop_file(self)
        self.progress = ProgressFollower(progress_log) if progress_log else None
        self.grace_s = grace_s
        self.cancel_requested_at: float | None = None
        self.killed = False
        self._lines: queue.Queue[str] = queue.Queue()

    def poll(self) -> int | None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def new_lines(self) -> list[str]:
        """Output lines (stdout and stderr) that arrived since the last call."""
        return _drain(self._lines)

    def new_events(self) -> list[dict[str, Any]]:
        return self.progress.new_events() if self.progress else []

    def _grace_over(self) -> bool:
        return self.cancel_requested_at is not None and not self.killed and time.monotonic() - self.cancel_requested_at > self.grace_s

    def request_cancel(self) -> None:
        """Ask the run to stop (see the module doc); returns at once."""
        if self.running and self.cancel_requested_at is None:
            self.stop_file.write_text("stop", encoding="utf-8")
            self.cancel_requested_at = time.monotonic()

    def stop_in_background(self) -> None:
        """Request a stop and let a daemon thread end the run if it outlives its grace period
        (for a GUI that is closing and will not poll any more)."""
        self.request_cancel()

        def finish() -> None:
            try:
                self.wait(self.grace_s + 1.0)
            except subprocess.TimeoutExpired:
                self.kill()

        threading.Thread(target=finish, name="ssae-stop", daemon=True).start()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the run has ended (scripts and tests; GUIs poll)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.command, timeout or 0)
            time.sleep(0.05)

    def cancel(self, grace_s: float | None = None) -> int | None:
        """Request a stop and wait for the end (killing after ``grace_s``); for scripts and tests."""
        if grace_s is not None:
            self.grace_s = grace_s
        self.request_cancel()
        return self.wait(self.grace_s + 15.0) if self.running or self.poll() is not None else None


class BackgroundCommand(FollowedRun):
    """``python -m ssae.cli ARGS`` in its own process group.

    ``python`` defaults to this interpreter (in Slicer, pass ``PythonSlicer``); ``env`` to
    :func:`engine_environment`.
    """

    def __init__(
        self,
        args: list[str],
        python: str | None = None,
        env: dict[str, str] | None = None,
        progress_log: Path | None = None,
        grace_s: float = 20.0,
    ) -> None:
        super().__init__(progress_log, grace_s)
        self.command = [python or sys.executable, "-m", "ssae.cli", *args]
        self.env = dict(env or engine_environment())
        self.env[STOP_FILE_VARIABLE] = str(self.stop_file)
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.process = _start_child(self.command, self.env, stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def poll(self) -> int | None:
        """The exit code once the process has ended and its output has been read, else None.

        Never waits. After a cancel request whose grace period has run out, ends the process
        tree.
        """
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            if self._grace_over():
                self.kill()
            return None
        if self._reader is not None and self._reader.is_alive():
            return None  # the last lines are still on their way
        self.stop_file.unlink(missing_ok=True)
        return code

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """End the process tree now."""
        if self.running:
            assert self.process is not None
            self.killed = True
            _kill_tree(self.process)


class WorkerJob(FollowedRun):
    """One command run by a :class:`DetectionWorker`, followed like a :class:`BackgroundCommand`."""

    def __init__(self, worker: DetectionWorker, number: int, args: list[str], progress_log: Path | None, grace_s: float) -> None:
        super().__init__(progress_log, grace_s)
        self.worker = worker
        self.id = number
        self.command = ["ssae worker job", *args]
        self.exit_code: int | None = None  # set by the worker's reader thread

    def poll(self) -> int | None:
        """The exit code once the job has ended (or the worker died), else None; never waits.
        After a cancel request whose grace period has run out, ends the worker."""
        if self.exit_code is None:
            if self._grace_over():
                self.kill()
            return None
        self.stop_file.unlink(missing_ok=True)
        return self.exit_code

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def kill(self) -> None:
        """End the worker now (the next job starts a fresh one)."""
        if self.running:
            self.killed = True
            self.worker.kill()

    def finish(self, code: int, message: str = "") -> None:
        if message:
            self._lines.put(message)
        if self.exit_code is None:
            self.exit_code = code


class DetectionWorker:
    """A long-lived ``python -m ssae.worker`` child (see :mod:`ssae.worker`) that runs ``ssae``
    commands one at a time, so that only the first pays the start-up.

    :meth:`submit` returns a :class:`WorkerJob` that a GUI follows like a
    :class:`BackgroundCommand`. If the worker has died (a crash, a kill after a cancel that did
    not end in time), the job that was running ends with the worker's exit code and a message,
    and the next :meth:`submit` starts a fresh worker.
    """

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None, grace_s: float = 20.0) -> None:
        self.command = [python or sys.executable, "-m", "ssae.worker"]
        self.env = dict(env or engine_environment())
        self.grace_s = grace_s
        self.process: subprocess.Popen[str] | None = None
        self.current: WorkerJob | None = None
        self.starts = 0  # how many processes this worker has started (1 unless one died)
        self._jobs = 0
        self._lock = threading.Lock()
        self._idle_lines: queue.Queue[str] = queue.Queue()
        self.ready = threading.Event()
        self.device = ""  # where the networks run, as the worker described it when ready

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def busy(self) -> bool:
        return self.current is not None and self.current.running

    def start(self) -> None:
        """Start the child (done by :meth:`submit` and :meth:`warm` when none is running)."""
        if self.alive:
            return
        process = _start_child(self.command, self.env, stdin=subprocess.PIPE)
        self.process = process
        self.ready = threading.Event()  # set when the worker has done its imports
        self.starts += 1
        threading.Thread(target=self._read, args=(process,), name="ssae-worker-reader", daemon=True).start()

    def warm(self, model: str | os.PathLike[str], device: str = "auto") -> None:
        """Start the worker if needed and have it load ``model`` (and the atlas) before any job."""
        if self.process is not None and (self.process.stdin is None or self.process.stdin.closed):
            self.process = None
        self.start()
        self._send({"warm": {"model": os.fspath(model), "device": device}})

    def submit(self, args: list[str | os.PathLike[str]], progress_log: Path | None = None) -> WorkerJob:
        """Run ``ssae ARGS`` in the worker; refuses while another job runs. A worker that was
        closed (or died) is replaced by a fresh one; a job that cannot be sent is never left
        standing as "busy"."""
        from .errors import SSAEError

        if self.busy:
            raise SSAEError("the detection worker is busy; wait for the running job or cancel it")
        if not all(isinstance(arg, (str, os.PathLike)) for arg in args):  # refused here, before any state changes
            raise SSAEError(f"worker job arguments must be text or paths, got {args!r}")
        arguments = [os.fspath(arg) for arg in args]
        if self.process is not None and (self.process.stdin is None or self.process.stdin.closed):
            self.process = None  # closed by close(): the next job gets a fresh worker
        self.start()
        with self._lock:
            self._jobs += 1
            job = WorkerJob(self, self._jobs, arguments, progress_log, self.grace_s)
            self.current = job
        if not self._send({"job": job.id, "args": arguments, "stop_file": str(job.stop_file)}):
            job.finish(1, "ssae: the detection worker could not take the job (it ended); try again")
        return job

    def new_lines(self) -> list[str]:
        """Output the worker wrote outside any job (e.g. while warming up)."""
        return _drain(self._idle_lines)

    def _send(self, request: dict[str, Any]) -> bool:
        """Write one request; False if the worker can no longer take it (its reader ends a
        running job with the worker's exit code)."""
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):  # died (broken pipe) or closed (ValueError: I/O on a closed file)
            return False
        return True

    def _read(self, process: subprocess.Popen[str]) -> None:
        """Route the worker's output to the job it belongs to; end the job when the worker says
        so, or when the worker dies."""
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            job = self.current if self.process is process else None
            if line.startswith(WORKER_PREFIX):
                try:
                    message = json.loads(line[len(WORKER_PREFIX) :])
                except json.JSONDecodeError:
                    message = {}
                if message.get("event") == "ready":
                    self.device = str(message.get("device", ""))
                    self.ready.set()
                elif message.get("event") == "end" and job is not None and message.get("job") == job.id:
                    job.finish(int(message.get("exit_code", 1)))
                continue
            if job is not None and job.running:
                job._lines.put(line)
            else:
                self._idle_lines.put(line)
        code = process.wait()
        with self._lock:
            job = self.current
        if job is not None and job.running and self.process is process:
            reason = "it was stopped" if job.killed else "it crashed"
            job.finish(code if code != 0 else 1, f"ssae: the detection worker ended during the job ({reason}; exit code {code})")

    def close(self) -> None:
        """Let the worker end once it is idle (it reads the end of its input); returns at once."""
        if self.process is not None and self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def kill(self) -> None:
        """End the worker's process tree now; a running job ends with the exit code."""
        if self.process is not None:
            _kill_tree(self.process)

    def stop_in_background(self) -> None:
        """For a closing GUI: stop the running job, close the worker, end it if it lingers."""
        if self.current is not None and self.current.running:
            self.current.request_cancel()
        self.close()
        process = self.process

        def finish() -> None:
            if process is None:
                return
            try:
                process.wait(self.grace_s + 1.0)
            except subprocess.TimeoutExpired:
                _kill_tree(process)

        threading.Thread(target=finish, name="ssae-worker-stop", daemon=True).start()


class ProgressFollower:
    """Reads the complete JSON lines appended to a progress log since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0

    def new_events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        events = []
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events


def watch_stop_file(path: str | None = None, interval_s: float = 0.2) -> threading.Event | None:
    """In the child: when the parent creates the stop file (``path``, default the one named in
    ``SSAE_STOP_FILE``), interrupt the main thread as Ctrl-C would (a SIGINT handler runs:
    training saves its resume state, detection unwinds).

    Returns an event that ends the watch when set (a worker watches one file per job), or None
    when there is no stop file to watch.
    """
    import _thread

    path = path or os.environ.get(STOP_FILE_VARIABLE)
    if not path:
        return None
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(interval_s):
            if os.path.exists(path):
                _thread.interrupt_main(signal.SIGINT)
                return

    threading.Thread(target=watch, name="ssae-stop-file", daemon=True).start()
    return finished


def wait_for(command: FollowedRun, timeout_s: float, poll_s: float = 0.2) -> int:
    """Block until the command ends (for scripts and tests; GUIs poll from a timer instead)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = command.poll()
        if code is not None:
            return code
        time.sleep(poll_s)
    command.cancel(grace_s=5.0)
    raise TimeoutError(f"{' '.join(command.command)} did not finish within {timeout_s} s")
