"""The Laplacian pyramid: kernel derivation, exact reconstruction, shapes."""

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ssae.preprocessing.pyramid import (
    KERNEL_TAPS,
    SIGMA,
    decompose,
    downsample,
    expand_to,
    gaussian_kernel_1d,
    gaussian_mass_inside_taps,
    reconstruct,
    upsample,
)


def test_sigma_keeps_more_than_99_percent_of_the_mass_inside_five_taps():
    assert KERNEL_TAPS == 5
    assert gaussian_mass_inside_taps(SIGMA) > 0.99
    # ... and it is the widest such kernel at two decimals (widest = best anti-aliasing).
    assert gaussian_mass_inside_taps(SIGMA + 0.01) <= 0.99
    kernel = gaussian_kernel_1d()
    assert kernel.shape == (5,)
    assert math.isclose(float(kernel.sum()), 1.0, rel_tol=1e-6)
    assert torch.allclose(kernel, kernel.flip(0))


def test_reconstruction_is_exact_on_a_real_slice(mslub_dir):
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(mslub_dir / "patient19" / "flair.nii.gz")))
    slices = np.zeros((3, 1, 256, 256), np.float32)
    for i, z in enumerate((50, 70, 90)):
        crop = volume[z] / volume.max()
        slices[i, 0, : crop.shape[0], : crop.shape[1]] = crop[:256, :256]
    x = torch.from_numpy(slices)
    pyramid = decompose(x, 4)
    assert [t.shape[-1] for t in pyramid.lowpass] == [256, 128, 64, 32]
    assert [t.shape[-1] for t in pyramid.bands] == [256, 128, 64]
    restored = reconstruct(pyramid.lowpass[-1], pyramid.bands)
    assert float((restored - x).abs().max()) < 1e-5  # float32 round-off only
    # Every intermediate level is recovered too: I_k = u(I_{k+1}) + H_k.
    for k in range(3):
        assert torch.allclose(upsample(pyramid.lowpass[k + 1]) + pyramid.bands[k], pyramid.lowpass[k], atol=1e-6)


def test_downsampling_keeps_flat_images_flat_and_halves_the_size():
    x = torch.full((2, 1, 32, 32), 0.7)
    y = downsample(x)
    assert y.shape == (2, 1, 16, 16)
    assert torch.allclose(y, torch.full_like(y, 0.7), atol=1e-6)  # reflect padding: no dark border


def test_bands_of_a_smooth_image_are_small_and_of_an_edge_are_not():
    ramp = torch.linspace(0, 1, 64).repeat(64, 1)[None, None]
    edge = (torch.arange(64) >= 32).float().repeat(64, 1)[None, None]
    assert float(decompose(ramp, 3).bands[0][..., 4:-4, 4:-4].abs().max()) < 1e-3
    assert float(decompose(edge, 3).bands[0].abs().max()) > 0.1


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        downsample(torch.zeros(1, 1, 31, 32))
    with pytest.raises(ValueError):
        decompose(torch.zeros(1, 32, 32), 2)
    with pytest.raises(ValueError):
        expand_to(torch.zeros(1, 1, 24, 24), 64)
