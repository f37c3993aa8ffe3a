"""The reference: diffusers' AltDiffusion components run the way ``AltDiffusionPipeline`` runs them.

``reference_txt2img`` is the pipeline's denoising loop (CFG on ε with ``torch.cat([uncond, cond])``, the scheduler's
``scale_model_input`` and ``step``) with a diffusers scheduler that is handed the engine's σ/timestep schedule, so the
two can be compared number for number on the same weights and noise.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


def reference_encode(ref, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``RobertaSeriesModelWithTransformation(...).projection_state`` for ``[k, 77]`` windows → ``[1, 77·k, dim]``."""
    with torch.no_grad():
        out = ref.text_encoder(input_ids=input_ids, attention_mask=attention_mask).projection_state
    return out.reshape(1, -1, out.shape[-1])


def _with_schedule(scheduler, sigmas: torch.Tensor, timesteps: torch.Tensor):
    """Hand a k-diffusion-style scheduler our σ list (descending, ending in 0) and integer-valued timesteps."""
    scheduler.set_timesteps(len(timesteps))
    scheduler.sigmas = sigmas.clone().float()
    scheduler.timesteps = timesteps.clone().float()
    scheduler.num_inference_steps = len(timesteps)
    scheduler._step_index = None
    scheduler._begin_index = None
    return scheduler


def euler_scheduler(sigmas, timesteps):
    return _with_schedule(EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="linspace"), sigmas, timesteps)


def euler_ancestral_scheduler(sigmas, timesteps):
    return _with_schedule(EulerAncestralDiscreteScheduler(**SD_BETAS, timestep_spacing="linspace"), sigmas, timesteps)


def dpmpp_2m_scheduler(sigmas, timesteps):
    # k-diffusion's DPM++ 2M: second order on every step but the last (σ=0), which is x0 itself.
    s = DPMSolverMultistepScheduler(
        **SD_BETAS,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=False,
        final_sigmas_type="zero",
    )
    return _with_schedule(s, sigmas, timesteps)


REFERENCE_SCHEDULERS = {
    "euler": euler_scheduler,
    "euler_ancestral": euler_ancestral_scheduler,
    "dpmpp_2m": dpmpp_2m_scheduler,
}
"""Sampler name → a diffusers scheduler given the engine's schedule (σ space: x_VE = x_VP·√(1+σ²))."""

VP_SCHEDULERS = {"dpmpp_2m"}
"""References whose latents live in VP space (``init_noise_sigma`` 1, identity ``scale_model_input``)."""


def timestep_schedulers(config: dict, steps: int):
    """DDIM and PNDM built from the model folder's own scheduler config, with their own integer timesteps."""
    ddim = DDIMScheduler.from_config(config)
    ddim.set_timesteps(steps)
    pndm = PNDMScheduler.from_config(config)
    pndm.set_timesteps(steps)
    return {"ddim": ddim, "pndm": pndm}


def sigma_of_alpha(alpha_cumprod: torch.Tensor) -> torch.Tensor:
    return ((1 - alpha_cumprod) / alpha_cumprod).sqrt()


def ddim_sigmas(ddim: DDIMScheduler) -> torch.Tensor:
    """DDIM's timesteps as a σ list; the last σ is its ``final_alpha_cumprod`` (not 0 when set_alpha_to_one is false)."""
    acp = ddim.alphas_cumprod
    sig = [float(sigma_of_alpha(acp[int(t)])) for t in ddim.timesteps]
    return torch.tensor(sig + [float(sigma_of_alpha(torch.as_tensor(ddim.final_alpha_cumprod)))], dtype=torch.float32)


@contextlib.contextmanager
def float32_noise():
    """Make the ancestral scheduler draw its noise in float32 (then cast), so a float64 run sees the same noise."""
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as module

    original = module.randn_tensor

    def draw(shape, generator=None, device=None, dtype=None, **kwargs):
        return original(shape, generator=generator, device=device, dtype=torch.float32, **kwargs).to(dtype)

    with mock.patch.object(module, "randn_tensor", draw):
        yield


def reference_denoise(ref, scheduler, noise, cond, uncond, cfg, *, vp: bool, generator=None, start_sample=None,
                      split_batch: bool = False):  # fmt: skip
    """AltDiffusionPipeline's loop. Returns the final *model-space* latent in VE scale (÷ nothing, × nothing).

    ``split_batch``: the unconditional and conditional halves of the CFG batch in two UNet calls (the same math in
    another summation order, for the parity tests' rounding yardstick)."""
    timesteps = scheduler.timesteps
    sigma0 = float(scheduler.sigmas[0]) if hasattr(scheduler, "sigmas") else None
    if start_sample is not None:
        latents = start_sample
    elif vp:
        latents = noise * 1.0
    else:
        latents = noise * (sigma0**2 + 1) ** 0.5
    embeds = torch.cat([uncond, cond])
    with torch.no_grad():
        for t in timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            if split_batch:
                halves = zip(model_in.chunk(2), embeds.chunk(2), strict=True)
                eps = torch.cat([ref.unet(x, t, encoder_hidden_states=e).sample for x, e in halves])
            else:
                eps = ref.unet(model_in, t, encoder_hidden_states=embeds).sample
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + cfg * (eps_c - eps_u)
            kwargs = {"generator": generator} if generator is not None else {}
            latents = scheduler.step(eps, t, latents, **kwargs).prev_sample
    return latents


def decode(ref, latent_raw: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        pixels = ref.vae.decode(latent_raw).sample
    return ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
