"""Autoencoders: one network per pyramid level, and the scale-space model that chains them.

Layer sizes follow the authors' comparative-study code (METHOD.md), made explicit here and
recorded in every model card through :class:`Architecture`:

* encoder: ``n`` stride-2 5x5 convolutions with ``min(base_filters * 2**i, max_filters)``
  filters and LeakyReLU(0.2), from the level's input size down to a ``bottleneck_grid`` square
  (``n = log2(side / bottleneck_grid)``, at least one stage);
* bottleneck, by ``variant``:
  ``dense``   1x1 conv to ``dense_channels``, flatten, linear to ``latent_dim``, linear back,
              reshape, 1x1 conv back (LeakyReLU);
  ``vae``     the same with mean and log-variance heads and the reparameterisation trick;
  ``spatial`` the encoder's feature map itself (``grid x grid x channels``) is the code;
* decoder: the encoder mirrored with 5x5 transposed convolutions, then a 1x1 convolution with
  linear output (residual bands are signed, so no output non-linearity);
* no batch norm (the paper's results were produced without it).

A *plain* autoencoder is the one-level case: ``levels == 1`` and the single network sees the
whole image at ``size`` pixels. A *scale-space* autoencoder (``levels > 1``) holds ``M_K`` for
the low-pass image ``I_K`` and ``M_k`` for each band ``H_k``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from ssae.models.settings import Architecture
from ssae.preprocessing.pyramid import Pyramid, upsample


def _filters(arch: Architecture, stages: int) -> list[int]:
    return [min(arch.base_filters * 2**i, arch.max_filters) for i in range(stages)]


def _activation() -> nn.Module:
    """One activation for every layer; in place, which saves memory traffic."""
    return nn.LeakyReLU(0.2, inplace=True)


class LevelAutoencoder(nn.Module):
    """``M_k``: encoder, bottleneck and mirrored decoder for one square input size."""

    def __init__(self, arch: Architecture, side: int) -> None:
        super().__init__()
        stages = max(1, int(round(math.log2(side / arch.bottleneck_grid))))
        self.variant = arch.variant
        self.grid = side >> stages
        filters = _filters(arch, stages)

        encoder: list[nn.Module] = []
        channels = 1
        for f in filters:
            encoder += [nn.Conv2d(channels, f, 5, stride=2, padding=2), _activation()]
            channels = f
        self.encoder = nn.Sequential(*encoder)

        self.latent_dim = arch.latent_dim
        if arch.variant in ("dense", "vae"):
            flat = self.grid * self.grid * arch.dense_channels
            self.squeeze = nn.Conv2d(channels, arch.dense_channels, 1)
            self.to_latent = nn.Linear(flat, arch.latent_dim)
            self.to_logvar = nn.Linear(flat, arch.latent_dim) if arch.variant == "vae" else None
            self.from_latent = nn.Linear(arch.latent_dim, flat)
            self.unsqueeze = nn.Sequential(nn.Conv2d(arch.dense_channels, channels, 1), _activation())
            self.dense_channels = arch.dense_channels

        decoder: list[nn.Module] = []
        for f in reversed([filters[0]] + filters[:-1]):
            decoder += [nn.ConvTranspose2d(channels, f, 5, stride=2, padding=2, output_padding=1), _activation()]
            channels = f
        decoder.append(nn.Conv2d(channels, 1, 1))
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction of ``x`` and the KL divergence per sample (zeros unless a VAE)."""
        h = self.encoder(x)
        kl = x.new_zeros(x.shape[0])
        if self.variant != "spatial":
            flat = self.squeeze(h).flatten(1)
            z = self.to_latent(flat)
            if self.to_logvar is not None:
                logvar = self.to_logvar(flat).clamp(-10.0, 10.0)
                kl = 0.5 * (z.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
                if self.training:  # reparameterisation; detection uses the mean
                    z = z + torch.randn_like(z) * torch.exp(0.5 * logvar)
            h = self.from_latent(z).view(-1, self.dense_channels, self.grid, self.grid)
            h = self.unsqueeze(h)
        return self.decoder(h), kl


class ScaleSpaceAutoencoder(nn.Module):
    """One :class:`LevelAutoencoder` per pyramid level (``nets[k]`` is ``M_k``)."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.nets = nn.ModuleList(LevelAutoencoder(arch, arch.level_size(k)) for k in range(arch.levels))

    @property
    def coarsest(self) -> int:
        return self.arch.levels - 1

    def level_input(self, level: int, pyramid: Pyramid) -> torch.Tensor:
        """What ``M_k`` sees: the low-pass image at the coarsest level, the band elsewhere."""
        return pyramid.lowpass[level] if level == self.coarsest else pyramid.bands[level]

    def level_prediction(
        self, level: int, pyramid: Pyramid, coarser: torch.Tensor | None, net: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``Î_k = u(Î_{k+1}) + M_k(H_k)`` (or ``M_K(I_K)``) and the level's KL term.

        ``net`` lets the trainer pass a DistributedDataParallel wrapper of ``nets[level]``.
        """
        out, kl = (net or self.nets[level])(self.level_input(level, pyramid))
        if level < self.coarsest:
            if coarser is None:
                raise ValueError("a band level needs the coarser level's reconstruction")
            out = upsample(coarser) + out
        return out, kl

    def reconstruct(self, pyramid: Pyramid, finest: int = 0) -> list[torch.Tensor | None]:
        """Reconstructions ``Î_k`` for ``k = K .. finest`` (``None`` for finer levels)."""
        recon: list[torch.Tensor | None] = [None] * self.arch.levels
        coarser = None
        for level in range(self.coarsest, finest - 1, -1):
            coarser, _ = self.level_prediction(level, pyramid, coarser)
            recon[level] = coarser
        return recon


def aggregated_levels(levels: int) -> list[int]:
    """Levels summed into the aggregated map: all but the coarsest (the paper aggregates
    256/128/64 px of a 4-level, 256 px model), or the only level of a plain autoencoder."""
    return list(range(max(levels - 1, 1)))


def build_model(arch: Architecture) -> ScaleSpaceAutoencoder:
    return ScaleSpaceAutoencoder(arch)


def count_parameters(arch: Architecture) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return sum(p.numel() for p in build_model(arch).parameters())


def matched_plain_architecture(ssae: Architecture, size: int) -> Architecture:
    """A plain autoencoder at ``size`` px whose parameter count is closest to ``ssae``'s.

    The paper compares models that "share the same model complexity"; we widen or narrow the
    plain network's filters (keeping the 2x-per-stage pattern) until the counts match best.
    """
    target = count_parameters(ssae)
    best: tuple[float, Architecture] | None = None
    for base in range(8, 129, 4):
        for cap in (base * 2, base * 4, base * 8):
            candidate = replace(ssae, size=size, levels=1, base_filters=base, max_filters=cap)
            gap = abs(math.log(count_parameters(candidate) / target))
            if best is None or gap < best[0]:
                best = (gap, candidate)
    assert best is not None
    return best[1]
