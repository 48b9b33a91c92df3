"""Laplacian pyramid of a batch of 2D slices (paper, section 2).

``I_0 = x``, ``I_k = d(g_sigma(I_{k-1}))`` and ``H_k = I_k - u(I_{k+1})``, so that
``I_k = u(I_{k+1}) + H_k`` recovers the input exactly from ``I_K`` and ``H_0 .. H_{K-1}``.

Kernel: the paper asks for a 5-tap isotropic Gaussian whose sigma puts more than 99 % of the
Gaussian mass inside the taps, without giving sigma. Five unit-width taps cover the interval
[-2.5, 2.5] pixels, and the mass of N(0, sigma^2) inside it is ``erf(2.5 / (sigma * sqrt 2))``.
That mass exceeds 0.99 exactly when ``2.5 / sigma > z_0.995 = 2.5758``, i.e. ``sigma < 0.9706``.
We take the widest kernel that satisfies the bound at two decimals, ``sigma = 0.97``
(mass 99.04 %): the widest kernel gives the strongest anti-aliasing before the factor-2
decimation. The sampled taps are normalised to sum to 1 so that flat images stay flat.

All operations are batched convolutions on the tensor's own device; nothing loops over pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KERNEL_TAPS = 5


SIGMA = 0.97


def gaussian_mass_inside_taps(sigma: float, taps: int = KERNEL_TAPS) -> float:
    """Fraction of the continuous Gaussian's mass that falls inside ``taps`` unit-width taps."""
    return math.erf((taps / 2.0) / (sigma * math.sqrt(2.0)))


def gaussian_kernel_1d(sigma: float = SIGMA, taps: int = KERNEL_TAPS) -> torch.Tensor:
    """Sampled, normalised 1D Gaussian of odd length ``taps``."""
    offsets = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).to(torch.float32)


def _kernel_2d(like: torch.Tensor) -> torch.Tensor:
    k1 = gaussian_kernel_1d().to(device=like.device, dtype=like.dtype)
    return torch.outer(k1, k1)[None, None]


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a batch of single-channel slices [B, 1, H, W], got {tuple(x.shape)}")


def blur(x: torch.Tensor) -> torch.Tensor:
    """Gaussian smoothing ``g_sigma`` with reflect padding (no dark rim at the image border)."""
    _check_batch(x)
    pad = KERNEL_TAPS // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), _kernel_2d(x))


def downsample(x: torch.Tensor) -> torch.Tensor:
    """``d(g_sigma(x))``: blur, then keep every second pixel (one strided convolution)."""
    _check_batch(x)
    if x.shape[-1] % 2 or x.shape[-2] % 2 or min(x.shape[-2:]) < KERNEL_TAPS:
        raise ValueError(f"slices of size {tuple(x.shape[-2:])} cannot be halved once more")
    pad = KERNEL_TAPS // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), _kernel_2d(x), stride=2)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """``u(x)``: bilinear upsampling by two, on the sampling grid that :func:`downsample` uses.

    The strided convolution keeps fine pixel ``2i`` as coarse pixel ``i``, so ``u`` puts coarse
    pixel ``i`` back at ``2i`` and interpolates linearly in between (zero insertion followed by
    the separable kernel [1/2, 1, 1/2]; the last odd row/column repeats the edge). Upsampling
    with pixel centres at ``2i + 1/2`` instead (``F.interpolate``) would shift every level by
    half a pixel and leave a spurious gradient in every band.
    """
    padded = F.pad(x, (0, 1, 0, 1), mode="replicate")
    k1 = torch.tensor([0.5, 1.0, 0.5], device=x.device, dtype=x.dtype)
    kernel = torch.outer(k1, k1)[None, None]
    channels = x.shape[1]
    out = F.conv_transpose2d(padded, kernel.expand(channels, 1, 3, 3), stride=2, padding=1, groups=channels)
    return out[..., : 2 * x.shape[-2], : 2 * x.shape[-1]]


@dataclass
class Pyramid:
    """Low-pass images ``I_0..I_K`` (``lowpass[k]``) and bands ``H_0..H_{K-1}`` (``bands[k]``)."""

    lowpass: list[torch.Tensor]
    bands: list[torch.Tensor]

    @property
    def levels(self) -> int:
        """Number of pyramid levels, ``K + 1``."""
        return len(self.lowpass)


def decompose(x: torch.Tensor, levels: int) -> Pyramid:
    """Laplacian pyramid with ``levels`` levels (``K = levels - 1`` halvings)."""
    _check_batch(x)
    if levels < 1:
        raise ValueError("a pyramid needs at least one level")
    lowpass = [x]
    for _ in range(levels - 1):
        lowpass.append(downsample(lowpass[-1]))
    bands = [lowpass[k] - upsample(lowpass[k + 1]) for k in range(levels - 1)]
    return Pyramid(lowpass=lowpass, bands=bands)


def reconstruct(coarsest: torch.Tensor, bands: list[torch.Tensor]) -> torch.Tensor:
    """Invert :func:`decompose`: ``I_k = u(I_{k+1}) + H_k`` from ``I_K`` down to ``I_0``."""
    image = coarsest
    for band in reversed(bands):
        image = upsample(image) + band
    return image


def expand_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Repeated ``u`` until ``x`` has ``size`` pixels per side (a level's map at full resolution)."""
    while x.shape[-1] < size:
        x = upsample(x)
    if x.shape[-1] != size:
        raise ValueError(f"cannot expand a {x.shape[-1]}-pixel map to {size} pixels by doubling")
    return x
