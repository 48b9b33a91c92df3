"""Running an ``ssae`` command in a child process and following it, for GUIs.

A GUI (the Slicer modules) must not run minutes of training or detection on its own event
loop. It starts the command line in a separate process, polls this object from a timer, and
shows what comes back: log lines (read by a thread, so the child never blocks on a full pipe)
and JSON-lines progress events (:mod:`ssae.io.progress`).

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
PARENT_VARIABLE = "SSAE_PARENT_PID"  # the GUI process; the child stops as cancelled when it is gone


WORKER_PREFIX = "@ssae-worker "  # starts the lines of :mod:`ssae.app.worker`'s protocol on its stdout


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


def start_child(command: list[str], env: dict[str, str], stdin: int) -> subprocess.Popen[str]:
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


def kill_tree(process: subprocess.Popen) -> None:
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


def drain_lines(lines: queue.Queue[str]) -> list[str]:
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
        return drain_lines(self._lines)

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
    """``python -m ssae ARGS`` in its own process group.

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
        self.command = [python or sys.executable, "-m", "ssae", *args]
        self.env = dict(env or engine_environment())
        self.env[STOP_FILE_VARIABLE] = str(self.stop_file)
        self.env[PARENT_VARIABLE] = str(os.getpid())
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.process = start_child(self.command, self.env, stdin=subprocess.DEVNULL)
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
            kill_tree(self.process)


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
    ``SSAE_STOP_FILE``), or when the parent named in ``SSAE_PARENT_PID`` has ended (the GUI quit
    or crashed), interrupt the main thread as Ctrl-C would (a SIGINT handler runs: training
    saves its resume state, detection unwinds). Once the parent is gone its pipe has no reader:
    the child's output goes to the null device, so that no write fails while it saves.

    Returns an event that ends the watch when set (a worker watches one file per job), or None
    when there is nothing to watch.
    """
    import _thread

    path = path or os.environ.get(STOP_FILE_VARIABLE)
    parent = ParentWatch.from_environment()
    if not path and parent is None:
        return None
    finished = threading.Event()

    def watch() -> None:
        interrupted = False
        while not finished.wait(interval_s):
            orphaned = parent is not None and not parent.alive()
            if orphaned:
                _silence_output()
            if not interrupted and (orphaned or (path and os.path.exists(path))):
                _thread.interrupt_main(signal.SIGINT)
                interrupted = True
            if orphaned or (interrupted and parent is None):
                return

    threading.Thread(target=watch, name="ssae-stop-file", daemon=True).start()
    return finished


class ParentWatch:
    """Whether the process that started this one is still running (POSIX: this process has not
    been re-parented; Windows: a handle opened at start has not been signalled)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._handle = None
        if os.name == "nt":
            import ctypes

            synchronize = 0x00100000
            self._handle = ctypes.windll.kernel32.OpenProcess(synchronize, False, pid)  # type: ignore[attr-defined]

    @classmethod
    def from_environment(cls) -> ParentWatch | None:
        value = os.environ.get(PARENT_VARIABLE, "")
        if not value.isdigit():
            return None
        watch = cls(int(value))
        return watch if watch.alive() else None  # not started by that process (a variable left over)

    def alive(self) -> bool:
        if os.name == "nt":
            import ctypes

            wait_object_0 = 0
            return bool(self._handle) and ctypes.windll.kernel32.WaitForSingleObject(self._handle, 0) != wait_object_0  # type: ignore[attr-defined]
        return os.getppid() == self.pid


def _silence_output() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    for descriptor in (1, 2):
        try:
            os.dup2(devnull, descriptor)
        except OSError:
            pass
    os.close(devnull)


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
