"""Detection as the command line (and the Slicer module's background process) runs it: one
scan into one result set, or a cohort of scans into one result folder per scan plus a table.

Every check that can fail fast runs before the work: the input is read and validated, the
output names are free (or ``overwrite``), the folder is writable and has room for the results.
A cohort run goes on past a scan that fails; the scan's error is in the cohort table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssae.detection.cohort_runs import CohortKind, CohortSummary, run_cohort
from ssae.detection.detector import DetectionResult, Detector
from ssae.detection.result_files import detection_summary, estimated_bytes, output_paths, write_detection
from ssae.io.cases import Case, check_output_apart, find_cases, is_dicom_folder
from ssae.io.errors import SSAEError
from ssae.io.progress import ProgressLog
from ssae.io.volumes import check_format_holds_geometry, read_mask, read_volume, volume_stem
from ssae.io.writing import check_output_folder, refuse_existing
from ssae.models.settings import AdaptationSettings
from ssae.preprocessing.registration_check import alignment_warnings

COHORT_TABLE = "cohort.csv"


COHORT_COLUMNS = [
    "case",
    "image",
    "status",
    "error",
    "lesion_count",
    "total_volume_ml",
    "score_map",
    "operating_point",
    "threshold",
    "adapted",
    "registration_check",
    "warnings",
    "seconds",
    "results",
]


@dataclass
class Outcome:
    """One scan's detection, where its files went, and what the user should be warned about."""

    result: DetectionResult
    paths: dict[str, Path]
    warnings: list[str] = field(default_factory=list)


def is_cohort(source: Path) -> bool:
    """A folder of scans or a CSV manifest (a DICOM series folder is one scan)."""
    return (source.is_dir() and not is_dicom_folder(source)) or (source.is_file() and source.suffix.lower() == ".csv")


def detect_one(
    detector: Detector,
    image_path: Path,
    output_dir: Path,
    brain_mask_path: Path | None = None,
    *,
    scales: bool = True,
    score_map: str | None = None,
    threshold: float | None = None,
    operating_point: str | None = None,
    min_lesion_mm3: float | None = None,
    adaptation: AdaptationSettings | None = None,
    fmt: str = "nii.gz",
    figure: bool = False,
    overwrite: bool = False,
    progress_log: Path | None = None,
    report: Callable[[float, str], None] | None = None,
) -> Outcome:
    """Detect in one scan and write its result set (see :func:`ssae.detection.result_files.write_detection`)."""
    stem = volume_stem(image_path)
    image = read_volume(image_path)
    check_format_holds_geometry(image, fmt)
    mask = read_mask(brain_mask_path, image, "brain mask") if brain_mask_path else None
    card = detector.card
    levels = list(range(card.architecture.levels)) if scales else []
    planned = list(output_paths(output_dir, stem, fmt, levels, atlas=card.preprocessing.atlas, small_lesions=bool(card.small_lesion_rules(False))).values())
    if figure:
        planned.append(output_dir / f"{stem}_figure.png")
    refuse_existing(planned, overwrite)
    check_output_folder(output_dir, estimated_bytes(image, len(levels)))
    progress = ProgressLog(progress_log) if progress_log else None

    def forward(fraction: float, message: str) -> None:
        if progress is not None:
            progress.event("progress", fraction=round(fraction, 4), message=message)
        if report is not None:
            report(fraction, message)

    try:
        result = detector.detect(
            image,
            mask,
            threshold=threshold,
            scales=scales,
            progress=forward,
            adaptation=adaptation,
            score_map=score_map,
            operating_point=operating_point,
            min_lesion_mm3=min_lesion_mm3,
        )
        warnings = alignment_warnings(result.prepared.alignment, card.modality)
        if adaptation is not None and card.adaptation is None:
            warnings.append("this model has no thresholds calibrated for adaptation; the unadapted ones were used")
        summary = detection_summary(result, str(image_path), card.architecture.name, detector.path.name if detector.path else "")
        summary["warnings"] = warnings
        title = f"{card.architecture.name}: {image_path.name}" if figure else None
        paths = write_detection(result, output_dir, stem, fmt, summary, overwrite, figure_title=title)
        if progress is not None:
            progress.event("done", files={name: str(path) for name, path in paths.items()})
    finally:
        if progress is not None:
            progress.close()
    return Outcome(result=result, paths=paths, warnings=warnings)


def detect_cohort(
    detector: Detector,
    source: Path,
    output_dir: Path,
    masks_folder: Path | None = None,
    *,
    progress_log: Path | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    scheduler: str | None = None,
    threads_per_scan: int | None = None,
    **options: Any,
) -> CohortSummary:
    """Detect in every scan of a folder or CSV manifest: ``output_dir/<case>/`` per scan and
    ``output_dir/cohort.csv`` with one row per scan (lesions, volume, threshold, checks, error),
    in this process or on a Dask cluster (:func:`run_cohort`); the output folder must not be or
    hold an input."""
    cases = find_cases(source, masks_folder)
    check_output_apart(output_dir, cases)
    return run_cohort(
        SCANS,
        detector,
        cases,
        output_dir,
        options,
        progress_log=progress_log,
        log=log,
        resume=resume,
        scheduler=scheduler,
        threads_per_scan=threads_per_scan,
    )


def _first_row(case: Case, folder: Path) -> dict[str, Any]:
    return {"case": case.name, "image": str(case.image), "results": str(folder)}


def cohort_row(detector: Detector, case: Case, folder: Path, report, options: dict[str, Any]) -> dict[str, Any]:
    """Detect in one scan of a cohort and write its result set; its table row (an input error is
    the row's error)."""
    started = time.perf_counter()
    row = _first_row(case, folder)
    try:
        outcome = detect_one(detector, case.image, folder, case.brain_mask, report=report, **options)
    except SSAEError as exc:
        return {**row, "status": "error", "error": str(exc), "seconds": f"{time.perf_counter() - started:.1f}"}
    result = outcome.result
    alignment = result.prepared.alignment
    return {
        **row,
        "status": "ok",
        "error": "",
        "lesion_count": result.statistics.count,
        "total_volume_ml": f"{result.statistics.total_ml:.3f}",
        "score_map": result.score_map,
        "operating_point": result.rule.operating_point,
        "threshold": f"{result.threshold:.6g}",
        "adapted": "yes" if result.adaptation is not None else "no",
        "registration_check": "" if alignment is None else ("passed" if alignment.quality.passed else "warning"),
        "warnings": "; ".join(outcome.warnings),
        "seconds": f"{time.perf_counter() - started:.1f}",
    }


def finished_row(case: Case, folder: Path, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The cohort row of a scan whose result set is complete in ``folder`` (its summary names
    every file and every file is there), else None."""
    summary_path = folder / f"{volume_stem(case.image)}_summary.json"
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        files = [Path(p) for name, p in summary["files"].items() if name != "score"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not files or not all(p.is_file() and p.stat().st_size > 0 for p in files):
        return None
    registration = summary.get("registration")
    return {
        "case": case.name,
        "image": str(case.image),
        "results": str(folder),
        "status": "ok",
        "error": "",
        "lesion_count": summary.get("lesion_count", ""),
        "total_volume_ml": f"{summary.get('total_volume_ml', 0.0):.3f}",
        "score_map": summary.get("score_map", ""),
        "operating_point": (summary.get("mask_rule") or {}).get("operating_point", ""),
        "threshold": f"{summary.get('threshold', 0.0):.6g}",
        "adapted": "yes" if summary.get("adaptation") else "no",
        "registration_check": "" if not registration else ("passed" if registration.get("passed") else "warning"),
        "warnings": "; ".join(summary.get("warnings") or []),
        "seconds": "",
    }




SCANS = CohortKind(
    noun="scan",
    table_name=COHORT_TABLE,
    columns=COHORT_COLUMNS,
    finished_row=finished_row,
    first_row=_first_row,
    row=cohort_row,
)
