"""The parent's side of the detection worker (:mod:`ssae.app.worker`): one long-lived process
that runs ``ssae`` command lines one after another, followed like any background run."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ssae.app.processes import WORKER_PREFIX, FollowedRun, drain_lines, engine_environment, kill_tree, start_child


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
    """A long-lived ``python -m ssae.app.worker`` child (see :mod:`ssae.app.worker`) that runs ``ssae``
    commands one at a time, so that only the first pays the start-up.

    :meth:`submit` returns a :class:`WorkerJob` that a GUI follows like a
    :class:`BackgroundCommand`. If the worker has died (a crash, a kill after a cancel that did
    not end in time), the job that was running ends with the worker's exit code and a message,
    and the next :meth:`submit` starts a fresh worker.
    """

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None, grace_s: float = 20.0) -> None:
        self.command = [python or sys.executable, "-m", "ssae.app.worker"]
        self.env = dict(env or engine_environment())
        self.grace_s = grace_s
        self.process: subprocess.Popen[str] | None = None
        self.current: WorkerJob | None = None
        self.starts = 0  # how many processes this worker has started (1 unless one died)
        self._jobs = 0
        self._lock = threading.Lock()  # the current job, shared with the reader thread
        self._submitting = threading.RLock()  # one submit, warm or start at a time
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
        with self._submitting:
            if self.alive:
                return
            process = start_child(self.command, self.env, stdin=subprocess.PIPE)
            self.process = process
            self.ready = threading.Event()  # set when the worker has done its imports
            self.starts += 1
            threading.Thread(target=self._read, args=(process,), name="ssae-worker-reader", daemon=True).start()

    def warm(self, model: str | os.PathLike[str], device: str = "auto") -> None:
        """Start the worker if needed and have it load ``model`` (and the atlas) before any job."""
        with self._submitting:
            if self.process is not None and (self.process.stdin is None or self.process.stdin.closed):
                self.process = None
            self.start()
            self._send({"warm": {"model": os.fspath(model), "device": device}})

    def submit(self, args: list[str | os.PathLike[str]], progress_log: Path | None = None) -> WorkerJob:
        """Run ``ssae ARGS`` in the worker; refuses while another job runs. A worker that was
        closed (or died) is replaced by a fresh one; a job that cannot be sent is never left
        standing as "busy". Atomic: of two threads submitting at once, one gets the job and the
        other the "busy" refusal, and only one worker process is ever started."""
        from ssae.io.errors import SSAEError

        if not all(isinstance(arg, (str, os.PathLike)) for arg in args):  # refused here, before any state changes
            raise SSAEError(f"worker job arguments must be text or paths, got {args!r}")
        arguments = [os.fspath(arg) for arg in args]
        with self._submitting:
            if self.busy:
                raise SSAEError("the detection worker is busy; wait for the running job or cancel it")
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
        return drain_lines(self._idle_lines)

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
            kill_tree(self.process)

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
                kill_tree(process)

        threading.Thread(target=finish, name="ssae-worker-stop", daemon=True).start()
