"""Writing results so that nothing half-written is ever left under a final name.

Every file goes to a temporary sibling first, is flushed (and, for volumes, read back and
compared voxel for voxel and geometry for geometry) and only then renamed; the operating
system's refusals (full disk, read-only or vanished folder, no permission) become one clear
:class:`ssae.io.errors.SSAEError`. JSON never holds NaN or infinity.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ssae.io.errors import SSAEError
from ssae.io.volumes import nifti_payload, same_geometry, same_geometry_values

_UMASK = os.umask(0)


os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it into place only if the block succeeds.

    A crash or an exception leaves neither a half-written ``path`` nor the temporary file. The
    temporary file is flushed to disk before the rename, so a full disk is an error here and
    never a truncated file under the final name.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise SSAEError(f"{path} already exists; pass --overwrite to replace it")
    with os_errors(f"cannot write {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes[-2:]) or ".tmp"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with os_errors(f"cannot write {path}"):
            _flush_to_disk(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual mode
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _flush_to_disk(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def os_errors(action: str) -> Iterator[None]:
    """Turn the operating system's refusal (full disk, read-only or missing folder, no
    permission) into an :class:`SSAEError` that says what could not be done and why."""
    try:
        yield
    except OSError as exc:
        reason = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise SSAEError(f"{action}: {reason}") from None


def check_output_file(path: Path, overwrite: bool, needed_bytes: int = 0) -> None:
    """Before any work: ``path`` can be written as a file (not a folder, not an existing file
    unless ``overwrite``, in a writable folder with room), so that nothing is refused only once
    the work is done."""
    path = Path(path)
    if path.is_dir():
        raise SSAEError(f"{path} is a folder; give the name of the file to write")
    refuse_existing([path], overwrite)
    check_output_folder(path.parent, needed_bytes)


def check_output_folder(folder: Path, needed_bytes: int = 0) -> None:
    """Before any work: the output folder is (or can become) a writable folder with room.

    Nothing is created: the probe writes and removes a temporary file in the folder, or in its
    nearest existing parent when the folder does not exist yet. ``needed_bytes`` is an estimate
    of what will be written (uncompressed, so an upper bound).
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = f"the output folder {folder}" if existing == folder else f"{existing}, a parent of the output folder,"
        raise SSAEError(f"{what} is a file; choose a folder")
    with os_errors(f"cannot write into {folder}"):
        fd, probe = tempfile.mkstemp(prefix=".ssae-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(existing).free
    if needed_bytes and free < needed_bytes:
        raise SSAEError(f"not enough free space for {folder}: about {needed_bytes / 1e6:.0f} MB are needed, {free / 1e6:.0f} MB are free")


def volume_bytes(image: sitk.Image) -> int:
    """Uncompressed size of a volume (an upper bound of what writing it takes)."""
    return int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()


def write_volume(image: sitk.Image, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``image`` atomically and verify it; compressed formats use a fast compression level.

    ITK's writers do not report every write error (a full disk can leave a truncated gzip
    stream behind and no error), so the file is read back and compared voxel for voxel before
    it gets its final name.
    """
    import zlib

    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        try:
            if path.name.lower().endswith(".nii.gz"):
                complete = _write_nifti_gz(image, tmp)
            else:
                compress = path.name.lower().endswith((".nrrd", ".mha"))
                sitk.WriteImage(image, str(tmp), useCompression=compress, compressionLevel=1)
                _flush_to_disk(tmp)
                written = sitk.ReadImage(str(tmp))
                complete = same_geometry(written, image) and _same_voxels(sitk.GetArrayViewFromImage(written), image)
        except (RuntimeError, SSAEError, OSError, zlib.error):
            complete = False
        if not complete:
            if not path.parent.is_dir():
                raise SSAEError(f"writing {path} failed: the folder {path.parent} was removed while writing")
            free = shutil.disk_usage(path.parent).free
            raise SSAEError(f"writing {path} failed: the file on disk is incomplete ({free / 1e6:.0f} MB free; is the disk full?)")
    return path


def _write_nifti_gz(image: sitk.Image, path: Path) -> bool:
    """A verified ``.nii.gz``: ITK writes the NIfTI file uncompressed (fast) and its voxels are
    checked, then zlib compresses it as one gzip member with run-length matching (score maps are
    mostly runs of zeros: about twice as fast as ITK's level-1 gzip writer, and no larger) and
    the stream on disk is read back to its end and compared."""
    import zlib

    scratch = path.with_name(path.name[: -len(".gz")])
    try:
        sitk.WriteImage(image, str(scratch), useCompression=False)
        raw = scratch.read_bytes()
        header = sitk.ImageFileReader()
        header.SetFileName(str(scratch))
        header.ReadImageInformation()  # the geometry as any reader will see it
        geometry = (header.GetSize(), header.GetSpacing(), header.GetOrigin(), header.GetDirection())
    finally:
        scratch.unlink(missing_ok=True)
    if not same_geometry_values(geometry, image):
        return False
    found = nifti_payload(raw, path.name, "written file")
    if found is None or tuple(found[1][:3]) != image.GetSize() or not _same_voxels(found[0], image):
        return False
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31, 8, zlib.Z_RLE)  # wbits 31: a gzip header and trailer
    with open(path, "wb") as handle:
        handle.write(compressor.compress(raw))
        handle.write(compressor.flush())
        handle.flush()
        os.fsync(handle.fileno())
    return zlib.decompress(path.read_bytes(), wbits=31) == raw


def _same_voxels(voxels: np.ndarray, image: sitk.Image) -> bool:
    return np.array_equal(voxels.reshape(-1), sitk.GetArrayViewFromImage(image).reshape(-1), equal_nan=True)


def json_text(data: Any) -> str:
    """JSON without NaN or infinity (not JSON at all): undefined values must be None (null)."""
    try:
        return json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise AssertionError("a NaN or infinite number reached a JSON file; it must be written as null") from None


def write_json(data: Any, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    return write_text(json_text(data), path, overwrite)


def write_text(text: str, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite) as tmp, os_errors(f"cannot write {path}"):
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
