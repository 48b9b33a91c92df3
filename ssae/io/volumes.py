"""Reading and checking volumes: any file SimpleITK reads or a DICOM series folder, as a finite,
non-constant 3D scalar volume on an orthonormal grid; masks and labels on their image's grid.

NIfTI files are checked byte by byte first (truncation, NaN voxels, gzip recognised by its magic
bytes, not by the file name), because ITK's reader fills missing voxels with zeros.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ssae.io.errors import SSAEError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


MIN_SIDE = 4  # voxels along every axis: less is no brain volume, and breaks the multi-resolution steps


GEOMETRY_TOLERANCE = 1e-3  # mm for origin/spacing, and for direction cosines


ORTHONORMAL_TOLERANCE = 1e-3  # largest |D^T D - I| of a direction matrix accepted as a rotation (float32 headers: ~1e-7)


MAX_LABEL_CLASSES = 64  # distinct values a lesion label or brain mask may hold (a scan has thousands)


def volume_stem(path: Path) -> str:
    """File name without the volume extension (``patient_flair.nii.gz`` -> ``patient_flair``)."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_volume(path: str | os.PathLike[str], what: str = "image", allow_constant: bool = False) -> sitk.Image:
    """Read a 3D scalar volume from any file SimpleITK reads, or from a DICOM series folder.

    ``allow_constant`` is for results (an empty lesion mask is a valid answer), never for scans.

    NIfTI files are checked byte by byte first (:func:`check_nifti_payload`): ITK's NIfTI reader
    fills a truncated file's missing voxels with zeros and turns NaN voxels into zeros, so
    neither would be noticed otherwise.
    """
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
            if path.name.lower().endswith((".nii", ".nii.gz")):
                check_nifti_payload(path, what)
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise SSAEError(f"cannot read {what} {path}: {_itk_reason(exc)}") from None
    check_volume(image, f"{what} {path.name}", allow_constant)
    return image


def _itk_reason(exc: Exception) -> str:
    """The informative line of an ITK exception (its last non-empty line, without the C++ location)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown reason"
    reason = reason.split(": ", 1)[-1] if reason.startswith(("itk::", "sitk::")) else reason
    if "No such file" in reason or "Could not create IO object" in reason:  # ITK's words for an unreadable existing file
        return "the file is truncated, corrupt or not a volume ITK can read"
    return reason


# NIfTI datatype code -> numpy dtype (the scalar types SimpleITK reads as a scalar volume)
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}


def _nifti_voxels(path: Path, what: str) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """The voxels (flat, x fastest) and shape (x, y, z, ...) of a NIfTI file, read to the end of
    its gzip stream; None if it has no NIfTI header we know. Refuses incomplete files."""
    import gzip
    import zlib

    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"  # the gzip magic, whatever the file is named
        if compressed:
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise SSAEError(
            f"cannot read {what} {path.name}: the file is truncated or corrupt ({exc}); copy it again from its source"
        ) from None
    return nifti_payload(data, path.name, what)


def nifti_payload(data: bytes, name: str, what: str) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """The voxels and shape in the bytes of an uncompressed NIfTI file (see :func:`_nifti_voxels`)."""
    header = _nifti_header(data)
    if header is None:
        return None  # not a NIfTI header we know: ITK will say what it thinks of the file
    offset, shape, dtype = header
    expected = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) < expected:
        raise SSAEError(
            f"{what} {name} is truncated: its header declares {expected:,} bytes but the file holds {len(data):,}; "
            "copy it again from its source"
        )
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset), shape


def check_nifti_payload(path: Path, what: str = "image") -> None:
    """Refuse a NIfTI file whose voxel data are incomplete, or whose float voxels are not finite.

    Reads the whole file (decompressing a ``.nii.gz`` to the end of its gzip stream), compares
    its length with what the header declares, and checks float voxels for NaN and infinity.
    """
    found = _nifti_voxels(path, what)
    if found is None:
        return
    voxels = found[0]
    if voxels.dtype.kind == "f":
        bad = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
        if bad:
            everything = " (all of them)" if bad == voxels.size else ""
            raise SSAEError(f"{what} {path.name} has {bad:,} NaN or infinite voxels{everything}; a finite volume is needed")


def _nifti_header(data: bytes) -> tuple[int, tuple[int, ...], str] | None:
    """Data offset, shape and numpy dtype from a NIfTI-1 or NIfTI-2 header (None if not NIfTI)."""
    for order in "<>":
        if len(data) >= 348 and np.frombuffer(data, f"{order}i4", 1, 0)[0] == 348:
            dims = np.frombuffer(data, f"{order}i2", 8, 40)
            code, offset = int(np.frombuffer(data, f"{order}i2", 1, 70)[0]), int(np.frombuffer(data, f"{order}f4", 1, 108)[0])
        elif len(data) >= 540 and np.frombuffer(data, f"{order}i4", 1, 0)[0] == 540:
            dims = np.frombuffer(data, f"{order}i8", 8, 16)
            code, offset = int(np.frombuffer(data, f"{order}i2", 1, 12)[0]), int(np.frombuffer(data, f"{order}i8", 1, 168)[0])
        else:
            continue
        if code not in _NIFTI_DTYPES or not 1 <= dims[0] <= 7:
            return None
        shape = tuple(max(int(d), 1) for d in dims[1 : int(dims[0]) + 1])
        return offset, shape, order + _NIFTI_DTYPES[code]
    return None


def check_volume(image: sitk.Image, what: str = "image", allow_constant: bool = False) -> None:
    """Refuse anything that is not a finite, non-constant (unless allowed) 3D scalar volume."""
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
    if not allow_constant and array.min() == array.max():
        raise SSAEError(f"{what} is empty or constant (every voxel is {array.flat[0]})")
    if min(size) < MIN_SIDE:
        raise SSAEError(f"{what} has size {size}: too small for a brain MRI volume (at least {MIN_SIDE} voxels along every axis)")
    check_direction(image, what)


def check_direction(image: sitk.Image, what: str = "image") -> None:
    """Refuse a direction matrix that is not a rotation (sheared or scaled axes): every step of
    the pipeline, ITK's writers included, would silently replace it by another grid."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    gram = direction.T @ direction
    deviation = float(np.abs(gram - np.eye(3)).max())
    if deviation > ORTHONORMAL_TOLERANCE:
        cosines = np.clip(gram[np.triu_indices(3, 1)] / np.sqrt(np.outer(np.diag(gram), np.diag(gram))[np.triu_indices(3, 1)]), -1, 1)
        skew = float(np.max(np.abs(90.0 - np.degrees(np.arccos(cosines)))))
        stretch = float(np.max(np.abs(np.sqrt(np.diag(gram)) - 1.0)))
        raise SSAEError(
            f"{what} has a direction matrix that is not a rotation: its axes are up to {skew:.3g} degrees from perpendicular "
            f"and their lengths differ from 1 by up to {stretch:.3g}; resample it onto an orthonormal grid (e.g. with Slicer's "
            "Resample Scalar Volume) and try again"
        )


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tolerance``)."""
    return same_geometry_values((a.GetSize(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()), b, tolerance)


def read_mask(path: str | os.PathLike[str], reference: sitk.Image, what: str) -> sitk.Image:
    """Read a label/mask volume that must lie on ``reference``'s grid; return it as uint8 0/1."""
    path = Path(path)
    if not path.exists():
        raise SSAEError(f"{what} not found: {path}")
    if path.is_dir():
        raise SSAEError(f"{what} {path} is a folder; give the mask file")
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            check_nifti_payload(path, what)
        mask = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise SSAEError(f"cannot read {what} {path}: {_itk_reason(exc)}") from None
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise SSAEError(f"{what} {path.name} is not a 3D scalar volume")
    if not same_geometry(mask, reference):
        raise SSAEError(
            f"{what} {path.name} does not match its image's geometry "
            f"(size {mask.GetSize()} vs {reference.GetSize()}, spacing {_fmt(mask.GetSpacing())} vs "
            f"{_fmt(reference.GetSpacing())}, origin {_fmt(mask.GetOrigin())} vs {_fmt(reference.GetOrigin())}, "
            f"direction {_fmt(mask.GetDirection())} vs {_fmt(reference.GetDirection())})"
        )
    values = sitk.GetArrayViewFromImage(mask)
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        raise SSAEError(f"{what} {path.name} holds non-integer values: it looks like a scan, not a mask or label image")
    if values.size and float(values.min()) < 0:
        raise SSAEError(
            f"{what} {path.name} holds negative values ({float(values.min()):g}): a mask or label image holds 0 for "
            "background and positive values for what it marks; set voxels to leave out to 0"
        )
    classes = np.unique(values).size
    if classes > MAX_LABEL_CLASSES:
        raise SSAEError(
            f"{what} {path.name} holds {classes} different values: it looks like a scan, not a mask or label image "
            f"(a mask holds 0 and 1, a label image a few classes)"
        )
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    binary.CopyInformation(reference)
    return binary


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def same_geometry_values(geometry: tuple, image: sitk.Image, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """Size equal; spacing, origin (mm) and direction cosines within ``tolerance``, absolutely:
    a relative tolerance would let a grid 100 m from the scanner's centre move by a millimetre."""
    size, spacing, origin, direction = geometry
    return (
        tuple(size) == image.GetSize()
        and np.allclose(spacing, image.GetSpacing(), rtol=0.0, atol=tolerance)
        and np.allclose(origin, image.GetOrigin(), rtol=0.0, atol=tolerance)
        and np.allclose(direction, image.GetDirection(), rtol=0.0, atol=tolerance)
    )


def check_format_holds_geometry(image: sitk.Image, fmt: str, what: str = "the scan") -> None:
    """Before any work: NIfTI keeps positions and voxel sizes in single precision, which moves a
    grid far from the scanner's centre by more than the write check allows (an origin of 1e5 mm
    by about 0.004 mm); refuse then, and name a format that keeps them (NRRD and MHA store doubles)."""
    if fmt not in ("nii", "nii.gz"):
        return
    values = np.array([*image.GetOrigin(), *image.GetSpacing()], dtype=np.float64)
    moved = float(np.abs(values.astype(np.float32).astype(np.float64) - values).max())
    if moved > GEOMETRY_TOLERANCE:
        raise SSAEError(
            f"NIfTI would move {what}'s grid by {moved:.2g} mm (it stores positions in single precision and the origin is "
            f"{_fmt(image.GetOrigin())} mm); write --format nrrd or mha, which keep them exactly"
        )
