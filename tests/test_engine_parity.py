"""Parity with the reference: the node chain against diffusers' AltDiffusion components on the same weights and noise.

Tolerances (fp32, CPU): text encoder ≤ 1e-5; final latents and decoded images ≤ 1e-4, or — where the fp32 reference
is itself further than that from the exact result — bounds derived from the reference's own fp32 rounding error,
measured in the same test. The tiny random UNet barely denoises, so its final raw latents reach |x| ≈ 280–330, where
one fp32 ulp is 3e-5 and four steps accumulate 1e-4–9e-4 of rounding in any fp32 run; how much exactly depends on the
summation order of the CPU's kernels (AVX-512 or AVX2, MKL or oneDNN), so no fixed number holds on every machine.

The yardstick ``ref_error`` is the largest error, against the same reference run in float64, of four fp32 runs of the
reference that differ only in summation order (oneDNN's convolutions on or off × the CFG batch in one UNet call or
two). Ours is an fp32 run of the same math in yet another order, so its error must be of the same size: at most
``ORDER_SPREAD`` (2.5) × ``ref_error``. Errors of different orders spread among themselves (the reference's own orders
were up to 2.7× apart under AVX2 caps: 1.1e-3 and 4.1e-4 for one case); against the largest of the four, ours
measured 0.73–1.28× on an AVX512-BF16 EPYC and 0.93–1.70× under AVX2 caps, and the factor leaves ~1.5× room beyond
that for other CPUs' kernels. ``test_bounds_catch_wrong_results``
shows the bound failing a result with one deliberate error (cfg off by 0.5, the σ schedule one step off).
"""

from __future__ import annotations

import logging

import pytest
import torch
from factories import reference_components
from reference import (
    REFERENCE_SCHEDULERS,
    VP_SCHEDULERS,
    ddim_sigmas,
    decode,
    float32_noise,
    reference_denoise,
    reference_encode,
    timestep_schedulers,
)

PROMPTS = {
    "zh": "一只戴着红色帽子的猫，油画风格",
    "ja": "桜の木の下で眠る猫、水彩画",
    "ko": "해변에서 노는 강아지, 사진",
    "ar": "قطة تجلس على نافذة في يوم ممطر",
    "ru": "Кошка сидит на окне в дождливый день",
    "es": "Un gato durmiendo bajo un árbol de cerezo",
    "fr": "Un chat qui dort sous un cerisier, aquarelle",
    "it": "Un gatto che dorme sotto un albero di ciliegio",
    "en": "A cat sleeping under a cherry tree, watercolor",
}
logger = logging.getLogger(__name__)

LONG_PROMPT = ", ".join(PROMPTS.values()) * 2
CFG = 7.5
STEPS = 4
SEED = 1234
LATENT_TOL = 1e-4
ENCODER_TOL = 1e-5


@pytest.fixture(scope="module")
def chain(pack, m9_folder):
    """The node chain's classes and the loaded m9 parts."""
    nodes = pack.nodes
    model, text_encoder, vae, _ = nodes.loader.AltDiffusionLoader.load_path(m9_folder, "fp32")
    return nodes, model, text_encoder, vae


@pytest.fixture(scope="module")
def ref_m9(m9_folder):
    return reference_components(m9_folder)


@pytest.fixture(scope="module")
def ref_m9_f64(m9_folder):
    ref = reference_components(m9_folder)
    ref.unet = ref.unet.double()
    ref.vae = ref.vae.double()
    return ref


ORDER_SPREAD = 2.5
"""How far apart the float64 errors of fp32 runs in different summation orders may be (see the module docstring)."""


def in_orders(run) -> list[torch.Tensor]:
    """``run(split_batch)`` (an fp32 reference computation) in four summation orders: oneDNN's convolutions on and off,
    the CFG batch in one UNet call and in two. The first is the reference as diffusers runs it."""
    runs = []
    for onednn in (True, False):
        with torch.backends.mkldnn.flags(enabled=onednn):
            runs += [run(False), run(True)]
    return runs


def assert_latent_parity(ours: torch.Tensor, ref32: list[torch.Tensor], ref64: torch.Tensor) -> None:
    """See the module docstring: ours within ``ORDER_SPREAD`` × the fp32 reference's own error (the largest of its
    orders') of the float64 result, or ≤ 1e-4 where that is larger."""
    errors = [(r.double() - ref64).abs().max().item() for r in ref32]
    exact = (ours.double() - ref64).abs().max().item()
    logger.info("parity: ours vs float64 %.3g, vs the fp32 reference %.3g; the reference's orders vs float64 %s", exact,
                (ours - ref32[0]).abs().max().item(), ", ".join(f"{e:.3g}" for e in errors))  # fmt: skip
    bound = max(LATENT_TOL, ORDER_SPREAD * max(errors))
    assert exact <= bound, f"ours vs float64 {exact:.3g} > {bound:.3g}; the fp32 reference's orders vs float64 {errors}"


def _encode_both(text_encoder, ref, text):
    from comfyui_altdiffusion.altdiff_core import encode_prompt

    cond, _ = encode_prompt(text_encoder, text)
    windows = text_encoder.tokenizer.windows(text)
    return cond, reference_encode(ref, windows.input_ids, windows.attention_mask)


@pytest.mark.parametrize("variant_fixture", ["m9_folder", "m18_folder"])
@pytest.mark.parametrize("lang", [*PROMPTS, "empty", "long"])
def test_text_encoder_matches_reference(pack, request, variant_fixture, lang):
    folder = request.getfixturevalue(variant_fixture)
    ref = _reference_cached(folder)
    text_encoder = _ours_cached(pack, folder).text_encoder
    text = {"empty": "", "long": LONG_PROMPT}.get(lang, PROMPTS.get(lang))
    cond, expected = _encode_both(text_encoder, ref, text)
    assert cond.shape == expected.shape
    assert cond.shape[1] % 77 == 0 and cond.shape[2] == (1024 if "m18" in variant_fixture else 768)
    assert (cond - expected).abs().max().item() <= ENCODER_TOL


@pytest.mark.parametrize("lang", list(PROMPTS))
def test_token_ids_match_transformers_tokenizer(pack, m9_folder, lang):
    """Our sentencepiece + fairseq-offset ids equal transformers' XLMRobertaTokenizer's for the same text."""
    ref = _reference_cached(m9_folder)
    text_encoder = _ours_cached(pack, m9_folder).text_encoder
    ours = text_encoder.tokenizer.encode(PROMPTS[lang])
    theirs = ref.tokenizer(PROMPTS[lang], add_special_tokens=False)["input_ids"]
    assert ours == theirs


_CACHE: dict = {}


def _reference_cached(folder):
    key = ("ref", str(folder))
    if key not in _CACHE:
        _CACHE[key] = reference_components(folder)
    return _CACHE[key]


def _ours_cached(pack, folder):
    key = ("ours", str(folder))
    if key not in _CACHE:
        _CACHE[key] = pack.altdiff_core.load_folder(folder, dtype=torch.float32)
    return _CACHE[key]


def _node_txt2img(chain, sampler, scheduler, latent=None, denoise=1.0, prompt=PROMPTS["zh"], negative="", sigmas=None,
                  cfg=CFG):  # fmt: skip
    nodes, model, text_encoder, vae = chain
    (pos,) = nodes.text_encode.AltDiffusionTextEncode().encode(prompt, text_encoder)
    (neg,) = nodes.text_encode.AltDiffusionTextEncode().encode(negative, text_encoder)
    latent = latent if latent is not None else {"samples": torch.zeros(1, 4, 8, 8)}
    if sigmas is None:
        (out,) = nodes.sampler.AltDiffusionSampler().sample(
            model, SEED, STEPS, cfg, sampler, scheduler, pos, neg, latent, denoise
        )
    else:  # an explicit schedule (the timestep-based references' own), through the engine call the node makes
        out = {
            "samples": chain_engine(nodes).sample_latent(
                model,
                pos[0][0],  # the context the node unpacks from its CONDITIONING
                neg[0][0],
                latent["samples"],
                seed=SEED,
                steps=STEPS,
                cfg=cfg,
                sampler_name=sampler,
                scheduler=scheduler,
                sigmas=sigmas,
            )
        }
    (image,) = nodes.vae.AltDiffusionVAEDecode().decode(out, vae)
    return out["samples"], image, pos[0][0], neg[0][0]


def chain_engine(nodes):
    import comfyui_altdiffusion.altdiff_core as engine

    return engine


@pytest.mark.parametrize("sampler", list(REFERENCE_SCHEDULERS))
@pytest.mark.parametrize("scheduler", ["normal", "karras"])
def test_txt2img_matches_reference(chain, ref_m9, ref_m9_f64, sampler, scheduler):
    latent, image, cond, uncond = _node_txt2img(chain, sampler, scheduler)
    ref_raw, ref64 = _txt2img_references(chain[1], ref_m9, ref_m9_f64, sampler, scheduler, cond, uncond)
    assert_latent_parity(latent, ref_raw, ref64)
    assert (image - decode(ref_m9, ref_raw[0])).abs().max().item() <= LATENT_TOL


def _txt2img_references(model, ref_m9, ref_m9_f64, sampler, scheduler, cond, uncond):
    """diffusers' loop on our σ schedule: (the fp32 reference in its four orders, the float64 reference), raw latents."""
    from comfyui_altdiffusion.altdiff_core.schedules import sigmas_for

    sigmas = sigmas_for(model.schedule, scheduler, STEPS, 1.0, sampler_name=sampler)
    timesteps = model.schedule.timestep(sigmas[:-1]).float()
    noise = torch.randn((1, 4, 8, 8), generator=torch.manual_seed(SEED))
    vp = sampler in VP_SCHEDULERS
    ref_raw = in_orders(
        lambda split: reference_denoise(
            ref_m9, REFERENCE_SCHEDULERS[sampler](sigmas, timesteps), noise, cond, uncond, CFG, vp=vp,
            generator=torch.Generator().manual_seed(SEED), split_batch=split,
        ) / model.latent_scale
    )  # fmt: skip
    sched64 = REFERENCE_SCHEDULERS[sampler](sigmas.double(), timesteps.double())
    sched64.sigmas = sigmas.double()
    with float32_noise():
        ref64 = reference_denoise(
            ref_m9_f64, sched64, noise.double(), cond.double(), uncond.double(), CFG, vp=vp,
            generator=torch.Generator().manual_seed(SEED),
        ) / model.latent_scale  # fmt: skip
    return ref_raw, ref64


@pytest.mark.parametrize("mistake", ["cfg-off-by-0.5", "one-sigma-off"])
def test_bounds_catch_wrong_results(chain, ref_m9, ref_m9_f64, mistake):
    """The latent bound is tight enough to fail a result with one deliberate error: ours run with cfg 7.0 instead of
    7.5, or with the schedule's second σ moved halfway to the third (the engine call the node makes, given that
    schedule)."""
    from comfyui_altdiffusion.altdiff_core.schedules import sigmas_for

    model = chain[1]
    sigmas = sigmas_for(model.schedule, "normal", STEPS, 1.0, sampler_name="dpmpp_2m")
    if mistake == "cfg-off-by-0.5":
        latent, _, cond, uncond = _node_txt2img(chain, "dpmpp_2m", "normal", cfg=CFG - 0.5)
    else:
        wrong = sigmas.clone()
        wrong[1] = (sigmas[1] + sigmas[2]) / 2
        latent, _, cond, uncond = _node_txt2img(chain, "dpmpp_2m", "normal", sigmas=wrong)
    ref_raw, ref64 = _txt2img_references(model, ref_m9, ref_m9_f64, "dpmpp_2m", "normal", cond, uncond)
    with pytest.raises(AssertionError, match="ours vs float64"):
        assert_latent_parity(latent, ref_raw, ref64)


def test_encoder_bound_catches_one_wrong_token(pack, m9_folder):
    """One token id off by one in one window moves the conditioning far past ``ENCODER_TOL``."""
    ref = _reference_cached(m9_folder)
    text_encoder = _ours_cached(pack, m9_folder).text_encoder
    cond, expected = _encode_both(text_encoder, ref, PROMPTS["ja"])
    assert (cond - expected).abs().max().item() <= ENCODER_TOL
    windows = text_encoder.tokenizer.windows(PROMPTS["ja"])
    wrong_ids = windows.input_ids.clone()
    wrong_ids[0, 3] += 1
    wrong = reference_encode(ref, wrong_ids, windows.attention_mask)
    assert (cond - wrong).abs().max().item() > 100 * ENCODER_TOL


@pytest.mark.parametrize("sampler", ["ddim", "pndm"])
def test_timestep_samplers_match_reference(chain, ref_m9, ref_m9_f64, sampler):
    """ddim and pndm against diffusers' DDIMScheduler / PNDMScheduler from the folder's own scheduler config."""
    nodes, model, _, _ = chain
    ref_sched = timestep_schedulers(dict(ref_m9.scheduler.config), STEPS)[sampler]
    acp = ref_sched.alphas_cumprod
    if sampler == "ddim":
        sigmas = ddim_sigmas(ref_sched)
    else:  # PLMS runs its first timestep twice; the engine's pndm does that itself, so give it the distinct ones
        distinct = list(dict.fromkeys(int(t) for t in ref_sched.timesteps))
        sig = [float(((1 - acp[t]) / acp[t]).sqrt()) for t in distinct]
        sigmas = torch.tensor(sig + [float(((1 - ref_sched.final_alpha_cumprod) / ref_sched.final_alpha_cumprod).sqrt())])
    latent, _, cond, uncond = _node_txt2img(chain, sampler, "normal", sigmas=sigmas)
    noise = torch.randn((1, 4, 8, 8), generator=torch.manual_seed(SEED))
    # Below σ_max, KSampler starts from latent + noise·σ₀ (VE); the same start in VP space is that ÷ √(1+σ₀²).
    sigma0 = float(sigmas[0])
    final = torch.as_tensor(ref_sched.final_alpha_cumprod).sqrt()  # VP → VE at the last σ

    def run(ref, dtype, split=False):
        sched = timestep_schedulers(dict(ref_m9.scheduler.config), STEPS)[sampler]
        start = noise.to(dtype) * sigma0 / (1 + sigma0**2) ** 0.5
        out = reference_denoise(
            ref, sched, None, cond.to(dtype), uncond.to(dtype), CFG, vp=True, start_sample=start, split_batch=split
        )
        return out / final / model.latent_scale

    assert_latent_parity(latent, in_orders(lambda split: run(ref_m9, torch.float32, split)), run(ref_m9_f64, torch.float64))


def test_img2img_matches_reference(chain, ref_m9, ref_m9_f64):
    """denoise 0.6: KSampler's step arithmetic (int(steps/0.6) schedule, last steps+1 σ kept), same noise. The init
    latent is the reference VAE's own, in each precision; the final latent is held to the derived bound, as txt2img."""
    nodes, model, _, vae = chain
    from comfyui_altdiffusion.altdiff_core.schedules import sigmas_for

    image = torch.rand(1, 64, 64, 3, generator=torch.manual_seed(7))
    (init,) = nodes.vae.AltDiffusionVAEEncode().encode(image, vae)
    latent, _, cond, uncond = _node_txt2img(chain, "euler", "normal", latent=init, denoise=0.6)
    sigmas = sigmas_for(model.schedule, "normal", STEPS, 0.6, sampler_name="euler")
    assert len(sigmas) == STEPS + 1
    full = sigmas_for(model.schedule, "normal", int(STEPS / 0.6), 1.0, sampler_name="euler")
    assert torch.equal(sigmas, full[-(STEPS + 1) :])
    timesteps = model.schedule.timestep(sigmas[:-1]).float()
    noise = torch.randn((1, 4, 8, 8), generator=torch.manual_seed(SEED))
    pixels = image.permute(0, 3, 1, 2) * 2 - 1

    def run(ref, dtype, split=False):
        with torch.no_grad():
            ref_init = ref.vae.encode(pixels.to(dtype)).latent_dist.mode()
        sched = REFERENCE_SCHEDULERS["euler"](sigmas.to(dtype), timesteps.to(dtype))
        sched.sigmas = sched.sigmas.to(dtype)
        start = ref_init * model.latent_scale + noise.to(dtype) * float(sigmas[0])
        out = reference_denoise(ref, sched, None, cond.to(dtype), uncond.to(dtype), CFG, vp=False, start_sample=start,
                                split_batch=split)  # fmt: skip
        return ref_init, out / model.latent_scale

    ref_init, _ = run(ref_m9, torch.float32)
    assert (init["samples"] - ref_init).abs().max().item() <= LATENT_TOL
    ref32 = in_orders(lambda split: run(ref_m9, torch.float32, split)[1])
    assert_latent_parity(latent, ref32, run(ref_m9_f64, torch.float64)[1])


def test_bin_and_safetensors_folders_give_identical_images(pack, m9_folder, m9_bin_folder):
    """The legacy layout (.bin, pre-0.14 VAE keys) loads to the same numbers as the safetensors one."""
    outs = []
    for folder in (m9_folder, m9_bin_folder):
        loaded = _ours_cached(pack, folder)
        chain = (pack.nodes, loaded.model, loaded.text_encoder, loaded.vae)
        outs.append(_node_txt2img(chain, "euler", "normal")[1])
    assert torch.equal(outs[0], outs[1])
