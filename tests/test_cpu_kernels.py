"""The CPU kernels swapped into the models: linears through oneDNN and the UNet's deep 3×3 convolutions as unfold +
matrix multiply — the plain layer's values, taken only where the rule says, in place of exactly the eligible layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture
def kernels(pack):
    return pack.altdiff_core.cpu_kernels


def _conv(kernels, in_channels, out_channels, stride=1, bias=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    conv = kernels.SmallImageConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * in_channels**-0.5)
        if bias:
            conv.bias.copy_(torch.randn(out_channels, generator=g))
    return conv


CASES = [  # (batch, in, out, height, width, stride, bias)
    (2, 1280, 64, 4, 4, 1, True),
    (1, 1280, 32, 8, 8, 1, True),
    (2, 1280, 16, 8, 8, 2, True),
    (3, 1536, 8, 3, 5, 1, False),  # not square, odd sizes, no bias
    (2, 1280, 8, 7, 9, 2, True),  # stride 2 from odd sizes: 4×5 out
    (2, 1280, 8, 1, 1, 1, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_matmul_form_gives_the_convolutions_values(kernels, case, dtype, tolerance):
    """Against an fp64 convolution of the same (rounded) values; oneDNN's own error is the yardstick for bf16."""
    batch, cin, cout, height, width, stride, bias = case
    conv = _conv(kernels, cin, cout, stride, bias, dtype)
    x = torch.randn(batch, cin, height, width, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        ours = conv(x)
        plain = F.conv2d(x, conv.weight, conv.bias, stride, 1)
        exact = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), stride, 1)
    assert ours.shape == plain.shape == exact.shape and ours.dtype == dtype
    assert kernels.uses_matmul(x, ours.shape[-2] * ours.shape[-1])
    scale = exact.abs().max().item()
    ours_error = (ours.double() - exact).abs().max().item() / scale
    plain_error = (plain.double() - exact).abs().max().item() / scale
    assert ours_error <= max(tolerance, 2 * plain_error), (ours_error, plain_error)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((2, 1280, 8, 8), True),
        ((2, 1280, 4, 4), True),
        ((2, 1280, 9, 8), False),  # 72 output pixels
        ((2, 1280, 16, 16), False),
        ((2, 640, 8, 8), False),  # too few channels (a real eligible layer never sees them; the rule still holds)
        ((0, 1280, 8, 8), True),
    ],
)
def test_the_rule_picks_the_path(kernels, monkeypatch, shape, expected):
    """Which path runs, seen from the calls made: the matrix multiply or the plain convolution, never both."""
    calls = []
    plain = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, *a: calls.append("conv") or plain(self, *a))
    conv = _conv(kernels, shape[1], 4)
    with torch.no_grad():
        out = conv(torch.randn(shape))
    assert calls == ([] if expected else ["conv"])
    assert out.shape == (shape[0], 4, shape[2], shape[3])


def test_stride_two_counts_output_pixels(kernels, monkeypatch):
    """16×16 in, stride 2: 64 output pixels, the matrix-multiply form."""
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda *a: pytest.fail("plain convolution used"))
    with torch.no_grad():
        assert _conv(kernels, 1280, 4, stride=2)(torch.randn(1, 1280, 16, 16)).shape == (1, 4, 8, 8)


def test_models_for_a_gpu_keep_their_layers(kernels):
    """A model built for CUDA (or any device but the CPU) is left as it is: no Python check per layer there."""
    model = nn.Sequential(nn.Linear(8, 4), nn.Conv2d(1280, 8, 3, padding=1))
    assert kernels.use_cpu_kernels(model, torch.device("cuda")) == 0 and kernels.use_cpu_kernels(model, "mps") == 0
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.Conv2d
    assert kernels.use_cpu_kernels(model, "cpu") == 2


class _LinearWithItsOwnForward(nn.Linear):
    """Stands for a subclass with its own behaviour (a LoRA layer, say): never replaced."""


def test_only_eligible_layers_are_replaced_and_keep_their_parameters(kernels):
    model = nn.ModuleDict(
        {
            "deep": nn.Conv2d(1280, 8, 3, padding=1),
            "down": nn.Conv2d(2560, 8, 3, stride=2, padding=1, bias=False),
            "shallow": nn.Conv2d(640, 8, 3, padding=1),
            "pointwise": nn.Conv2d(1280, 8, 1),
            "grouped": nn.Conv2d(1280, 8, 3, padding=1, groups=8),
            "dilated": nn.Conv2d(1280, 8, 3, padding=2, dilation=2),
            "reflect": nn.Conv2d(1280, 8, 3, padding=1, padding_mode="reflect"),
            "same": nn.Conv2d(1280, 8, 3, padding="same"),
            "nested": nn.Sequential(nn.SiLU(), nn.Conv2d(1280, 8, 3, padding=1), nn.Linear(4, 6, bias=False)),
            "proj": nn.Linear(8, 4),
            "subclass": _LinearWithItsOwnForward(8, 4),
        }
    )
    before = {name: p for name, p in model.named_parameters()}
    assert kernels.use_cpu_kernels(model) == 5
    assert {name for name, m in model.named_modules() if isinstance(m, kernels.SmallImageConv2d)} == {"deep", "down", "nested.1"}
    assert {name for name, m in model.named_modules() if isinstance(m, kernels.OneDnnLinear)} == {"proj", "nested.2"}
    assert type(model["subclass"]) is _LinearWithItsOwnForward
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert model["down"].stride == (2, 2) and model["down"].bias is None and model["nested"][2].bias is None
    assert (model["proj"].in_features, model["proj"].out_features) == (8, 4)


@pytest.fixture
def onednn(kernels, monkeypatch):
    """The oneDNN linear op; this suite's torch (requirements-dev.txt) has it, so a missing one is a failure here.
    The speed probe is pinned to "keep oneDNN" so that these tests see the rest of the rule on any CPU (the probe's
    own tests are below)."""
    op = kernels.onednn_linear_op()
    assert op is not None, f"torch {torch.__version__} has no usable torch.ops.mkldnn._linear_pointwise"
    monkeypatch.setattr(kernels, "onednn_is_faster", lambda dtype: True)
    return op


LINEAR_CASES = [  # (input shape, in, out, bias)
    ((128, 1280), 1280, 640, True),
    ((2, 77, 768), 768, 320, True),  # 3-D, as the attention layers call it
    ((2, 64, 1280), 1280, 1280, False),
    ((1, 3), 3, 5, True),
]


@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-{c[2]}-{c[3]}")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_onednn_linear_gives_the_linears_values(kernels, onednn, monkeypatch, case, dtype, tolerance):
    """Against fp64; MKL's own error is the yardstick. Where this CPU's oneDNN has a kernel for ``dtype`` the layer
    must go through it (``F.linear`` must not run); where it has none (bf16 without bf16 instructions, e.g. under
    ``ONEDNN_MAX_CPU_ISA=AVX2``) the layer must give ``F.linear``'s emulated result instead of oneDNN's error."""
    shape, cin, cout, bias = case
    layer = kernels.OneDnnLinear(cin, cout, bias=bias, dtype=dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        plain = F.linear(x, layer.weight, layer.bias)
        exact = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
        if kernels.onednn_linear_op(dtype) is not None:
            monkeypatch.setattr(F, "linear", lambda *a: pytest.fail("F.linear ran where oneDNN should"))
        ours = layer(x)
    assert ours.shape == plain.shape and ours.dtype == dtype
    scale = exact.abs().max().item()
    ours_error = (ours.double() - exact).abs().max().item() / scale
    plain_error = (plain.double() - exact).abs().max().item() / scale
    assert ours_error <= max(tolerance, 2 * plain_error), (ours_error, plain_error)


def _onednn_taken(kernels, onednn, monkeypatch, x, layer) -> bool:
    """Which path ``layer(x)`` took, seen from the calls made (and the result checked against ``F.linear``)."""
    calls = []
    probe = kernels.onednn_linear_op  # the real per-dtype probe decides; the stand-in only records the calls
    counting = lambda *a: calls.append("onednn") or onednn(*a)  # noqa: E731
    monkeypatch.setattr(kernels, "onednn_linear_op", lambda dtype=torch.float32: counting if probe(dtype) else None)
    out = layer(x)
    assert torch.allclose(out, F.linear(x, layer.weight, layer.bias), atol=1e-2, rtol=1e-2)
    return calls == ["onednn"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_linear_rule_picks_the_path(kernels, onednn, monkeypatch, dtype):
    """fp32 always goes to oneDNN; bf16 where this CPU's oneDNN has a bf16 kernel (native or AVX-512-emulated bf16);
    fp16 never (oneDNN's CPU fp16 inner product is refused on CPUs without AVX512-FP16, and MKL is no slower)."""
    expected = dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    layer = kernels.OneDnnLinear(16, 8, dtype=dtype)
    with torch.no_grad():
        assert _onednn_taken(kernels, onednn, monkeypatch, torch.randn(4, 16, dtype=dtype), layer) == expected


def test_other_devices_go_straight_to_f_linear(kernels, monkeypatch):
    """Off the CPU (meta stands in for CUDA) the layer is ``F.linear`` without even the rule's checks."""
    monkeypatch.setattr(kernels, "uses_onednn", lambda *a: pytest.fail("the rule was checked off the CPU"))
    layer = kernels.OneDnnLinear(8, 4, device="meta")
    assert layer(torch.empty(2, 8, device="meta")).shape == (2, 4)


def test_odd_inputs_stay_with_f_linear(kernels, onednn, monkeypatch):
    """A mixed dtype, a transposed (non-contiguous) weight, a 1-D input: ``F.linear``, with its own answer."""
    layer = kernels.OneDnnLinear(16, 16)
    with torch.no_grad():
        assert not _onednn_taken(kernels, onednn, monkeypatch, torch.randn(4, 16, dtype=torch.float64), layer.double())
        layer = kernels.OneDnnLinear(16, 16)
        layer.weight = nn.Parameter(layer.weight.detach().t(), requires_grad=False)
        assert not layer.weight.is_contiguous()
        assert not _onednn_taken(kernels, onednn, monkeypatch, torch.randn(4, 16), layer)
        assert not _onednn_taken(kernels, onednn, monkeypatch, torch.randn(16), layer)


def test_mkldnn_switched_off_means_f_linear(kernels, onednn, monkeypatch):
    """``torch.backends.mkldnn.enabled = False`` (a user's debugging switch) is honoured."""
    layer = kernels.OneDnnLinear(8, 4)
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert kernels.uses_onednn(x, layer.weight, layer.bias)
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
        assert not kernels.uses_onednn(x, layer.weight, layer.bias)


def test_training_keeps_autograd(kernels, onednn):
    """With gradients wanted, the layer is ``F.linear`` (the oneDNN op has no backward): gradients flow."""
    layer = kernels.OneDnnLinear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    assert not kernels.uses_onednn(x, layer.weight, layer.bias)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    with torch.inference_mode():
        assert kernels.uses_onednn(torch.randn(3, 8), layer.weight, layer.bias)


@pytest.fixture
def fresh_probe(kernels):
    """``onednn_linear_op`` and ``onednn_is_faster`` probe once per process; these tests probe again, and leave fresh
    caches behind."""
    for probe in (kernels.onednn_linear_op, kernels.onednn_is_faster):
        probe.cache_clear()
    yield kernels.onednn_linear_op
    for probe in (kernels.onednn_linear_op, kernels.onednn_is_faster):
        probe.cache_clear()


@pytest.mark.parametrize(
    ("onednn_ms", "mkl_ms", "keep"),
    [(4.5, 10.0, True), (10.5, 10.0, True), (11.5, 10.0, False)],
    ids=["faster", "slower-within-margin", "clearly-slower"],
)
def test_the_speed_probe_gives_up_onednn_only_where_it_is_clearly_slower(
    kernels, fresh_probe, monkeypatch, onednn_ms, mkl_ms, keep
):
    """The probe's timings decide, once per dtype: oneDNN stays unless it took over ``SLOWER_BY`` × F.linear's time
    (on an AVX2-only EPYC it did at some shapes); when it goes, the layers compute with ``F.linear``'s own values."""
    timed = []
    monkeypatch.setattr(kernels, "time_linears", lambda op, dtype: timed.append(dtype) or (onednn_ms / 1e3, mkl_ms / 1e3))
    layer = kernels.OneDnnLinear(16, 8)
    x = torch.randn(4, 16)
    with torch.no_grad():
        for _ in range(3):
            assert kernels.uses_onednn(x, layer.weight, layer.bias) is keep
        if not keep:
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert timed == [torch.float32]


def test_the_speed_probe_times_both_kernels_on_the_probe_shape(kernels, monkeypatch):
    """``time_linears`` runs oneDNN's op (once to build its kernel, then each round) and ``F.linear`` as often, on
    ``PROBE_SHAPE``, and returns two positive times."""
    op = kernels.onednn_linear_op()
    assert op is not None
    shapes, linear_calls = [], []
    real_linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *a: linear_calls.append(1) or real_linear(*a))
    spy = lambda x, w, b, *rest: shapes.append((*x.shape, w.shape[0])) or op(x, w, b, *rest)  # noqa: E731
    onednn, mkl = kernels.time_linears(spy, torch.float32)
    rows, cin, cout = kernels.PROBE_SHAPE
    assert shapes == [(rows, cin, cout)] * (1 + kernels.PROBE_ROUNDS) and len(linear_calls) == 1 + kernels.PROBE_ROUNDS
    assert 0 < onednn < 1 and 0 < mkl < 1


def test_no_onednn_means_f_linear(kernels, fresh_probe, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert fresh_probe() is None
    layer = kernels.OneDnnLinear(8, 4)
    with torch.no_grad():
        x = torch.randn(2, 8)
        assert not kernels.uses_onednn(x, layer.weight, layer.bias)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize(
    "stand_in",
    [
        lambda x, w, b, *rest: F.linear(x, w, b) + 1,  # computes something else
        lambda x, w, b: F.linear(x, w, b),  # another signature
    ],
    ids=["wrong-values", "other-signature"],
)
def test_an_op_that_fails_the_probe_is_not_used(kernels, fresh_probe, monkeypatch, stand_in):
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", stand_in)
    assert fresh_probe() is None


def test_the_probe_is_per_dtype(kernels, fresh_probe, monkeypatch):
    """An op that works in fp32 but has no bf16 kernel (an AVX2-only CPU: "could not create a primitive descriptor")
    is used for fp32 only; bf16 layers then compute with ``F.linear`` and give its values instead of crashing."""
    real = torch.ops.mkldnn._linear_pointwise

    def no_bf16_kernel(x, *rest):
        if x.dtype == torch.bfloat16:
            raise RuntimeError("could not create a primitive descriptor for the inner product forward propagation primitive")
        return real(x, *rest)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", no_bf16_kernel)
    assert fresh_probe(torch.float32) is not None and fresh_probe(torch.bfloat16) is None
    layer = kernels.OneDnnLinear(16, 8, dtype=torch.bfloat16)
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        assert not kernels.uses_onednn(x, layer.weight, layer.bias)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_the_loader_builds_the_unet_with_them(pack):
    """A UNet with the real channel widths (1280 deep) through the loader's ``build_unet`` (on the meta device, so no
    memory): the deep 3×3 layers are ``SmallImageConv2d``, the shallow ones are not, and the diffusers state-dict
    keys are unchanged (``build_unet`` checks every key)."""
    from diffusers import UNet2DConditionModel

    core = pack.altdiff_core
    config = {
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
    }
    with torch.device("meta"):
        state = UNet2DConditionModel(**config).state_dict()
    model = core.loading.build_unet(
        config, state, Path("unet.safetensors"), core.schedules.DiscreteSchedule(), core.VARIANTS["m9"],
        device=torch.device("meta"), dtype=torch.float32,
    )  # fmt: skip
    replaced = {name for name, m in model.module.named_modules() if isinstance(m, core.cpu_kernels.SmallImageConv2d)}
    assert {"mid_block.resnets.0.conv1", "down_blocks.2.downsamplers.0.conv", "up_blocks.0.resnets.0.conv1"} <= replaced
    assert not any(name.startswith(("down_blocks.0.", "conv_in", "conv_out")) for name in replaced)
    assert not any(type(m) is nn.Linear for m in model.module.modules())
    assert isinstance(model.module.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_q, core.cpu_kernels.OneDnnLinear)
    assert model.module.state_dict().keys() == state.keys()


def test_loaded_models_use_them_everywhere(m9):
    """Every plain linear of the loaded text encoder, UNet and VAE (a real folder through the loader) is oneDNN's."""
    for module in (m9.text_encoder.module, m9.model.module, m9.vae.module):
        kinds = {type(m) for m in module.modules()}
        assert nn.Linear not in kinds
        assert sum(isinstance(m, nn.Linear) for m in module.modules()) > 0


AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
"""How CI makes any x86 CPU compute as an AVX2-only one (no bf16 instructions): oneDNN's and ATen's ISA caps."""

_AVX2_CHILD = r"""
import json, pathlib, runpy, sys
import torch
runpy.run_path(sys.argv[1], run_name="altdiffusion_bootstrap")["load_pack"](pathlib.Path(sys.argv[2]))
core = sys.modules["comfyui_altdiffusion"].altdiff_core
layer = core.cpu_kernels.OneDnnLinear(16, 8, dtype=torch.bfloat16)
with torch.no_grad():
    out = layer(torch.ones(4, 16, dtype=torch.bfloat16))
print(json.dumps({
    "aten": torch.backends.cpu.get_cpu_capability(),
    "onednn_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    "probe_fp32": core.cpu_kernels.onednn_linear_op(torch.float32) is not None,
    "probe_bf16": core.cpu_kernels.onednn_linear_op(torch.bfloat16) is not None,
    "auto": str(core.resolve_dtype("auto", torch.device("cpu"))),
    "bf16_linear_finite": bool(torch.isfinite(out).all()),
}))
"""


def test_the_avx2_caps_take_bf16_away_and_auto_follows_the_probes():
    """Under CI's AVX2 caps (on any x86 CPU, an AVX512-BF16 one included) ATen dispatches AVX2 kernels, oneDNN refuses
    bf16 kernels, the per-dtype probe sees it, ``auto`` is fp32, and a bf16 layer still computes (emulated)."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    child = subprocess.run(
        [sys.executable, "-c", _AVX2_CHILD, str(root / "__main__.py"), str(root)],
        env={**os.environ, **AVX2_ENV}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    facts = json.loads(child.stdout.strip().splitlines()[-1])
    assert facts == {
        "aten": "AVX2", "onednn_bf16": False, "probe_fp32": True, "probe_bf16": False, "auto": "torch.float32",
        "bf16_linear_finite": True,
    }, facts  # fmt: skip
