"""Images and latents between the layouts of ComfyUI's sockets and the engine's: the only place where the two meet.

| where                 | images                              | latents                                    |
|-----------------------|-------------------------------------|--------------------------------------------|
| ComfyUI sockets       | IMAGE ``[B,H,W,C]`` float32 0..1 CPU | LATENT ``samples`` ``[B,4,H/8,W/8]`` float32 CPU, raw |
| engine (VAE, sampler) | ``[B,C,H,W]`` in [-1, 1]            | model space = raw × ``scaling_factor`` (0.18215 for SD VAEs) |

These are the tensors' layouts and scales; the sockets' containers (a LATENT dict, a CONDITIONING list of
``[context, options]`` pairs) are unpacked by the nodes, which hand the engine plain tensors.
"""

from __future__ import annotations

import torch


def image_to_pixels(image: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` 0..1 (C ≥ 3; extra channels such as alpha dropped) → ``[B,3,H,W]`` in [-1, 1]."""
    return image[..., :3].movedim(-1, 1) * 2.0 - 1.0


def pixels_to_image(pixels: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` in about [-1, 1] → IMAGE ``[B,H,W,3]`` float32 clamped to 0..1 on the CPU."""
    return ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).cpu()


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop IMAGE ``[B,H,W,C]`` so H and W are multiples of ``multiple``.

    Same arithmetic as ComfyUI's ``VAE.vae_encode_crop_pixels``: keep ``(d // m) * m`` pixels starting at
    ``(d % m) // 2``.
    """
    for axis in (1, 2):
        size = image.shape[axis]
        kept = (size // multiple) * multiple
        if kept != size:
            image = image.narrow(axis, (size % multiple) // 2, kept)
    return image


def latent_to_model(latent: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Raw VAE latent → model space. An all-zero latent (an empty txt2img latent) stays zero, as in ComfyUI."""
    return latent * scaling_factor


def model_to_latent(x: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Model-space latent → raw VAE latent (what a LATENT socket carries)."""
    return x / scaling_factor
