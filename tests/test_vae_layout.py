"""The VAE runs channels-last on the CPU (faster with oneDNN, see ``vae_stage.CPU_MEMORY_FORMAT``) and nowhere else,
with the same values and the usual layouts at the edges."""

from __future__ import annotations

import dataclasses

import pytest
import torch


def _spy(monkeypatch, module, name: str) -> list[bool]:
    """Records, per call of ``module.<name>``, whether its input arrived channels-last."""
    seen = []
    original = getattr(module, name)

    def spy(x, *args, **kwargs):
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.fixture
def latent():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))


def test_decode_runs_channels_last_with_the_same_values(core, m9, monkeypatch, latent):
    with torch.inference_mode():
        plain = core.socket_layouts.pixels_to_image(m9.vae.module.decode(latent).sample)
    seen = _spy(monkeypatch, m9.vae.module, "decode")
    image = core.decode_latent(m9.vae, latent)
    assert seen == [True]
    assert image.shape == (2, 64, 64, 3) and image.is_contiguous()
    torch.testing.assert_close(image, plain, rtol=0, atol=1e-5)


def test_encode_runs_channels_last_and_returns_a_contiguous_latent(core, m9, monkeypatch):
    image = torch.rand(1, 64, 48, 3, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        pixels = core.socket_layouts.image_to_pixels(image)
        plain = m9.vae.module.encode(pixels).latent_dist.mode()
    seen = _spy(monkeypatch, m9.vae.module, "encode")
    latent = core.encode_image(m9.vae, image)
    assert seen == [True]
    assert latent.shape == (1, 4, 8, 6) and latent.is_contiguous()
    torch.testing.assert_close(latent, plain, rtol=0, atol=1e-5)


def test_other_devices_get_the_input_as_it_is(core, m9, latent):
    """On CUDA channels-last made the VAE slower (1.24× on an H200); the rule is "CPU only" (meta stands in here)."""
    on_meta = core.vae_stage._vae_input(dataclasses.replace(m9.vae, device=torch.device("meta")), latent)
    assert on_meta.device.type == "meta" and on_meta.is_contiguous()
    assert not on_meta.is_contiguous(memory_format=torch.channels_last)
    on_cpu = core.vae_stage._vae_input(m9.vae, latent)
    assert on_cpu.is_contiguous(memory_format=torch.channels_last)
