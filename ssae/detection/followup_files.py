"""Writing a comparison's files on the follow-up's grid, all or nothing, like a detection's
(:mod:`ssae.detection.result_files`: staged in a hidden folder, verified, then moved into place).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ssae.detection.followup import Comparison
from ssae.detection.result_files import FORMATS, move_into_place
from ssae.io.errors import SSAEError
from ssae.io.writing import json_text, os_errors, refuse_existing, write_text, write_volume
from ssae.preprocessing.atlas import write_transform
from ssae.scoring.change import CHANGE_LABELS, SUMMARY_SUFFIX, change_table_csv


def comparison_paths(folder: Path, stem: str, fmt: str) -> dict[str, Path]:
    """The files of one comparison, named after the follow-up scan."""
    if fmt not in FORMATS:
        raise SSAEError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return {
        "change": folder / f"{stem}_change.{fmt}",
        "change_mask": folder / f"{stem}_change_mask.{fmt}",
        "baseline_on_followup": folder / f"{stem}_baseline_on_followup.{fmt}",
        "transform": folder / f"{stem}_baseline_to_followup.tfm",
        "changes": folder / f"{stem}_changes.csv",
        "summary": folder / f"{stem}{SUMMARY_SUFFIX}",
    }


def comparison_bytes(followup: sitk.Image) -> int:
    """Upper bound of what a comparison writes: two float volumes, a label volume, tables."""
    return int(np.prod(followup.GetSize())) * 10 + 1_000_000


def comparison_summary(comparison: Comparison, baseline: str, followup: str, model_name: str, model_file: str = "") -> dict[str, Any]:
    after, before = comparison.followup, comparison.baseline
    return {
        "baseline": baseline,
        "followup": followup,
        "model": model_name,
        "model_file": model_file,
        "adaptation": after.adaptation is not None,
        "operating_point": after.rule.operating_point,
        "change_rule": comparison.rule.to_dict(),
        "change_labels": {str(k): v for k, v in CHANGE_LABELS.items()},
        "registration": comparison.alignment.to_dict(),
        "noise_brain_median_units": round(comparison.noise, 5),
        **comparison.counts,
        **{k: round(v, 4) for k, v in comparison.change_ml().items()},
        "followup_lesions": {"count": after.statistics.count, "total_volume_ml": round(after.statistics.total_ml, 4)},
        "baseline_lesions": {"count": before.statistics.count, "total_volume_ml": round(before.statistics.total_ml, 4)},
        "warnings": list(comparison.warnings),
        "timings_s": {k: round(v, 3) for k, v in comparison.timings.items()},
    }


def write_comparison(
    comparison: Comparison, folder: Path, stem: str, fmt: str, summary: dict[str, Any], overwrite: bool
) -> dict[str, Path]:
    """Write the change map, the change labelmap, the baseline on the follow-up grid, the
    registration, the lesion-change table and the summary (its ``files`` names every file)."""
    paths = comparison_paths(folder, stem, fmt)
    refuse_existing(list(paths.values()), overwrite)
    with os_errors(f"cannot write into {folder}"):
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{stem}.ssae-partial-", dir=folder))
    try:
        staged = {name: staging / path.name for name, path in paths.items()}
        with os_errors(f"cannot write into {folder}"):
            write_volume(comparison.change, staged["change"])
            write_volume(comparison.change_mask, staged["change_mask"])
            write_volume(comparison.baseline_on_followup, staged["baseline_on_followup"])
        write_transform(comparison.alignment.transform, staged["transform"], overwrite=False)
        write_text(change_table_csv(comparison.lesions), staged["changes"])
        write_text(json_text({**summary, "files": {name: str(path) for name, path in paths.items()}}), staged["summary"])
        move_into_place(staged, paths, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths
