"""Comparisons as the command line and the Slicer module run them: one pair of scans into one
result set, or many pairs (a CSV of pairs, or a folder with one subfolder per pair) into one
result folder per pair plus a table. Checks that can fail fast run first; a failing pair does
not stop the others, its error is in the table.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssae.detection.cohort_runs import CohortKind, CohortSummary, run_cohort
from ssae.detection.detector import Detector
from ssae.detection.followup import Comparison, compare_scans
from ssae.detection.followup_files import comparison_bytes, comparison_paths, comparison_summary, write_comparison
from ssae.io.cases import Case, check_output_apart, is_dicom_folder, is_result_folder, is_volume_file, read_text_table, safe_case_name
from ssae.io.errors import SSAEError
from ssae.io.progress import ProgressLog
from ssae.io.volumes import check_format_holds_geometry, read_mask, read_volume, volume_stem
from ssae.io.writing import check_output_folder, refuse_existing
from ssae.models.settings import AdaptationSettings
from ssae.scoring.change import STATUSES, SUMMARY_SUFFIX, ChangeRule

PAIRS_TABLE = "comparisons.csv"
PAIR_COLUMNS = [
    "pair",
    "baseline",
    "followup",
    "status",
    "error",
    *STATUSES,
    "increase_ml",
    "decrease_ml",
    "registration_check",
    "correlation",
    "warnings",
    "seconds",
    "results",
]


@dataclass
class Pair:
    """Two scans of one patient, the earlier first, with optional brain masks on their grids."""

    name: str
    baseline: Path
    followup: Path
    baseline_mask: Path | None = None
    followup_mask: Path | None = None


@dataclass
class ComparisonOutcome:
    comparison: Comparison
    paths: dict[str, Path]
    warnings: list[str] = field(default_factory=list)


def is_pair_source(source: Path) -> bool:
    """A CSV of pairs or a folder of pair folders (rather than one scan)."""
    return source.suffix.lower() == ".csv" or (source.is_dir() and not is_dicom_folder(source))


def find_pairs(source: Path) -> list[Pair]:
    """The pairs of a CSV (columns ``baseline``, ``followup``; optional ``pair``,
    ``baseline_mask``, ``followup_mask``; paths relative to the CSV) or of a folder whose
    subfolders each hold exactly two scans (files or DICOM series), the earlier by name first
    (``study1``/``study2``, ``2023-01``/``2024-03``, ``baseline``/``followup``)."""
    if not source.exists():
        raise SSAEError(f"{source} does not exist")
    pairs = _pairs_from_csv(source) if source.is_file() else _pairs_from_folder(source)
    if not pairs:
        raise SSAEError(f"{source} holds no pair of scans")
    names = [p.name for p in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SSAEError(f"{source}: pair names must be unique, repeated: {', '.join(duplicates)}")
    return pairs


def _pairs_from_csv(manifest: Path) -> list[Pair]:
    rows = list(csv.DictReader(io.StringIO(read_text_table(manifest), newline="")))
    header = {name.strip().lower() for name in rows[0]} if rows else set()
    if not {"baseline", "followup"} <= header:
        raise SSAEError(
            f"{manifest} needs a header row with 'baseline' and 'followup' columns (optional: pair, baseline_mask, followup_mask)"
        )

    def resolve(value: str | None) -> Path | None:
        value = (value or "").strip()
        return (manifest.parent / value).resolve() if value else None

    pairs = []
    for number, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): v for k, v in raw.items()}
        baseline, followup = resolve(row.get("baseline")), resolve(row.get("followup"))
        if baseline is None or followup is None:
            raise SSAEError(f"{manifest}, line {number}: both 'baseline' and 'followup' are needed")
        name = safe_case_name((row.get("pair") or "").strip() or volume_stem(followup))
        pairs.append(Pair(name, baseline, followup, resolve(row.get("baseline_mask")), resolve(row.get("followup_mask"))))
    return pairs


def _pairs_from_folder(folder: Path) -> list[Pair]:
    """One pair per subfolder holding two scans. Result folders (ssae's own, e.g. ``-o`` inside
    the pairs folder) and subfolders without any scan are not pairs; a subfolder with one scan
    or more than two is refused before any work, all such folders named at once, since which
    two to compare cannot be guessed."""
    pairs, unclear = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_result_folder(sub):
            continue
        scans = sorted(p for p in sub.iterdir() if (is_volume_file(p) and "mask" not in p.name.lower()) or is_dicom_folder(p))
        if len(scans) == 2:
            pairs.append(Pair(safe_case_name(sub.name), scans[0], scans[1]))
        elif scans:
            unclear.append(f"{sub.name} ({len(scans)})")
    if unclear:
        raise SSAEError(
            f"each pair folder of {folder} must hold exactly two scans (the earlier by name is the baseline); "
            f"these do not (scans found): {', '.join(unclear)}"
        )
    return pairs


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same path, or links to the same file (a hard link,
    a symbolic link, another mount of it)."""
    try:
        return Path(first).samefile(second)
    except OSError:
        return Path(first).resolve() == Path(second).resolve()


def compare_one(
    detector: Detector,
    baseline_path: Path,
    followup_path: Path,
    output_dir: Path,
    baseline_mask_path: Path | None = None,
    followup_mask_path: Path | None = None,
    *,
    adaptation: AdaptationSettings | None = None,
    operating_point: str | None = None,
    min_lesion_mm3: float | None = None,
    rule: ChangeRule | None = None,
    fmt: str = "nii.gz",
    overwrite: bool = False,
    progress_log: Path | None = None,
    report: Callable[[float, str], None] | None = None,
) -> ComparisonOutcome:
    """Compare one pair and write its result set, named after the follow-up."""
    if same_file(baseline_path, followup_path):
        raise SSAEError("the baseline and the follow-up are the same file")
    check_output_apart(output_dir, [Case("baseline", Path(baseline_path)), Case("follow-up", Path(followup_path))])
    baseline = read_volume(baseline_path, "baseline")
    followup = read_volume(followup_path, "follow-up")
    check_format_holds_geometry(followup, fmt, "the follow-up")
    baseline_mask = read_mask(baseline_mask_path, baseline, "baseline brain mask") if baseline_mask_path else None
    followup_mask = read_mask(followup_mask_path, followup, "follow-up brain mask") if followup_mask_path else None
    stem = volume_stem(followup_path)
    refuse_existing(list(comparison_paths(output_dir, stem, fmt).values()), overwrite)
    check_output_folder(output_dir, comparison_bytes(followup))
    progress = ProgressLog(progress_log) if progress_log else None

    def forward(fraction: float, message: str) -> None:
        if progress is not None:
            progress.event("progress", fraction=round(fraction, 4), message=message)
        if report is not None:
            report(fraction, message)

    try:
        comparison = compare_scans(
            detector,
            baseline,
            followup,
            baseline_mask,
            followup_mask,
            adaptation=adaptation,
            operating_point=operating_point,
            min_lesion_mm3=min_lesion_mm3,
            rule=rule,
            progress=forward,
        )
        card = detector.card
        summary = comparison_summary(
            comparison, str(baseline_path), str(followup_path), card.architecture.name, detector.path.name if detector.path else ""
        )
        paths = write_comparison(comparison, output_dir, stem, fmt, summary, overwrite)
        if progress is not None:
            progress.event("done", files={name: str(path) for name, path in paths.items()})
    finally:
        if progress is not None:
            progress.close()
    return ComparisonOutcome(comparison, paths, list(comparison.warnings))


def compare_pairs(
    detector: Detector,
    source: Path,
    output_dir: Path,
    *,
    progress_log: Path | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    scheduler: str | None = None,
    threads_per_scan: int | None = None,
    **options: Any,
) -> CohortSummary:
    """Every pair of ``source`` into ``output_dir/<pair>/`` and ``output_dir/comparisons.csv``,
    in this process or on a Dask cluster (:func:`ssae.detection.cohorts.run_cohort`: ``resume``
    keeps a pair whose complete result set for the same two scans is already in its folder)."""
    pairs = find_pairs(source)
    check_output_apart(output_dir, [Case(p.name, path) for p in pairs for path in (p.baseline, p.followup)])
    return run_cohort(
        PAIRS,
        detector,
        pairs,
        output_dir,
        options,
        progress_log=progress_log,
        log=log,
        resume=resume,
        scheduler=scheduler,
        threads_per_scan=threads_per_scan,
    )


def finished_pair_row(pair: Pair, folder: Path, options: dict[str, Any]) -> dict[str, Any] | None:
    """The table row of a pair whose result set is complete in ``folder`` (its summary names the
    same two scans and every file it lists is there), else None."""
    stem, fmt = volume_stem(pair.followup), str(options.get("fmt", "nii.gz"))
    try:
        summary = json.loads((folder / f"{stem}{SUMMARY_SUFFIX}").read_text(encoding="utf-8"))
        files = [Path(p) for p in summary["files"].values()]
        scans = (Path(summary["baseline"]), Path(summary["followup"]))
        registration = summary["registration"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    expected = set(comparison_paths(folder, stem, fmt).values())
    if not same_file(scans[0], pair.baseline) or not same_file(scans[1], pair.followup) or set(files) != expected:
        return None
    if not all(p.is_file() and p.stat().st_size > 0 for p in files):
        return None
    numbers = {column: summary[column] for column in (*STATUSES, "increase_ml", "decrease_ml") if column in summary}
    return {
        "pair": pair.name,
        "baseline": str(pair.baseline),
        "followup": str(pair.followup),
        "results": str(folder),
        "status": "ok",
        "error": "",
        **{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in numbers.items()},
        "registration_check": "passed" if registration.get("passed") else "warning",
        "correlation": f"{registration.get('correlation', 0.0):.3f}",
        "warnings": "; ".join(summary.get("warnings") or []),
        "seconds": "",
    }


def _first_pair_row(pair: Pair, folder: Path) -> dict[str, Any]:
    return {"pair": pair.name, "baseline": str(pair.baseline), "followup": str(pair.followup), "results": str(folder)}


def pair_row(detector: Detector, pair: Pair, folder: Path, report, options: dict[str, Any]) -> dict[str, Any]:
    """Compare one pair of a cohort and write its result set; its table row (an input error is
    the row's error)."""
    started = time.perf_counter()
    row = _first_pair_row(pair, folder)
    try:
        outcome = compare_one(
            detector, pair.baseline, pair.followup, folder, pair.baseline_mask, pair.followup_mask, report=report, **options
        )
    except SSAEError as exc:
        return {**row, "status": "error", "error": str(exc), "seconds": f"{time.perf_counter() - started:.1f}"}
    comparison = outcome.comparison
    return {
        **row,
        "status": "ok",
        "error": "",
        **comparison.counts,
        **{k: f"{v:.4f}" for k, v in comparison.change_ml().items()},
        "registration_check": "passed" if comparison.alignment.passed else "warning",
        "correlation": f"{comparison.alignment.correlation:.3f}",
        "warnings": "; ".join(outcome.warnings),
        "seconds": f"{time.perf_counter() - started:.1f}",
    }


PAIRS = CohortKind(
    noun="pair",
    table_name=PAIRS_TABLE,
    columns=PAIR_COLUMNS,
    finished_row=finished_pair_row,
    first_row=_first_pair_row,
    row=pair_row,
)
