"""The pack's nodes on ComfyUI's own MODEL, CLIP and VAE: each runs the stock node that does the same job.

Inside ComfyUI the AltDiffusion Loader hands out ComfyUI's objects (``native``), so the pack's Text Encode, Set Last
Layer, Sampler and VAE nodes are the stock ``CLIPTextEncode``, ``CLIPSetLastLayer``, ``KSampler``/``KSamplerAdvanced``,
``VAEEncode`` and ``VAEDecode`` under the pack's names and sockets: one implementation, the results bit for bit
the stock nodes'. ``pndm`` (the AltDiffusion pipelines' own sampler, which ComfyUI lacks) runs the engine's PLMS as a
ComfyUI ``KSAMPLER`` on ComfyUI's sigmas, so ComfyUI's guidance, previews and cancel apply to it as well.

Imported only inside ComfyUI; ``import nodes`` here is ComfyUI's own top-level module.
"""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

import nodes as comfy_nodes  # ComfyUI's nodes.py (this package's own folder is only ever imported relatively)

from ...altdiff_core import sample_pndm


def encode_text(clip, text: str) -> tuple[list]:
    return comfy_nodes.CLIPTextEncode().encode(clip, text)


def set_last_layer(clip, layer: int) -> tuple:
    return comfy_nodes.CLIPSetLastLayer().set_last_layer(clip, layer)


def vae_encode(vae, pixels: torch.Tensor) -> tuple[dict]:
    return comfy_nodes.VAEEncode().encode(vae, pixels)


def vae_decode(vae, latent: dict) -> tuple[torch.Tensor]:
    return comfy_nodes.VAEDecode().decode(vae, latent)


def _pndm(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """The engine's PLMS with k-diffusion's signature (what ``comfy.samplers.KSAMPLER`` calls)."""
    extra_args = extra_args or {}

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model(x, sigma, **extra_args)

    def report(i: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})

    return sample_pndm(denoise, x, sigmas, seed=extra_args.get("seed"), schedule=None, callback=report)


OWN_SAMPLERS = {"pndm": _pndm}
"""Samplers the pack offers that ComfyUI's KSampler has not, as k-diffusion functions."""


def ksample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0,
            disable_noise=False, start_step=None, last_step=None, force_full_denoise=False) -> tuple[dict]:  # fmt: skip
    """``nodes.common_ksampler`` (what KSampler and KSamplerAdvanced run), also for the pack's own samplers."""
    if sampler_name not in OWN_SAMPLERS:
        return comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                           denoise=denoise, disable_noise=disable_noise, start_step=start_step,
                                           last_step=last_step, force_full_denoise=force_full_denoise)  # fmt: skip
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if disable_noise:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    else:
        noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    # KSampler's sigmas for these steps, scheduler and denoise, cut as KSampler.sample cuts them
    sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler="euler", scheduler=scheduler,
                                     denoise=denoise, model_options=model.model_options).sigmas  # fmt: skip
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    out = dict(latent)
    if start_step is not None and start_step >= len(sigmas) - 1:
        out["samples"] = latent_image
        return (out,)
    sigmas = sigmas[start_step or 0 :]
    out["samples"] = comfy.sample.sample_custom(
        model, noise, cfg, comfy.samplers.KSAMPLER(OWN_SAMPLERS[sampler_name]), sigmas, positive, negative, latent_image,
        noise_mask=latent.get("noise_mask"), callback=latent_preview.prepare_callback(model, steps),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
    )  # fmt: skip
    return (out,)
