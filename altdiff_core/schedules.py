"""Noise schedules and KSampler's sigma lists, computed exactly as ComfyUI 0.3.75 computes them.

Vocabulary (k-diffusion / ComfyUI conventions, used throughout the engine):

* **sigma** -- the noise level of a latent in "variance exploding" form: ``x = x0 + sigma * eps``. For the discrete
  epsilon-prediction models (SD 1.x / 2.x-base, hence AltDiffusion m2/m9/m18) ``sigma_i = sqrt((1 - acp_i) / acp_i)``
  where ``acp_i`` is the cumulative product of ``1 - beta`` at training timestep ``i``; it runs from about 0.0292
  (``i = 0``) to about 14.61 (``i = 999``). A diffusers (variance preserving) latent is ``x / sqrt(1 + sigma**2)``.
* **timestep** -- the training step index ``0 .. num_train_timesteps - 1`` that the UNet is conditioned on.
  ``DiscreteSchedule.timestep`` maps a sigma to the index with the nearest log-sigma; ``DiscreteSchedule.sigma``
  interpolates log-sigma linearly between integer timesteps.
* A **sigma list** (what the schedulers below return) is a 1-D float32 CPU tensor, descending, normally
  ``steps + 1`` long and ending in ``0.0``: sampling step ``i`` goes from ``sigmas[i]`` to ``sigmas[i + 1]``.

Nothing here imports ComfyUI; the arithmetic (down to dtypes and the order of operations) is adapted from
ComfyUI 0.3.75 (GPL-3.0), so that the sigma lists are bit-identical to ComfyUI's. ``tests/test_sampling_math.py``
pins that parity against ComfyUI's own code.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Callable
from functools import partial

import torch

from .compat import optional_import
from .errors import InvalidInputError

logger = logging.getLogger(__name__)

# Samplers for which ComfyUI's KSampler computes one step more and then drops the penultimate sigma
# (``KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS`` in comfy/samplers.py). ``samplers.SAMPLERS`` reads this set.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


class DiscreteSchedule:
    """The noise schedule of a discrete-time epsilon-prediction model (ComfyUI's ``ModelSamplingDiscrete`` + ``EPS``).

    Adapted from ComfyUI 0.3.75 comfy/model_sampling.py (``ModelSamplingDiscrete``) and
    comfy/ldm/modules/diffusionmodules/util.py (``make_beta_schedule``, "linear"), GPL-3.0.
    The defaults are the Stable Diffusion / AltDiffusion schedule, diffusers' ``scaled_linear``
    (``betas = linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2``). Betas and their cumulative product are
    computed in float64 and only the sigmas are cast to float32, as ComfyUI does.

    Attributes:
        num_train_timesteps: N, the number of training timesteps (1000).
        alphas_cumprod: float64 tensor [N], cumulative product of ``1 - beta``, ascending index = more noise.
        sigmas: float32 tensor [N], ascending (``sigmas[0]`` ~ 0.0292, ``sigmas[-1]`` ~ 14.61).
        log_sigmas: float32 tensor [N], ``log`` of the float64 sigmas.
    """

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000):
        if not isinstance(num_train_timesteps, numbers.Integral) or num_train_timesteps < 2:
            raise InvalidInputError(
                f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}; SD/AltDiffusion use 1000."
            )
        if not 0.0 < beta_start < beta_end < 1.0:
            raise InvalidInputError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start!r}, beta_end={beta_end!r}; "
                "SD/AltDiffusion use 0.00085 and 0.012."
            )
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.num_train_timesteps = int(num_train_timesteps)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    def __repr__(self) -> str:
        return (
            f"DiscreteSchedule(beta_start={self.beta_start}, beta_end={self.beta_end}, "
            f"num_train_timesteps={self.num_train_timesteps})"
        )

    def to(self, device: torch.device | str) -> DiscreteSchedule:
        """This schedule with ``sigmas`` and ``log_sigmas`` on ``device`` (a copy; ``self`` when already there).

        It travels with the UNet, as ComfyUI's ``model_sampling`` buffers travel with its model: KSampler's ``normal``
        and ``sgm_uniform`` interpolate log-sigmas on the model's device, and a GPU's ``exp`` and fused multiply-adds
        round differently from the CPU's in the last bit, which a few steps of sampling amplify (measured on an H200:
        up to 5e-2 on latents of |x| ≈ 450 with the sigmas computed on the CPU instead, exactly 0 with them on the GPU).
        """
        device = torch.device(device)
        if self.sigmas.device == device:
            return self
        moved = copy.copy(self)
        moved.sigmas, moved.log_sigmas = self.sigmas.to(device), self.log_sigmas.to(device)
        return moved

    @property
    def sigma_min(self) -> torch.Tensor:
        """Smallest sigma (timestep 0), a 0-d float32 tensor."""
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        """Largest sigma (timestep N - 1), a 0-d float32 tensor."""
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index (int64 tensor, same shape as ``sigma``) of the training timestep whose log-sigma is nearest.

        ComfyUI returns the ``argmin`` index as int64 and so does this; the UNet accepts it as it is.
        """
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma (float32, same shape) at a possibly fractional timestep: log-sigma interpolated linearly."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)


# --- scheduler functions -------------------------------------------------------------------------------------------
# Each takes (schedule, steps) and returns a float32 CPU sigma list. Adapted from ComfyUI 0.3.75 comfy/samplers.py
# (simple/ddim/normal/beta/linear_quadratic/kl_optimal) and comfy/k_diffusion/sampling.py (karras/exponential,
# originally k-diffusion by Katherine Crowson, MIT). GPL-3.0.


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def _float32(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def karras_scheduler(schedule: DiscreteSchedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): uniform in ``sigma ** (1 / rho)`` (k-diffusion ``get_sigmas_karras``)."""
    sigma_min, sigma_max = float(schedule.sigma_min), float(schedule.sigma_max)
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas)


def exponential_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Uniform in log-sigma (k-diffusion ``get_sigmas_exponential``)."""
    sigma_min, sigma_max = float(schedule.sigma_min), float(schedule.sigma_max)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp()
    return _append_zero(sigmas)


def simple_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Every ``N / steps``-th training sigma, from the top."""
    s = schedule
    sigs = []
    ss = len(s.sigmas) / steps
    for x in range(steps):
        sigs += [float(s.sigmas[-(1 + int(x * ss))])]
    sigs += [0.0]
    return _float32(sigs)


def ddim_uniform_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Training sigmas at timesteps 1, 1 + k, 1 + 2k, ... (k = N // steps), reversed, with 0 first appended.

    Like ComfyUI, the result is not always ``steps + 1`` long (e.g. 7 steps give 9 values).
    """
    s = schedule
    x = 1
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    ss = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs += [float(s.sigmas[x])]
        x += ss
    sigs = sigs[::-1]
    return _float32(sigs)


def normal_scheduler(schedule: DiscreteSchedule, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps uniform between those of sigma_max and sigma_min; ``sgm`` takes ``steps + 1`` points, drops the last."""
    s = schedule
    start = s.timestep(s.sigma_max)
    end = s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(s.sigma(ts)) for ts in timesteps]
    if append_zero:
        sigs += [0.0]
    return _float32(sigs)


def beta_scheduler(schedule: DiscreteSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Timesteps at the quantiles of a Beta(0.6, 0.6) distribution (arXiv:2407.12173); repeated timesteps dropped.

    Needs scipy (``scipy.stats.beta.ppf``), which ComfyUI itself requires.
    """
    import numpy

    scipy_stats = optional_import("scipy.stats", "the beta scheduler")
    total_timesteps = len(schedule.sigmas) - 1
    ts = 1 - numpy.linspace(0, 1, steps, endpoint=False)
    ts = numpy.rint(scipy_stats.beta.ppf(ts, alpha, beta) * total_timesteps)
    sigs = []
    last_t = -1
    for t in ts:
        if t != last_t:
            sigs += [float(schedule.sigmas[int(t)])]
        last_t = t
    sigs += [0.0]
    return _float32(sigs)


def linear_quadratic_scheduler(
    schedule: DiscreteSchedule, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> torch.Tensor:
    """Mochi's schedule: linear then quadratic in ``sigma / sigma_max``; note it ends at 0 without appending one."""
    if steps == 1:
        sigma_schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear_sigma_schedule = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        threshold_noise_step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = threshold_noise_step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * threshold_noise_step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic_sigma_schedule = [
            quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)
        ]
        sigma_schedule = linear_sigma_schedule + quadratic_sigma_schedule + [1.0]
        sigma_schedule = [1.0 - x for x in sigma_schedule]
    return _float32(sigma_schedule) * schedule.sigma_max.cpu()


def kl_optimal_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Uniform in ``atan(sigma)`` (AUTOMATIC1111 PR 15608).

    Deviation from ComfyUI: for ``steps == 1`` ComfyUI divides 0 by 0 and returns ``[nan, 0]``; this returns
    ``[sigma_max, 0]`` (the limit of the formula) instead.
    """
    n = steps
    sigma_min, sigma_max = float(schedule.sigma_min), float(schedule.sigma_max)
    if n == 1:
        return _float32([sigma_max, 0.0])
    adj_idxs = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = adj_idxs.new_zeros(n + 1)
    sigmas[:-1] = (adj_idxs * math.atan(sigma_min) + (1 - adj_idxs) * math.atan(sigma_max)).tan_()
    return sigmas


Scheduler = Callable[[DiscreteSchedule, int], torch.Tensor]

# Same names and order as ComfyUI 0.3.75 ``comfy.samplers.SCHEDULER_HANDLERS`` (the first is KSampler's default).
SCHEDULERS: dict[str, Scheduler] = {
    "simple": simple_scheduler,
    "sgm_uniform": partial(normal_scheduler, sgm=True),
    "karras": karras_scheduler,
    "exponential": exponential_scheduler,
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": kl_optimal_scheduler,
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)


# --- KSampler's arithmetic on top of a scheduler -------------------------------------------------------------------


def _check_scheduler(scheduler: str) -> Scheduler:
    try:
        return SCHEDULERS[scheduler]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"unknown scheduler {scheduler!r}; choose one of: {', '.join(SCHEDULERS)}"
        ) from None


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise InvalidInputError(f"steps must be a whole number >= 1, got {steps!r}; 20 to 30 is usual.")


def _check_step_index(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidInputError(f"{name} must be a whole number >= 0 (or None), got {value!r}.")


def _check_denoise(denoise: float | None) -> None:
    if denoise is None:
        return
    if isinstance(denoise, bool) or not isinstance(denoise, numbers.Real) or not math.isfinite(denoise):
        raise InvalidInputError(f"denoise must be a number between 0 and 1, got {denoise!r}.")


MAX_SCHEDULE_STEPS = 100_000
"""Longest σ schedule computed: img2img computes ``int(steps / denoise)`` σs and keeps the last ``steps + 1``, so
a tiny denoise (1e-9 from an API call) would otherwise mean billions of σs and a server that hangs (ComfyUI's
KSampler does); a 1000-step model has nothing to gain past this."""


def _check_schedule_length(steps: int, denoise: float | None) -> None:
    """``steps`` and the ``int(steps / denoise)`` σs an img2img ``denoise`` computes, against ``MAX_SCHEDULE_STEPS``
    (both already checked to be numbers)."""
    if steps > MAX_SCHEDULE_STEPS:
        raise InvalidInputError(f"steps is {steps}; give at most {MAX_SCHEDULE_STEPS} (20 to 30 is usual).")
    length = steps / denoise if denoise is not None and 0.0 < denoise <= 0.9999 else steps
    if length > MAX_SCHEDULE_STEPS:
        raise InvalidInputError(
            f"steps {steps} with denoise {denoise:.3g} means a schedule of {length:.3g} steps; keep steps / denoise "
            f"at most {MAX_SCHEDULE_STEPS} (denoise ≥ {steps / MAX_SCHEDULE_STEPS:.3g} here), or set denoise to 0 to "
            "return the latent unchanged."
        )


def _calculate_sigmas(schedule: DiscreteSchedule, handler: Scheduler, steps: int, sampler_name: str | None) -> torch.Tensor:
    """The full sigma list for ``steps`` steps (``KSampler.calculate_sigmas``); ``sigmas_for`` has checked the inputs.

    For the samplers in ``DISCARD_PENULTIMATE_SIGMA_SAMPLERS`` one more step is computed and the penultimate sigma
    dropped, as ComfyUI does. Returns a float32 CPU tensor, normally ``steps + 1`` long, ending in 0.
    """
    discard_penultimate_sigma = sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    if discard_penultimate_sigma:
        steps += 1
    sigmas = handler(schedule, steps)
    if discard_penultimate_sigma:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def sigmas_for(
    schedule: DiscreteSchedule,
    scheduler: str,
    steps: int,
    denoise: float | None = 1.0,
    sampler_name: str | None = None,
) -> torch.Tensor:
    """The sigma list ComfyUI's KSampler samples with (``KSampler.set_steps``).

    Args:
        schedule: the model's noise schedule.
        scheduler: a name in ``SCHEDULERS``.
        steps: number of sampling steps, 1 … ``MAX_SCHEDULE_STEPS``.
        denoise: ``None`` or > 0.9999 = full txt2img schedule; <= 0 = nothing to do (an empty tensor; ComfyUI then
            returns the input latent unchanged); otherwise the schedule is computed for ``int(steps / denoise)``
            steps (at most ``MAX_SCHEDULE_STEPS``) and its last ``steps + 1`` sigmas kept (img2img).
        sampler_name: the sampler that will use the list; only matters for ``DISCARD_PENULTIMATE_SIGMA_SAMPLERS``.

    Returns:
        float32 CPU tensor [steps + 1] (fewer for ``ddim_uniform``/``beta`` where ComfyUI gives fewer), descending.

    Raises:
        InvalidInputError (a ValueError): unknown scheduler, steps < 1, a non-numeric denoise, or a schedule longer
        than ``MAX_SCHEDULE_STEPS``.
    """
    handler = _check_scheduler(scheduler)
    _check_steps(steps)
    _check_denoise(denoise)
    _check_schedule_length(steps, denoise)
    if denoise is None or denoise > 0.9999:
        return _calculate_sigmas(schedule, handler, steps, sampler_name)
    if denoise <= 0.0:
        return torch.zeros([0], dtype=torch.float32)
    new_steps = int(steps / denoise)
    sigmas = _calculate_sigmas(schedule, handler, new_steps, sampler_name)
    return sigmas[-(steps + 1):]


def advanced_sigmas(
    schedule: DiscreteSchedule,
    scheduler: str,
    steps: int,
    *,
    denoise: float | None = 1.0,
    sampler_name: str | None = None,
    start_at_step: int | None = None,
    end_at_step: int | None = None,
    force_full_denoise: bool = False,
) -> torch.Tensor:
    """The sigma list of ``KSamplerAdvanced`` (``KSampler.sample``'s ``start_step`` / ``last_step`` slicing).

    ``end_at_step`` (ComfyUI's ``last_step``) cuts the list after that step; with ``force_full_denoise`` (the node's
    ``return_with_leftover_noise = disable``) the new last sigma is set to 0. Then ``start_at_step`` drops the steps
    before it. An empty tensor means ComfyUI does no sampling at all and returns the input latent unchanged (no
    noise added): ``start_at_step`` at or past the last step, or ``denoise <= 0``.

    Returns:
        float32 CPU tensor (a fresh copy), descending.

    Raises:
        InvalidInputError (a ValueError): a negative or non-integer step index, or what ``sigmas_for`` refuses.
    """
    _check_step_index("start_at_step", start_at_step)
    _check_step_index("end_at_step", end_at_step)
    sigmas = sigmas_for(schedule, scheduler, steps, denoise, sampler_name).clone()
    if sigmas.shape[-1] == 0:
        return sigmas
    if end_at_step is not None and end_at_step < (len(sigmas) - 1):
        sigmas = sigmas[: end_at_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    if start_at_step is not None:
        if start_at_step < (len(sigmas) - 1):
            sigmas = sigmas[start_at_step:]
        else:
            logger.debug("start_at_step %d is past the last step: nothing to sample", start_at_step)
            return sigmas[:0]
    return sigmas
