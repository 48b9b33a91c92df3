"""Reference scores that need no training.

Meissen et al. showed that thresholding the FLAIR intensity inside the brain beats most
autoencoders on MSLUB. The score here is the input normalised exactly like the model's input
(98th percentile of brain voxels; not clipped, so the brightest lesions keep their order),
restricted to the brain mask, on the input grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .preprocessing import PreparedVolume


def intensity_score(
    image: sitk.Image, prepared: PreparedVolume, hyperintensity_prior: bool = False, prior_percentile: float = 90.0
) -> np.ndarray:
    """Normalised FLAIR intensity inside the brain, as a [z, y, x] array on the input grid.

    With ``hyperintensity_prior``, voxels below the brain's ``prior_percentile``-th intensity
    are set to 0 (the prior alone changes nothing in the ranking of the remaining voxels, but
    it does define which voxels can be called lesion at any threshold).
    """
    values = prepared.normalise(sitk.GetArrayFromImage(image).astype(np.float32))
    brain = sitk.GetArrayViewFromImage(prepared.brain_mask).astype(bool)
    score = np.where(brain, values, 0.0).astype(np.float32)
    if hyperintensity_prior:
        score[score < np.percentile(values[brain], prior_percentile)] = 0.0
    return np.maximum(score, 0.0)
