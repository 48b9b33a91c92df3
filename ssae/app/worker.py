"""A long-lived ``ssae`` process that runs commands one after another for a GUI or a script.

Starting ``ssae detect`` costs about two seconds before any work (the interpreter, PyTorch,
SimpleITK, the atlas, the model and its checksums); a Slicer session that detects again and
again would pay it on every click. The worker pays it once: the parent
(:class:`ssae.app.worker_client.DetectionWorker`) keeps it running and sends it jobs, and it keeps the
last model (:func:`ssae.detection.detector.cached_detector`, reloaded when its file changes), the atlas
and PyTorch in memory between jobs. A job is exactly a command line (``["detect", ...]``): it
runs through :func:`ssae.app.cli.run`, with the same checks, messages, files and exit codes as the
command run on its own.

Protocol (one JSON object per line):

* requests on stdin: ``{"job": ID, "args": [...], "stop_file": PATH}`` runs a command;
  ``{"warm": {"model": PATH, "device": D}}`` loads a model (and the atlas) ahead of the first
  job; ``{"quit": true}`` or the end of stdin (the parent closed it or died) ends the worker;
* on stdout, lines starting with :data:`WORKER_PREFIX` followed by JSON: ``{"event": "ready",
  "device": "..."}`` once the imports are done (where the networks will run, in words: the GUI
  shows it without importing PyTorch itself), ``{"event": "start", "job": ID}`` and ``{"event": "end", "job":
  ID, "exit_code": N}`` around each job. Everything else on stdout and stderr between those two
  lines is the job's own output.

Cancelling a job is the same as for a one-off command: the parent creates the job's stop file,
the job unwinds as after Ctrl-C (exit code 130, nothing left under a final name) and the worker
waits for the next job. A job that crashes the worker ends the process; the parent sees that
and starts a fresh worker for the next job.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ssae.app.cli import interrupt_on_terminate, run
from ssae.app.processes import WORKER_PREFIX, watch_stop_file


def announce(event: str, **fields: Any) -> None:
    """One protocol line on stdout; written again if a late Ctrl-C interrupts it (the parent
    ignores a repeated line)."""
    line = WORKER_PREFIX + json.dumps({"event": event, **fields}) + "\n"
    while True:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
            return
        except KeyboardInterrupt:
            continue


def warm_up(model: str, device: str) -> None:
    """Load the model and, if it uses one, the atlas, so that the first job starts at once."""
    from ssae.detection.detector import cached_detector

    try:
        detector = cached_detector(model, device)
        if detector.card.preprocessing.atlas:
            from ssae.preprocessing.atlas import load_atlas

            load_atlas()
    except Exception as exc:  # noqa: BLE001 (any failure: the job that uses this model reports it properly)
        print(f"ssae worker: could not load {model} ahead of time: {exc}", file=sys.stderr)


def run_job(request: dict[str, Any]) -> int:
    """One command line, with its own stop file; returns its exit code."""
    stop_watch = watch_stop_file(request.get("stop_file"))
    code = 130
    try:
        code = run([str(arg) for arg in request["args"]])
    except KeyboardInterrupt:  # a stop request that arrived after the command had handled its own
        code = 130
    except Exception as exc:  # noqa: BLE001 (a bug in one job must not end the worker: report it)
        import traceback

        traceback.print_exc()
        print(f"ssae: internal error: {exc}", file=sys.stderr)
        code = 1
    finally:
        if stop_watch is not None:
            stop_watch.set()
    return code


def serve() -> int:
    """Read requests until ``quit`` or the end of stdin (see the module doc)."""
    if sys.stdin is None or sys.stdout is None:
        print("ssae worker: needs its standard input and output (it reads jobs and answers there); run it from a parent", file=sys.stderr)
        return 2
    interrupt_on_terminate()
    from ssae.detection import detector as detection  # noqa: F401 (PyTorch and the engine: the start-up cost, paid once here)
    from ssae.models.devices import available_device_description

    announce("ready", device=available_device_description())
    while True:
        try:
            line = sys.stdin.readline()
            if not line:
                return 0
            request = json.loads(line)
            if request.get("quit"):
                return 0
            if "warm" in request:
                warm_up(str(request["warm"]["model"]), str(request["warm"].get("device", "auto")))
                continue
            job, code = request["job"], 130
            try:
                announce("start", job=job)
                code = run_job(request)
            finally:  # the parent waits for this line, whatever happened
                announce("end", job=job, exit_code=code)
        except KeyboardInterrupt:  # a stop request that came in between jobs: nothing to stop
            continue
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            print(f"ssae worker: ignoring a malformed request ({exc}): {line.strip()[:200]}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(serve())
