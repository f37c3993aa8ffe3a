"""Sampler node: KSampler's inputs and numbers, running the AltDiffusion UNet."""

from __future__ import annotations

from ..altdiff_core import SAMPLERS, SCHEDULERS, sample_latent
from . import comfy_seam, sockets


class AltDiffusionSampler:
    DESCRIPTION = (
        "Denoises a LATENT with the AltDiffusion UNet. Same inputs and the same arithmetic as ComfyUI's KSampler "
        "(seeded CPU noise, sampler and scheduler names, denoise < 1 for img2img, noise masks for inpainting)."
    )
    CATEGORY = sockets.CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent (raw, unscaled), for AltDiffusion VAE Decode or ComfyUI's VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (sockets.MODEL, {"tooltip": "The UNet from the AltDiffusion Loader."}),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "control_after_generate": True,
                        "tooltip": "Noise seed; the noise is drawn on the CPU as KSampler draws it, "
                        "so a seed gives the same noise on any device.",
                    },
                ),
                "steps": ("INT", {"default": 25, "min": 1, "max": 10000, "tooltip": "Denoising steps."}),
                "cfg": (
                    "FLOAT",
                    {
                        "default": 7.5,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.1,
                        "round": 0.01,
                        "tooltip": "Classifier-free guidance scale; 1 skips the negative prompt (and half the work).",
                    },
                ),
                "sampler_name": (
                    list(SAMPLERS),
                    {"default": "dpmpp_2m", "tooltip": "Sampling algorithm (KSampler's names; pndm is the model's own)."},
                ),
                "scheduler": (
                    list(SCHEDULERS),
                    {"default": "karras", "tooltip": "How the noise levels are spaced (KSampler's names)."},
                ),
                "positive": ("CONDITIONING", {"tooltip": "What the image should show (AltDiffusion Text Encode)."}),
                "negative": ("CONDITIONING", {"tooltip": "What the image should not show."}),
                "latent_image": ("LATENT", {"tooltip": "Empty latent for txt2img, or an encoded image for img2img."}),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "1 = txt2img; lower keeps more of the input latent.",
                    },
                ),
            }
        }

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        samples = latent_image["samples"]
        callback = comfy_seam.step_callback(steps, model.device)
        out = sample_latent(
            model,
            positive,
            negative,
            samples,
            seed=seed,
            steps=steps,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
            noise_mask=latent_image.get("noise_mask"),
            batch_index=latent_image.get("batch_index"),
            callback=callback,
        )
        result = dict(latent_image)
        result["samples"] = out
        return (result,)
