"""The MNI ICBM152 2009a template shipped in Resources/Atlas, and what moves with it between atlas
and scan: the template brain carried onto a scan, a scan resampled into atlas space, transform files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import SimpleITK as sitk

from ssae.io.errors import SSAEError
from ssae.io.resources import atlas_folder

ATLAS_FILES = {
    "t1": "mni_icbm152_2009a_t1_brain_1mm.nii.gz",
    "brain": "mni_icbm152_2009a_brain_mask_1mm.nii.gz",
    "gm": "mni_icbm152_2009a_gm_2mm.nii.gz",
    "wm": "mni_icbm152_2009a_wm_2mm.nii.gz",
}


@dataclass(frozen=True)
class Atlas:
    t1: sitk.Image  # float32 in [0, 1], 1 mm
    brain: sitk.Image  # uint8, 1 mm
    fixed: sitk.Image  # T1 at 2 mm for registration; gm, wm and the masks below share its grid
    brain_2mm: sitk.Image  # uint8 brain mask at 2 mm
    fixed_mask: sitk.Image  # dilated brain at 2 mm (where the metric looks)
    gm: sitk.Image  # probability in [0, 1], 2 mm
    wm: sitk.Image


@lru_cache(maxsize=1)
def load_atlas() -> Atlas:
    folder = atlas_folder()
    missing = [name for name in ATLAS_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise SSAEError(f"atlas files missing in {folder}: {', '.join(missing)}")
    t1 = sitk.Cast(sitk.ReadImage(str(folder / ATLAS_FILES["t1"])), sitk.sitkFloat32) / 255.0
    brain = sitk.Cast(sitk.ReadImage(str(folder / ATLAS_FILES["brain"])), sitk.sitkUInt8)
    reference = sitk.Image([(s + 1) // 2 for s in t1.GetSize()], sitk.sitkFloat32)
    reference.SetSpacing([2.0] * 3)
    reference.SetDirection(t1.GetDirection())
    reference.SetOrigin(t1.TransformContinuousIndexToPhysicalPoint([0.5] * 3))
    fixed = sitk.Resample(sitk.SmoothingRecursiveGaussian(t1, 0.85), reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    brain_2mm = sitk.Cast(sitk.Resample(brain, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0), sitk.sitkUInt8)
    fixed_mask = sitk.BinaryDilate(brain_2mm, [4] * 3)
    gm = sitk.Cast(sitk.ReadImage(str(folder / ATLAS_FILES["gm"])), sitk.sitkFloat32) / 255.0
    wm = sitk.Cast(sitk.ReadImage(str(folder / ATLAS_FILES["wm"])), sitk.sitkFloat32) / 255.0
    return Atlas(t1=t1, brain=brain, fixed=fixed, brain_2mm=brain_2mm, fixed_mask=fixed_mask, gm=gm, wm=wm)


def warp_atlas_brain(transform: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    """The template brain mask on ``reference``'s grid (linear interpolation, > 0.5)."""
    atlas = load_atlas()
    inverse = transform.GetInverse()
    warped = sitk.Resample(sitk.Cast(atlas.brain, sitk.sitkFloat32), reference, inverse, sitk.sitkLinear, 0.0)
    mask = sitk.Cast(warped > 0.5, sitk.sitkUInt8)
    mask.CopyInformation(reference)
    return mask


def refine_brain_mask(mask: sitk.Image, head: sitk.Image) -> sitk.Image:
    """The warped template brain, without voxels outside the scan's head foreground (air, FOV edge)."""
    head_on_grid = sitk.Resample(head, mask, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    refined = sitk.And(mask, sitk.Cast(head_on_grid, sitk.sitkUInt8))
    refined.CopyInformation(mask)
    return refined


def atlas_space_image(image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """The scan resampled onto the 1 mm template grid (for viewing or other tools)."""
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), load_atlas().t1, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def write_transform(transform: sitk.Transform, path: Path, overwrite: bool) -> Path:
    """ITK transform file (atlas point -> scan point), readable by Slicer and any ITK tool."""
    from ssae.io.writing import atomic_path

    with atomic_path(path, overwrite) as tmp:
        try:
            sitk.WriteTransform(transform, str(tmp))
        except RuntimeError as exc:  # ITK's words for a folder that vanished or a full disk
            raise SSAEError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from None
    return path
