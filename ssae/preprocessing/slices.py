"""From a scanner volume to the model's stack of square axial slices.

The *slice grid* is a SimpleITK image geometry in physical space: ``size x size`` pixels
in-plane, one slice per axial slice of the input that contains brain. Going to it is plain
physical-space resampling, and so is coming back (:mod:`ssae.preprocessing.input_grid`), so whatever the
input's direction matrix, spacing or origin, every map returns onto exactly the input's voxels.

Steps (all recorded in the model card through :class:`PreprocessingSettings`):

1. *Orientation*: the input is viewed in the fixed anatomical orientation LPS (``DICOMOrient``,
   a lossless axis permutation/flip), so array axis 0 is always inferior->superior and "axial"
   is right whatever the file's direction matrix. An oblique acquisition stays oblique: its
   slices are the acquired slices, which is what a 2D model should see.
2. *Brain mask*: the user's mask if given, else a robust foreground mask (see
   :func:`foreground_mask`), which is the brain for skull-stripped input.
3. *Slices*: axial slices whose brain area is at least ``min_brain_fraction`` of the largest
   slice's (edge slices with a sliver of brain are unlike anything the model sees in training).
4. *In-plane grid*: the brain's bounding box (union over slices) plus ``margin`` on each side,
   scaled isotropically so that its longer side fills ``size`` pixels; the shorter side is
   padded. This keeps the aspect ratio and gives every brain about the same pixel footprint.
   Downsampling is preceded by a Gaussian anti-aliasing blur.
   With ``atlas`` (see :mod:`ssae.preprocessing.registration`), the scan is first registered to the MNI
   template and the grid is instead the same isotropic grid around the template brain for every
   scan; with ``bias_correction`` the scan is N4-corrected first.
5. *Intensities*: divided by the 98th percentile of brain voxels (after a shift by the 0.5th
   percentile when brain intensities are negative, e.g. z-scored data), clipped below at 0 and
   above at ``clip_max`` (1 in the paper, which saturates the brighter half of most lesions;
   ``None`` keeps their full brightness); everything outside the brain mask is 0, as in
   skull-stripped training data.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from ssae.io.errors import SSAEError
from ssae.preprocessing.foreground import ORIENTATION, foreground_mask

if TYPE_CHECKING:
    from ssae.preprocessing.registration import RegistrationSettings
    from ssae.preprocessing.registration_check import AtlasAlignment


@dataclass(frozen=True)
class PreprocessingSettings:
    """How volumes become model input; part of every model card."""

    size: int = 256
    percentile: float = 98.0
    clip_max: float | None = 1.0
    min_brain_fraction: float = 0.1
    margin: float = 0.05
    atlas: bool = False
    bias_correction: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"orientation": ORIENTATION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingSettings:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class PreparedVolume:
    """A volume on the slice grid, ready for the model, plus what is needed to go back."""

    slices: np.ndarray  # [n, size, size] float32, model input: normalised, clipped to [0, clip_max], 0 outside the brain
    intensities: np.ndarray  # [n, size, size] float32, normalised like ``slices`` but not clipped (FLAIR maps, prior)
    brain: np.ndarray  # [n, size, size] bool
    grid: sitk.Image  # geometry of the slice grid (pixel values unused)
    input_reference: sitk.Image  # the input volume (its grid is where results go back to)
    corrected: sitk.Image  # the input as the slices were taken from it: N4-corrected where the model asks for it
    brain_mask: sitk.Image  # brain mask on the input grid (uint8)
    intensity_offset: float
    intensity_scale: float
    transform: sitk.Transform | None = None  # slice grid -> input (atlas registration), None: same space
    alignment: AtlasAlignment | None = None
    timings: dict[str, float] = field(default_factory=dict)  # n4_s, registration_s, slicing_s

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """Apply this volume's intensity normalisation (without clipping) to raw intensities."""
        return (values - self.intensity_offset) / self.intensity_scale


def brain_slice_range(brain_lps: np.ndarray, min_fraction: float) -> tuple[int, int]:
    """First and last (inclusive) axial slice with enough brain, on an LPS [z, y, x] array."""
    area = brain_lps.reshape(brain_lps.shape[0], -1).sum(axis=1)
    if area.max() == 0:
        raise SSAEError("the brain mask is empty")
    keep = np.flatnonzero(area >= min_fraction * area.max())
    return int(keep[0]), int(keep[-1])


def make_slice_grid(brain: sitk.Image, settings: PreprocessingSettings, isotropic: bool = False) -> sitk.Image:
    """Slice-grid geometry around the brain of ``brain`` (a mask on the input grid).

    Native slices (``isotropic=False``) keep the input's own slice positions and thickness; an
    isotropic grid (the atlas) spaces its slices like its pixels.
    """
    oriented = sitk.DICOMOrient(brain, ORIENTATION)
    array = sitk.GetArrayViewFromImage(oriented).astype(bool)
    z0, z1 = brain_slice_range(array, settings.min_brain_fraction)
    footprint = array[z0 : z1 + 1].any(axis=0)
    ys, xs = np.nonzero(footprint)
    sx, sy, sz = oriented.GetSpacing()
    extent = max((xs.max() - xs.min() + 1) * sx, (ys.max() - ys.min() + 1) * sy)
    pixel = extent * (1.0 + 2.0 * settings.margin) / settings.size
    cx, cy = (xs.min() + xs.max()) / 2.0, (ys.min() + ys.max()) / 2.0
    half = (settings.size - 1) / 2.0
    corner = (cx - half * pixel / sx, cy - half * pixel / sy, float(z0))
    slice_spacing = pixel if isotropic else sz
    count = int(np.floor((z1 - z0) * sz / slice_spacing)) + 1
    grid = sitk.Image([settings.size, settings.size, count], sitk.sitkUInt8)
    grid.SetSpacing((pixel, pixel, slice_spacing))
    grid.SetDirection(oriented.GetDirection())
    grid.SetOrigin(oriented.TransformContinuousIndexToPhysicalPoint(corner))
    return grid


@lru_cache(maxsize=8)
def atlas_slice_grid(settings: PreprocessingSettings) -> sitk.Image:
    """The slice grid in atlas space: the same for every scan, isotropic, around the template brain."""
    from ssae.preprocessing.atlas import load_atlas

    return make_slice_grid(load_atlas().brain, settings, isotropic=True)


def resample_to_grid(image: sitk.Image, grid: sitk.Image, label: bool = False, transform: sitk.Transform | None = None) -> np.ndarray:
    """Resample ``image`` onto ``grid`` as a [slices, rows, cols] array.

    ``transform`` maps grid points to image points (atlas to scan; identity when None).
    Intensities are Gaussian-blurred first where the grid is coarser than the image
    (anti-aliasing; on a native grid only in-plane, since slices stay where they are), then
    linearly interpolated; labels are linearly interpolated and thresholded at 0.5, which
    follows a mask's boundary better than nearest neighbour.
    """
    source = sitk.Cast(image, sitk.sitkFloat32)
    if not label:
        target = grid.GetSpacing()[0]
        variance = [0.25 * max(target**2 - s**2, 0.0) for s in image.GetSpacing()]
        if transform is None:
            normal = np.array(grid.GetDirection()).reshape(3, 3)[:, 2]
            axes = np.array(image.GetDirection()).reshape(3, 3)
            variance = [v if abs(float(axes[:, i] @ normal)) < 0.7 else 0.0 for i, v in enumerate(variance)]
        if max(variance) > 0:
            source = sitk.DiscreteGaussian(source, variance, 32, 0.01, True)
    resampled = sitk.Resample(source, grid, transform or sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(resampled)
    return array > 0.5 if label else array


def intensity_normalisation(values: np.ndarray, percentile: float) -> tuple[float, float]:
    """Offset and scale that map brain intensities to [0, 1] by the ``percentile``-th value."""
    low = float(np.percentile(values, 0.5))
    offset = min(low, 0.0)
    scale = float(np.percentile(values, percentile)) - offset
    if not np.isfinite(scale) or scale <= 0:
        raise SSAEError("brain intensities are constant; cannot normalise")
    return offset, scale


def prepare_volume(
    image: sitk.Image,
    settings: PreprocessingSettings,
    brain_mask: sitk.Image | None = None,
    alignment: AtlasAlignment | None = None,
    registration: RegistrationSettings | None = None,
) -> PreparedVolume:
    """Input volume (and optional brain mask on its grid) -> normalised slices on the slice grid.

    ``alignment`` reuses an atlas registration of the same (bias-corrected) scan, e.g. when
    several models with different input sizes look at one scan. ``registration`` sets how much
    work N4 and the registration do (default: :class:`ssae.preprocessing.registration.RegistrationSettings`).
    """
    from ssae.preprocessing.bias_field import bias_correct
    from ssae.preprocessing.registration import RegistrationSettings, align_to_atlas

    registration = registration or RegistrationSettings()
    timings = {"n4_s": 0.0, "registration_s": 0.0}
    source = image
    if settings.bias_correction:
        started = time.perf_counter()
        source = bias_correct(image, brain_mask, registration)
        timings["n4_s"] = time.perf_counter() - started
    started = time.perf_counter()
    if settings.atlas:
        if alignment is None:
            alignment = align_to_atlas(source, brain_mask, registration)
            timings["registration_s"] = time.perf_counter() - started
            started = time.perf_counter()
        mask, grid, transform = alignment.brain_mask, atlas_slice_grid(settings), alignment.transform
    else:
        alignment = None
        mask = brain_mask if brain_mask is not None else foreground_mask(image)
        if not sitk.GetArrayViewFromImage(mask).any():
            raise SSAEError("the brain mask is empty")
        grid, transform = make_slice_grid(mask, settings), None
    slices = resample_to_grid(source, grid, transform=transform)
    brain = resample_to_grid(mask, grid, label=True, transform=transform)
    if not brain.any():
        raise SSAEError("no brain voxels left on the slice grid")
    offset, scale = intensity_normalisation(slices[brain], settings.percentile)
    intensities = np.where(brain, (slices - offset) / scale, 0.0).astype(np.float32)
    return PreparedVolume(
        slices=np.clip(intensities, 0.0, settings.clip_max),
        intensities=intensities,
        brain=brain,
        grid=grid,
        input_reference=image,
        corrected=source,
        brain_mask=sitk.Cast(mask, sitk.sitkUInt8),
        intensity_offset=offset,
        intensity_scale=scale,
        transform=transform,
        alignment=alignment,
        timings={**timings, "slicing_s": time.perf_counter() - started},
    )
