"""Scanner adaptation: fine-tune a trained model on the scans it is about to examine.

A model trained on one site's healthy scans meets another scanner's contrast, resolution and
noise at detection time; much of its residual is then domain gap, not lesion (cortex and
sulcal edges light up everywhere). Adaptation continues training a *copy* of the model on the
examined scans themselves, with the training objective (Eq. 3, :func:`ssae.models.losses.level_loss`),
level by level from the coarsest, coarser levels frozen, as in training. Lesions must not be
learnt as normal anatomy, so brain voxels brighter than the scan's ``exclude_percentile``-th
brain intensity (FLAIR lesions are hyperintense) get zero weight in the loss.

Two uses share this code: ``ssae detect --adapt`` adapts to the one scan being examined and
throws the copy away afterwards; ``ssae adapt`` adapts to a folder of a site's unlabelled scans
and writes a new model file. The model file given is never modified.

Everything is seeded (batch order and any VAE sampling), so the same scan, model and settings
give the same adapted weights on the same device and thread count. PyTorch is imported where
adaptation runs: the settings are read (model cards, the Slicer panel) without it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ssae.io.errors import SSAEError
from ssae.models.settings import AdaptationSettings

if TYPE_CHECKING:
    import torch

    from ssae.models.networks import ScaleSpaceAutoencoder
    from ssae.preprocessing.pyramid import Pyramid


ProgressCallback = Callable[[float, str], None]


CancelCheck = Callable[[], bool]


class AdaptationCancelled(SSAEError):
    """The caller asked to stop while the model was being adapted."""


@dataclass
class AdaptationReport:
    """What adaptation did: settings, masked loss per level before and after, time."""

    settings: AdaptationSettings
    slices: int
    excluded_voxels: int
    loss_before: dict[str, float] = field(default_factory=dict)
    loss_after: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "slices": self.slices,
            "excluded_voxels": self.excluded_voxels,
            "masked_loss_before": self.loss_before,
            "masked_loss_after": self.loss_after,
            "seconds": round(self.seconds, 2),
        }


def loss_weights(slices: np.ndarray, brain: np.ndarray, exclude_percentile: float) -> np.ndarray:
    """1 where a pixel counts in the adaptation loss: everywhere but the scan's brightest brain
    voxels (above its ``exclude_percentile``-th brain intensity), where lesions would be."""
    keep = np.ones(slices.shape, np.float32)
    if exclude_percentile < 100.0 and brain.any():
        cutoff = np.percentile(slices[brain], exclude_percentile)
        keep[brain & (slices > cutoff)] = 0.0
    return keep


def _rows(pyramid: Pyramid, rows: torch.Tensor | slice) -> Pyramid:
    from ssae.preprocessing.pyramid import Pyramid

    return Pyramid([image[rows] for image in pyramid.lowpass], [band[rows] for band in pyramid.bands])


def _coarser_reconstruction(model: ScaleSpaceAutoencoder, level: int, pyramid: Pyramid, batch_size: int) -> torch.Tensor | None:
    """``Î_{k+1}`` of every slice (None at the coarsest level). The coarser levels are adapted
    and fixed by the time level ``k`` adapts, so it is computed once per level, not per step."""
    import torch

    if level == model.coarsest:
        return None
    n = pyramid.lowpass[0].shape[0]
    with torch.no_grad():
        parts = [model.reconstruct(_rows(pyramid, slice(s, s + batch_size)), finest=level + 1)[level + 1] for s in range(0, n, batch_size)]
    return torch.cat(parts)


def _masked_loss(
    model: ScaleSpaceAutoencoder, level: int, pyramid: Pyramid, coarser: torch.Tensor | None, keep: torch.Tensor, batch_size: int
) -> float:
    """Mean of the level's loss over every slice (the quantity adaptation lowers)."""
    import torch

    from ssae.models.losses import pyramid_level_loss

    total, weight = 0.0, 0.0
    n = keep.shape[0]
    with torch.no_grad():
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            loss, pixels = pyramid_level_loss(model, level, _rows(pyramid, rows), None if coarser is None else coarser[rows], keep[rows])
            total += float(loss) * pixels
            weight += pixels
    return total / max(weight, 1.0)


def adapt_model(
    model: ScaleSpaceAutoencoder,
    slices: np.ndarray,
    keep: np.ndarray,
    settings: AdaptationSettings,
    device: torch.device,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> tuple[ScaleSpaceAutoencoder, AdaptationReport]:
    """A fine-tuned copy of ``model`` (``model`` itself is untouched) and what was done.

    ``slices`` [n, size, size] are model input; ``keep`` (same shape) weights each pixel in the
    loss (see :func:`loss_weights`). Levels are adapted coarsest first; while level ``k``
    adapts, the coarser (already adapted) levels supply ``Î_{k+1}``.
    """
    import torch

    from ssae.models.losses import pyramid_level_loss
    from ssae.preprocessing.pyramid import decompose

    if slices.shape != keep.shape or slices.ndim != 3:
        raise SSAEError(f"adaptation needs [slices, size, size] arrays of one shape, got {slices.shape} and {keep.shape}")
    if slices.shape[0] == 0:
        raise SSAEError("no slices to adapt to")
    started = time.perf_counter()
    adapted = copy.deepcopy(model).to(device)
    adapted.requires_grad_(False)
    x = torch.from_numpy(np.array(slices, dtype=np.float32))[:, None].to(device)  # a copy: slices may be a read-only cache
    weights = torch.from_numpy(np.array(keep, dtype=np.float32))[:, None].to(device)
    report = AdaptationReport(settings=settings, slices=int(slices.shape[0]), excluded_voxels=int((keep == 0).sum()))
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)  # VAE sampling
    levels = list(range(adapted.coarsest, -1, -1))
    pyramid = decompose(x, adapted.arch.levels)  # every slice, once
    steps_per_epoch = -(-x.shape[0] // settings.batch_size)
    total_steps, done = len(levels) * settings.epochs * steps_per_epoch, 0
    for level in levels:
        name = f"level{level}"
        coarser = _coarser_reconstruction(adapted.eval(), level, pyramid, 4 * settings.batch_size)
        report.loss_before[name] = _masked_loss(adapted, level, pyramid, coarser, weights, 4 * settings.batch_size)
        net = adapted.nets[level]
        net.requires_grad_(True)
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
        for epoch in range(settings.epochs):
            order = torch.randperm(x.shape[0], generator=generator).to(device)
            for start in range(0, x.shape[0], settings.batch_size):
                if should_cancel is not None and should_cancel():
                    raise AdaptationCancelled("adaptation cancelled")
                rows = order[start : start + settings.batch_size]
                loss, _ = pyramid_level_loss(
                    adapted, level, _rows(pyramid, rows), None if coarser is None else coarser[rows], weights[rows]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
            if not np.isfinite(loss.item()):
                raise SSAEError(f"adaptation diverged at level {level} (loss {loss.item()}); try a smaller learning rate")
            if progress is not None:
                progress(done / total_steps, f"adapting level {level}, epoch {epoch + 1}/{settings.epochs}")
        net.requires_grad_(False)
        report.loss_after[name] = _masked_loss(adapted.eval(), level, pyramid, coarser, weights, 4 * settings.batch_size)
    adapted.eval()
    report.seconds = time.perf_counter() - started
    return adapted, report
