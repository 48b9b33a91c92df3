"""Running an ``ssae`` command in a child process and following it, for GUIs.

A GUI (the Slicer modules) must not run minutes of training or detection on its own event
loop. It starts the command line in a separate process, polls this object from a timer, and
shows what comes back: log lines (read by a thread, so the child never blocks on a full pipe)
and JSON-lines progress events (:mod:`ssae.progress`). :meth:`BackgroundCommand.cancel` ends
the whole process tree: first a polite SIGTERM (``ssae train`` then saves its resume state at
the next step), then a kill if it does not stop in time.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def engine_environment() -> dict[str, str]:
    """The current environment, with this ``ssae`` package importable and output unbuffered
    UTF-8 (the parent reads it as UTF-8 whatever locale the host application set)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


class BackgroundCommand:
    """``python -m ssae.cli ARGS`` in its own process group.

    ``python`` defaults to this interpreter (in Slicer, pass ``PythonSlicer``); ``env`` to
    :func:`engine_environment`.
    """

    def __init__(
        self, args: list[str], python: str | None = None, env: dict[str, str] | None = None, progress_log: Path | None = None
    ) -> None:
        self.command = [python or sys.executable, "-m", "ssae.cli", *args]
        self.env = env or engine_environment()
        self.progress = ProgressFollower(progress_log) if progress_log else None
        self.process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        options: dict[str, Any] = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            options["start_new_session"] = True  # its own process group: cancel reaches children too
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=self.env,
            **options,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def new_lines(self) -> list[str]:
        """Output lines (stdout and stderr) that arrived since the last call."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def new_events(self) -> list[dict[str, Any]]:
        return self.progress.new_events() if self.progress else []

    def poll(self) -> int | None:
        """Exit code once the process has ended (and its output has been read), else None."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is not None and self._reader is not None:
            self._reader.join(timeout=5)
        return code

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def cancel(self, grace_s: float = 20.0) -> int | None:
        """End the process tree: SIGTERM (CTRL_BREAK on Windows), then kill after ``grace_s``."""
        if not self.running:
            return self.poll()
        assert self.process is not None
        if os.name == "nt":
            self.process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.wait(grace_s)
        except subprocess.TimeoutExpired:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
            else:
                os.killpg(self.process.pid, signal.SIGKILL)
            return self.wait(10)


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


def wait_for(command: BackgroundCommand, timeout_s: float, poll_s: float = 0.2) -> int:
    """Block until the command ends (for scripts and tests; GUIs poll from a timer instead)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = command.poll()
        if code is not None:
            return code
        time.sleep(poll_s)
    command.cancel()
    raise TimeoutError(f"{' '.join(command.command)} did not finish within {timeout_s} s")
