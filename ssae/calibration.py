"""What a trained model is measured on before it leaves training: healthy validation volumes.

* The default lesion threshold is chosen **without any lesion labels**: the
  ``percentile``-th percentile of post-processed aggregated scores over the brain voxels of
  held-out healthy subjects (lesion-labelled voxels, e.g. automatic WMH masks, left out). At
  99.9, about one healthy voxel in a thousand exceeds it on data like the validation set.
  Each level's map gets its own threshold by the same rule.
* Reconstruction fidelity (paper, Fig. 3): mean absolute error ``|I_k - Î_k|`` per pixel at
  every pyramid level, over brain pixels of the same healthy slices.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import Threshold
from .datasets import SliceStack
from .detection import Detector
from .postprocessing import anomaly_score, eroded_brain
from .pyramid import decompose


def calibrate_thresholds(
    detector: Detector, stack: SliceStack, subjects: list[str], percentile: float
) -> tuple[Threshold, dict[str, float]]:
    """Label-free thresholds from healthy validation subjects (one 3D volume at a time).

    Returns the aggregated map's threshold (the default lesion threshold) and one threshold per
    level (``level0`` ...), chosen by the same rule, for when a single scale drives the mask.
    """
    post = detector.card.postprocessing
    healthy: dict[str, list[np.ndarray]] = {}
    for name in subjects:
        start, stop = stack.volume_ranges[name]
        slices = np.asarray(stack.slices[start:stop])
        brain = np.asarray(stack.brain[start:stop]).astype(bool)
        residuals = detector.slice_residuals(slices, scales=True)
        inside = eroded_brain(brain, post.brain_erosion)
        counted = inside & np.asarray(stack.loss_mask[start:stop]).astype(bool)
        maps = {"aggregated": residuals.aggregated, **{f"level{k}": r for k, r in residuals.per_level.items()}}
        for key, residual in maps.items():
            healthy.setdefault(key, []).append(anomaly_score(residual, slices, inside, post, brain)[counted])
    values = {key: np.concatenate(parts) for key, parts in healthy.items()}
    aggregated = values.pop("aggregated")
    threshold = Threshold(
        value=float(np.percentile(aggregated, percentile)),
        method=(
            f"{percentile:g}th percentile of post-processed aggregated scores over {aggregated.size} brain voxels "
            f"of {len(subjects)} healthy validation subjects (lesion-labelled voxels excluded); no lesion labels used"
        ),
        percentile=percentile,
        voxels=int(aggregated.size),
    )
    return threshold, {key: float(np.percentile(v, percentile)) for key, v in values.items()}


def reconstruction_fidelity(detector: Detector, stack: SliceStack, subjects: list[str]) -> dict[str, float]:
    """Mean l1 error per pixel at each level (``level0`` is full resolution), brain pixels only."""
    model, levels = detector.model, detector.card.architecture.levels
    sums = np.zeros(levels)
    counts = np.zeros(levels)
    rows = stack.rows_of(subjects)
    with torch.inference_mode():
        for start in range(0, len(rows), detector.batch_size):
            index = rows[start : start + detector.batch_size]
            x = torch.tensor(stack.slices[index], device=detector.device)[:, None]
            keep = torch.tensor(stack.brain[index] & stack.loss_mask[index], device=detector.device)[:, None].float()
            pyramid = decompose(x, levels)
            recon = model.reconstruct(pyramid)
            for k in range(levels):
                weight = keep if k == 0 else (F.avg_pool2d(keep, 2**k) > 0.5).float()
                sums[k] += float(((pyramid.lowpass[k] - recon[k]).abs() * weight).sum())
                counts[k] += float(weight.sum())
    return {f"level{k}": float(sums[k] / max(counts[k], 1.0)) for k in range(levels)}
