"""Writing a detection's maps, mask and summary next to each other, all or nothing.

The whole set is written into a hidden temporary folder beside the results, every file is
verified there, and only then are the files moved to their final names (a rename each, on the
same file system). A failure or an interruption before that leaves no file under a final name;
one during the renames takes the already moved files back out.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ssae.detection.detector import DetectionResult
from ssae.io.errors import SSAEError
from ssae.io.writing import json_text, os_errors, refuse_existing, write_text, write_volume
from ssae.preprocessing.atlas import write_transform
from ssae.scoring.maps import COMBINED_MAPS
from ssae.scoring.mask_drawing import SMALL_LESION_BITS

FORMATS = ("nii.gz", "nrrd", "nii", "mha")


def result_map_names(levels: list[int]) -> list[str]:
    """Names of the maps a detection writes: aggregated, one per level, prior, fused, flair."""
    return ["aggregated", *(f"level{k}" for k in levels), *COMBINED_MAPS]


def output_paths(folder: Path, stem: str, fmt: str, levels: list[int], atlas: bool = False, small_lesions: bool = False) -> dict[str, Path]:
    """Every file of a detection's result set; ``small_lesions``: the small lesions of each
    operating point (uint8 bits, :data:`ssae.scoring.mask_drawing.SMALL_LESION_BITS`)."""
    if fmt not in FORMATS:
        raise SSAEError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    paths = {name: folder / f"{stem}_{name}.{fmt}" for name in result_map_names(levels)}
    paths["lesion_mask"] = folder / f"{stem}_lesion_mask.{fmt}"
    if small_lesions:
        paths["small_lesions"] = folder / f"{stem}_small_lesions.{fmt}"
    paths["lesions"] = folder / f"{stem}_lesions.csv"
    if atlas:
        paths["brain_mask"] = folder / f"{stem}_brainmask.{fmt}"
        paths["transform"] = folder / f"{stem}_atlas_to_scan.tfm"
    paths["summary"] = folder / f"{stem}_summary.json"
    return paths


def estimated_bytes(image: sitk.Image, levels: int) -> int:
    """Upper bound of what a detection writes for ``image``: float maps uncompressed, masks
    (lesions, brain, small lesions), summary."""
    voxels = int(np.prod(image.GetSize()))
    return voxels * (4 * (1 + levels + len(COMBINED_MAPS)) + 3) + 1_000_000


def detection_summary(result: DetectionResult, source: str, model_name: str, model_file: str = "") -> dict[str, Any]:
    alignment = result.prepared.alignment
    registration = {"registration": {**alignment.quality.to_dict(), "seconds": round(alignment.seconds, 2)}} if alignment else {}
    return {
        **registration,
        "input": source,
        "model": model_name,
        "model_file": model_file,
        "adaptation": result.adaptation.to_dict() if result.adaptation is not None else None,
        "score_map": result.score_map,
        "threshold": result.threshold,
        "threshold_method": result.rule.method,
        "mask_rule": result.rule.to_dict(),
        "brain_ml": round(result.brain_ml, 2),
        "expected_healthy_false_positive_ml": result.rule.expected_false_positive_ml(result.brain_ml),
        "healthy_false_lesions_per_brain": result.rule.healthy_false_lesions,
        "small_lesions": result.small_lesions.to_dict() if result.small_lesions is not None else None,
        "small_lesion_bits": SMALL_LESION_BITS if result.small_lesions_by_point is not None else None,
        **result.statistics.to_dict(),
        "slices_processed": int(result.prepared.slices.shape[0]),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
    }


def write_detection(
    result: DetectionResult,
    folder: Path,
    stem: str,
    fmt: str,
    summary: dict[str, Any],
    overwrite: bool,
    figure_title: str | None = None,
) -> dict[str, Path]:
    """Write every map, the mask, the JSON summary (and with ``figure_title`` a PNG panel) as one
    set; refuse before writing if any exists.

    Returns the final paths; ``files`` in the summary lists them, with ``score`` naming the map
    that drew the mask.
    """
    from ssae.detection.figures import detection_figure

    alignment = result.prepared.alignment
    paths = output_paths(folder, stem, fmt, result.levels, atlas=alignment is not None, small_lesions=result.small_lesions_by_point is not None)
    if figure_title is not None:
        paths["figure"] = folder / f"{stem}_figure.png"
    refuse_existing(list(paths.values()), overwrite)
    with os_errors(f"cannot write into {folder}"):
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{stem}.ssae-partial-", dir=folder))
    try:
        staged = {name: staging / path.name for name, path in paths.items()}
        volumes = [(result.maps[name], staged[name]) for name in result.maps]
        volumes.append((result.mask, staged["lesion_mask"]))
        if result.small_lesions_by_point is not None:
            volumes.append((result.small_lesions_by_point, staged["small_lesions"]))
        if alignment is not None:
            volumes.append((result.prepared.brain_mask, staged["brain_mask"]))
            write_transform(alignment.transform, staged["transform"], overwrite=False)
        with ThreadPoolExecutor(max_workers=2) as pool, os_errors(f"cannot write into {folder}"):  # compression runs outside the GIL
            list(pool.map(lambda item: write_volume(item[0], item[1]), volumes))
        if figure_title is not None:
            detection_figure(result, staged["figure"], figure_title)
        write_text(result.lesions.to_csv(), staged["lesions"])
        files = {name: str(path) for name, path in paths.items()}
        files["score"] = str(paths[result.score_map])
        write_text(json_text({**summary, "files": files}), staged["summary"])
        move_into_place(staged, paths, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def move_into_place(staged: dict[str, Path], final: dict[str, Path], overwrite: bool) -> None:
    """Rename every staged file to its final name; on any failure, put everything back as it was.

    Files being replaced (``overwrite``) are first moved aside into the staging folder, so a
    failed replacement restores them instead of losing both versions. Without ``overwrite`` a
    name that appeared meanwhile (another run writing the same results) is never clobbered.
    """
    aside = next(iter(staged.values())).parent / ".replaced"
    replaced: list[str] = []
    moved: list[str] = []
    try:
        with os_errors("cannot move the results into place"):
            for name, target in final.items():
                if overwrite and target.exists():
                    aside.mkdir(exist_ok=True)
                    os.replace(target, aside / target.name)
                    replaced.append(name)
            for name, source in staged.items():
                _place(source, final[name], overwrite)
                moved.append(name)
    except BaseException:
        for name in moved:
            final[name].unlink(missing_ok=True)
        for name in replaced:
            os.replace(aside / final[name].name, final[name])
        raise


def _place(source: Path, target: Path, overwrite: bool) -> None:
    """Move ``source`` to ``target``; without ``overwrite``, fail if ``target`` exists (atomically:
    a hard link cannot replace an existing name, unlike a rename on POSIX)."""
    if overwrite:
        os.replace(source, target)
        return
    try:
        os.link(source, target)
    except FileExistsError:
        raise SSAEError(f"{target} appeared while this run was writing (another run?); nothing was replaced") from None
    except OSError:  # a file system without hard links: rename, after a last check
        if target.exists():
            raise SSAEError(f"{target} appeared while this run was writing (another run?); nothing was replaced") from None
        os.rename(source, target)
        return
    source.unlink()
