"""VAE stages: IMAGE → raw latent (posterior mode) and raw latent → IMAGE, as ComfyUI's VAEEncode/VAEDecode."""

from __future__ import annotations

import torch

from .checks import (
    check_batch,
    check_finite,
    check_memory,
    check_tensor,
    vae_mid_attention,
    vae_working_bytes,
)
from .compat import attention_is_fused
from .components import VAE
from .errors import InvalidInputError, about
from .socket_layouts import crop_to_multiple, image_to_pixels, pixels_to_image

IMAGE_LAYOUT = "a [batch, height, width, 3] float tensor of 0..1 RGB values"
"""What ``encode_image`` takes (channels last, as ComfyUI's IMAGE)."""

CPU_MEMORY_FORMAT = torch.channels_last
"""Layout of the VAE's input on the CPU: oneDNN then runs every convolution channels-last (0.78–0.91× the time on an
AVX512 EPYC; ``bench/reports/cpu-2core-2026-11-27-cpu_kernel_choices.md``). GPUs get the input as it is (an H200 was
1.24× slower channels-last)."""

OUTPUT_FIX = (
    "its weights contain NaN/inf, or it overflowed (SD VAEs do in fp16 at high resolution); load it with vae_dtype fp32 "
    "or bf16, or download the model's VAE again."
)


def encode_image(vae: VAE, image: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` 0..1 → raw latent ``[B,4,H//8,W//8]`` float32 on the CPU.

    H and W are centre-cropped to multiples of 8 first (ComfyUI's VAEEncode does the same); the latent is the
    posterior's mode, unscaled. An image needs at least 8×8 pixels (one latent pixel): a smaller one (say 1×1) is
    refused, where ComfyUI's VAEEncode would crop it to nothing and fail inside the VAE.

    Raises:
        StageInputError: about "image": not a ``[B,H,W,3]`` tensor, an empty batch, smaller than 8×8, or holding
            NaN/inf.
        InvalidInputError: a NaN/inf latent (the VAE's weights hold NaN/inf or it overflowed).
        TooLargeForMemoryError: the image needs more working memory than the device has; refused before encoding.
    """
    with about("image"):
        image = check_tensor(image, "image", IMAGE_LAYOUT, "give the image in that layout.")
        if image.ndim != 4 or image.shape[-1] < 3:
            raise InvalidInputError(f"image of shape {tuple(image.shape)} is not {IMAGE_LAYOUT}; give it in that layout.")
        check_batch(image, "image")
        if image.shape[1] < vae.downscale or image.shape[2] < vae.downscale:
            raise InvalidInputError(
                f"image of {image.shape[2]}×{image.shape[1]} pixels (width×height) is smaller than one "
                f"{vae.downscale}×{vae.downscale} latent cell; use an image at least {vae.downscale} pixels on each "
                "side (upscale it first)."
            )
    h, w = image.shape[1] // vae.downscale, image.shape[2] // vae.downscale
    _check_memory(vae, image.shape[0], h, w, decode=False)
    with about("image"):
        check_finite(image, "image", "whatever made it failed; recompute or replace the image.")
    image = crop_to_multiple(image, vae.downscale)
    pixels = _vae_input(vae, image_to_pixels(image.float()))
    with torch.inference_mode():
        latent = vae.module.encode(pixels).latent_dist.mode()
    check_finite(latent, f"the VAE's {str(vae.dtype).removeprefix('torch.')} latent", OUTPUT_FIX)
    return latent.float().cpu().contiguous()  # a LATENT in the usual layout, whatever the VAE ran in


def decode_latent(vae: VAE, latent: torch.Tensor) -> torch.Tensor:
    """Raw latent ``[B,4,h,w]`` → IMAGE ``[B,8h,8w,3]`` float32 0..1 on the CPU.

    Raises:
        StageInputError: about "latent": not a latent this VAE decodes, an empty batch, a 0 height/width, NaN/inf
            values.
        InvalidInputError: a NaN/inf output (the VAE's weights hold NaN/inf or it overflowed).
        TooLargeForMemoryError: the image needs more working memory than the device has (or, decoded on a GPU, than
            the CPU has for the IMAGE); refused before decoding.
    """
    with about("latent"):
        latent = check_tensor(latent, "latent", "a [batch, 4, height/8, width/8] tensor", "give a raw (unscaled) VAE latent.")
        if latent.ndim != 4 or latent.shape[1] != vae.latent_channels:
            raise InvalidInputError(
                f"latent of shape {tuple(latent.shape)} does not fit this VAE, which decodes [batch, "
                f"{vae.latent_channels}, height/8, width/8]; give the latent of an SD1/SD2-family sampler or encoder."
            )
        check_batch(latent, "latent")
        if latent.shape[2] == 0 or latent.shape[3] == 0:
            raise InvalidInputError(
                f"latent of shape {tuple(latent.shape)} is {latent.shape[2]}×{latent.shape[3]}: it holds no pixels to "
                "decode; give it a height and width of at least 1 (an image of at least 8×8 pixels)."
            )
    _check_memory(vae, latent.shape[0], latent.shape[2], latent.shape[3], decode=True)
    with about("latent"):
        check_finite(latent, "latent", "the sampler that made it diverged; lower cfg, or re-encode the image.")
    with torch.inference_mode():
        pixels = vae.module.decode(_vae_input(vae, latent)).sample
    check_finite(pixels, f"the VAE's {str(vae.dtype).removeprefix('torch.')} output", OUTPUT_FIX)
    return pixels_to_image(pixels)


def _vae_input(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) on the VAE's device in its dtype, channels-last on the CPU (``CPU_MEMORY_FORMAT``)."""
    x = x.to(vae.device, vae.dtype)
    return x.contiguous(memory_format=CPU_MEMORY_FORMAT) if x.device.type == "cpu" else x


def _check_memory(vae: VAE, batch: int, h: int, w: int, *, decode: bool) -> None:
    """Refuse a size whose VAE pass cannot fit the device (and, for a GPU decode, whose IMAGE cannot fit the CPU)."""
    attention = vae_mid_attention(vae.module.config)
    fused = attention is None or attention_is_fused(vae.device, vae.dtype, attention.head_dim)
    need = vae_working_bytes(vae.module.config, batch, h, w, vae.dtype, decode=decode, fused_attention=fused)
    H, W = h * vae.downscale, w * vae.downscale
    dtype = str(vae.dtype).removeprefix("torch.")
    what = f"{'decoding' if decode else 'encoding'} {batch} image(s) of {W}×{H} pixels with the VAE in {dtype}"
    fix = (
        "use a smaller size or batch, or decode fewer images at once."
        if decode
        else "use a smaller image (downscale it first) or encode fewer at once."
    )
    check_memory(need, vae.device, what, fix)
    if decode and vae.device.type != "cpu":
        check_memory(batch * H * W * 3 * 4, torch.device("cpu"), f"the decoded IMAGE ({batch}×{H}×{W}×3 float32)", fix)
