"""N4 bias-field correction of a raw scan at unit intensity scale (so a scan stored in any units is
corrected alike), fitted on a coarse copy inside the head foreground."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ssae.io.errors import SSAEError
from ssae.preprocessing.foreground import foreground_mask
from ssae.preprocessing.registration import RegistrationSettings


def bias_correct(image: sitk.Image, mask: sitk.Image | None = None, settings: RegistrationSettings = RegistrationSettings()) -> sitk.Image:
    """N4 bias-field correction inside ``mask`` (a brain mask, else the head foreground), fitted
    on a copy shrunk to ~``settings.n4_fit_spacing_mm`` voxels (the field is smooth) and applied
    at full resolution.

    Intensities are brought to a unit scale first (divided by the 99th percentile of their
    magnitude inside the mask) and scaled back afterwards, so the correction is the same for a
    scan stored in any units: N4's internal statistics do not overflow for huge values nor
    lose precision for tiny ones.
    """
    if mask is None:
        mask = foreground_mask(image)
    inside_values = sitk.GetArrayFromImage(image)[sitk.GetArrayFromImage(mask) > 0]
    if inside_values.size == 0:
        raise SSAEError("the brain mask is empty: no voxel to estimate the bias field from")
    unit = float(np.percentile(np.abs(inside_values), 99)) or 1.0
    source = sitk.Cast(image, sitk.sitkFloat32) * (1.0 / unit)
    low = float(np.percentile(inside_values, 1)) / unit
    # N4 works on log intensities: keep them positive with an offset that is small against the
    # unit scale (1e-3 of it). An offset of 1, negligible for intensities in the hundreds, is as
    # large as the signal at unit scale: the corrected scan then loses its contrast and can go
    # negative, and registration fails on it.
    shift = 1e-3 - min(low, 0.0)
    positive = source + shift
    factors = [
        max(1, min(round(settings.n4_fit_spacing_mm / spacing), size // 16)) for spacing, size in zip(image.GetSpacing(), image.GetSize())
    ]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([settings.n4_iterations] * 3)
    try:
        corrector.Execute(sitk.Shrink(positive, factors), sitk.Shrink(mask, factors))
    except RuntimeError as exc:
        raise SSAEError(f"bias-field correction failed: {str(exc).strip().splitlines()[-1]}") from None
    corrected = sitk.Cast(positive / sitk.Exp(corrector.GetLogBiasFieldAsImage(positive)) - shift, sitk.sitkFloat32)
    # Only the head is corrected: the background keeps its values (a skull-stripped scan's
    # constant background is how the foreground mask recognises it).
    inside = sitk.Cast(mask > 0, sitk.sitkFloat32)
    result = (corrected * inside + source * (1.0 - inside)) * unit
    result.CopyInformation(image)
    return result
