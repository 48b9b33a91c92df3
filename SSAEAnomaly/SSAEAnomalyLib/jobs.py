"""Background detection jobs that carry their own inputs.

A job remembers everything its results depend on when it starts: the input volume's node ID
and name, the brain mask's ID, the model file and its card (thresholds included), whether
adaptation runs, the device. Results are loaded against those, never against what the panel
shows when the process ends, so switching volume or model mid-run can never put one patient's
maps under another patient's name or threshold them with another model's threshold.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssae.app.processes import FollowedRun


@dataclass(frozen=True)
class ScanInput:
    """One scan of a job: the volume node it came from (if any) and the file the engine reads."""

    case: str
    image: Path
    volume_id: str = ""
    volume_name: str = ""
    brain_mask: Path | None = None


@dataclass(frozen=True)
class JobInputs:
    """What a detection ran on, fixed when it starts."""

    scans: tuple[ScanInput, ...]
    model_path: str
    card: dict[str, Any]
    adapt: bool
    device: str
    score_map: str
    operating_point: str = ""  # the preset that drew the mask ('' for a model without operating points)


@dataclass
class DetectionJob:
    """A background ``ssae detect`` run (one scan or a cohort) and the folder it works in."""

    command: FollowedRun  # a job of the logic's worker
    workdir: Path
    inputs: JobInputs
    output: Path  # the result set (one scan) or the cohort folder
    cohort: bool = False
    keep_output: bool = False  # a cohort written to a folder the user chose stays there
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def input_name(self) -> str:
        return self.inputs.scans[0].volume_name if len(self.inputs.scans) == 1 else f"{len(self.inputs.scans)} scans"

    def cohort_rows(self) -> list[dict[str, str]]:
        table = self.output / "cohort.csv"
        if not table.exists():
            return []
        with table.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
