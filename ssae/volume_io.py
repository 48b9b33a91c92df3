"""Reading, checking and atomically writing volumes with SimpleITK.

Every image keeps its origin, spacing and direction from disk to disk: we never go through a
bare numpy array on the way in or out without carrying the SimpleITK geometry along.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import SSAEError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
GEOMETRY_TOLERANCE = 1e-3  # mm for origin/spacing, and for direction cosines
_UMASK = os.umask(0)
os.umask(_UMASK)


def volume_stem(path: Path) -> str:
    """File name without the volume extension (``patient_flair.nii.gz`` -> ``patient_flair``)."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_volume(path: str | os.PathLike[str], what: str = "image") -> sitk.Image:
    """Read a 3D scalar volume from any file SimpleITK reads, or from a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise SSAEError(f"{what} not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise SSAEError(f"{what} folder {path} holds no DICOM series")
            if len(series) > 1:
                raise SSAEError(f"{what} folder {path} holds {len(series)} DICOM series; point to one series")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise SSAEError(f"cannot read {what} {path}: {first_line}") from None
    check_volume(image, f"{what} {path.name}")
    return image


def check_volume(image: sitk.Image, what: str = "image") -> None:
    """Refuse anything that is not a finite, non-constant 3D scalar volume."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SSAEError(f"{what} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed")
    dim = image.GetDimension()
    if dim != 3:
        raise SSAEError(f"{what} is {dim}D; a 3D volume is needed")
    size = image.GetSize()
    if min(size) < 2:
        raise SSAEError(f"{what} has size {size}: a single slice is a 2D image, a 3D volume is needed")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise SSAEError(f"{what} contains NaN or infinite voxels")
    if array.min() == array.max():
        raise SSAEError(f"{what} is empty or constant (every voxel is {array.flat[0]})")


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tolerance``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def read_mask(path: str | os.PathLike[str], reference: sitk.Image, what: str) -> sitk.Image:
    """Read a label/mask volume that must lie on ``reference``'s grid; return it as uint8 0/1."""
    path = Path(path)
    if not path.exists():
        raise SSAEError(f"{what} not found: {path}")
    try:
        mask = sitk.ReadImage(str(path))
    except RuntimeError:
        raise SSAEError(f"cannot read {what} {path}") from None
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise SSAEError(f"{what} {path.name} is not a 3D scalar volume")
    if not same_geometry(mask, reference):
        raise SSAEError(
            f"{what} {path.name} does not match its image's geometry "
            f"(size {mask.GetSize()} vs {reference.GetSize()}, spacing {_fmt(mask.GetSpacing())} vs "
            f"{_fmt(reference.GetSpacing())}, origin {_fmt(mask.GetOrigin())} vs {_fmt(reference.GetOrigin())})"
        )
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    binary.CopyInformation(reference)
    return binary


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it into place only if the block succeeds.

    A crash or an exception leaves neither a half-written ``path`` nor the temporary file.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise SSAEError(f"{path} already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_volume(image: sitk.Image, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``image`` atomically; compressed formats use a fast compression level."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        compress = path.name.lower().endswith((".nii.gz", ".nrrd", ".mha"))
        sitk.WriteImage(image, str(tmp), useCompression=compress, compressionLevel=1)
    return path


def write_json(data: Any, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def write_text(text: str, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Check every output before any is written, so a refusal leaves nothing half-done."""
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise SSAEError(f"{existing[0]}{more} already exists; pass --overwrite to replace it")
