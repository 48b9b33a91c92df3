"""The cached slice stacks that training, calibration and site adaptation read: every scan
preprocessed once (N4, atlas registration, slicing) into memory-mapped arrays, keyed by the
SHA-256 of every input file, the settings and the preprocessing code's version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ssae.io.cases import Case
from ssae.io.volumes import read_mask, read_volume
from ssae.preprocessing.atlas import write_transform
from ssae.preprocessing.bias_field import bias_correct
from ssae.preprocessing.registration import align_to_atlas
from ssae.preprocessing.registration_check import AtlasAlignment, RegistrationQuality, alignment_warnings
from ssae.preprocessing.slices import PreparedVolume, PreprocessingSettings, prepare_volume, resample_to_grid


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class SliceStack:
    """Preprocessed training slices of many subjects (memory-mapped from the cache)."""

    slices: np.ndarray  # [N, size, size] float32
    brain: np.ndarray  # [N, size, size] uint8
    loss_mask: np.ndarray  # [N, size, size] uint8: 1 = voxel counts in the loss
    subject: np.ndarray  # [N] int index into ``subjects``
    subjects: list[str]
    volume_ranges: dict[str, tuple[int, int]]  # subject -> [start, stop) rows (one volume)
    key: str
    excluded_voxels: int

    def rows_of(self, names: list[str]) -> np.ndarray:
        return np.concatenate([np.arange(*self.volume_ranges[n]) for n in names]) if names else np.zeros(0, int)


# Part of every cache key: bump it whenever preprocessing code (N4, registration, slicing)
# changes what it computes, so that caches written by older code are never reused.
PREPROCESSING_VERSION = 3


def cache_key(cases: list[Case], settings: PreprocessingSettings) -> str:
    parts = {"settings": settings.to_dict(), "cases": [], "version": PREPROCESSING_VERSION}
    for case in cases:
        parts["cases"].append(
            {
                "name": case.name,
                **{
                    role: _file_digest(p) if p else None
                    for role, p in (("image", case.image), ("brain_mask", case.brain_mask), ("label", case.label))
                },
            }
        )
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SSAE_CACHE_DIR", Path.home() / ".cache" / "ssae"))


def load_slice_stack(
    cases: list[Case],
    settings: PreprocessingSettings,
    cache_dir: Path | None = None,
    log=print,
) -> SliceStack:
    """Preprocess every case once and memory-map the result on later calls.

    The cache is keyed by the SHA-256 of every input file and the preprocessing settings, so
    editing a scan or changing the input size builds a new cache instead of reusing a stale one.
    """
    key = cache_key(cases, settings)
    folder = Path(cache_dir or default_cache_dir()) / "slices" / key
    if not (folder / "meta.json").exists():
        _build_cache(cases, settings, folder, Path(cache_dir or default_cache_dir()), log)
    else:
        log(f"using cached slices {folder}")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("slices", "brain", "loss_mask", "subject")}
    return SliceStack(
        slices=arrays["slices"],
        brain=arrays["brain"],
        loss_mask=arrays["loss_mask"],
        subject=arrays["subject"],
        subjects=meta["subjects"],
        volume_ranges={k: tuple(v) for k, v in meta["volume_ranges"].items()},
        key=key,
        excluded_voxels=meta["excluded_voxels"],
    )


def _case_digest(case: Case, *extra: Any) -> str:
    parts = [_file_digest(case.image), _file_digest(case.brain_mask) if case.brain_mask else None, *extra, PREPROCESSING_VERSION]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def cached_correction(case: Case, image: sitk.Image, brain_mask: sitk.Image | None, cache_root: Path) -> sitk.Image:
    """The N4-corrected scan of a case, computed once and kept beside the slice cache (keyed by
    the case's files and the preprocessing version), so that calibration on the scans' own
    grids does not run N4 again for every pass."""
    path = cache_root / "corrected" / f"{_case_digest(case)}.nii.gz"
    if path.exists():
        corrected = sitk.ReadImage(str(path))
        if corrected.GetSize() == image.GetSize():
            corrected.CopyInformation(image)
            return corrected
    corrected = bias_correct(image, brain_mask)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.nii.gz")
    sitk.WriteImage(corrected, str(tmp), True)
    os.replace(tmp, path)
    return corrected


@dataclass
class HealthyScan:
    """One healthy calibration subject on its own grid: prepared as detection prepares it, with its
    lesion labels (e.g. automatic WMH masks of elderly subjects) to leave out."""

    name: str
    prepared: PreparedVolume
    labelled: np.ndarray  # [z, y, x] bool on the input grid, dilated by one voxel


def healthy_scans(cases: list[Case], settings: PreprocessingSettings, cache_root: Path, log=print) -> Iterator[HealthyScan]:
    """The healthy ``cases`` one at a time, as detection prepares them (N4 and the atlas
    registration from the caches beside the slice cache)."""
    for index, case in enumerate(cases):
        log(f"preparing healthy subject {case.name} ({index + 1}/{len(cases)}) on its own grid")
        image = read_volume(case.image, f"image of {case.name}")
        brain_mask = read_mask(case.brain_mask, image, f"brain mask of {case.name}") if case.brain_mask else None
        source = cached_correction(case, image, brain_mask, cache_root) if settings.bias_correction else image
        alignment = cached_alignment(case, source, brain_mask, settings.bias_correction, cache_root) if settings.atlas else None
        prepared = prepare_volume(source, replace(settings, bias_correction=False), brain_mask, alignment)
        prepared.input_reference = image
        labelled = np.zeros(sitk.GetArrayViewFromImage(image).shape[:3], bool)
        if case.label is not None:
            labelled = sitk.GetArrayFromImage(read_mask(case.label, image, f"lesion label of {case.name}")) > 0
            labelled = ndimage.binary_dilation(labelled, structure=ndimage.generate_binary_structure(3, 1)) if labelled.any() else labelled
        yield HealthyScan(case.name, prepared, labelled)


def cached_alignment(
    case: Case, image: sitk.Image, brain_mask: sitk.Image | None, bias_correction: bool, cache_root: Path
) -> AtlasAlignment:
    """Atlas registration of a case, computed once and kept beside the slice cache.

    Keyed by the case's files and the bias-correction setting, not by the model's input size,
    so models of different sizes trained on the same scans share one registration per scan.
    ``image`` is the scan as registered: already N4-corrected when ``bias_correction`` is set.
    """
    folder = cache_root / "alignments" / _case_digest(case, bias_correction)
    if (folder / "quality.json").exists():
        quality = RegistrationQuality(**json.loads((folder / "quality.json").read_text(encoding="utf-8")))
        transform = sitk.AffineTransform(sitk.ReadTransform(str(folder / "atlas_to_scan.tfm")))
        mask = sitk.ReadImage(str(folder / "brain_mask.nii.gz"))
        return AtlasAlignment(transform=transform, brain_mask=mask, quality=quality, seconds=0.0)
    alignment = align_to_atlas(image, brain_mask)
    folder.mkdir(parents=True, exist_ok=True)
    write_transform(alignment.transform, folder / "atlas_to_scan.tfm", overwrite=True)
    sitk.WriteImage(alignment.brain_mask, str(folder / "brain_mask.nii.gz"), True)
    (folder / "quality.json").write_text(json.dumps(alignment.quality.to_dict()), encoding="utf-8")
    return alignment


def _build_cache(cases: list[Case], settings: PreprocessingSettings, folder: Path, cache_root: Path, log) -> None:
    slices, brains, loss_masks, subject, ranges = [], [], [], [], {}
    excluded = 0
    row = 0
    for index, case in enumerate(cases):
        log(f"preprocessing {case.name} ({index + 1}/{len(cases)})")
        image = read_volume(case.image, f"image of {case.name}")
        brain_mask = read_mask(case.brain_mask, image, f"brain mask of {case.name}") if case.brain_mask else None
        # N4 once per scan: the registration, the slices and calibration on the scan's own grid use the corrected scan.
        source = cached_correction(case, image, brain_mask, cache_root) if settings.bias_correction else image
        alignment = cached_alignment(case, source, brain_mask, settings.bias_correction, cache_root) if settings.atlas else None
        for warning in alignment_warnings(alignment):
            log(f"warning: {case.name}: {warning} (the run goes on; inspect this scan)")
        prepared = prepare_volume(source, replace(settings, bias_correction=False), brain_mask, alignment)
        keep = np.ones_like(prepared.brain)
        if case.label is not None:
            lesion = resample_to_grid(
                read_mask(case.label, image, f"lesion label of {case.name}"), prepared.grid, label=True, transform=prepared.transform
            )
            lesion = ndimage.binary_dilation(lesion, structure=ndimage.generate_binary_structure(3, 1)) if lesion.any() else lesion
            keep = ~lesion
            excluded += int((lesion & prepared.brain).sum())
        slices.append(prepared.slices)
        brains.append(prepared.brain.astype(np.uint8))
        loss_masks.append(keep.astype(np.uint8))
        subject.append(np.full(len(prepared.slices), index, np.int32))
        ranges[case.name] = (row, row + len(prepared.slices))
        row += len(prepared.slices)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, parts in (("slices", slices), ("brain", brains), ("loss_mask", loss_masks), ("subject", subject)):
            np.save(tmp / f"{name}.npy", np.concatenate(parts))
        meta = {"subjects": [c.name for c in cases], "volume_ranges": ranges, "excluded_voxels": excluded, "settings": settings.to_dict()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process built the same cache meanwhile
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
