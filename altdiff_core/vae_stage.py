"""VAE stages: IMAGE → raw latent (posterior mode) and raw latent → IMAGE, as ComfyUI's VAEEncode/VAEDecode."""

from __future__ import annotations

import torch

from .checks import check_batch, check_finite
from .components import VAE
from .convert import crop_to_multiple, image_to_pixels, pixels_to_image
from .errors import InvalidInputError


def encode_image(vae: VAE, image: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` 0..1 → raw latent ``[B,4,H//8,W//8]`` float32 on the CPU.

    H and W are centre-cropped to multiples of 8 first (ComfyUI's VAEEncode does the same); the latent is the
    posterior's mode, unscaled.
    """
    if image.ndim != 4 or image.shape[-1] < 3:
        raise InvalidInputError(
            f"image of shape {tuple(image.shape)} is not an IMAGE [batch, height, width, 3]; connect a LoadImage "
            "or another node that outputs IMAGE."
        )
    check_batch(image, "image")
    check_finite(image, "image", "the node that produced it failed; fix or replace that node's output.")
    image = crop_to_multiple(image, vae.downscale)
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise InvalidInputError(
            f"image of {tuple(image.shape[1:3])} pixels is smaller than one {vae.downscale}×{vae.downscale} latent cell; "
            f"use an image at least {vae.downscale} pixels on each side."
        )
    pixels = image_to_pixels(image.float()).to(vae.device, vae.dtype)
    with torch.inference_mode():
        latent = vae.module.encode(pixels).latent_dist.mode()
    return latent.float().cpu()


def decode_latent(vae: VAE, latent: torch.Tensor) -> torch.Tensor:
    """Raw latent ``[B,4,h,w]`` → IMAGE ``[B,8h,8w,3]`` float32 0..1 on the CPU."""
    if latent.ndim != 4 or latent.shape[1] != vae.latent_channels:
        raise InvalidInputError(
            f"latent of shape {tuple(latent.shape)} does not fit this VAE, which decodes [batch, {vae.latent_channels}, "
            "height/8, width/8]; connect a LATENT from an SD1/SD2-family sampler or encoder."
        )
    check_batch(latent, "latent")
    check_finite(latent, "latent", "it came from a sampler or node that diverged; lower cfg, or re-encode the image.")
    with torch.inference_mode():
        pixels = vae.module.decode(latent.to(vae.device, vae.dtype)).sample
    check_finite(
        pixels,
        f"the VAE's {str(vae.dtype).removeprefix('torch.')} output",
        "the VAE overflowed (SD VAEs do in fp16 at high resolution); load it with vae_dtype fp32 or bf16.",
    )
    return pixels_to_image(pixels)
