"""The default dtype's drift from fp32: one seed and prompt through the node chain (text encode → sampler → VAE decode),
loaded as ``auto`` and as ``fp32``, compared at the conditioning, the final latent and the decoded image (max and mean
absolute difference). Run with ``-o log_cli=true --log-cli-level=INFO`` to read the numbers.

``auto`` is bf16 on a CPU with native bf16 (AVX512-BF16, AMX), fp16 on CUDA (VAE in bf16 where the GPU has it) and fp32
on any other CPU. Where it is fp32 (an AVX2 CPU, CI's second pass with the AVX2 caps) the default path *is* the fp32
path: the test asserts it bit-identical to a separate fp32 run instead of skipping (this checks that ``auto`` loaded
fp32 parts and that the chain is deterministic; there is no rounding to bound). The ``bf16`` case runs bf16 by name
on every CPU (natively, or under the AVX2 caps through torch's slower emulated kernels), so bf16's drift is pinned on
both CPU paths. On a GPU (``bench/gpu_check.sh``) the same module runs on CUDA, ``auto`` being fp16 there; the fp32
runs then switch TF32 off, which would otherwise give fp32 convolutions fp16's 11-bit significand.

**The bound.** bf16 keeps 8 significant bits: one rounding moves x by at most u·|x|, u = 2⁻⁸ ≈ 3.9e-3 (fp16: 2⁻¹¹).
The chain rounds every weight and every intermediate result, and the errors grow through the layers and the steps —
most in the sampler, where CFG 7.5 multiplies the difference of the two UNet predictions' errors and σ (up to 14.6)
scales ε's error into the latent. So the drift is G·u·max|x| with a growth factor G of this model and these settings,
which is not derived by hand but measured in the same test by a known perturbation of exactly the dtype's size: the
*emulation* (``emulate_in_fp32``), the fp32 chain given the dtype's weights (the same values bit for bit, checked) and
with the inputs and outputs of every module rounded to the dtype. Its drift Y from the fp32 run is what rounding to
that dtype at every layer does to this chain. Measured (bf16, m9 and m18, both CPU paths): G = Y_max / (u·max|x|) ≈
1.8 for the conditioning (max|x| 0.43–0.48), 6.1–6.7 for the latent (max|x| 216–282) and 5.1–7.2 for the image
(max|x| 1). Rounding the weights alone would be
too small a yardstick: in fp32 it moves them (m9) 0.0013, 0.65 and 0.004, a tenth to a half of bf16's drift; most of
that comes from rounding the activations.

The real run rounds at the same places and a few more (inside modules: residual additions, attention), and its kernels
sum in other orders, so its drift is another draw of the same size: its max at most ``MAX_SPREAD`` (3) × Y's max, its
mean at most ``MEAN_SPREAD`` (2) × Y's mean. The factors come from that ratio's spread over 64 draws (m9 and m18 × 8
seeds × 2 prompts, bf16 on an AVX512-BF16 EPYC, natively and under the AVX2 caps): 0.75–1.98 for the max (a max over
256 latent values is a noisy statistic), 0.83–1.38 for the mean (an average is a steady one); each factor leaves ~1.5×
room beyond the largest. For fp16 on CUDA the factors were not measured (no GPU here); the GPU check reports them.

``test_bound_catches_wrong_results``: one word of the prompt changed (a tokenizer error), the UNet's last transformer
block and the VAE decoder's last ResNet block skipped (a layer left out) each fail the bound on the max and on the mean:
by 40× and 16× (conditioning), 2.0–2.1× and 3.1× (latent), 2.1× and 2.5× (image), on both CPU paths. A wrong cfg is
not among them: the tiny random UNet hardly responds to its conditioning, so cfg 10 instead of 7.5 moves the bf16
latent only 1.1× as far from fp32 as bf16's own rounding does (the text encoder's layer -2 instead of -1 moves the
conditioning 1.6×); in these models those mistakes are within rounding noise, and no bound derived from rounding can
tell them apart.
"""

from __future__ import annotations

import contextlib
import itertools
import logging

import pytest
import torch

logger = logging.getLogger(__name__)

PROMPT = "一只戴着红色帽子的猫，油画风格"
SEED = 1234
STEPS = 4
CFG = 7.5
SAMPLER, SCHEDULER = "dpmpp_2m", "karras"  # the sampler node's defaults
STAGES = ("conditioning", "latent", "image")

MAX_SPREAD = 3.0
"""How far the real run's max drift may be from the emulation's, as a factor (see the module docstring)."""
MEAN_SPREAD = 2.0
"""How far the real run's mean drift may be from the emulation's, as a factor (see the module docstring)."""


@pytest.fixture(scope="module", autouse=True)
def fp32_without_tf32():
    """fp32 on a GPU as fp32: TF32 off for this module (a no-op on the CPU)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run_chain(nodes, parts, prompt: str = PROMPT) -> dict[str, torch.Tensor]:
    """Text encode → sampler → decode through the node classes: {stage: float32 CPU tensor}."""
    model, text_encoder, vae = parts
    encode = nodes.text_encode.AltDiffusionTextEncode().encode
    (positive,) = encode(prompt, text_encoder)
    (negative,) = encode("", text_encoder)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (out,) = nodes.sampler.AltDiffusionSampler().sample(
        model, SEED, STEPS, CFG, SAMPLER, SCHEDULER, positive, negative, latent, 1.0
    )
    (image,) = nodes.vae.AltDiffusionVAEDecode().decode(out, vae)
    return {"conditioning": positive[0][0], "latent": out["samples"], "image": image}


def dtypes(parts) -> tuple[torch.dtype, ...]:
    return tuple(part.dtype for part in parts)


def rounded(x, dtype: torch.dtype):
    """``x`` with its values rounded to ``dtype`` (and kept in x's dtype). Left as they are: non-float values, 1-D
    tensors (the UNet's timesteps, which stay fp32 in the real run too: diffusers casts their sinusoidal embedding, a
    module output, to the UNet's dtype) and values beyond the dtype's range (such as fp32's minimum standing for -∞ in
    an additive attention mask, which fp16 cannot hold; the real run builds its mask from its own dtype's minimum)."""
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim >= 2):
        return x
    return torch.where(x.abs() <= torch.finfo(dtype).max, x.to(dtype).to(x.dtype), x)


def _rounded_tree(value, dtype: torch.dtype):
    if isinstance(value, dict):  # diffusers' BaseOutput and transformers' ModelOutput (OrderedDicts)
        for key in list(value):
            value[key] = _rounded_tree(value[key], dtype)
        return value
    if type(value) is tuple:
        return tuple(_rounded_tree(v, dtype) for v in value)
    return rounded(value, dtype)


def emulate_in_fp32(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Make the fp32 ``module`` compute like its ``dtype`` copy, up to the rounding inside modules: its weights
    rounded to ``dtype``, and the inputs and outputs of every module in it rounded on the way in and out (hooks)."""
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype))

    def round_inputs(_module, args, kwargs):
        return _rounded_tree(args, dtype), {key: _rounded_tree(v, dtype) for key, v in kwargs.items()}

    for inner in module.modules():
        inner.register_forward_pre_hook(round_inputs, with_kwargs=True)
        inner.register_forward_hook(lambda _module, _args, out: _rounded_tree(out, dtype))


def assert_same_weights(emulated: torch.nn.Module, real: torch.nn.Module) -> None:
    ours, theirs = emulated.state_dict(), real.state_dict()
    assert ours.keys() == theirs.keys()
    differ = [k for k, v in ours.items() if v.is_floating_point() and not torch.equal(v, theirs[k].to(v.dtype))]
    assert not differ, f"the emulation's weights differ from the real run's in {differ[:5]}"


class Runs:
    """The chain's outputs per variant and dtypes, each computed once per module."""

    def __init__(self, pack, folders):
        self.nodes, self.core, self.folders, self._done = pack.nodes, pack.altdiff_core, folders, {}

    def parts(self, variant: str, choice: str) -> tuple:
        """(model, text encoder, VAE) as the loader node loads them with dtype ``choice``."""
        load = self.nodes.loader.AltDiffusionLoader.load_path
        return self._once(("parts", variant, choice), lambda: load(self.folders[variant], choice)[:3])

    def run(self, variant: str, choice: str) -> dict[str, torch.Tensor]:
        """The chain run with the parts loaded as ``choice``: a run of its own even where two choices mean the same
        dtypes (so that ``auto`` = fp32 is compared with a second, independent fp32 run)."""
        return self._once(("run", variant, choice), lambda: run_chain(self.nodes, self.parts(variant, choice)))

    def emulation(self, variant: str, parts) -> dict[str, torch.Tensor]:
        """The yardstick: the fp32 chain rounding as ``parts`` do (each part's own dtype), freshly loaded (the loader's
        cached fp32 parts stay untouched)."""

        def emulate():
            model, text_encoder, vae = parts
            fresh = self.core.load_folder(self.folders[variant], device=model.device, dtype=torch.float32)
            pairs = (
                (fresh.text_encoder.module, text_encoder.module, text_encoder.dtype),
                (fresh.model.module, model.module, model.dtype),
                (fresh.vae.module, vae.module, vae.dtype),
            )
            for module, real, dtype in pairs:
                emulate_in_fp32(module, dtype)
                assert_same_weights(module, real)
            return run_chain(self.nodes, (fresh.model, fresh.text_encoder, fresh.vae))

        return self._once(("emulation", variant, dtypes(parts)), emulate)

    def _once(self, key, compute):
        if key not in self._done:
            self._done[key] = compute()
        return self._done[key]


@pytest.fixture(scope="module")
def runs(pack, m9_folder, m18_folder) -> Runs:
    return Runs(pack, {"m9": m9_folder, "m18": m18_folder})


def check_drift(ours: dict, fp32: dict, emulation: dict, what: str) -> None:
    """Each stage's max and mean drift from ``fp32`` within ``MAX_SPREAD``/``MEAN_SPREAD`` × the emulation's; logs the
    numbers and raises one AssertionError naming every stage and statistic beyond its bound."""
    beyond = []
    for stage in STAGES:
        ref = fp32[stage]
        drift, yardstick = (ours[stage] - ref).abs(), (emulation[stage] - ref).abs()
        bound_max, bound_mean = MAX_SPREAD * yardstick.max().item(), MEAN_SPREAD * yardstick.mean().item()
        d_max, d_mean = drift.max().item(), drift.mean().item()
        logger.info(
            "%s, %s: max %.3g (bound %.3g), mean %.3g (bound %.3g); the emulation's max %.3g, mean %.3g; max|fp32| %.3g",
            what, stage, d_max, bound_max, d_mean, bound_mean, yardstick.max().item(), yardstick.mean().item(),
            ref.abs().max().item(),
        )  # fmt: skip
        if not d_max <= bound_max:
            beyond.append(f"{stage} max {d_max:.3g} > {bound_max:.3g}")
        if not d_mean <= bound_mean:
            beyond.append(f"{stage} mean {d_mean:.3g} > {bound_mean:.3g}")
    assert not beyond, f"{what}: drift from fp32 beyond the bound: {'; '.join(beyond)}"


@pytest.mark.parametrize("variant", ["m9", "m18"])
@pytest.mark.parametrize("choice", ["auto", "bf16"])
def test_drift_from_fp32_within_the_derived_bound(runs, variant, choice):
    parts = runs.parts(variant, choice)
    ours, fp32 = runs.run(variant, choice), runs.run(variant, "fp32")
    names = "/".join(str(d).removeprefix("torch.") for d in dtypes(parts))
    what = f"{variant} {choice} ({names}, UNet/text encoder/VAE) on {parts[0].device}"
    if dtypes(parts) == (torch.float32,) * 3:  # auto on a CPU without native bf16: the default path is the fp32 path
        logger.info("%s: auto is fp32 here, so its drift is 0: its run must equal the fp32 run bit for bit", what)
        for stage in STAGES:
            assert torch.equal(ours[stage], fp32[stage]), f"{what}: {stage} differs from the fp32 run's"
        return
    emulation = runs.emulation(variant, parts)
    for stage, part in zip(STAGES, (parts[1], parts[0], parts[2]), strict=True):
        u = torch.finfo(part.dtype).eps / 2
        growth = (emulation[stage] - fp32[stage]).abs().max().item() / (u * fp32[stage].abs().max().item())
        logger.info("%s, %s: the emulation's growth factor G = max drift / (u·max|fp32|) = %.2f", what, stage, growth)
    assert all((ours[stage] != fp32[stage]).any() for stage in STAGES), f"{what}: no drift at all; not {names}?"
    check_drift(ours, fp32, emulation, what)


@contextlib.contextmanager
def skipped(layer: torch.nn.Module):
    """``layer`` passing its input through unchanged (a layer left out), for the duration of the block."""
    handle = layer.register_forward_hook(
        lambda _module, args, _kwargs, out: (args[0],) if isinstance(out, tuple) else args[0], with_kwargs=True
    )
    try:
        yield
    finally:
        handle.remove()


MISTAKES = {"one-word-changed": "conditioning", "unet-block-skipped": "latent", "vae-block-skipped": "image"}
"""Each deliberate error and the stage whose bound it must fail."""


def wrong_run(nodes, parts, mistake: str) -> dict[str, torch.Tensor]:
    model, _, vae = parts
    if mistake == "one-word-changed":
        return run_chain(nodes, parts, PROMPT.replace("红", "蓝"))  # a red hat → a blue one
    unet_block, vae_block = model.module.up_blocks[-1].attentions[-1], vae.module.decoder.up_blocks[-1].resnets[-1]
    with skipped(unet_block if mistake == "unet-block-skipped" else vae_block):
        return run_chain(nodes, parts)


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_bound_catches_wrong_results(runs, mistake):
    """The bound fails a low-precision run with one deliberate error (red → blue in the prompt; the UNet's last
    transformer block or the VAE decoder's last ResNet block left out) on its max and its mean. Run in ``auto``'s
    dtype, or in bf16 where ``auto`` is fp32 (its bound would be 0 and catch anything)."""
    choice = "auto" if dtypes(runs.parts("m9", "auto")) != (torch.float32,) * 3 else "bf16"
    parts = runs.parts("m9", choice)
    stage = MISTAKES[mistake]
    fp32, emulation = runs.run("m9", "fp32"), runs.emulation("m9", parts)
    check_drift(runs.run("m9", choice), fp32, emulation, f"m9 {choice}, correct")
    wrong = wrong_run(runs.nodes, parts, mistake)
    with pytest.raises(AssertionError, match=rf"\b{stage} max [^;]*; {stage} mean"):
        check_drift(wrong, fp32, emulation, f"m9 {choice} with {mistake}")
