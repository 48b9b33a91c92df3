"""The training objective of a scale-space autoencoder (paper, Eq. 3), shared by training and
scanner adaptation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssae.models.networks import ScaleSpaceAutoencoder
from ssae.preprocessing.pyramid import Pyramid, decompose


def level_loss(
    model: ScaleSpaceAutoencoder,
    level: int,
    x: torch.Tensor,
    keep: torch.Tensor,
    net: torch.nn.Module | None = None,
    kl_weight: float = 1.0,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, float]:
    """Eq. 3 for one level: masked l2 between ``I_k`` and ``u(Î_{k+1}) + Ĥ_k`` (+ KL for a VAE).

    ``keep`` is 1 where a full-resolution pixel counts (0 on lesion-labelled voxels); a coarse
    pixel counts only if all the fine pixels under it do. The KL term is divided by the number
    of pixels, so the loss is a per-pixel Gaussian negative log-likelihood plus KL.
    ``amp_dtype`` runs the forward pass under CUDA autocast. Returns the loss and the number of
    pixels that counted.
    """
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float16, enabled=amp_dtype is not None):
        pyramid = decompose(x, model.arch.levels)
        with torch.no_grad():
            coarser = model.reconstruct(pyramid, finest=level + 1)[level + 1] if level < model.coarsest else None
        prediction, kl = model.level_prediction(level, pyramid, coarser, net=net)
    return _masked_error(model, level, pyramid, prediction, kl, keep, kl_weight)


def pyramid_level_loss(
    model: ScaleSpaceAutoencoder,
    level: int,
    pyramid: Pyramid,
    coarser: torch.Tensor | None,
    keep: torch.Tensor,
    net: torch.nn.Module | None = None,
    kl_weight: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """:func:`level_loss` from an already decomposed batch and the coarser level's
    reconstruction ``Î_{k+1}`` (None at the coarsest level), for callers that keep both while
    one level trains (scanner adaptation: the coarser levels are fixed by then)."""
    prediction, kl = model.level_prediction(level, pyramid, coarser, net=net)
    return _masked_error(model, level, pyramid, prediction, kl, keep, kl_weight)


def _masked_error(
    model: ScaleSpaceAutoencoder,
    level: int,
    pyramid: Pyramid,
    prediction: torch.Tensor,
    kl: torch.Tensor,
    keep: torch.Tensor,
    kl_weight: float,
) -> tuple[torch.Tensor, float]:
    target = pyramid.lowpass[level].float()
    weight = keep if level == 0 else 1.0 - F.max_pool2d(1.0 - keep, 2**level)
    squared = (prediction.float() - target) ** 2 * weight
    loss = squared.sum() / weight.sum().clamp_min(1.0)
    if model.arch.variant == "vae":
        loss = loss + kl_weight * kl.float().mean() / target[0].numel()
    return loss, float(weight.sum())
