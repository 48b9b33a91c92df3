"""The training objective of a scale-space autoencoder (paper, Eq. 3), shared by training and
scanner adaptation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import ScaleSpaceAutoencoder
from .pyramid import decompose


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
    arch = model.arch
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float16, enabled=amp_dtype is not None):
        pyramid = decompose(x, arch.levels)
        with torch.no_grad():
            coarser = model.reconstruct(pyramid, finest=level + 1)[level + 1] if level < model.coarsest else None
        prediction, kl = model.level_prediction(level, pyramid, coarser, net=net)
    target = pyramid.lowpass[level].float()
    weight = keep if level == 0 else 1.0 - F.max_pool2d(1.0 - keep, 2**level)
    squared = (prediction.float() - target) ** 2 * weight
    loss = squared.sum() / weight.sum().clamp_min(1.0)
    if arch.variant == "vae":
        loss = loss + kl_weight * kl.float().mean() / target[0].numel()
    return loss, float(weight.sum())
