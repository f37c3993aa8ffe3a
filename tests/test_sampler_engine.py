"""The sampler engine's KSampler behaviours on the tiny m9 model, without ComfyUI: cfg = 1 saving, advanced steps,
hand-overs, the no-noise path, strength weighting, cancelling, and the advanced node as a thin adapter.

(Parity of the numbers with ComfyUI's own KSampler is ``test_ksampler_parity.py``, in a real ComfyUI.)
"""

from __future__ import annotations

import pytest
import torch

SEED = 7
STEPS = 6
CFG = 6.0


@pytest.fixture(scope="module")
def conds(core, m9):
    (pos, _), (neg, _) = core.encode_prompt(m9.text_encoder, "一只猫"), core.encode_prompt(m9.text_encoder, "模糊")
    return pos, neg


class UNetCounter:
    """Wraps ``model.module.forward``: counts calls and the batch rows (images) the UNet evaluated."""

    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0

    def __enter__(self):
        inner = self.model.module.forward

        def forward(sample, *args, **kwargs):
            self.calls += 1
            self.rows += sample.shape[0]
            return inner(sample, *args, **kwargs)

        self.model.module.forward = forward
        return self

    def __exit__(self, *exc):
        del self.model.module.forward  # back to the class's method


def run(core, m9, conds, latent=None, **kwargs):
    positive, negative = conds
    options = {"seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", **kwargs}
    latent = torch.zeros(1, 4, 8, 8) if latent is None else latent
    return core.sample_latent(m9.model, positive, negative, latent, **options)


# ----------------------------------------------------------------------------------------------- cfg = 1


@pytest.mark.parametrize("sampler_name", ["euler", "heun", "dpmpp_2m"])
def test_cfg_1_skips_the_unconditional_pass(core, m9, conds, sampler_name):
    """cfg = 1 evaluates the UNet on half the rows (one per image instead of two), in as many calls."""
    with UNetCounter(m9.model) as guided:
        run(core, m9, conds, sampler_name=sampler_name, cfg=CFG)
    with UNetCounter(m9.model) as single:
        run(core, m9, conds, sampler_name=sampler_name, cfg=1.0)
    assert single.calls == guided.calls
    assert single.rows * 2 == guided.rows
    assert guided.rows == 2 * guided.calls


def test_cfg_1_ignores_the_negative(core, m9, conds):
    positive, _ = conds
    other = torch.randn_like(positive)
    a = run(core, m9, conds, cfg=1.0)
    b = run(core, m9, (positive, other), cfg=1.0)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------- advanced steps


def test_whole_range_equals_the_plain_sampler(core, m9, conds):
    plain = run(core, m9, conds)
    advanced = run(core, m9, conds, start_at_step=0, end_at_step=10000, force_full_denoise=True)
    assert torch.equal(plain, advanced)


@pytest.mark.parametrize("split", [1, 3, 5])
def test_two_halves_equal_one_run(core, m9, conds, split):
    """0→split with leftover noise, then split→end with no noise added: the full run (euler), up to the fp32 rounding
    of the hand-over through a raw latent (÷ then × 0.18215, as between two KSamplerAdvanced nodes)."""
    full = run(core, m9, conds)
    first = run(core, m9, conds, end_at_step=split)
    second = run(core, m9, conds, latent=first, add_noise=False, start_at_step=split)
    assert close(second, full)


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 2e-6) -> bool:
    """Equal up to a few fp32 ulps of the largest value (the tiny UNet's latents reach |x| ≈ 100)."""
    return (a - b).abs().max().item() <= rel * b.abs().max().item()


def test_leftover_noise_or_full_denoise(core, m9, conds):
    """Stopping early: return_with_leftover_noise keeps σ_end's noise; disable makes the last σ 0 (denoised)."""
    full = core.schedules.sigmas_for(m9.model.schedule, "normal", STEPS)
    noisy = run(core, m9, conds, end_at_step=3)
    assert torch.equal(noisy, run(core, m9, conds, sigmas=full[:4]))
    clean = run(core, m9, conds, end_at_step=3, force_full_denoise=True)
    assert torch.equal(clean, run(core, m9, conds, sigmas=torch.cat([full[:3], full.new_zeros(1)])))
    assert not torch.equal(noisy, clean)


def test_no_noise_path_does_not_depend_on_the_seed(core, m9, conds):
    latent = torch.randn(1, 4, 8, 8, generator=torch.manual_seed(3))
    a = run(core, m9, conds, latent=latent, add_noise=False, start_at_step=2, seed=1)
    b = run(core, m9, conds, latent=latent, add_noise=False, start_at_step=2, seed=2)
    assert torch.equal(a, b)
    c = run(core, m9, conds, latent=latent, add_noise=True, start_at_step=2, seed=1)
    assert not torch.equal(a, c)


def test_nothing_left_to_sample_returns_the_latent(core, m9, conds):
    latent = torch.randn(1, 4, 8, 8)
    assert torch.equal(run(core, m9, conds, latent=latent, start_at_step=STEPS), latent)
    assert torch.equal(run(core, m9, conds, latent=latent, denoise=0.0), latent)


def test_start_at_end_does_nothing(core, m9, conds):
    """start_at_step = end_at_step: no step to run; KSamplerAdvanced returns the latent untouched, no noise added."""
    latent = torch.randn(1, 4, 8, 8)
    with UNetCounter(m9.model) as counter:
        out = run(core, m9, conds, latent=latent, start_at_step=2, end_at_step=2)
    assert counter.calls == 0 and torch.equal(out, latent)


# ----------------------------------------------------------------------------------------------- conditioning


def test_strength_weights_the_combined_entries(core, m9, conds):
    """Two entries at strengths 1 and 3 sample like one entry holding their 1:3 weighted mean ε — which for the
    UNet's nonlinearity is not the mean context, so compare against the weighted mean of the two single runs' first
    step instead: one euler step is linear in the prediction."""
    positive, negative = conds
    other = torch.randn_like(positive)
    combined = [core.CondEntry(positive, strength=1.0), core.CondEntry(other, strength=3.0)]
    kwargs = {"steps": 1, "cfg": 1.0}
    mixed = core.sample_latent(m9.model, combined, negative, torch.zeros(1, 4, 8, 8), seed=SEED, sampler_name="euler",
                               scheduler="normal", **kwargs)  # fmt: skip
    a = core.sample_latent(m9.model, positive, negative, torch.zeros(1, 4, 8, 8), seed=SEED, sampler_name="euler",
                           scheduler="normal", **kwargs)  # fmt: skip
    b = core.sample_latent(m9.model, other, negative, torch.zeros(1, 4, 8, 8), seed=SEED, sampler_name="euler",
                           scheduler="normal", **kwargs)  # fmt: skip
    assert torch.allclose(mixed, (a + 3 * b) / 4, atol=1e-4)


def test_node_conditioning_options_become_the_engines_entries(core, pack, m9, conds):
    """A CONDITIONING list's strength and timestep-range options (ConditioningCombine, ConditioningSetTimestepRange)
    reach the engine as ``CondEntry`` fields; keys the UNet does not read (pooled_output) are dropped."""
    positive, negative = conds
    other = torch.randn_like(positive)
    combined = [
        [positive, {"strength": 3.0, "start_percent": 0.0, "end_percent": 0.5, "pooled_output": None}],
        [other, {"start_percent": 0.5, "end_percent": None}],
    ]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    node = pack.nodes.sampler.AltDiffusionSampler()
    (out,) = node.sample(m9.model, SEED, STEPS, CFG, "euler", "normal", combined, [[negative, {}]], latent)
    entries = [core.CondEntry(positive, strength=3.0, end_percent=0.5), core.CondEntry(other, start_percent=0.5)]
    assert torch.equal(out["samples"], run(core, m9, (entries, negative)))
    assert not torch.equal(out["samples"], run(core, m9, (positive, negative)))


# ----------------------------------------------------------------------------------------------- cancel


class CancelledError(Exception):
    pass


def test_callback_every_step_and_cancel_leaves_the_model_usable(core, m9, conds):
    seen = []

    def cancel_at_3(step, total, x, denoised):
        seen.append((step, total, tuple(denoised.shape)))
        if step == 2:
            raise CancelledError

    with pytest.raises(CancelledError):
        run(core, m9, conds, steps=50, callback=cancel_at_3)
    assert seen == [(i, 50, (1, 4, 8, 8)) for i in range(3)]
    assert torch.equal(run(core, m9, conds), run(core, m9, conds))
    assert not m9.model.module.training and all(not p.requires_grad for p in m9.model.module.parameters())


# ----------------------------------------------------------------------------------------------- the advanced node


def test_advanced_node_is_ksampleradvanced_shaped(pack, m9, conds):
    node = pack.nodes.sampler.AltDiffusionSamplerAdvanced
    spec = node.INPUT_TYPES()["required"]
    assert list(spec) == [
        "model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
        "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise",
    ]  # fmt: skip
    assert spec["add_noise"][0] == ["enable", "disable"]
    assert spec["return_with_leftover_noise"][0] == ["disable", "enable"]
    positive, negative = ([[context, {}]] for context in conds)  # the nodes take CONDITIONING
    latent = {"samples": torch.zeros(1, 4, 8, 8), "batch_index": [0]}
    (half,) = node().sample(m9.model, "enable", SEED, STEPS, CFG, "euler", "normal", positive, negative, latent, 0, 3, "enable")
    (done,) = node().sample(m9.model, "disable", 0, STEPS, CFG, "euler", "normal", positive, negative, half, 3, 10000, "disable")
    (full,) = pack.nodes.sampler.AltDiffusionSampler().sample(m9.model, SEED, STEPS, CFG, "euler", "normal", positive,
                                                              negative, latent)  # fmt: skip
    assert done["batch_index"] == [0]
    assert close(done["samples"], full["samples"])
