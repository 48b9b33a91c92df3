"""A training run as the SSAETraining module sees it: options -> ``ssae train`` (or ``ssae
adapt``) -> progress.

The module never trains inside Slicer's process: it starts the command in the background
(:class:`ssae.app.processes.BackgroundCommand`) and turns the engine's JSON-lines progress events
into a progress fraction and a status line. Two modes: *train* a new model on healthy scans,
or *adapt* an existing model to a site's own (unlabelled) scans. The panel's defaults are the
shipped model's recipe (:mod:`ssae.training.defaults`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssae.app.processes import BackgroundCommand
from ssae.io.errors import SSAEError
from ssae.models.settings import VARIANTS
from ssae.training import defaults

MODES = ("train", "adapt")


@dataclass
class TrainingRequest:
    """What the user chose in the panel; :meth:`arguments` is the matching ``ssae train`` (or
    ``ssae adapt``) call."""

    data_folder: str
    output: str
    brain_masks_folder: str = ""
    variant: str = "dense"
    size: int = defaults.TRAIN_SIZE
    levels: int = defaults.TRAIN_LEVELS
    epochs: int = defaults.TRAIN_EPOCHS
    patience: int = defaults.TRAIN_PATIENCE
    batch_size: int = 8
    atlas: bool = defaults.TRAIN_ATLAS
    bias_correction: bool = defaults.TRAIN_BIAS_CORRECTION
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    mode: str = "train"  # or "adapt": fine-tune base_model on the scans of data_folder
    base_model: str = ""

    def check(self) -> None:
        if self.mode not in MODES:
            raise SSAEError(f"unknown mode {self.mode!r}")
        if not self.data_folder or not Path(self.data_folder).is_dir():
            raise SSAEError("choose the folder of scans" if self.mode == "adapt" else "choose the folder of healthy scans")
        if self.mode == "adapt" and not (self.base_model and Path(self.base_model).is_file()):
            raise SSAEError("choose the model to adapt")
        if self.mode == "adapt" and Path(self.base_model).resolve() == Path(self.output).resolve():
            raise SSAEError("write the adapted model to a new file; the model to adapt is never changed")
        if not self.output:
            raise SSAEError("choose where to write the model file")
        if not self.output.endswith(".safetensors"):
            raise SSAEError("model files end with .safetensors")
        if self.brain_masks_folder and not Path(self.brain_masks_folder).is_dir():
            raise SSAEError(f"brain mask folder not found: {self.brain_masks_folder}")
        if self.variant not in VARIANTS:
            raise SSAEError(f"unknown model type {self.variant!r}")
        if Path(self.output).exists() and not (self.overwrite or self.resume):
            raise SSAEError(f"{self.output} already exists; allow replacing it or choose another file")

    def arguments(self, progress_log: Path) -> list[str]:
        if self.mode == "adapt":
            args = [
                "adapt",
                self.base_model,
                self.data_folder,
                "-o",
                self.output,
                "--device",
                self.device,
                "--progress-log",
                str(progress_log),
            ]
            if self.brain_masks_folder:
                args += ["--brain-masks", self.brain_masks_folder]
            return args + (["--overwrite"] if self.overwrite else [])
        args = [
            "train",
            self.data_folder,
            "-o",
            self.output,
            "--variant",
            self.variant,
            "--size",
            str(self.size),
            "--levels",
            str(self.levels),
            "--epochs",
            str(self.epochs),
            "--patience",
            str(self.patience),
            "--batch-size",
            str(self.batch_size),
            "--device",
            self.device,
            "--progress-log",
            str(progress_log),
            "--quiet",
        ]
        if self.brain_masks_folder:
            args += ["--brain-masks", self.brain_masks_folder]
        if self.atlas:
            args.append("--atlas")
        if self.bias_correction:
            args.append("--bias-correction")
        if self.resume:
            args.append("--resume")
        if self.overwrite:
            args.append("--overwrite")
        return args


@dataclass
class TrainingProgress:
    """Running summary of the progress events of one run."""

    levels: int = 1
    max_epochs: int = 1
    fraction: float = 0.0
    status: str = "starting"
    eta_s: float | None = None
    finished: bool = False
    failed: bool = False
    model: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self.levels, self.max_epochs = int(event["levels"]), int(event["max_epochs"])
            self.status = (
                f"training {event['model']} on {event['train_slices']} slices of {event['train_subjects']} subjects "
                f"({event['val_subjects']} held out), {event['device']}"
            )
        elif kind == "step":
            within = (event["epoch"] + event["step"] / max(event["steps"], 1)) / self.max_epochs
            self._at(event["level"], within)
            self.eta_s = event.get("eta_s")
            self.status = f"level {event['level']}, epoch {event['epoch'] + 1}: loss {event['loss']:.5f}"
        elif kind == "epoch":
            self._at(event["level"], event["epoch"] / self.max_epochs)
            self.eta_s = event.get("eta_s")
            self.history.append(event)
            self.status = (
                f"level {event['level']}, epoch {event['epoch']}: train {event['train_loss']:.5f}, "
                f"validation {event['val_loss']:.5f} (best {event['best_val_loss']:.5f})"
            )
        elif kind == "level_done":
            self._at(event["level"], 1.0)
            self.status = f"level {event['level']} done after {event['epochs']} epochs"
        elif kind == "calibrated":
            self.status = f"threshold calibrated on healthy validation subjects: {event['threshold']:.4g}"
        elif kind == "progress":  # ssae adapt
            self.fraction = float(event["fraction"])
            self.status = event.get("message", self.status)
        elif kind == "done":
            self.fraction, self.finished, self.model = 1.0, True, event["model"]
            self.status = f"model written to {event['model']}"
        elif kind in ("error", "interrupted"):
            self.finished, self.failed = True, True
            self.status = event.get("message", kind)
        elif kind == "log":
            self.status = event.get("message", self.status)

    def _at(self, level: int, within: float) -> None:
        done_levels = self.levels - 1 - level  # the coarsest level trains first
        self.fraction = min(1.0, (done_levels + min(within, 1.0)) / self.levels)


@dataclass
class TrainingJob:
    command: BackgroundCommand
    progress: TrainingProgress
    progress_log: Path

    def poll(self) -> int | None:
        """Apply new events; the exit code once the process has ended (its last events read)."""
        code = self.command.poll()
        for event in self.command.new_events():
            self.progress.update(event)
        return code


def start_training(request: TrainingRequest, python: str | None = None) -> TrainingJob:
    request.check()
    progress_log = Path(tempfile.mkdtemp(prefix="ssae-train-")) / "progress.jsonl"
    command = BackgroundCommand(request.arguments(progress_log), python=python, progress_log=progress_log)
    command.start()
    return TrainingJob(command=command, progress=TrainingProgress(), progress_log=progress_log)


class _Running:
    """The training run this Slicer session started. It lives in the Lib package, which a
    developer's Reload of the module does not import again, so the reloaded panel follows the
    run instead of losing it (or cancelling it).

    Quitting Slicer stops the run here, not in a widget: Slicer's own ``aboutToQuit()`` slot
    (connected in ``qSlicerCoreApplication``'s constructor, so it runs first) unloads the modules
    and runs the widgets' ``cleanup()`` before any slot a module connects, and a Reload runs
    ``cleanup()`` too, so ``cleanup()`` cannot tell quitting from reloading. One connection per
    Slicer process (:meth:`stop_when_application_quits`) can. Should Slicer end without quitting
    (a crash, a kill), the run notices its parent is gone and stops the same way
    (:func:`ssae.app.processes.watch_stop_file`).
    """

    job: TrainingJob | None = None
    application: Any = None

    def stop_when_application_quits(self, application: Any) -> None:
        """Connect :meth:`stop` to the application's ``aboutToQuit()``, once per application."""
        if self.application is not application:
            application.connect("aboutToQuit()", self.stop)
            self.application = application

    def stop(self) -> None:
        """Ask the run to stop (it saves its resume state) without waiting for it."""
        if self.job is not None and self.job.command.running:
            self.job.command.stop_in_background()
        self.job = None


RUNNING = _Running()
