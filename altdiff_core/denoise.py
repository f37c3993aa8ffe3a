"""Denoising stage: the sampling loop with classifier-free guidance, computed as ComfyUI's KSampler computes it.

Everything happens in k-diffusion's (VE) parameterisation on the float32 CPU-or-device latent ``x``:

- the UNet sees ``x / sqrt(σ² + 1)`` at timestep ``schedule.timestep(σ)`` (nearest of the 1000 training steps),
  in the model's dtype, and predicts ε; the denoised estimate is ``x − ε·σ``;
- CFG: ``uncond + (cond − uncond)·cfg`` on the denoised estimates, as ComfyUI writes it; cfg = 1 skips the
  unconditional pass (half the UNet rows);
- several conditioning entries (``ConditioningCombine``) are averaged weighted by their ``strength``, and entries
  with ``start_percent``/``end_percent`` (``ConditioningSetTimestepRange``) only act inside their σ range;
- noise: ``torch.manual_seed(seed)`` + ``randn`` of the latent's shape on the CPU (per-index with ``batch_index``);
  start ``x = noise·sqrt(1 + σ₀²)`` at full denoise, else ``latent·scale + noise·σ₀``; ``add_noise=False``
  (``KSamplerAdvanced``'s ``add_noise = disable``) uses zero noise, so a half-denoised latent continues as it is;
- ``start_at_step`` / ``end_at_step`` / ``force_full_denoise`` slice the σ list as ``KSamplerAdvanced`` does
  (``schedules.advanced_sigmas``), so a run can stop mid-schedule and another sampler (ours or KSampler) finish it;
- ``noise_mask`` (1 = resample) keeps the rest of the latent pinned, as ``KSamplerX0Inpaint`` does.

Latents in and out are raw (unscaled) VAE latents ``[B, 4, H/8, W/8]`` float32 on the CPU.
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
    attention_is_fused,
    check_batch,
    check_finite,
    check_memory,
    check_tensor,
    unet_top_attention,
    unet_working_bytes,
)
from .components import DiffusionModel
from .convert import latent_to_model, model_to_latent
from .errors import InvalidInputError
from .samplers import SAMPLERS
from .samplers import sample as run_sampler
from .schedules import advanced_sigmas
from .variants import Variant

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""``callback(step, total, x, denoised)``: called after each step; raise to cancel."""

UNSUPPORTED_COND_KEYS = {
    "area": "area conditioning (ConditioningSetArea)",
    "mask": "mask conditioning (ConditioningSetMask)",
    "control": "ControlNet",
    "gligen": "GLIGEN",
    "hooks": "conditioning hooks",
}


@dataclass(frozen=True)
class CondEntry:
    """One conditioning entry as the sampler uses it.

    Attributes:
        context: float ``[1, T, context_dim]``.
        strength: weight in the average over entries.
        sigma_start, sigma_end: the entry acts while ``sigma_end ≤ σ ≤ sigma_start``.
    """

    context: torch.Tensor
    strength: float = 1.0
    sigma_start: float = math.inf
    sigma_end: float = 0.0


def percent_to_sigma(model: DiffusionModel, percent: float) -> float:
    """ComfyUI's ``ModelSamplingDiscrete.percent_to_sigma``: 0 → above σ_max, 1 → 0."""
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    return float(model.schedule.sigma(torch.tensor((1.0 - percent) * 999.0)))


def check_width(width: int, variant: Variant, role: str) -> None:
    """Raise InvalidInputError unless conditioning ``width`` wide is what ``variant``'s UNet cross-attends to."""
    if width != variant.context_dim:
        raise InvalidInputError(
            f"{role} conditioning is {width} wide but this AltDiffusion-{variant.name} UNet expects "
            f"{variant.context_dim}; encode the prompt with the text encoder of the same model "
            "(m2/m9 give 768, m18 gives 1024)."
        )


def to_cond_entries(model: DiffusionModel, conditioning: Sequence, role: str) -> list[CondEntry]:
    """Check a CONDITIONING list (``[[tensor, dict], …]``) against ``model`` and convert it.

    Raises:
        InvalidInputError: wrong structure, wrong width, or an option this sampler cannot honour.
    """
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise InvalidInputError(
            f"{role} conditioning is an empty or non-list {type(conditioning).__name__}, not a CONDITIONING list "
            "[[tensor, dict], …]; connect a text-encode node's output."
        )
    entries = []
    for item in conditioning:
        pair = list(item) if isinstance(item, (list, tuple)) else []
        context, extras = pair[0] if pair else item, pair[1] if len(pair) > 1 else {}
        if not pair or not isinstance(context, torch.Tensor) or context.ndim != 3 or not isinstance(extras, dict):
            raise InvalidInputError(
                f"{role} conditioning holds {type(item).__name__} {_short(item)}, not a pair [[batch, tokens, width] "
                "tensor, dict]; connect a text-encode node's output."
            )
        if context.shape[0] == 0 or context.shape[1] == 0:
            raise InvalidInputError(
                f"{role} conditioning is an empty tensor of shape {tuple(context.shape)}; connect a text-encode node's output."
            )
        check_width(context.shape[-1], model.variant, role)
        for key, what in UNSUPPORTED_COND_KEYS.items():
            if extras.get(key) is not None:
                raise InvalidInputError(
                    f"{role} conditioning carries {what} ('{key}'), which the AltDiffusion sampler does not apply; "
                    "remove that node, or sample with ComfyUI's KSampler (AltDiffusion UNet loaded by UNETLoader)."
                )
        check_finite(
            context,
            f"{role} conditioning",
            "the text encoder's weights contain NaN/inf or its fp16 arithmetic overflowed; load the model with dtype "
            "fp32 (or bf16), or download its text encoder again.",
        )
        entries.append(
            CondEntry(
                context=context,
                strength=_number(extras, "strength", 1.0, role),
                sigma_start=percent_to_sigma(model, _number(extras, "start_percent", 0.0, role)),
                sigma_end=percent_to_sigma(model, _number(extras, "end_percent", 1.0, role)),
            )
        )
    return entries


def _short(value: object) -> str:
    """A conditioning entry in a message: tensors by shape, anything else cut to 60 characters."""
    if isinstance(value, torch.Tensor):
        return f"of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value[:3]) + (", …]" if len(value) > 3 else "]")
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _number(extras: dict, key: str, default: float, role: str) -> float:
    """A finite number from a conditioning entry's options (``strength``, ``start_percent``, ``end_percent``)."""
    value = extras.get(key)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidInputError(
            f"{role} conditioning's {key!r} is {value!r}, not a finite number; set it again in the node that added it "
            f"(default {default})."
        )
    return number


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
    """ComfyUI's ``reshape_mask``: MASK ``[B?,H,W]`` → ``shape`` by bilinear resize and channel/batch repeat."""
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

    def __init__(self, model: DiffusionModel, positive: list[CondEntry], negative: list[CondEntry], cfg: float):
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
        eps = m.unet(x_in, t.to(m.device), encoder_hidden_states=ctx.to(m.device, m.dtype), return_dict=False)[0]
        return [x - e * sig for e in eps.float().chunk(len(contexts))]

    @staticmethod
    def _mean(x: torch.Tensor, denoised: list[torch.Tensor], entries: list[CondEntry]) -> torch.Tensor:
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


def sample_latent(
    model: DiffusionModel,
    positive: Sequence,
    negative: Sequence,
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
        positive, negative: CONDITIONING lists ``[[tensor [1,T,dim], dict], …]``.
        latent: the starting raw latent (zeros for txt2img).
        seed: noise seed (0 … 2⁶⁴−1, KSampler's range), drawn on the CPU as KSampler draws it; the stochastic samplers'
            extra noise comes from it too.
        steps, cfg, sampler_name, scheduler, denoise: as KSampler's inputs; denoise < 1 keeps the last
            ``steps`` of ``int(steps / denoise)`` (img2img).
        noise_mask: optional MASK, 1 = resample.
        batch_index: optional per-image noise indices (LATENT ``batch_index``).
        callback: ``callback(step, total, x, denoised)`` after each step (progress, cancel, previews).
        sigmas: an explicit σ schedule (descending, float32) replacing scheduler/steps/denoise/start/end.
        add_noise: False = start from the latent itself (zero noise), for a latent that still carries the noise of
            an earlier partial run (``KSamplerAdvanced``'s ``add_noise = disable``).
        start_at_step, end_at_step: run only steps ``start_at_step … end_at_step − 1`` of the schedule
            (``KSamplerAdvanced``); None = from the first / to the last.
        force_full_denoise: with ``end_at_step`` before the last step, make the last σ 0 so the result is
            denoised (``return_with_leftover_noise = disable``); False returns it with the leftover noise.

    A schedule with no step left (``denoise`` 0, ``start_at_step`` past the end) returns the latent unchanged.

    Raises:
        InvalidInputError: a value out of range, naming it and the fix: a latent of the wrong shape, with an empty
            batch or a 0 height/width, or holding NaN/inf; a malformed or NaN noise mask, batch_index, conditioning
            or sigmas; a seed outside 0 … 2⁶⁴−1; a non-finite cfg; a schedule longer than ``MAX_SCHEDULE_STEPS``
            (a tiny denoise); and, after any step, a NaN/inf result (the model's weights hold NaN/inf or its dtype
            overflowed).
        TooLargeForMemoryError: the latent's size and batch need more working memory than the device has
            (``checks.unet_working_bytes``); refused before anything is allocated.
    """
    latent = check_tensor(latent, "latent", "a [batch, 4, height/8, width/8] tensor", "connect a LATENT output.")
    if latent.ndim != 4 or latent.shape[1] != model.latent_channels:
        raise InvalidInputError(
            f"latent of shape {tuple(latent.shape)} has {latent.shape[1] if latent.ndim > 1 else '?'} channels; this "
            f"AltDiffusion UNet needs [batch, {model.latent_channels}, height/8, width/8]. Use an SD1/SD2-family latent "
            "(EmptyLatentImage or the img2img-encode node)."
        )
    check_batch(latent, "latent")
    _check_area(latent)
    _check_group_norm(model, latent)
    _check_scalars(seed, steps, cfg)
    if sampler_name not in SAMPLERS:
        raise InvalidInputError(f"unknown sampler {sampler_name!r}; choose one of: {', '.join(SAMPLERS)}.")
    _check_memory(model, latent, cfg)
    check_finite(
        latent,
        "latent",
        "it came from a node that diverged or was edited; re-encode the image or start from an EmptyLatentImage.",
    )
    if noise_mask is not None:
        noise_mask = _checked_mask(noise_mask)
    if batch_index is not None:
        _check_batch_index(batch_index, latent.shape[0])
    if sigmas is not None:
        sigmas = check_tensor(sigmas, "sigmas", "a 1-D tensor of noise levels", "connect a SIGMAS output.")
        check_finite(sigmas, "sigmas", "give a schedule of finite noise levels (a scheduler node's output).")
    pos = to_cond_entries(model, positive, "positive")
    neg = to_cond_entries(model, negative, "negative")
    latent = latent.float().cpu()
    if sigmas is None:
        _check_schedule_length(steps, denoise)
        try:
            sigmas = advanced_sigmas(
                model.schedule,
                scheduler,
                steps,
                denoise=denoise,
                sampler_name=sampler_name,
                start_at_step=start_at_step,
                end_at_step=end_at_step,
                force_full_denoise=force_full_denoise,
            )
        except ValueError as err:
            raise InvalidInputError(str(err)) from err
    if len(sigmas) == 0:  # ComfyUI's CFGGuider.sample: nothing to do, the input comes back (a single σ still noises)
        return latent.clone()
    noise = prepare_noise(latent, seed, batch_index) if add_noise else torch.zeros_like(latent)
    scaled = latent_to_model(latent, model.latent_scale)
    device = model.device
    noise_d, scaled_d, sigmas = noise.to(device), scaled.to(device), sigmas.float().to(device)
    sigma0 = float(sigmas[0])
    full = math.isclose(float(model.schedule.sigma_max), sigma0, rel_tol=1e-5) or sigma0 > float(model.schedule.sigma_max)
    # EPS.noise_scaling, in its float32 arithmetic
    x = noise_d * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if full else sigmas[0]) + scaled_d
    denoiser: Callable = Guider(model, pos, neg, cfg)
    if noise_mask is not None:
        mask = prepare_mask(noise_mask, latent.shape).to(device)
        pin_noise = noise_d
        if SAMPLERS[sampler_name].random_inpaint_noise:  # ComfyUI's ddim: fresh noise from seed + 1
            # (wrapped past 2⁶⁴−1, where ComfyUI's torch.manual_seed(seed + 1) raises an overflow error)
            pin_noise = torch.randn(latent.shape, generator=torch.manual_seed((seed + 1) % 2**64), device="cpu").to(device)
        denoiser = MaskedDenoiser(denoiser, mask, scaled_d, pin_noise)
    failure = _failure_message(model, latent)
    out = run_sampler(
        sampler_name, denoiser, x, sigmas, seed=seed, schedule=model.schedule, callback=_finite_steps(callback, failure)
    )
    out = model_to_latent(out.float(), model.latent_scale).cpu()
    check_finite(out, "the sampled latent", failure(None, None))
    return out


SEED_RANGE = (0, 2**64 - 1)
"""Seeds KSampler accepts (its widget's range; ``torch.manual_seed`` refuses larger ones)."""


def _check_scalars(seed: int, steps: int, cfg: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise InvalidInputError(
            f"seed is {seed!r}; give a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]} (KSampler's range)."
        )
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidInputError(f"steps is {steps!r}; give at least 1 sampling step.")
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float, np.number)) or not math.isfinite(cfg):
        raise InvalidInputError(f"cfg is {cfg!r}; give a finite guidance scale (7–8 is usual, 1 turns guidance off).")


MAX_SCHEDULE_STEPS = 100_000
"""Longest σ schedule computed: img2img computes ``int(steps / denoise)`` σs and keeps the last ``steps + 1``, so
a tiny denoise (1e-9 from an API call) would otherwise mean billions of σs and a server that hangs (ComfyUI's
KSampler does); a 1000-step model has nothing to gain past this."""


def _check_schedule_length(steps: int, denoise: float) -> None:
    if isinstance(denoise, bool) or not isinstance(denoise, (int, float, np.number)) or not math.isfinite(denoise):
        return  # schedules.advanced_sigmas names a non-numeric denoise
    if steps > MAX_SCHEDULE_STEPS:
        raise InvalidInputError(f"steps is {steps}; give at most {MAX_SCHEDULE_STEPS} (20 to 30 is usual).")
    length = steps / denoise if 0.0 < denoise <= 0.9999 else steps
    if length > MAX_SCHEDULE_STEPS:
        raise InvalidInputError(
            f"steps {steps} with denoise {denoise:.3g} means a schedule of {length:.3g} steps; keep steps / denoise "
            f"at most {MAX_SCHEDULE_STEPS} (denoise ≥ {steps / MAX_SCHEDULE_STEPS:.3g} here), or set denoise to 0 to "
            "return the latent unchanged."
        )


def _check_area(latent: torch.Tensor) -> None:
    """A latent with no pixels (0 height or width) has nothing to denoise and no UNet can take it."""
    if latent.shape[2] == 0 or latent.shape[3] == 0:
        raise InvalidInputError(
            f"latent of shape {tuple(latent.shape)} is {latent.shape[2]}×{latent.shape[3]}: it holds no pixels; "
            "give EmptyLatentImage a width and height of at least 8 (one latent pixel is 8×8 image pixels)."
        )


def _check_group_norm(model: DiffusionModel, latent: torch.Tensor) -> None:
    """Each UNet level normalises groups of ``batch × channels/groups × h × w`` values, and torch refuses a group of
    one (a raw ValueError). Only a latent of a pixel or two alone in its batch, on a UNet with one channel per group,
    gets there: never the real SD UNets (10+ channels per group), but narrow ones can."""
    config = model.unet.config
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
            f"use at least {side}×{side} (EmptyLatentImage of {8 * side}×{8 * side} pixels) or a batch of 2."
        )


def _check_memory(model: DiffusionModel, latent: torch.Tensor, cfg: float) -> None:
    """Refuse, before the noise is drawn, a latent whose UNet calls cannot fit the device (``checks``)."""
    batch, _, h, w = latent.shape
    rows = batch * (1 if math.isclose(cfg, 1.0) else 2)  # CFG runs cond and uncond in one UNet batch
    attention = unet_top_attention(model.unet.config)
    fused = attention is None or attention_is_fused(model.device, model.dtype, attention.head_dim)
    need = unet_working_bytes(model.unet.config, rows, h, w, model.dtype, fused_attention=fused)
    check_memory(
        need,
        model.device,
        f"sampling {batch} latent(s) of {h}×{w} ({h * 8}×{w * 8} pixels) with this UNet in "
        f"{str(model.dtype).removeprefix('torch.')}",
        "use a smaller width/height or batch size (upscale afterwards instead), or load the model in fp16/bf16.",
    )


def _checked_mask(mask: object) -> torch.Tensor:
    """A noise mask (MASK ``[B?,H,W]``, 1 = resample) that ``prepare_mask`` can resize: at least 2-D, not empty, finite."""
    mask = check_tensor(mask, "noise_mask", "a MASK tensor [batch, height, width]", "connect a MASK output.")
    if mask.ndim < 2 or mask.ndim > 4 or mask.numel() == 0:
        raise InvalidInputError(
            f"noise_mask of shape {tuple(mask.shape)} is not a MASK [batch, height, width] with pixels; connect a MASK "
            "from a LoadImage, a mask editor or SetLatentNoiseMask."
        )
    check_finite(mask, "noise_mask", "give a mask of values from 0 (keep) to 1 (resample).")
    return mask


def _check_batch_index(batch_index: Sequence[int], batch: int) -> None:
    """LATENT ``batch_index``: one non-negative whole number per image (ComfyUI's batch nodes write it)."""
    ok = isinstance(batch_index, (list, tuple, np.ndarray)) and len(batch_index) == batch
    if not ok or not all(isinstance(i, (int, np.integer)) and i >= 0 for i in list(batch_index)):
        raise InvalidInputError(
            f"the latent's batch_index {batch_index!r} is not one index ≥ 0 per image of its batch of {batch}; remove "
            "the key, or rebuild the latent with ComfyUI's batch nodes (Latent From Batch, Repeat Latent Batch)."
        )


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
