"""Training progress for people (a terminal bar) and for programs (JSON lines).

Every event is one JSON object per line, flushed immediately, so a GUI (the SSAETraining
Slicer module) can follow a running ``ssae train`` by reading the file as it grows. Events:

``start``     levels, epochs per level (maximum), steps per epoch, slices, subjects, device
``step``      level, epoch, step, steps, loss, eta_s            (every few steps)
``epoch``     level, epoch, train_loss, val_loss, best_val_loss, bad_epochs, eta_s
``level_done`` level, epochs, best_val_loss
``calibrated`` threshold, percentile
``done``      model (path), duration_s (``ssae detect``: files)
``progress``  fraction, message                                 (``ssae detect --progress-log``)
``interrupted`` / ``error``  message
``eta_s`` assumes every remaining level runs to its epoch limit, so it is an upper bound.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO


class ProgressLog:
    """Writes JSON-lines events and draws a one-line progress bar on a terminal."""

    def __init__(self, path: str | Path | None = None, terminal: TextIO | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.handle = open(path, "a", buffering=1, encoding="utf-8") if (path and enabled) else None
        self.terminal = terminal if enabled else None
        self.started = time.time()
        self._writing = threading.Lock()  # a cluster run records workers' events from Dask's thread

    def event(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        with self._writing:
            if self.handle is not None:
                self.handle.write(json.dumps(record) + "\n")
                self.handle.flush()
        if self.terminal is not None:
            self._draw(record)

    def message(self, text: str) -> None:
        """A plain log line (also recorded as a ``log`` event)."""
        if not self.enabled:
            return
        if self.handle is not None:
            self.handle.write(json.dumps({"event": "log", "time": round(time.time(), 3), "message": text}) + "\n")
        if self.terminal is not None:
            self.terminal.write("\r\033[K" + text + "\n" if self.terminal.isatty() else text + "\n")
            self.terminal.flush()

    def _draw(self, record: dict[str, Any]) -> None:
        term = self.terminal
        assert term is not None
        kind = record["event"]
        if kind == "step" and term.isatty():
            fraction = record["step"] / max(record["steps"], 1)
            bar = "#" * int(24 * fraction)
            eta = _duration(record.get("eta_s"))
            term.write(f"\rlevel {record['level']} epoch {record['epoch']:>3} [{bar:<24}] loss {record['loss']:.5f}  eta <= {eta}\033[K")
            term.flush()
        elif kind == "epoch":
            prefix = "\r\033[K" if term.isatty() else ""
            term.write(
                f"{prefix}level {record['level']} epoch {record['epoch']:>3}: train {record['train_loss']:.5f}  "
                f"val {record['val_loss']:.5f}  best {record['best_val_loss']:.5f}  "
                f"(no improvement for {record['bad_epochs']})  eta <= {_duration(record.get('eta_s'))}\n"
            )
            term.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def stderr_terminal() -> TextIO:
    return sys.stderr
