"""The scan's own voxels, normalised like the model input: where small lesions are looked for.

The model sees a scan on its slice grid (1.55 mm pixels for the shipped model). A lesion of a few
cubic millimetres is averaged there with the tissue around it and loses most of its contrast:
on the two MSLUB development patients, 7-23 % of the lesions under 50 mm3 are brighter than the
hyper-intensity prior's cut-off on the model's slices, 79-100 % on the scan's own voxels. So the
small-lesion rule (:mod:`ssae.scoring.small_lesions`) asks how bright a spot is here: on the input
grid, on the intensities the slices were taken from (N4-corrected where the model asks for it),
normalised with the slices' own offset and scale. What the model says (the score maps) comes back
to this grid as before (:mod:`ssae.preprocessing.input_grid`), and the mask is drawn here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ssae.io.errors import SSAEError
from ssae.preprocessing.slices import PreparedVolume


@dataclass
class InputIntensities:
    """Normalised intensities of the scan on its own grid, and the brain they are read in."""

    values: np.ndarray  # [z, y, x] float32, normalised like the model input (not clipped), 0 outside the brain
    brain: np.ndarray  # [z, y, x] bool: the detection's brain mask
    inside: np.ndarray  # [z, y, x] bool: the brain without its outer ``erosion_mm`` (skull-stripping errors live there)
    depth_mm: np.ndarray  # [z, y, x] float32: distance to the nearest voxel outside the brain (mm)
    spacing: tuple[float, float, float]  # x, y, z in mm, SimpleITK's order

    @property
    def brain_median(self) -> float:
        return float(np.median(self.values[self.brain]))

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing))


def depth_in_brain(brain: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) of every brain voxel to the nearest voxel outside the brain (one voxel at the
    rim, as scipy's ``distance_transform_edt``, five times faster); 0 outside."""
    outside = sitk.GetImageFromArray((~brain).astype(np.uint8))
    outside.SetSpacing(tuple(float(s) for s in spacing))
    distance = sitk.SignedMaurerDistanceMap(outside, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.where(brain, sitk.GetArrayFromImage(distance), 0.0).astype(np.float32)


def input_intensities(prepared: PreparedVolume, erosion_mm: float) -> InputIntensities:
    """The prepared scan's intensities on its own grid (see the module doc); ``erosion_mm`` is the
    slice grid's brain erosion in millimetres, so both grids leave out the same rim."""
    brain = sitk.GetArrayFromImage(prepared.brain_mask).astype(bool)
    raw = sitk.GetArrayFromImage(prepared.corrected).astype(np.float32)
    if raw.shape != brain.shape:
        raise SSAEError("the corrected scan and its brain mask are on different grids")
    values = np.where(brain, prepared.normalise(raw), 0.0).astype(np.float32)
    spacing = tuple(float(s) for s in prepared.corrected.GetSpacing())
    depth = depth_in_brain(brain, spacing)
    inside = brain & (depth > erosion_mm)
    return InputIntensities(values=values, brain=brain, inside=inside, depth_mm=depth, spacing=spacing)  # type: ignore[arg-type]
