"""Autoencoder shapes, variants and comparable model complexity."""

import pytest
import torch

from ssae.io.errors import SSAEError
from ssae.models.networks import build_model, count_parameters, matched_plain_architecture
from ssae.models.settings import Architecture
from ssae.preprocessing.pyramid import decompose


@pytest.mark.parametrize("variant", ["dense", "spatial", "vae"])
def test_every_level_reconstructs_its_own_input_shape(variant):
    arch = Architecture(variant, size=64, levels=3, base_filters=8, max_filters=32, latent_dim=16)
    model = build_model(arch).eval()
    pyramid = decompose(torch.rand(2, 1, 64, 64), arch.levels)
    recon = model.reconstruct(pyramid)
    assert [r.shape[-1] for r in recon] == [64, 32, 16]
    for level, net in enumerate(model.nets):
        out, kl = net(model.level_input(level, pyramid))
        assert out.shape == model.level_input(level, pyramid).shape
        assert kl.shape == (2,)
        assert bool((kl >= 0).all())
        assert (variant == "vae") == bool((kl > 0).any())


def test_vae_samples_in_training_and_uses_the_mean_for_detection():
    arch = Architecture("vae", size=32, levels=1, base_filters=8, max_filters=16, latent_dim=8)
    net = build_model(arch).nets[0]
    x = torch.rand(1, 1, 32, 32)
    net.train()
    torch.manual_seed(0)
    a, _ = net(x)
    b, _ = net(x)
    assert not torch.allclose(a, b)
    net.eval()
    assert torch.equal(net(x)[0], net(x)[0])


def test_default_ssae_and_plain_autoencoder_have_comparable_complexity():
    ssae = Architecture("dense", size=256, levels=4, base_filters=16, max_filters=96)
    plain = Architecture("dense", size=256, levels=1, base_filters=32, max_filters=128)
    ratio = count_parameters(ssae) / count_parameters(plain)
    assert 0.8 < ratio < 1.25, ratio
    matched = matched_plain_architecture(ssae, 128)
    assert matched.levels == 1 and matched.size == 128
    assert 0.8 < count_parameters(matched) / count_parameters(ssae) < 1.25


def test_impossible_architectures_are_refused():
    with pytest.raises(SSAEError):
        Architecture("dense", size=64, levels=4)  # coarsest level 8 px < 2 x bottleneck grid
    with pytest.raises(SSAEError):
        Architecture("dense", size=96, levels=2)  # not a power of two
    with pytest.raises(SSAEError):
        Architecture("gmvae", size=64, levels=1)
