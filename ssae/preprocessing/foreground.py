"""Where the head or brain is when no brain mask is given, and hole filling of masks.

Used by preprocessing (a scan without registration) and by registration (the head of a raw
scan); kept apart so that neither of those imports the other.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ssae.io.errors import SSAEError

ORIENTATION = "LPS"  # array axis 0 inferior->superior: axial slices are axis 0 whatever the file's direction


def foreground_mask(image: sitk.Image) -> sitk.Image:
    """Robust brain/head foreground when no brain mask is given.

    Skull-stripped volumes (a large share of voxels exactly at the value found on the volume's
    border) keep every voxel that differs from that background value, so dark CSF stays inside
    the brain. Other volumes are thresholded by Otsu's method. Then the largest 3D component is
    kept and holes are filled in every axial slice.
    """
    array = sitk.GetArrayViewFromImage(image)
    border = np.concatenate([array[[0, -1]].ravel(), array[:, [0, -1]].ravel(), array[:, :, [0, -1]].ravel()])
    values, counts = np.unique(border, return_counts=True)
    background = values[np.argmax(counts)]
    if (array == background).mean() > 0.2:
        foreground = sitk.GetImageFromArray((array != background).astype(np.uint8))
        foreground.CopyInformation(image)
    else:
        foreground = sitk.OtsuThreshold(image, 0, 1, 200)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(foreground), sortByObjectSize=True)
    largest = sitk.Cast(components == 1, sitk.sitkUInt8)
    oriented = sitk.DICOMOrient(largest, ORIENTATION)
    filled = fill_holes_per_slice(sitk.GetArrayViewFromImage(oriented).astype(bool))
    if not filled.any():
        raise SSAEError("no foreground found in the image; is it empty?")
    result = sitk.GetImageFromArray(filled.astype(np.uint8))
    result.CopyInformation(oriented)
    result = sitk.DICOMOrient(result, orientation_of(image))
    result.CopyInformation(image)
    return result


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial slice of a [z, y, x] mask (one labelling pass for all slices)."""
    from scipy import ndimage

    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(~mask, structure=in_plane)
    outside = np.zeros(count + 1, bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[np.unique(face)] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[labels]


def orientation_of(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
