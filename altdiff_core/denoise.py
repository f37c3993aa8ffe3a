"""Denoising stage: the sampling loop with classifier-free guidance, computed as ComfyUI's KSampler computes it.

Everything happens in k-diffusion's (VE) parameterisation on the float32 CPU-or-device latent ``x``:

- the UNet sees ``x / sqrt(σ² + 1)`` at timestep ``schedule.timestep(σ)`` (nearest of the 1000 training steps),
  in the model's dtype, and predicts ε; the denoised estimate is ``x − ε·σ``;
- CFG: ``uncond + (cond − uncond)·cfg`` on the denoised estimates, as ComfyUI writes it; cfg = 1 skips the
  unconditional pass (half the UNet rows);
- several conditioning entries (``CondEntry``, as ComfyUI's ``ConditioningCombine`` makes them) are averaged weighted
  by their ``strength``, and entries with ``start_percent``/``end_percent`` (``ConditioningSetTimestepRange``) only
  act inside their σ range;
- noise: ``torch.manual_seed(seed)`` + ``randn`` of the latent's shape on the CPU (per-index with ``batch_index``);
  start ``x = noise·sqrt(1 + σ₀²)`` at full denoise, else ``latent·scale + noise·σ₀``; ``add_noise=False``
  (``KSamplerAdvanced``'s ``add_noise = disable``) uses zero noise, so a half-denoised latent continues as it is;
- ``start_at_step`` / ``end_at_step`` / ``force_full_denoise`` slice the σ list as ``KSamplerAdvanced`` does
  (``schedules.advanced_sigmas``), so a run can stop mid-schedule and another sampler (ours or KSampler) finish it;
- ``noise_mask`` (1 = resample) keeps the rest of the latent pinned, as ``KSamplerX0Inpaint`` does.

The inputs are plain tensors: raw (unscaled) VAE latents ``[B, 4, H/8, W/8]`` (out: float32 on the CPU) and the text
encoder's contexts ``[B, T, width]``; unpacking ComfyUI's LATENT and CONDITIONING is the nodes' job. A bad input that
another stage made raises a ``SamplerInputError`` naming it, so that a node can add which of its sockets to fix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .checks import (
    check_batch,
    check_finite,
    check_memory,
    check_tensor,
    unet_top_attention,
    unet_working_bytes,
)
from .compat import attention_is_fused
from .components import DiffusionModel
from .errors import InvalidInputError, SamplerInputError, about
from .samplers import SamplerSpec, StepCallback, get_sampler
from .schedules import advanced_sigmas
from .socket_layouts import latent_to_model, model_to_latent
from .variants import VARIANTS, Variant

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ the stage


def sample_latent(
    model: DiffusionModel,
    positive: torch.Tensor | Sequence[CondEntry],
    negative: torch.Tensor | Sequence[CondEntry],
    latent: torch.Tensor,
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    denoise: float = 1.0,
    noise_mask: torch.Tensor | None = None,
    batch_index: Sequence[int] | None = None,
    callback: StepCallback | None = None,
    sigmas: torch.Tensor | None = None,
    add_noise: bool = True,
    start_at_step: int | None = None,
    end_at_step: int | None = None,
    force_full_denoise: bool = False,
) -> torch.Tensor:
    """Run the sampler; ``latent`` raw ``[B,4,h,w]`` → raw ``[B,4,h,w]`` float32 on the CPU.

    Args:
        positive, negative: a text encoder's context ``[1 or B, T, width]`` (``encode_prompt``'s first output), or a
            list of ``CondEntry`` (contexts weighted by strength, or acting in part of the schedule).
        latent: the starting raw latent, float (zeros for txt2img).
        seed: noise seed (0 … 2⁶⁴−1, KSampler's range), drawn on the CPU as KSampler draws it; the stochastic samplers'
            extra noise comes from it too.
        steps, cfg, sampler_name, scheduler, denoise: as KSampler's inputs; denoise < 1 keeps the last
            ``steps`` of ``int(steps / denoise)`` (img2img).
        noise_mask: optional mask ``[B?, H, W]`` of any resolution (resized to the latent's): 1 = resample, 0 = keep.
        batch_index: optional per-image noise indices, one whole number ≥ 0 per image.
        callback: ``callback(step, total, x, denoised)`` after each step (progress, cancel, previews).
        sigmas: an explicit σ schedule (1-D, descending) replacing scheduler/steps/denoise/start/end.
        add_noise: False = start from the latent itself (zero noise), for a latent that still carries the noise of
            an earlier partial run (``KSamplerAdvanced``'s ``add_noise = disable``).
        start_at_step, end_at_step: run only steps ``start_at_step … end_at_step − 1`` of the schedule
            (``KSamplerAdvanced``); None = from the first / to the last.
        force_full_denoise: with ``end_at_step`` before the last step, make the last σ 0 so the result is
            denoised (``return_with_leftover_noise = disable``); False returns it with the leftover noise.

    A schedule with no step left (``denoise`` 0, ``start_at_step`` past the end) returns the latent unchanged.

    Raises:
        SamplerInputError: the latent (a wrong shape, an empty batch, a 0 height/width, too small for the UNet's
            group norms, NaN/inf values), the noise mask, batch_index or a conditioning; its ``argument`` says which.
        InvalidInputError: a seed outside 0 … 2⁶⁴−1, a non-finite cfg, an unknown sampler; what
            ``schedules.advanced_sigmas`` refuses (scheduler, steps, denoise, step indices, a schedule longer than
            ``schedules.MAX_SCHEDULE_STEPS``) or malformed ``sigmas``; and, after any step, a NaN/inf result (the
            model's weights hold NaN/inf or its dtype overflowed).
        TooLargeForMemoryError: the latent's size and batch need more working memory than the device has
            (``checks.unet_working_bytes``); refused before anything is allocated.
    """
    spec = get_sampler(sampler_name)
    _check_inputs(model, latent, noise_mask, batch_index, seed=seed, cfg=cfg)
    guider = Guider(model, scheduled_entries(model, positive, "positive"), scheduled_entries(model, negative, "negative"), cfg)
    if sigmas is None:
        sigmas = advanced_sigmas(
            model.schedule, scheduler, steps, denoise=denoise, sampler_name=sampler_name, start_at_step=start_at_step,
            end_at_step=end_at_step, force_full_denoise=force_full_denoise,
        )  # fmt: skip
    else:
        sigmas = _checked_sigmas(sigmas)
    latent = latent.float().cpu()
    if len(sigmas) == 0:  # ComfyUI's CFGGuider.sample: nothing to do, the input comes back (a single σ still noises)
        return latent.clone()
    noise = prepare_noise(latent, seed, batch_index) if add_noise else torch.zeros_like(latent)
    return _run(model, spec, guider, latent, noise, sigmas, noise_mask=noise_mask, seed=seed, callback=callback)


def _run(
    model: DiffusionModel,
    spec: SamplerSpec,
    guider: Guider,
    latent: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_mask: torch.Tensor | None,
    seed: int,
    callback: StepCallback | None,
) -> torch.Tensor:
    """The sampling proper, on the model's device: noise the scaled latent to ``sigmas[0]``, run ``spec`` along
    ``sigmas`` (stopping at the first step that turns NaN/inf) and scale back. ``latent`` and ``noise``: raw float32
    ``[B,4,h,w]`` on the CPU; returns the same."""
    device = model.device
    scaled = latent_to_model(latent, model.latent_scale)
    noise_d, scaled_d, sigmas = noise.to(device), scaled.to(device), sigmas.float().to(device)
    x = _noised(model, scaled_d, noise_d, sigmas)
    denoiser: Callable = guider
    if noise_mask is not None:
        denoiser = _masked(denoiser, spec, noise_mask, scaled_d, noise_d, seed)
    failure = _failure_message(model, latent)
    out = spec.run(denoiser, x, sigmas, seed=seed, schedule=model.schedule, callback=_finite_steps(callback, failure))
    out = model_to_latent(out.float(), model.latent_scale).cpu()
    check_finite(out, "the sampled latent", failure(None, None))
    return out


def _noised(model: DiffusionModel, scaled: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The starting ``x`` at ``sigmas[0]``, ComfyUI's ``EPS.noise_scaling`` in its float32 arithmetic: the noise times
    ``sqrt(1 + σ₀²)`` at full denoise (σ₀ at σ_max), times ``σ₀`` for img2img, plus the scaled latent."""
    sigma0 = float(sigmas[0])
    full = math.isclose(float(model.schedule.sigma_max), sigma0, rel_tol=1e-5) or sigma0 > float(model.schedule.sigma_max)
    return noise * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if full else sigmas[0]) + scaled


def _masked(
    denoiser: Callable, spec: SamplerSpec, noise_mask: torch.Tensor, scaled: torch.Tensor, noise: torch.Tensor, seed: int
) -> MaskedDenoiser:
    """``denoiser`` with the latent pinned outside ``noise_mask``, re-noised with the noise ComfyUI pins it with."""
    mask = prepare_mask(noise_mask, scaled.shape).to(scaled.device)
    pin_noise = noise
    if spec.random_inpaint_noise:  # ComfyUI's ddim: fresh noise from seed + 1
        # (wrapped past 2⁶⁴−1, where ComfyUI's torch.manual_seed(seed + 1) raises an overflow error)
        fresh = torch.randn(scaled.shape, generator=torch.manual_seed((seed + 1) % 2**64), device="cpu")
        pin_noise = fresh.to(scaled.device)
    return MaskedDenoiser(denoiser, mask, scaled, pin_noise)


# ------------------------------------------------------------------------------------------------ conditioning


@dataclass(frozen=True)
class CondEntry:
    """One of several contexts guiding the same run (the entries of ComfyUI's ``ConditioningCombine`` and
    ``ConditioningSetTimestepRange``). A plain context tensor stands for one entry with these defaults.

    Attributes:
        context: a text encoder's output, float ``[B, T, width]``: B 1 or the latent's batch, T tokens (77·k),
            width the UNet's ``context_dim`` (768 for m2/m9, 1024 for m18).
        strength: its weight in the mean over the entries active at a σ; a finite number.
        start_percent, end_percent: where in the schedule it acts, as fractions of the model's timesteps
            (0 = the noisiest σ, 1 = the end; ComfyUI's percent, see ``percent_to_sigma``).
    """

    context: torch.Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0


@dataclass(frozen=True)
class ScheduledEntry:
    """A checked ``CondEntry`` as the ``Guider`` uses it: it acts while ``sigma_end ≤ σ ≤ sigma_start``."""

    context: torch.Tensor
    strength: float
    sigma_start: float
    sigma_end: float


def scheduled_entries(model: DiffusionModel, conditioning: torch.Tensor | Sequence[CondEntry], role: str) -> list[ScheduledEntry]:
    """``conditioning`` (a context tensor, or a non-empty list of ``CondEntry``) checked against ``model``.

    Raises:
        SamplerInputError: about ``role`` ("positive" or "negative"): neither a tensor nor a list of entries; a
            context that is not ``[batch, tokens, width]``, is empty, has the wrong width or holds NaN/inf; a
            strength or percent that is not a finite number.
    """
    with about(role, SamplerInputError):
        entries = [CondEntry(conditioning)] if isinstance(conditioning, torch.Tensor) else conditioning
        if not isinstance(entries, (list, tuple)) or not entries or not all(isinstance(e, CondEntry) for e in entries):
            raise InvalidInputError(
                f"{role} conditioning is {_kind(conditioning)}, not a [batch, tokens, width] tensor or a non-empty "
                "list of CondEntry; give encode_prompt's output."
            )
        return [_scheduled(model, entry, role) for entry in entries]


def _kind(value: object) -> str:
    """A value that is not what was expected, for a message: its type (a list's with its first item's)."""
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {type(value[0]).__name__}" if value else f"an empty {type(value).__name__}"
    return f"a {type(value).__name__}"


def _scheduled(model: DiffusionModel, entry: CondEntry, role: str) -> ScheduledEntry:
    """One entry checked (shape, width, values, numbers), its percents turned into σs."""
    context = entry.context
    if not isinstance(context, torch.Tensor) or context.is_complex() or context.ndim != 3:
        dtype = str(getattr(context, "dtype", "")).removeprefix("torch.")
        got = f"a {dtype} tensor of shape {tuple(context.shape)}" if isinstance(context, torch.Tensor) else _kind(context)
        raise InvalidInputError(
            f"{role} conditioning's context is {got}, not a real [batch, tokens, width] tensor; give encode_prompt's output."
        )
    if context.shape[0] == 0 or context.shape[1] == 0:
        raise InvalidInputError(
            f"{role} conditioning is an empty tensor of shape {tuple(context.shape)}; give encode_prompt's output "
            "(an empty prompt still gives 77 tokens)."
        )
    check_context_width(context.shape[-1], model.variant, role)
    check_finite(
        context,
        f"{role} conditioning",
        "the text encoder's weights contain NaN/inf or its fp16 arithmetic overflowed; load the model with dtype "
        "fp32 (or bf16), or download its text encoder again.",
    )
    return ScheduledEntry(
        context=context,
        strength=_finite(entry.strength, "strength", role, 1.0),
        sigma_start=percent_to_sigma(model, _finite(entry.start_percent, "start_percent", role, 0.0)),
        sigma_end=percent_to_sigma(model, _finite(entry.end_percent, "end_percent", role, 1.0)),
    )


def _finite(value: object, name: str, role: str, default: float) -> float:
    """A conditioning entry's ``strength`` / ``start_percent`` / ``end_percent`` as a float; refused unless finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidInputError(
            f"{role} conditioning's {name!r} is {value!r}, not a finite number; give a finite one (default {default})."
        )
    return number


def check_context_width(width: int, variant: Variant, role: str) -> None:
    """Raise InvalidInputError unless conditioning ``width`` wide is what ``variant``'s UNet cross-attends to."""
    if width != variant.context_dim:
        raise InvalidInputError(
            f"{role} conditioning is {width} wide but this AltDiffusion-{variant.name} UNet expects "
            f"{variant.context_dim}; encode the prompt with the text encoder of the same model ({_widths()})."
        )


def _widths() -> str:
    """Each variant's conditioning width, variants of one width together: "m2/m9 give 768, m18 gives 1024"."""
    by_width: dict[int, list[str]] = {}
    for variant in VARIANTS.values():
        by_width.setdefault(variant.context_dim, []).append(variant.name)
    return ", ".join(f"{'/'.join(names)} {'give' if len(names) > 1 else 'gives'} {width}" for width, names in by_width.items())


def percent_to_sigma(model: DiffusionModel, percent: float) -> float:
    """ComfyUI's ``ModelSamplingDiscrete.percent_to_sigma``: 0 → above σ_max, 1 → 0."""
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    return float(model.schedule.sigma(torch.tensor((1.0 - percent) * 999.0)))


# ------------------------------------------------------------------------------------------------ noise, mask, CFG


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """KSampler's noise: CPU ``torch.manual_seed(seed)`` then ``randn`` (per index when ``batch_index`` is given)."""
    generator = torch.manual_seed(seed)
    if batch_index is None:
        return torch.randn(latent.size(), dtype=latent.dtype, generator=generator, device="cpu")
    unique, inverse = np.unique(np.asarray(batch_index), return_inverse=True)
    draws = {}
    for i in range(int(unique[-1]) + 1):
        noise = torch.randn([1, *latent.shape[1:]], dtype=latent.dtype, generator=generator, device="cpu")
        if i in unique:
            draws[len(draws)] = noise
    return torch.cat([draws[int(i)] for i in inverse], dim=0)


def prepare_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """ComfyUI's ``reshape_mask``: a mask ``[B?,H,W]`` → ``shape`` by bilinear resize and channel/batch repeat."""
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    mask = F.interpolate(mask, size=tuple(shape[2:]), mode="bilinear")
    mask = mask.repeat(1, shape[1], 1, 1)[:, : shape[1]]
    if mask.shape[0] < shape[0]:
        mask = mask.repeat(math.ceil(shape[0] / mask.shape[0]), 1, 1, 1)
    return mask[: shape[0]]


def _common_length(lengths: set[int]) -> int | None:
    """Token count all contexts can be repeated to (ComfyUI's ``CONDCrossAttn.can_concat``: at most 4× the shortest)."""
    lcm = math.lcm(*lengths)
    return lcm if lcm // min(lengths) <= 4 else None


class Guider:
    """``denoise_fn(x, σ)`` for the samplers: UNet calls with CFG and conditioning entries applied, in the order of
    operations of ComfyUI's ``sampling_function`` / ``calc_cond_batch`` / ``cfg_function`` (0.3.75).

    All entries active at σ run in one UNet batch when their token counts allow it, ordered as ComfyUI's
    ``calc_cond_batch`` orders them (negatives, then positives, each in reverse order). Each entry's prediction is
    turned into a denoised estimate ``x − ε·σ`` first, the entries of each side are averaged weighted by ``strength``
    (``Σ x0·s / (1e-37 + Σ s)``), and CFG mixes the two estimates: ``uncond + (cond − uncond)·cfg``.

    Mixing ε instead (as diffusers' pipelines do) is the same formula but rounds differently (at σ_max the two
    estimates are ~15× larger than ε), so a seed would give KSampler's picture only up to the last bits. In this form
    our sampler is bit-identical to KSampler on the same UNet module (``tests/test_ksampler_parity.py``, exact tier),
    which leaves only the UNet implementations' own rounding (diffusers' vs ComfyUI's) between the two.
    """

    def __init__(self, model: DiffusionModel, positive: list[ScheduledEntry], negative: list[ScheduledEntry], cfg: float):
        self.model = model
        self.positive = positive
        self.negative = None if math.isclose(cfg, 1.0) else negative
        self.cfg = cfg

    def _denoised(self, x: torch.Tensor, sigma: torch.Tensor, contexts: list[torch.Tensor]) -> list[torch.Tensor]:
        """``x − ε·σ`` (float32, shaped like ``x``) for each context, in as few UNet calls as the lengths allow."""
        m = self.model
        common = _common_length({c.shape[1] for c in contexts})
        if common is None:  # too different to batch: one call per context
            return [self._denoised(x, sigma, [c])[0] for c in contexts]
        batch = x.shape[0]
        ctx = torch.cat([c.repeat(math.ceil(batch / c.shape[0]), common // c.shape[1], 1)[:batch] for c in contexts])
        sig = sigma.reshape(-1, 1, 1, 1)
        x_in = (x / (sig**2 + 1.0) ** 0.5).to(m.dtype).repeat(len(contexts), 1, 1, 1)
        t = m.schedule.timestep(sigma).float().repeat(len(contexts))
        eps = m.module(x_in, t.to(m.device), encoder_hidden_states=ctx.to(m.device, m.dtype), return_dict=False)[0]
        return [x - e * sig for e in eps.float().chunk(len(contexts))]

    @staticmethod
    def _mean(x: torch.Tensor, denoised: list[torch.Tensor], entries: list[ScheduledEntry]) -> torch.Tensor:
        """Strength-weighted mean, accumulated as ComfyUI does (no entry active, or all at strength 0: x0 = 0)."""
        out = torch.zeros_like(x)
        count = torch.full_like(x, 1e-37)
        for d, entry in zip(denoised, entries, strict=True):
            out += d * entry.strength
            count += entry.strength
        return out / count

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma.max())
        active = lambda entries: [e for e in reversed(entries or ()) if e.sigma_end <= s <= e.sigma_start]  # noqa: E731
        pos, neg = active(self.positive), active(self.negative)
        with torch.inference_mode():
            denoised = self._denoised(x, sigma, [e.context for e in neg + pos]) if neg or pos else []
            cond = self._mean(x, denoised[len(neg) :], pos)
            if self.negative is None:
                return cond
            uncond = self._mean(x, denoised[: len(neg)], neg)
            return uncond + (cond - uncond) * self.cfg


class MaskedDenoiser:
    """``KSamplerX0Inpaint``: outside the mask (0), x and the prediction are pinned to the input latent."""

    def __init__(self, inner: Callable, mask: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor):
        self.inner, self.mask, self.latent, self.noise = inner, mask, latent, noise

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.mask
        x = x * self.mask + (self.noise * sigma.reshape(-1, 1, 1, 1) + self.latent) * keep
        return self.inner(x, sigma) * self.mask + self.latent * keep


# ------------------------------------------------------------------------------------------------ checks


def _check_inputs(
    model: DiffusionModel,
    latent: torch.Tensor,
    noise_mask: torch.Tensor | None,
    batch_index: Sequence[int] | None,
    *,
    seed: int,
    cfg: float,
) -> None:
    """The latent, mask, batch_index, seed and cfg. The latent's values are read after its size is known to fit: an
    expanded 1×4×65536×65536 view costs nothing to pass around, but a scan for NaN would allocate its full size."""
    with about("latent", SamplerInputError):
        _check_latent_shape(model, latent)
    _check_seed_and_cfg(seed, cfg)
    _check_memory(model, latent, cfg)
    with about("latent", SamplerInputError):
        check_finite(latent, "latent", "re-encode the image, or start from an all-zero latent.")
    if noise_mask is not None:
        with about("noise_mask", SamplerInputError):
            _check_mask(noise_mask)
    if batch_index is not None:
        with about("batch_index", SamplerInputError):
            _check_batch_index(batch_index, latent.shape[0])


def _check_latent_shape(model: DiffusionModel, latent: torch.Tensor) -> None:
    """``[batch ≥ 1, the UNet's channels, h ≥ 1, w ≥ 1]``, and big enough for the UNet's group norms."""
    if latent.ndim != 4 or latent.shape[1] != model.latent_channels:
        raise InvalidInputError(
            f"latent of shape {tuple(latent.shape)} has {latent.shape[1] if latent.ndim > 1 else '?'} channels; this "
            f"AltDiffusion UNet needs [batch, {model.latent_channels}, height/8, width/8], the latent of an "
            "SD1/SD2-family VAE (zeros for txt2img, encode_image's output for img2img)."
        )
    check_batch(latent, "latent")
    _check_area(latent)
    _check_group_norm(model, latent)


def _check_area(latent: torch.Tensor) -> None:
    """A latent with no pixels (0 height or width) has nothing to denoise and no UNet can take it."""
    if latent.shape[2] == 0 or latent.shape[3] == 0:
        raise InvalidInputError(
            f"latent of shape {tuple(latent.shape)} is {latent.shape[2]}×{latent.shape[3]}: it holds no pixels; "
            "give it a height and width of at least 1, an image of at least 8×8 pixels (one latent pixel is 8×8 "
            "image pixels)."
        )


def _check_group_norm(model: DiffusionModel, latent: torch.Tensor) -> None:
    """Each UNet level normalises groups of ``batch × channels/groups × h × w`` values, and torch refuses a group of
    one (a raw ValueError). Only a latent of a pixel or two alone in its batch, on a UNet with one channel per group,
    gets there: never the real SD UNets (10+ channels per group), but narrow ones can."""
    config = model.module.config
    groups = config.get("norm_num_groups") or 0
    widths = list(config["block_out_channels"])

    def values_per_group(batch: int, h: int, w: int) -> int:
        """The fewest values any group norm of the UNet sees for a ``batch × h × w`` latent."""
        return min(
            batch * (min(width, widths[max(level - 1, 0)]) // groups) * math.ceil(h / 2**level) * math.ceil(w / 2**level)
            for level, width in enumerate(widths)  # a level's first resnet normalises the previous level's width
        )

    batch, _, h, w = latent.shape
    if groups and values_per_group(batch, h, w) <= 1:
        side = next(s for s in range(1, 2 ** len(widths) + 1) if values_per_group(1, s, s) > 1)
        raise InvalidInputError(
            f"latent of {h}×{w} is too small for this UNet (its group norms would see one value per group); "
            f"use at least {side}×{side} (an image of {8 * side}×{8 * side} pixels) or a batch of 2."
        )


SEED_RANGE = (0, 2**64 - 1)
"""Seeds KSampler accepts (its widget's range; ``torch.manual_seed`` refuses larger ones)."""


def _check_seed_and_cfg(seed: int, cfg: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise InvalidInputError(
            f"seed is {seed!r}; give a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]} (2⁶⁴−1, the largest "
            "torch.manual_seed takes)."
        )
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float, np.number)) or not math.isfinite(cfg):
        raise InvalidInputError(f"cfg is {cfg!r}; give a finite guidance scale (7–8 is usual, 1 turns guidance off).")


def _check_memory(model: DiffusionModel, latent: torch.Tensor, cfg: float) -> None:
    """Refuse, before the noise is drawn, a latent whose UNet calls cannot fit the device (``checks``)."""
    batch, _, h, w = latent.shape
    rows = batch * (1 if math.isclose(cfg, 1.0) else 2)  # CFG runs cond and uncond in one UNet batch
    attention = unet_top_attention(model.module.config)
    fused = attention is None or attention_is_fused(model.device, model.dtype, attention.head_dim)
    need = unet_working_bytes(model.module.config, rows, h, w, model.dtype, fused_attention=fused)
    check_memory(
        need,
        model.device,
        f"sampling {batch} latent(s) of {h}×{w} ({h * 8}×{w * 8} pixels) with this UNet in "
        f"{str(model.dtype).removeprefix('torch.')}",
        "use a smaller width/height or batch size (upscale afterwards instead), or load the model in fp16/bf16.",
    )


def _check_mask(mask: torch.Tensor) -> None:
    """A noise mask ``[B?, H, W]`` (1 = resample) that ``prepare_mask`` can resize: 2-D to 4-D, not empty, finite."""
    if mask.ndim < 2 or mask.ndim > 4 or mask.numel() == 0:
        raise InvalidInputError(
            f"noise_mask of shape {tuple(mask.shape)} is not a mask [batch, height, width] with pixels; give one value "
            "per pixel, at any resolution (it is resized to the latent's)."
        )
    check_finite(mask, "noise_mask", "give a mask of values from 0 (keep) to 1 (resample).")


def _check_batch_index(batch_index: Sequence[int], batch: int) -> None:
    """One whole number ≥ 0 per image: the index of the noise it draws (``prepare_noise``)."""
    ok = isinstance(batch_index, (list, tuple, np.ndarray)) and len(batch_index) == batch
    if not ok or not all(isinstance(i, (int, np.integer)) and i >= 0 for i in list(batch_index)):
        raise InvalidInputError(
            f"batch_index {batch_index!r} is not one index ≥ 0 per image of its batch of {batch}; give {batch} whole "
            "number(s) ≥ 0, or None for 0, 1, 2, …"
        )


def _checked_sigmas(sigmas: object) -> torch.Tensor:
    """An explicit σ schedule: a real 1-D tensor of finite noise levels."""
    sigmas = check_tensor(
        sigmas, "sigmas", "a 1-D tensor of noise levels", "give a descending schedule (schedules.sigmas_for makes one)."
    )
    if sigmas.ndim != 1:
        raise InvalidInputError(
            f"sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}; give a descending list of noise levels."
        )
    check_finite(sigmas, "sigmas", "give a schedule of finite noise levels (schedules.sigmas_for makes one).")
    return sigmas


def _failure_message(model: DiffusionModel, latent: torch.Tensor) -> Callable[[int | None, int | None], str]:
    """The fix to show when the sampler's result turns NaN/inf at ``step`` of ``total`` (None: in the end)."""
    dtype = str(model.dtype).removeprefix("torch.")

    def message(step: int | None, total: int | None) -> str:
        where = f" at step {step + 1} of {total}" if step is not None else ""
        largest = float(latent.abs().max())
        return (
            f"the UNet's output turned NaN/inf{where}: its weights contain NaN/inf, its {dtype} arithmetic overflowed, "
            f"or the input latent's values are extreme (largest magnitude {largest:.3g}; a VAE's latents stay within "
            "about ±60). Load the model with dtype fp32 (or bf16), check the input latent, or download the weights again."
        )

    return message


def _finite_steps(callback: StepCallback | None, failure: Callable[[int | None, int | None], str]) -> StepCallback:
    """``callback`` preceded by a check of each step's denoised estimate, so a model that produces NaN stops at the
    first step with a message instead of running every step to a black image (a reduction over the latent: cheap)."""

    def checked(step: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if not bool(torch.isfinite(denoised).all()):
            raise InvalidInputError(failure(step, total))
        if callback is not None:
            callback(step, total, x, denoised)

    return checked
