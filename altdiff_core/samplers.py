"""Samplers in k-diffusion form, numerically identical to ComfyUI 0.3.75's (plus diffusers' PNDM/PLMS).

Every sampler has the signature::

    fn(denoise_fn, x, sigmas, *, seed, schedule, callback=None) -> x

* ``x``: float tensor [B, C, H, W] (any shape with the batch first), the *noised* latent in sigma ("variance
  exploding") space, ``x = x0 + sigma * eps``. For a full txt2img run the caller starts from
  ``noise * sqrt(1 + sigmas[0] ** 2)`` (ComfyUI's ``EPS.noise_scaling`` with max denoise), for img2img from
  ``latent + noise * sigmas[0]``. The result is the denoised latent, same shape and dtype, same space as
  ``x0`` (scaled latents: raw VAE latent * 0.18215).
* ``sigmas``: 1-D float32 tensor, descending, usually ending in 0 (see ``schedules.sigmas_for``). Length <= 1
  means nothing to do: ``x`` is returned unchanged.
* ``denoise_fn(x, sigma) -> denoised``: the model (with CFG already applied) as an x0 estimate of ``x``'s shape;
  ``sigma`` is a float tensor [B] (one sigma repeated over the batch). For an epsilon model
  ``denoised = x - eps(x / sqrt(sigma**2 + 1), schedule.timestep(sigma)) * sigma``.
* ``seed``: the KSampler seed. Ancestral / SDE samplers draw their extra noise exactly as ComfyUI does from it
  (a ``torch.Generator`` seeded with it on ``x``'s device, or a ``torchsde`` Brownian tree with it as entropy).
* ``schedule``: the model's ``DiscreteSchedule`` (most samplers work on sigmas alone and ignore it).
* ``callback(step_index, total_steps, x, denoised)`` is called once per step (``total_steps = len(sigmas) - 1``)
  for progress bars, previews and cancelling: to cancel, raise from it. ``x`` is the state the sampler reports, as
  ComfyUI reports it (for ``uni_pc`` that is its internal ``x / sqrt(1 + sigma**2)``-scaled state).

``SAMPLERS`` maps ComfyUI's sampler names (and ``pndm``) to a ``SamplerSpec``; ``sample(name, ...)`` looks up and
runs one. Nothing here imports ComfyUI; ``tests/test_sampling_math.py`` pins the results against ComfyUI's own
functions driven as ``KSAMPLER.sample`` drives them.

Provenance: the k-diffusion samplers are adapted from ComfyUI 0.3.75 comfy/k_diffusion/sampling.py (GPL-3.0),
originally k-diffusion by Katherine Crowson (MIT); ``deis``/``ipndm`` there come from zju-pi/diff-sampler
(Apache-2.0); ``uni_pc`` from ComfyUI's comfy/extra_samplers/uni_pc.py (GPL-3.0), originally wl-zhao/UniPC (MIT);
``pndm`` follows diffusers' ``PNDMScheduler`` (Apache-2.0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .compat import optional_import
from .errors import InvalidInputError
from .schedules import DISCARD_PENULTIMATE_SIGMA_SAMPLERS, DiscreteSchedule

logger = logging.getLogger(__name__)

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""``callback(step, total, x, denoised)``: called after each step (progress, previews); raise from it to cancel."""
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# KSampler runs every sampler with its defaults: eta = 1 and s_noise = 1 for the stochastic ones, no churn.
ETA = 1.0
S_NOISE = 1.0


# --- shared helpers (adapted from comfy/k_diffusion/sampling.py and utils.py) ---------------------------------------


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Appends dimensions to the end of a tensor until it has target_dims dimensions."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    expanded = x[(...,) + (None,) * dims_to_append]
    # MPS will get inf values if it tries to index into the new axes, but detaching fixes this.
    return expanded.detach().clone() if expanded.device.type == "mps" else expanded


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Converts a denoiser output to a Karras ODE derivative."""
    return (x - denoised) / _append_dims(sigma, x.ndim)


def _get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """The noise level to step down to (sigma_down) and the noise to add back (sigma_up) in an ancestral step."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _default_noise_sampler(x: torch.Tensor, seed: int | None) -> NoiseSampler:
    """Fresh Gaussian noise like ``x`` from a generator seeded once with ``seed`` (ComfyUI ``default_noise_sampler``)."""
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
    else:
        generator = None
    return lambda sigma, sigma_next: torch.randn(
        x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator
    )


class _BrownianTreeNoiseSampler:
    """Noise from a ``torchsde.BrownianTree`` (ComfyUI ``BrownianTreeNoiseSampler`` + ``BatchedBrownianTree``).

    ``cpu=True`` builds the tree on the CPU and moves its samples to ``x``'s device, which is what ComfyUI's
    non-"_gpu" SDE samplers do; the "_gpu" ones build it on ``x``'s device (different numbers on CUDA).
    """

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed: int | None, cpu: bool):
        torchsde = optional_import("torchsde", "the SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde, ...)")

        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.cpu_tree = cpu
        t0, t1, self.sign = self._sort(t0, t1)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, ()).item()
        if self.cpu_tree:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    @staticmethod
    def _sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def _w(self, t0, t1):
        t0, t1, sign = self._sort(t0, t1)
        device, dtype = t0.device, t0.dtype
        if self.cpu_tree:
            t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        w = torch.stack([self.tree(t0, t1)]).to(device=device, dtype=dtype) * (self.sign * sign)
        return w[0]

    def __call__(self, sigma, sigma_next):
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        return self._w(t0, t1) / (t1 - t0).abs().sqrt()


def _brownian_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, seed: int | None, cpu: bool = True):
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return _BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed, cpu=cpu)


def _report(callback: StepCallback | None, i: int, sigmas: torch.Tensor, x, denoised) -> None:
    if callback is not None:
        callback(i, len(sigmas) - 1, x, denoised)


def _half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """log(alpha / sigma) for an EPS model (``sigma_to_half_log_snr``)."""
    return sigma.log().neg()


def _half_log_snr_to_sigma(half_log_snr: torch.Tensor) -> torch.Tensor:
    return half_log_snr.neg().exp()


# --- first-order and Karras samplers ---------------------------------------------------------------------------------
# Adapted from ComfyUI 0.3.75 comfy/k_diffusion/sampling.py (GPL-3.0), originally k-diffusion by Katherine Crowson (MIT).


@torch.no_grad()
def sample_euler(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Euler steps (Karras et al. 2022, Algorithm 2 without churn). Also ComfyUI's ``ddim``."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = denoise_fn(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, i, sigmas, x, denoised)
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


@torch.no_grad()
def sample_euler_ancestral(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Ancestral sampling with Euler method steps."""
    eta, s_noise = ETA, S_NOISE
    noise_sampler = _default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        sigma_down, sigma_up = _get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, sigmas, x, denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = _to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Heun steps (Karras et al. 2022, Algorithm 2 without churn); Euler on the last step to sigma 0."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = denoise_fn(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, i, sigmas, x, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = denoise_fn(x_2, sigmas[i + 1] * s_in)
            d_2 = _to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


@torch.no_grad()
def sample_heunpp2(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Heun++ (third-order weights towards the end). From Carzit/sd-webui-samplers-scheduler (MIT) via ComfyUI."""
    s_in = x.new_ones([x.shape[0]])
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        # ComfyUI draws (and discards) torch.randn_like(x) from the global RNG here; without churn it is unused.
        sigma_hat = sigmas[i] * (0.0 + 1)
        denoised = denoise_fn(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, i, sigmas, x, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            denoised_2 = denoise_fn(x_2, sigmas[i + 1] * s_in)
            d_2 = _to_d(x_2, sigmas[i + 1], denoised_2)
            w = 2 * sigmas[0]
            w2 = sigmas[i + 1] / w
            w1 = 1 - w2
            d_prime = d * w1 + d_2 * w2
            x = x + d_prime * dt
        else:
            x_2 = x + d * dt
            denoised_2 = denoise_fn(x_2, sigmas[i + 1] * s_in)
            d_2 = _to_d(x_2, sigmas[i + 1], denoised_2)
            dt_2 = sigmas[i + 2] - sigmas[i + 1]
            x_3 = x_2 + d_2 * dt_2
            denoised_3 = denoise_fn(x_3, sigmas[i + 2] * s_in)
            d_3 = _to_d(x_3, sigmas[i + 2], denoised_3)
            w = 3 * sigmas[0]
            w2 = sigmas[i + 1] / w
            w3 = sigmas[i + 2] / w
            w1 = 1 - w2 - w3
            d_prime = w1 * d + w2 * d_2 + w3 * d_3
            x = x + d_prime * dt
    return x


@torch.no_grad()
def sample_dpm_2(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver-2-like midpoint steps in log-sigma (Karras et al. 2022, Algorithm 2 without churn)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = denoise_fn(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            dt = sigmas[i + 1] - sigma_hat
            x = x + d * dt
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            dt_1 = sigma_mid - sigma_hat
            dt_2 = sigmas[i + 1] - sigma_hat
            x_2 = x + d * dt_1
            denoised_2 = denoise_fn(x_2, sigma_mid * s_in)
            d_2 = _to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Ancestral sampling with DPM-Solver second-order steps."""
    eta, s_noise = ETA, S_NOISE
    noise_sampler = _default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        sigma_down, sigma_up = _get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, sigmas, x, denoised)
        d = _to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            dt_1 = sigma_mid - sigmas[i]
            dt_2 = sigma_down - sigmas[i]
            x_2 = x + d * dt_1
            denoised_2 = denoise_fn(x_2, sigma_mid * s_in)
            d_2 = _to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _linear_multistep_coeff(order, t, i, j):
    integrate = optional_import("scipy.integrate", "the lms sampler")

    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Linear multistep (order 4), coefficients by numerical integration (needs scipy)."""
    order = 4
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        d = _to_d(x, sigmas[i], denoised)
        ds.append(d)
        if len(ds) > order:
            ds.pop(0)
        _report(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [_linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
            x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=True))
    return x


# --- DPM-Solver++ family --------------------------------------------------------------------------------------------
# Adapted from ComfyUI 0.3.75 comfy/k_diffusion/sampling.py (GPL-3.0), originally k-diffusion by Katherine Crowson (MIT).


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Ancestral sampling with DPM-Solver++(2S) second-order steps."""
    eta, s_noise = ETA, S_NOISE
    noise_sampler = _default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])

    def sigma_fn(t):
        return t.neg().exp()

    def t_fn(sigma):
        return sigma.log().neg()

    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        sigma_down, sigma_up = _get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, sigmas, x, denoised)
        if sigma_down == 0:
            d = _to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = denoise_fn(x_2, sigma_fn(s) * s_in)
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _dpmpp_sde(denoise_fn, x, sigmas, seed, callback, cpu_tree):
    """DPM-Solver++ (stochastic), r = 1/2, Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    eta, s_noise, r = ETA, S_NOISE, 1 / 2
    noise_sampler = _brownian_noise_sampler(x, sigmas, seed, cpu=cpu_tree)
    s_in = x.new_ones([x.shape[0]])
    sigma_fn, lambda_fn = _half_log_snr_to_sigma, _half_log_snr
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        _report(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            lambda_s_1 = lambda_s + r * h
            fac = 1 / (2 * r)
            sigma_s_1 = sigma_fn(lambda_s_1)
            alpha_s = sigmas[i] * lambda_s.exp()
            alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            # Step 1
            sd, su = _get_ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
            lambda_s_1_ = sd.log().neg()
            h_ = lambda_s_1_ - lambda_s
            x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
            if eta > 0 and s_noise > 0:
                x_2 = x_2 + alpha_s_1 * noise_sampler(sigmas[i], sigma_s_1) * s_noise * su
            denoised_2 = denoise_fn(x_2, sigma_s_1 * s_in)
            # Step 2
            sd, su = _get_ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
            lambda_t_ = sd.log().neg()
            h_ = lambda_t_ - lambda_s
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
            if eta > 0 and s_noise > 0:
                x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_sde(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver++ (stochastic); Brownian tree on the CPU."""
    return _dpmpp_sde(denoise_fn, x, sigmas, seed, callback, cpu_tree=True)


@torch.no_grad()
def sample_dpmpp_sde_gpu(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver++ (stochastic); Brownian tree on x's device."""
    return _dpmpp_sde(denoise_fn, x, sigmas, seed, callback, cpu_tree=False)


@torch.no_grad()
def sample_dpmpp_2m(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver++(2M)."""
    s_in = x.new_ones([x.shape[0]])

    def sigma_fn(t):
        return t.neg().exp()

    def t_fn(sigma):
        return sigma.log().neg()

    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        _report(callback, i, sigmas, x, denoised)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _dpmpp_2m_sde(denoise_fn, x, sigmas, seed, callback, solver_type, cpu_tree):
    """DPM-Solver++(2M) SDE with Brownian-tree noise; ``solver_type`` 'midpoint' or 'heun'."""
    if len(sigmas) <= 1:
        return x
    eta, s_noise = ETA, S_NOISE
    noise_sampler = _brownian_noise_sampler(x, sigmas, seed, cpu=cpu_tree)
    s_in = x.new_ones([x.shape[0]])
    lambda_fn = _half_log_snr
    old_denoised = None
    h, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        _report(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                elif solver_type == "midpoint":
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver++(2M) SDE, midpoint; Brownian tree on the CPU."""
    return _dpmpp_2m_sde(denoise_fn, x, sigmas, seed, callback, "midpoint", cpu_tree=True)


@torch.no_grad()
def sample_dpmpp_2m_sde_gpu(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver++(2M) SDE, midpoint; Brownian tree on x's device."""
    return _dpmpp_2m_sde(denoise_fn, x, sigmas, seed, callback, "midpoint", cpu_tree=False)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver++(2M) SDE, Heun; Brownian tree on the CPU."""
    return _dpmpp_2m_sde(denoise_fn, x, sigmas, seed, callback, "heun", cpu_tree=True)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun_gpu(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver++(2M) SDE, Heun; Brownian tree on x's device."""
    return _dpmpp_2m_sde(denoise_fn, x, sigmas, seed, callback, "heun", cpu_tree=False)


def _dpmpp_3m_sde(denoise_fn, x, sigmas, seed, callback, cpu_tree):
    """DPM-Solver++(3M) SDE with Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    eta, s_noise = ETA, S_NOISE
    noise_sampler = _brownian_noise_sampler(x, sigmas, seed, cpu=cpu_tree)
    s_in = x.new_ones([x.shape[0]])
    lambda_fn = _half_log_snr
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        _report(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            if eta > 0 and s_noise > 0:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver++(3M) SDE; Brownian tree on the CPU."""
    return _dpmpp_3m_sde(denoise_fn, x, sigmas, seed, callback, cpu_tree=True)


@torch.no_grad()
def sample_dpmpp_3m_sde_gpu(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DPM-Solver++(3M) SDE; Brownian tree on x's device."""
    return _dpmpp_3m_sde(denoise_fn, x, sigmas, seed, callback, cpu_tree=False)


# --- DDPM / LCM / multistep (ipndm, deis, res_multistep, gradient estimation) ---------------------------------------
# Adapted from ComfyUI 0.3.75 comfy/k_diffusion/sampling.py and deis.py (GPL-3.0); ipndm/deis originally from
# zju-pi/diff-sampler (Apache-2.0).


def _ddpm_step(x, sigma, sigma_prev, noise, noise_sampler):
    """One ancestral DDPM step in variance-preserving space (``DDPMSampler_step``)."""
    alpha_cumprod = 1 / ((sigma * sigma) + 1)
    alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
    alpha = alpha_cumprod / alpha_cumprod_prev
    mu = (1.0 / alpha).sqrt() * (x - (1 - alpha) * noise / (1 - alpha_cumprod).sqrt())
    if sigma_prev > 0:
        mu += ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() * noise_sampler(sigma, sigma_prev)
    return mu


@torch.no_grad()
def sample_ddpm(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Ancestral DDPM (``generic_step_sampler`` with ``DDPMSampler_step``)."""
    noise_sampler = _default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        _report(callback, i, sigmas, x, denoised)
        x = _ddpm_step(
            x / torch.sqrt(1.0 + sigmas[i] ** 2.0), sigmas[i], sigmas[i + 1], (x - denoised) / sigmas[i], noise_sampler
        )
        if sigmas[i + 1] != 0:
            x *= torch.sqrt(1.0 + sigmas[i + 1] ** 2.0)
    return x


@torch.no_grad()
def sample_lcm(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """LCM: jump to the x0 estimate, then re-noise it to the next sigma with fresh noise."""
    noise_sampler = _default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        _report(callback, i, sigmas, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            # EPS.noise_scaling(sigma, noise, x) without max_denoise: noise * sigma, then += x.
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1].view(())
            noise += x
            x = noise
    return x


def _ipndm(denoise_fn, x, sigmas, callback, variable_step):
    max_order = 4
    s_in = x.new_ones([x.shape[0]])
    x_next = x
    t_steps = sigmas
    buffer_model = []
    for i in range(len(sigmas) - 1):
        t_cur = sigmas[i]
        t_next = sigmas[i + 1]
        x_cur = x_next
        denoised = denoise_fn(x_cur, t_cur * s_in)
        _report(callback, i, sigmas, x_cur, denoised)  # ComfyUI reports the initial x here (a slip); x_cur is the state
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif not variable_step:
            x_next = _ipndm_fixed_step(x_cur, t_cur, t_next, d_cur, buffer_model, order)
        else:
            x_next = _ipndm_variable_step(x_cur, t_steps, i, d_cur, buffer_model, order)
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur.detach()
        else:
            buffer_model.append(d_cur.detach())
    return x_next


def _ipndm_fixed_step(x_cur, t_cur, t_next, d_cur, buffer_model, order):
    if order == 2:
        return x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
    if order == 3:
        return x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
    return x_cur + (t_next - t_cur) * (
        55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2] - 9 * buffer_model[-3]
    ) / 24


def _ipndm_variable_step(x_cur, t_steps, i, d_cur, buffer_model, order):
    t_cur, t_next = t_steps[i], t_steps[i + 1]
    h_n = t_next - t_cur
    h_n_1 = t_cur - t_steps[i - 1]
    if order == 2:
        coeff1 = (2 + (h_n / h_n_1)) / 2
        coeff2 = -(h_n / h_n_1) / 2
        return x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1])
    h_n_2 = t_steps[i - 1] - t_steps[i - 2]
    if order == 3:
        temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
        coeff1 = (2 + (h_n / h_n_1)) / 2 + temp
        coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
        coeff3 = temp * h_n_1 / h_n_2
        return x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1] + coeff3 * buffer_model[-2])
    h_n_3 = t_steps[i - 2] - t_steps[i - 3]
    temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))) * (
        h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)
    ) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
    coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
    coeff2 = (
        -(h_n / h_n_1) / 2
        - (1 + h_n_1 / h_n_2) * temp1
        - (1 + (h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3)))) * temp2
    )
    coeff3 = temp1 * h_n_1 / h_n_2 + (
        (h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * (1 + h_n_2 / h_n_3)
    ) * temp2
    coeff4 = -temp2 * (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * h_n_1 / h_n_2
    return x_cur + (t_next - t_cur) * (
        coeff1 * d_cur + coeff2 * buffer_model[-1] + coeff3 * buffer_model[-2] + coeff4 * buffer_model[-3]
    )


@torch.no_grad()
def sample_ipndm(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Improved PNDM (fixed-step Adams-Bashforth up to order 4)."""
    return _ipndm(denoise_fn, x, sigmas, callback, variable_step=False)


@torch.no_grad()
def sample_ipndm_v(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Improved PNDM with variable-step coefficients."""
    return _ipndm(denoise_fn, x, sigmas, callback, variable_step=True)


def _np_log(t: torch.Tensor) -> torch.Tensor:
    """``numpy.log`` of a CPU tensor, as a tensor: ComfyUI's DEIS takes ``np.log`` of tensors (numpy's float32 log)."""
    import numpy as np

    return torch.from_numpy(np.asarray(np.log(t.numpy())))


def _deis_edm2t(edm_steps, epsilon_s=1e-3, sigma_min=0.002, sigma_max=80):
    """Map EDM sigmas to DEIS's VP time t, with the EDM defaults ComfyUI uses (not the model's sigma range)."""
    def vp_sigma_inv(beta_d, beta_min):
        return lambda sigma: ((beta_min**2 + 2 * beta_d * (sigma**2 + 1).log()).sqrt() - beta_min) / beta_d

    log_min = _np_log(torch.tensor(sigma_min).cpu() ** 2 + 1)
    log_max = _np_log(torch.tensor(sigma_max).cpu() ** 2 + 1)
    vp_beta_d = 2 * (log_min / epsilon_s - log_max) / (epsilon_s - 1)
    vp_beta_min = log_max - 0.5 * vp_beta_d
    t_steps = vp_sigma_inv(vp_beta_d.clone().detach().cpu(), vp_beta_min.clone().detach().cpu())(
        edm_steps.clone().detach().cpu()
    )
    return t_steps, vp_beta_min, vp_beta_d + vp_beta_min


def _deis_integrand(beta_0, beta_1, taus):
    with torch.inference_mode(mode=False):
        taus = taus.clone()
        beta_0 = beta_0.clone()
        beta_1 = beta_1.clone()
        with torch.enable_grad():
            taus.requires_grad_(True)
            alpha = torch.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
            log_alpha = alpha.log()
            log_alpha.sum().backward()
            d_log_alpha_dtau = taus.grad
    return -0.5 * d_log_alpha_dtau / torch.sqrt(alpha * (1 - alpha))


def _deis_poly(prev_t, j, taus):
    poly = 1
    for k in range(prev_t.shape[0]):
        if k == j:
            continue
        poly *= (taus - prev_t[k]) / (prev_t[j] - prev_t[k])
    return poly


def _deis_coeff_list(t_steps, max_order, n_points=10000):
    """DEIS 'tab' coefficients (``get_deis_coeff_list``): integrals over 10,000 points per step."""
    t_steps, beta_0, beta_1 = _deis_edm2t(t_steps)
    coeffs = []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        order = min(i + 1, max_order)
        if order == 1:
            coeffs.append([])
            continue
        taus = torch.linspace(t_cur, t_next, n_points)
        dtau = (t_next - t_cur) / n_points
        prev_t = t_steps[[i - k for k in range(order)]]
        integrand = _deis_integrand(beta_0, beta_1, taus)
        coeffs.append([torch.sum(integrand * _deis_poly(prev_t, j, taus)) * dtau for j in range(order)])
    return coeffs


@torch.no_grad()
def sample_deis(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """DEIS (time-AB, order 3, 'tab' coefficients)."""
    max_order = 3
    s_in = x.new_ones([x.shape[0]])
    x_next = x
    coeff_list = _deis_coeff_list(sigmas, max_order)
    buffer_model = []
    for i in range(len(sigmas) - 1):
        t_cur = sigmas[i]
        t_next = sigmas[i + 1]
        x_cur = x_next
        denoised = denoise_fn(x_cur, t_cur * s_in)
        _report(callback, i, sigmas, x_cur, denoised)  # ComfyUI reports the initial x here (a slip); x_cur is the state
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next <= 0:
            order = 1
        if order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:
            coeff_cur, coeff_prev1 = coeff_list[i]
            x_next = x_cur + coeff_cur * d_cur + coeff_prev1 * buffer_model[-1]
        else:
            coeff_cur, coeff_prev1, coeff_prev2 = coeff_list[i]
            x_next = x_cur + coeff_cur * d_cur + coeff_prev1 * buffer_model[-1] + coeff_prev2 * buffer_model[-2]
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur.detach()
        else:
            buffer_model.append(d_cur.detach())
    return x_next


def _res_multistep(denoise_fn, x, sigmas, seed, callback, eta):
    """RES second-order multistep (arXiv:2308.02157); ``eta`` > 0 makes it ancestral."""
    s_noise = S_NOISE
    noise_sampler = _default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])

    def sigma_fn(t):
        return t.neg().exp()

    def t_fn(sigma):
        return sigma.log().neg()

    def phi1_fn(t):
        return torch.expm1(t) / t

    def phi2_fn(t):
        return (phi1_fn(t) - 1.0) / t

    old_sigma_down = None
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        sigma_down, sigma_up = _get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, i, sigmas, x, denoised)
        if sigma_down == 0 or old_denoised is None:
            d = _to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            t, t_old, t_next, t_prev = t_fn(sigmas[i]), t_fn(old_sigma_down), t_fn(sigma_down), t_fn(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1_val, phi2_val = phi1_fn(-h), phi2_fn(-h)
            b1 = torch.nan_to_num(phi1_val - phi2_val / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2_val / c2, nan=0.0)
            x = sigma_fn(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = denoised
        old_sigma_down = sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """RES multistep, deterministic (eta = 0; ComfyUI still draws, and multiplies by 0, one noise per step)."""
    return _res_multistep(denoise_fn, x, sigmas, seed, callback, eta=0.0)


@torch.no_grad()
def sample_res_multistep_ancestral(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """RES multistep with ancestral noise (eta = 1)."""
    return _res_multistep(denoise_fn, x, sigmas, seed, callback, eta=ETA)


@torch.no_grad()
def sample_gradient_estimation(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """Euler with gradient estimation (gamma = 2; https://openreview.net/pdf?id=o2ND9v0CeK)."""
    ge_gamma = 2.0
    s_in = x.new_ones([x.shape[0]])
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = denoise_fn(x, sigmas[i] * s_in)
        d = _to_d(x, sigmas[i], denoised)
        _report(callback, i, sigmas, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = x + d * dt
            if i >= 1:
                d_bar = (ge_gamma - 1) * (d - old_d)
                x = x + d_bar * dt
        old_d = d
    return x


# --- UniPC ---------------------------------------------------------------------------------------------------------
# Adapted from ComfyUI 0.3.75 comfy/extra_samplers/uni_pc.py (GPL-3.0), originally wl-zhao/UniPC (MIT), trimmed to
# the path KSampler uses: SigmaConvert noise schedule, noise-prediction model, data prediction (predict_x0=True),
# no thresholding, 'multistep', 'time_uniform' over the given sigmas, lower_order_final, B(h) variants.


def _expand_dims(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v[(...,) + (None,) * (dims - 1)]


def _uni_log_alpha(sigma):
    """log(alpha_t) of ComfyUI's ``SigmaConvert`` (here the "time" t *is* sigma)."""
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _uni_alpha(t):
    return torch.exp(_uni_log_alpha(t))


def _uni_std(t):
    return torch.sqrt(1.0 - torch.exp(2.0 * _uni_log_alpha(t)))


def _uni_lambda(t):
    log_mean_coeff = _uni_log_alpha(t)
    log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean_coeff))
    return log_mean_coeff - log_std


class _UniPC:
    def __init__(self, denoise_fn: DenoiseFn, variant: str):
        self.denoise_fn = denoise_fn
        self.variant = variant

    def _noise_prediction(self, x, t):
        """``predict_eps_sigma`` under ``model_wrapper`` (model_type 'noise', guidance 'uncond')."""
        if t.reshape((-1,)).shape[0] == 1:
            t = t.expand(x.shape[0])
        sigma = t.view(t.shape[:1] + (1,) * (x.ndim - 1))
        model_input = x * ((sigma**2 + 1.0) ** 0.5)
        return (model_input - self.denoise_fn(model_input, t)) / sigma

    def model_fn(self, x, t):
        """Data (x0) prediction in the solver's scaled space."""
        noise = self._noise_prediction(x, t)
        dims = x.dim()
        alpha_t, sigma_t = _uni_alpha(t), _uni_std(t)
        return (x - _expand_dims(sigma_t, dims) * noise) / _expand_dims(alpha_t, dims)

    def bh_update(self, x, model_prev_list, t_prev_list, t, order, use_corrector=True):
        """``multistep_uni_pc_bh_update`` with predict_x0 and no given x_t."""
        if len(t.shape) == 0:
            t = t.view(-1)
        dims = x.dim()
        t_prev_0 = t_prev_list[-1]
        lambda_prev_0 = _uni_lambda(t_prev_0)
        lambda_t = _uni_lambda(t)
        model_prev_0 = model_prev_list[-1]
        sigma_prev_0, sigma_t = _uni_std(t_prev_0), _uni_std(t)
        log_alpha_t = _uni_log_alpha(t)
        alpha_t = torch.exp(log_alpha_t)
        h = lambda_t - lambda_prev_0

        rks = []
        D1s = []
        for i in range(1, order):
            t_prev_i = t_prev_list[-(i + 1)]
            model_prev_i = model_prev_list[-(i + 1)]
            lambda_prev_i = _uni_lambda(t_prev_i)
            rk = ((lambda_prev_i - lambda_prev_0) / h)[0]
            rks.append(rk)
            D1s.append((model_prev_i - model_prev_0) / rk)
        rks = torch.tensor([float(r) for r in rks] + [1.0], device=x.device)

        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        B_h = _UNIPC_B_H[self.variant](hh)
        R = []
        b = []
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        R = torch.stack(R)
        b = torch.tensor([float(v) for v in b], device=x.device)

        if len(D1s) > 0:
            D1s = torch.stack(D1s, dim=1)
            if order == 2:
                rhos_p = torch.tensor([0.5], device=b.device)
            else:
                rhos_p = torch.linalg.solve(R[:-1, :-1], b[:-1])
        else:
            D1s = None
        if use_corrector:
            if order == 1:
                rhos_c = torch.tensor([0.5], device=b.device)
            else:
                rhos_c = torch.linalg.solve(R, b)

        model_t = None
        x_t_ = _expand_dims(sigma_t / sigma_prev_0, dims) * x - _expand_dims(alpha_t * h_phi_1, dims) * model_prev_0
        pred_res = torch.tensordot(D1s, rhos_p, dims=([1], [0])) if D1s is not None else 0
        x_t = x_t_ - _expand_dims(alpha_t * B_h, dims) * pred_res
        if use_corrector:
            model_t = self.model_fn(x_t, t)
            corr_res = torch.tensordot(D1s, rhos_c[:-1], dims=([1], [0])) if D1s is not None else 0
            D1_t = model_t - model_prev_0
            x_t = x_t_ - _expand_dims(alpha_t * B_h, dims) * (corr_res + rhos_c[-1] * D1_t)
        return x_t, model_t

    def sample(self, x, timesteps, order, callback, sigmas):
        """``UniPC.sample`` with method='multistep', lower_order_final=True."""
        steps = len(timesteps) - 1
        for step_index in range(steps):
            if step_index == 0:
                vec_t = timesteps[0].expand(x.shape[0])
                model_prev_list = [self.model_fn(x, vec_t)]
                t_prev_list = [vec_t]
            elif step_index < order:
                init_order = step_index
                vec_t = timesteps[init_order].expand(x.shape[0])
                x, model_x = self.bh_update(x, model_prev_list, t_prev_list, vec_t, init_order, use_corrector=True)
                if model_x is None:
                    model_x = self.model_fn(x, vec_t)
                model_prev_list.append(model_x)
                t_prev_list.append(vec_t)
            else:
                extra_final_step = 1 if step_index == (steps - 1) else 0
                for step in range(step_index, step_index + 1 + extra_final_step):
                    vec_t = timesteps[step].expand(x.shape[0])
                    step_order = min(order, steps + 1 - step)
                    use_corrector = step != steps  # no corrector at the very last step
                    x, model_x = self.bh_update(x, model_prev_list, t_prev_list, vec_t, step_order, use_corrector)
                    for i in range(order - 1):
                        t_prev_list[i] = t_prev_list[i + 1]
                        model_prev_list[i] = model_prev_list[i + 1]
                    t_prev_list[-1] = vec_t
                    if step < steps:
                        if model_x is None:
                            model_x = self.model_fn(x, vec_t)
                        model_prev_list[-1] = model_x
            _report(callback, step_index, sigmas, x, model_prev_list[-1])
        return x


_UNIPC_B_H: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bh1": lambda hh: hh,
    "bh2": torch.expm1,
}


def _unipc(denoise_fn, noise, sigmas, callback, variant):
    """``sample_unipc``: UniPC on ComfyUI's sigmas, the final 0 replaced by 0.001."""
    if len(sigmas) <= 1:
        return noise
    timesteps = sigmas.clone()
    if sigmas[-1] == 0:
        timesteps[-1] = 0.001
    noise = noise / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    order = min(3, len(timesteps) - 2)
    x = _UniPC(denoise_fn, variant).sample(noise, timesteps, order, callback, sigmas)
    return x / _uni_alpha(timesteps[-1])


@torch.no_grad()
def sample_uni_pc(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """UniPC (B(h) = h, order 3)."""
    return _unipc(denoise_fn, x, sigmas, callback, "bh1")


@torch.no_grad()
def sample_uni_pc_bh2(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """UniPC (B(h) = e^h - 1, order 3)."""
    return _unipc(denoise_fn, x, sigmas, callback, "bh2")


# --- PNDM / PLMS (diffusers) ---------------------------------------------------------------------------------------
# Follows diffusers PNDMScheduler (Apache-2.0) with skip_prk_steps=True: step_plms and _get_prev_sample, rewritten over
# an arbitrary sigma list (alpha_cumprod = 1 / (1 + sigma^2)); not part of ComfyUI.


def _pndm_prev_sample(x: torch.Tensor, sigma, sigma_next, eps: torch.Tensor) -> torch.Tensor:
    """diffusers ``_get_prev_sample`` (formula (9) of the PNDM paper), with VE <-> VP conversion around it.

    The scalar coefficients are computed in float64 from the float32 sigmas; a final sigma of 0 gives
    alpha_prev = 1, i.e. the x0 prediction.
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    alpha_prod_t = 1.0 / (1.0 + sigma * sigma)
    alpha_prod_t_prev = 1.0 / (1.0 + sigma_next * sigma_next)
    beta_prod_t = 1.0 - alpha_prod_t
    beta_prod_t_prev = 1.0 - alpha_prod_t_prev
    sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
    denom = alpha_prod_t * beta_prod_t_prev**0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
    eps_coeff = (alpha_prod_t_prev - alpha_prod_t) / denom
    vp_in = alpha_prod_t**0.5  # x_vp = x * sqrt(acp_t)
    vp_out = (1.0 + sigma_next * sigma_next) ** 0.5  # x = x_vp * sqrt(1 + sigma_next^2)
    return (x * (sample_coeff * vp_in) - eps * eps_coeff) * vp_out


def _plms_eps(ets: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of the last 1-4 noise predictions (diffusers ``step_plms``)."""
    if len(ets) == 1:
        return ets[-1]
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / 2
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    return (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])


@torch.no_grad()
def sample_pndm(denoise_fn, x, sigmas, *, seed, schedule, callback=None):
    """PLMS, the AltDiffusion pipelines' own scheduler (diffusers PNDMScheduler, skip_prk_steps=True).

    Like diffusers, the first step is taken twice (Euler, then re-done with the mean of both noise predictions), so
    N steps cost N + 1 model calls when N >= 2; later steps use up to four past noise predictions.
    """
    s_in = x.new_ones([x.shape[0]])
    ets: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_fn(x, sigma * s_in)
        eps = (x - denoised) / sigma
        _report(callback, i, sigmas, x, denoised)
        ets = (ets + [eps])[-4:]
        x_next = _pndm_prev_sample(x, sigma, sigma_next, _plms_eps(ets))
        if i == 0 and len(sigmas) > 2:
            # diffusers' counter == 1 step: evaluate at the Euler result, redo the step with the averaged noise
            eps_2 = (x_next - denoise_fn(x_next, sigma_next * s_in)) / sigma_next
            x_next = _pndm_prev_sample(x, sigma, sigma_next, (eps_2 + eps) / 2)
        x = x_next
    return x


# --- the table -----------------------------------------------------------------------------------------------------

Sampler = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: its function, whether it draws noise from ``seed``, and ComfyUI's sigma handling for it.

    Attributes:
        name: its key in ``SAMPLERS`` (ComfyUI's name).
        fn: ``fn(denoise_fn, x, sigmas, *, seed, schedule, callback=None) -> x``.
        stochastic: True when the result depends on ``seed`` beyond the initial noise (ancestral / SDE).
        discard_penultimate_sigma: True when KSampler computes one more step and drops the penultimate sigma;
            pass the sampler name to ``schedules.sigmas_for`` and it does so.
        description: one line for tooltips.
        random_inpaint_noise: True for ComfyUI's ``ddim``: with a noise mask, ComfyUI re-noises the kept area with
            ``torch.randn(shape, generator=torch.manual_seed(seed + 1))`` instead of the initial noise
            (``KSAMPLER(inpaint_options={"random": True})``); the sampler itself is plain Euler.
    """

    name: str
    fn: Sampler
    stochastic: bool
    discard_penultimate_sigma: bool
    description: str
    random_inpaint_noise: bool = False

    def run(
        self,
        denoise_fn: DenoiseFn,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        seed: int,
        schedule: DiscreteSchedule,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run this sampler from ``x`` (noised, sigma space) along ``sigmas``, a 1-D tensor its caller has checked
        (``sample`` does, and so does ``denoise.sample_latent``); see the module docstring.

        Returns ``x`` unchanged when ``len(sigmas) <= 1``.
        """
        if len(sigmas) <= 1:
            return x
        logger.debug(
            "sampling %s: %d steps, sigma %.4g -> %.4g", self.name, len(sigmas) - 1, float(sigmas[0]), float(sigmas[-1])
        )
        return self.fn(denoise_fn, x, sigmas, seed=seed, schedule=schedule, callback=callback)


def _spec(name: str, fn: Sampler, stochastic: bool, description: str) -> tuple[str, SamplerSpec]:
    discard = name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    return name, SamplerSpec(name, fn, stochastic, discard, description, random_inpaint_noise=name == "ddim")


# In ComfyUI's KSampler order (KSAMPLER_NAMES, then ddim/uni_pc), then pndm. Left out: the *_cfg_pp samplers (they need
# the unguided prediction, which a denoise_fn does not give), dpm_fast, dpm_adaptive, er_sde, seeds_2/3, sa_solver*.
# The sampler nodes offer every name here: each matches ComfyUI's KSampler (tests/test_ksampler_parity.py: bit-identical
# on a shared UNet module, within 1e-3 on the full-size UNet in a real ComfyUI), plus pndm, which KSampler does not
# have. A sampler that stops matching is removed from this table.
SAMPLERS: dict[str, SamplerSpec] = dict(
    [
        _spec("euler", sample_euler, False, "Euler: one model call per step; simple and predictable."),
        _spec("euler_ancestral", sample_euler_ancestral, True, "Euler with fresh noise each step (eta 1)."),
        _spec("heun", sample_heun, False, "Heun: second order, two model calls per step."),
        _spec("heunpp2", sample_heunpp2, False, "Heun++: up to three model calls per step."),
        _spec("dpm_2", sample_dpm_2, False, "DPM-Solver-2 midpoint steps, two model calls per step."),
        _spec("dpm_2_ancestral", sample_dpm_2_ancestral, True, "DPM-2 with fresh noise each step."),
        _spec("lms", sample_lms, False, "Linear multistep, order 4 (needs scipy)."),
        _spec("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral, True, "DPM-Solver++(2S) with fresh noise each step."),
        _spec("dpmpp_sde", sample_dpmpp_sde, True, "DPM-Solver++ SDE, two model calls per step (Brownian noise)."),
        _spec("dpmpp_sde_gpu", sample_dpmpp_sde_gpu, True, "dpmpp_sde with the Brownian tree on the GPU."),
        _spec("dpmpp_2m", sample_dpmpp_2m, False, "DPM-Solver++(2M): fast, good at 20-30 steps."),
        _spec("dpmpp_2m_sde", sample_dpmpp_2m_sde, True, "DPM-Solver++(2M) SDE, midpoint (Brownian noise)."),
        _spec("dpmpp_2m_sde_gpu", sample_dpmpp_2m_sde_gpu, True, "dpmpp_2m_sde with the Brownian tree on the GPU."),
        _spec("dpmpp_2m_sde_heun", sample_dpmpp_2m_sde_heun, True, "DPM-Solver++(2M) SDE, Heun variant."),
        _spec("dpmpp_2m_sde_heun_gpu", sample_dpmpp_2m_sde_heun_gpu, True, "dpmpp_2m_sde_heun, tree on the GPU."),
        _spec("dpmpp_3m_sde", sample_dpmpp_3m_sde, True, "DPM-Solver++(3M) SDE (Brownian noise)."),
        _spec("dpmpp_3m_sde_gpu", sample_dpmpp_3m_sde_gpu, True, "dpmpp_3m_sde with the Brownian tree on the GPU."),
        _spec("ddpm", sample_ddpm, True, "Ancestral DDPM steps."),
        _spec("lcm", sample_lcm, True, "LCM: for latent-consistency models, 4-8 steps."),
        _spec("ipndm", sample_ipndm, False, "Improved PNDM, fourth-order Adams-Bashforth."),
        _spec("ipndm_v", sample_ipndm_v, False, "Improved PNDM with variable-step coefficients."),
        _spec("deis", sample_deis, False, "DEIS, third-order exponential integrator."),
        _spec("res_multistep", sample_res_multistep, False, "RES second-order multistep."),
        _spec("res_multistep_ancestral", sample_res_multistep_ancestral, True, "RES multistep with fresh noise."),
        _spec("gradient_estimation", sample_gradient_estimation, False, "Euler with gradient estimation."),
        _spec("ddim", sample_euler, False, "ComfyUI's ddim, which is Euler (deterministic DDIM, eta 0)."),
        _spec("uni_pc", sample_uni_pc, False, "UniPC, order 3: good in 10-20 steps."),
        _spec("uni_pc_bh2", sample_uni_pc_bh2, False, "UniPC with the B(h) = e^h - 1 variant."),
        _spec("pndm", sample_pndm, False, "PLMS, the AltDiffusion pipelines' default scheduler (diffusers PNDM)."),
    ]
)
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
"""The names, in the table's order: what the sampler nodes and the command line offer."""


def get_sampler(name: str) -> SamplerSpec:
    """The ``SamplerSpec`` for ``name``; raises InvalidInputError (a ValueError) naming the choices otherwise."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}") from None


def sample(
    name: str,
    denoise_fn: DenoiseFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    seed: int,
    schedule: DiscreteSchedule,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run sampler ``name`` from ``x`` (noised, sigma space) along ``sigmas``; see the module docstring.

    Returns ``x`` unchanged when ``len(sigmas) <= 1``.

    Raises:
        InvalidInputError (a ValueError): an unknown ``name``, or ``sigmas`` that is not 1-D.
    """
    spec = get_sampler(name)
    if sigmas.ndim != 1:
        raise InvalidInputError(f"sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}.")
    return spec.run(denoise_fn, x, sigmas, seed=seed, schedule=schedule, callback=callback)
