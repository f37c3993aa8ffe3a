"""Sampler nodes: KSampler's and KSamplerAdvanced's inputs and numbers, running the AltDiffusion UNet."""

from __future__ import annotations

from ..altdiff_core import SAMPLERS, SCHEDULERS, DiffusionModel, check_context_width, sample_latent
from . import comfy_seam, sockets
from .sampler_inputs import SOCKET_HINTS, latent_arguments, to_cond_entries

SEED_OPTIONS = {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}


def _common_inputs() -> dict:
    """The inputs both nodes share (tooltips included); each node picks them in its ComfyUI twin's order."""
    return {
        "model": (sockets.MODEL, {"tooltip": "The UNet from the AltDiffusion Loader."}),
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
    }


def _run(model, latent_image: dict, steps: int, *, positive, negative, **kwargs) -> tuple[dict]:
    """One engine call with progress/cancel/previews; the LATENT dict's other keys are kept. Inside ComfyUI the model
    is ComfyUI's own and ComfyUI's sampler runs it (``native_ops.ksample``, what KSampler runs)."""
    if not isinstance(model, DiffusionModel):
        variant = comfy_seam.native.model_variant(model)
        for role, conditioning in (("positive", positive), ("negative", negative)):
            for context, *_ in conditioning if variant is not None else ():
                check_context_width(context.shape[-1], variant, role)  # a clear message where KSampler's would be torch's
        return comfy_seam.native_ops.ksample(
            model, kwargs["seed"], steps, kwargs["cfg"], kwargs["sampler_name"], kwargs["scheduler"], positive,
            negative, latent_image, denoise=kwargs.get("denoise", 1.0),
            disable_noise=not kwargs.get("add_noise", True), start_step=kwargs.get("start_at_step"),
            last_step=kwargs.get("end_at_step"), force_full_denoise=kwargs.get("force_full_denoise", False),
        )  # fmt: skip
    with sockets.socket_hints(SOCKET_HINTS):
        out = sample_latent(
            model,
            to_cond_entries(positive, "positive"),
            to_cond_entries(negative, "negative"),
            steps=steps,
            callback=comfy_seam.step_callback(steps, model.device),
            **latent_arguments(latent_image),
            **kwargs,
        )
    result = dict(latent_image)
    result["samples"] = out
    return (result,)


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
        common = _common_inputs()
        common["seed"] = (
            "INT",
            {
                **SEED_OPTIONS,
                "tooltip": "Noise seed; the noise is drawn on the CPU as KSampler draws it, "
                "so a seed gives the same noise on any device.",
            },
        )
        order = ("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image")
        inputs = {name: common[name] for name in order}
        inputs["denoise"] = (
            "FLOAT",
            {
                "default": 1.0,
                "min": 0.0,
                "max": 1.0,
                "step": 0.01,
                "tooltip": "1 = txt2img; lower keeps more of the input latent.",
            },
        )
        return {"required": inputs}

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        return _run(
            model,
            latent_image,
            steps,
            positive=positive,
            negative=negative,
            seed=seed,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
        )


class AltDiffusionSamplerAdvanced:
    DESCRIPTION = (
        "KSamplerAdvanced for the AltDiffusion UNet: runs only the steps from start_at_step to end_at_step of the "
        "schedule, with or without adding noise, and can return the latent with its leftover noise. A latent can go "
        "back and forth between this node and ComfyUI's KSamplerAdvanced mid-schedule (e.g. a refiner pass)."
    )
    CATEGORY = sockets.CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = (
        "The latent after end_at_step (raw, unscaled): denoised, or still noisy with return_with_leftover_noise, "
        "for another advanced sampler to continue.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        common = _common_inputs()
        return {
            "required": {
                "model": common["model"],
                "add_noise": (
                    ["enable", "disable"],
                    {
                        "tooltip": "enable: noise the latent from noise_seed first; disable: continue a latent that "
                        "still carries noise (from a run with return_with_leftover_noise)."
                    },
                ),
                "noise_seed": (
                    "INT",
                    {**SEED_OPTIONS, "tooltip": "Noise seed, drawn on the CPU as KSamplerAdvanced draws it."},
                ),
                "steps": common["steps"],
                "cfg": common["cfg"],
                "sampler_name": common["sampler_name"],
                "scheduler": common["scheduler"],
                "positive": common["positive"],
                "negative": common["negative"],
                "latent_image": common["latent_image"],
                "start_at_step": (
                    "INT",
                    {"default": 0, "min": 0, "max": 10000, "tooltip": "First step of the schedule to run (0 = the start)."},
                ),
                "end_at_step": (
                    "INT",
                    {
                        "default": 10000,
                        "min": 0,
                        "max": 10000,
                        "tooltip": "Stop before this step (10000 = run to the end of the schedule).",
                    },
                ),
                "return_with_leftover_noise": (
                    ["disable", "enable"],
                    {
                        "tooltip": "disable: when stopping early, denoise fully on the last step; enable: return the "
                        "latent still noisy, for another sampler to continue with add_noise disabled."
                    },
                ),
            }
        }

    def sample(
        self,
        model,
        add_noise,
        noise_seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        positive,
        negative,
        latent_image,
        start_at_step,
        end_at_step,
        return_with_leftover_noise,
    ):
        return _run(
            model,
            latent_image,
            steps,
            positive=positive,
            negative=negative,
            seed=noise_seed,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            add_noise=add_noise == "enable",
            start_at_step=start_at_step,
            end_at_step=end_at_step,
            force_full_denoise=return_with_leftover_noise == "disable",
        )
