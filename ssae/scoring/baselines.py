"""Reference scores that need no training: what every map must beat.

Meissen et al. showed that thresholding the FLAIR intensity inside the brain beats most
autoencoders on MSLUB. Two versions are reported beside every model:

* **raw FLAIR** (:func:`intensity_score`): the input volume itself, normalised like the model
  input (98th percentile of brain voxels, not clipped), inside the brain mask, on the input
  grid: what a user gets by thresholding the scan;
* **strong FLAIR** (:func:`strong_intensity_score`): the scan as the model sees it (bias
  corrected, registered and resampled onto the model grid, which also smooths it), inside the
  *eroded* brain (the bright rim of cortex and skull-stripping errors goes), ranked within the
  scan (so every scan contributes its own brightest voxels, whatever its contrast), and mapped
  back to the input grid. A model that does not beat this has learnt nothing the intensity
  does not already say.

For the *mask* there is a label-free FLAIR rule as well (:func:`flair_rule_mask`): the brain
voxels whose FLAIR z-score (mean and standard deviation over the scan's own brain mask) exceeds
K, components smaller than a minimum size dropped; K and the size are chosen by
``bench/operating_point.py`` on the other data sets (:data:`ssae.training.defaults.FLAIR_RULE`).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.stats import rankdata

from ssae.preprocessing.slices import PreparedVolume
from ssae.scoring.lesions import label_lesions, lesion_mask
from ssae.scoring.score_maps import eroded_brain


def intensity_score(image: sitk.Image, prepared: PreparedVolume) -> np.ndarray:
    """Normalised FLAIR intensity inside the brain, as a [z, y, x] array on the input grid."""
    values = prepared.normalise(sitk.GetArrayFromImage(image).astype(np.float32))
    brain = sitk.GetArrayViewFromImage(prepared.brain_mask).astype(bool)
    return np.maximum(np.where(brain, values, 0.0), 0.0).astype(np.float32)


def strong_intensity_score(prepared: PreparedVolume, brain_erosion: int) -> np.ndarray:
    """Within-scan rank (0..1] of the model-grid FLAIR inside the eroded brain, on the slice grid."""
    inside = eroded_brain(prepared.brain, brain_erosion)
    score = np.zeros(prepared.intensities.shape, np.float32)
    if inside.any():
        score[inside] = rankdata(prepared.intensities[inside]) / inside.sum()
    return score


def flair_rule_mask(image: sitk.Image, brain_mask: sitk.Image, k: float, min_lesion_mm3: float) -> sitk.Image:
    """Brain voxels with FLAIR z-score > ``k`` (the scan's own brain mean and standard deviation),
    without components smaller than ``min_lesion_mm3``: the mask anyone could draw without a model."""
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    brain = sitk.GetArrayViewFromImage(brain_mask).astype(bool)
    inside = values[brain]
    z = (
        np.where(brain, (values - inside.mean()) / max(float(inside.std()), 1e-12), -np.inf)
        if inside.size
        else np.full(values.shape, -np.inf)
    )
    score = sitk.GetImageFromArray(z.astype(np.float32))
    score.CopyInformation(image)
    return lesion_mask(label_lesions(score, k, min_lesion_mm3))
