"""Comparisons as the command line and the Slicer module run them: one pair of scans into one
result set, or many pairs (a CSV of pairs, or a folder with one subfolder per pair) into one
result folder per pair plus a table. Checks that can fail fast run first; a failing pair does
not stop the others, its error is in the table.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssae.detection.cohorts import CohortSummary, table_csv
from ssae.detection.detector import Detector
from ssae.detection.followup import Comparison, compare_scans
from ssae.detection.followup_files import comparison_bytes, comparison_paths, comparison_summary, write_comparison
from ssae.io.cases import Case, check_output_apart, is_dicom_folder, is_volume_file, read_text_table, safe_case_name
from ssae.io.errors import SSAEError
from ssae.io.progress import ProgressLog
from ssae.io.volumes import read_mask, read_volume, volume_stem
from ssae.io.writing import check_output_folder, refuse_existing, write_text
from ssae.models.settings import AdaptationSettings
from ssae.scoring.change import STATUSES, ChangeRule

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
    pairs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        scans = sorted(p for p in sub.iterdir() if (is_volume_file(p) and "mask" not in p.name.lower()) or is_dicom_folder(p))
        if len(scans) != 2:
            raise SSAEError(f"{sub} must hold exactly two scans (the earlier by name is the baseline), found {len(scans)}")
        pairs.append(Pair(safe_case_name(sub.name), scans[0], scans[1]))
    return pairs


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
    if Path(baseline_path).resolve() == Path(followup_path).resolve():
        raise SSAEError("the baseline and the follow-up are the same file")
    baseline = read_volume(baseline_path, "baseline")
    followup = read_volume(followup_path, "follow-up")
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
    **options: Any,
) -> CohortSummary:
    """Every pair of ``source`` into ``output_dir/<pair>/`` and ``output_dir/comparisons.csv``."""
    pairs = find_pairs(source)
    check_output_apart(output_dir, [Case(p.name, path) for p in pairs for path in (p.baseline, p.followup)])
    table = output_dir / PAIRS_TABLE
    refuse_existing([table], bool(options.get("overwrite")))
    check_output_folder(output_dir)
    progress = ProgressLog(progress_log) if progress_log else None
    rows = []
    try:
        for index, pair in enumerate(pairs):
            log(f"{pair.name} ({index + 1}/{len(pairs)})")

            def report(fraction: float, message: str, index: int = index, name: str = pair.name) -> None:
                if progress is not None:
                    overall = (index + fraction) / len(pairs)
                    progress.event("progress", fraction=round(overall, 4), message=f"{name} ({index + 1}/{len(pairs)}): {message}")

            rows.append(_pair_row(detector, pair, output_dir / pair.name, report, options))
            if rows[-1]["status"] != "ok":
                log(f"  failed: {rows[-1]['error']}")
        write_text(table_csv(rows, PAIR_COLUMNS), table, bool(options.get("overwrite")))
        if progress is not None:
            progress.event("done", files={"comparisons": str(table)})
    finally:
        if progress is not None:
            progress.close()
    return CohortSummary(total=len(pairs), succeeded=sum(r["status"] == "ok" for r in rows), table=table)


def _pair_row(detector: Detector, pair: Pair, folder: Path, report, options: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    row: dict[str, Any] = {"pair": pair.name, "baseline": str(pair.baseline), "followup": str(pair.followup), "results": str(folder)}
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
