"""Writing a detection's maps, mask and summary next to each other, all or nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .detection import DetectionResult
from .errors import SSAEError
from .registration import write_transform
from .volume_io import refuse_existing, write_json, write_volume

FORMATS = ("nii.gz", "nrrd", "nii", "mha")


def output_paths(folder: Path, stem: str, fmt: str, levels: list[int], atlas: bool = False) -> dict[str, Path]:
    if fmt not in FORMATS:
        raise SSAEError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    paths = {"aggregated": folder / f"{stem}_aggregated.{fmt}"}
    paths.update({f"level{k}": folder / f"{stem}_level{k}.{fmt}" for k in levels})
    paths["lesion_mask"] = folder / f"{stem}_lesion_mask.{fmt}"
    if atlas:
        paths["brain_mask"] = folder / f"{stem}_brainmask.{fmt}"
        paths["transform"] = folder / f"{stem}_atlas_to_scan.tfm"
    paths["summary"] = folder / f"{stem}_summary.json"
    return paths


def detection_summary(result: DetectionResult, source: str, model_name: str, threshold_method: str) -> dict[str, Any]:
    alignment = result.prepared.alignment
    registration = {"registration": {**alignment.quality.to_dict(), "seconds": round(alignment.seconds, 2)}} if alignment else {}
    return {
        **registration,
        "input": source,
        "model": model_name,
        "threshold": result.threshold,
        "threshold_method": threshold_method,
        **result.statistics.to_dict(),
        "slices_processed": int(result.prepared.slices.shape[0]),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
    }


def write_detection(
    result: DetectionResult, folder: Path, stem: str, fmt: str, summary: dict[str, Any], overwrite: bool
) -> dict[str, Path]:
    """Write every map, the mask and the JSON summary; refuse before writing if any exists."""
    alignment = result.prepared.alignment
    paths = output_paths(folder, stem, fmt, sorted(result.scales), atlas=alignment is not None)
    refuse_existing(list(paths.values()), overwrite)
    volumes = [(result.aggregated, paths["aggregated"]), (result.mask, paths["lesion_mask"])]
    volumes += [(image, paths[f"level{level}"]) for level, image in result.scales.items()]
    if alignment is not None:
        volumes.append((result.prepared.brain_mask, paths["brain_mask"]))
        write_transform(alignment.transform, paths["transform"], overwrite)
    with ThreadPoolExecutor(max_workers=2) as pool:  # compression runs outside the GIL
        list(pool.map(lambda item: write_volume(item[0], item[1], overwrite), volumes))
    summary = {**summary, "files": {name: str(path) for name, path in paths.items()}}
    write_json(summary, paths["summary"], overwrite)
    return paths
