"""Faster CPU kernels for the models' matrix multiplies, swapped in when a model is built for the CPU
(``use_cpu_kernels``).

**``OneDnnLinear``** (every plain ``nn.Linear``): fp32 and bf16 linears go to oneDNN's matrix multiply
(``torch.ops.mkldnn._linear_pointwise``, the op torch's compiler emits for CPU linears) instead of MKL's ``sgemm``,
which ``F.linear`` uses in fp32 — unless this machine's timing probe (``onednn_is_faster``) finds oneDNN slower. The
gap depends on the CPU: oneDNN took 0.45× MKL's time in fp32 on an AVX512 EPYC, 0.85–1.03× under AVX2 caps, and was
slower at some shapes on an AVX2-only EPYC, so no one rule holds everywhere.
**``SmallImageConv2d``** (the UNet's deep 3×3 convolutions over at most 8×8 pixels): oneDNN's convolution is slow
there; unfold + one matrix multiply runs at the multiply's rate. Both keep the parameters and keys of the layer they
replace, fall back to it on any input their rule does not cover, and differ from it by summation order only (1.4e-6
over a whole fp32 UNet call). The measurements: ``bench/reports/cpu-2core-2026-11-27-cpu_kernel_choices.md``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .compat import onednn_linear_op  # looked up in this module at each call, so a test can swap it here

logger = logging.getLogger(__name__)

ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
"""Dtypes ``cpu_linear`` sends to oneDNN on the CPU (fp16 matrix multiplies on a CPU stay with ``F.linear``)."""

CPU_DEVICE_TYPES = ("cpu", "meta")
"""Devices ``use_cpu_kernels`` swaps layers for: the CPU, and the meta device (a model built without memory, e.g. to
be inspected, computes nowhere yet)."""

PROBE_SHAPE = (1024, 640, 640)
"""(rows, in, out) of the linear ``onednn_is_faster`` times: the UNet's attention projections at 32×32 latent pixels
(a 256² image's top level, a 512² image's second); 0.84 GFLOP, a few milliseconds per call."""

PROBE_ROUNDS = 5
"""Interleaved timings per kernel; the fastest of each counts (a busy neighbour only ever adds time)."""

SLOWER_BY = 1.10
"""oneDNN is given up only when its time is above this × MKL's: the two are within a few percent on many CPUs, and a
choice that flipped with the noise of one probe would make the same seed compute differently from run to run."""

MIN_CHANNELS = 1280
"""Fewest input channels for the matrix-multiply form (640 channels at 8×8: oneDNN is faster, 191 against 147)."""

MAX_PIXELS = 64
"""Most output pixels per image for the matrix-multiply form (16×16: oneDNN's convolution is as fast or faster)."""


def uses_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``cpu_linear`` gives ``x @ weight.T + bias`` to oneDNN: CPU tensors of one dtype in ``ONEDNN_DTYPES``
    whose probe passed on this machine (``onednn_linear_op``), a contiguous weight, no autograd (the op has no
    backward), oneDNN not switched off (``torch.backends.mkldnn.flags(enabled=False)``) and not slower here than
    ``F.linear`` (``onednn_is_faster``)."""
    return (
        x.device.type == "cpu"
        and x.dim() >= 2
        and x.dtype in ONEDNN_DTYPES
        and weight.dtype == x.dtype
        and (bias is None or bias.dtype == x.dtype)
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and torch.backends.mkldnn.enabled
        and onednn_linear_op(x.dtype) is not None
        and onednn_is_faster(x.dtype)
    )


@functools.cache
def onednn_is_faster(dtype: torch.dtype) -> bool:
    """Whether ``cpu_linear`` keeps oneDNN for ``dtype`` on this machine: False only when the probe (``time_linears``,
    once per process and dtype, ~50 ms) finds it more than ``SLOWER_BY`` × slower than ``F.linear``."""
    op = onednn_linear_op(dtype)
    if op is None:
        return False
    onednn, mkl = time_linears(op, dtype)
    keep = onednn <= SLOWER_BY * mkl
    logger.info(
        "CPU linear, %s: oneDNN %.2f ms, F.linear %.2f ms at %s; using %s",
        str(dtype).removeprefix("torch."), onednn * 1e3, mkl * 1e3, "×".join(map(str, PROBE_SHAPE)),
        "oneDNN" if keep else "F.linear",
    )  # fmt: skip
    return keep


def time_linears(
    op: Callable[..., torch.Tensor], dtype: torch.dtype, shape: tuple[int, int, int] = PROBE_SHAPE, rounds: int = PROBE_ROUNDS
) -> tuple[float, float]:
    """Seconds of (oneDNN's ``op``, ``F.linear``) on a linear of ``shape`` (rows, in, out) in ``dtype``: each one's
    fastest of ``rounds`` interleaved calls, after one untimed call of each (oneDNN builds its kernel on the first).
    ``bench/cpu_kernel_choices.py`` times the UNet's other shapes with it."""
    rows, cin, cout = shape
    g = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(size, generator=g).to(dtype) for size in ((rows, cin), (cout, cin), (cout,)))
    kernels = (lambda: op(x, weight, bias, "none", [], ""), lambda: F.linear(x, weight, bias))
    best = [float("inf")] * len(kernels)
    with torch.no_grad():
        for kernel in kernels:
            kernel()
        for _ in range(rounds):
            for i, kernel in enumerate(kernels):
                start = time.perf_counter()
                kernel()
                best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``: ``x`` (..., in) × ``weight`` (out, in) + ``bias`` (out) → (..., out), through oneDNN where
    ``uses_onednn`` says (see the module docstring)."""
    if uses_onednn(x, weight, bias):
        return onednn_linear_op(x.dtype)(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class OneDnnLinear(nn.Linear):
    """An ``nn.Linear`` computed by ``cpu_linear``: same parameters and keys, oneDNN on the CPU (fp32, bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., in_features) → (..., out_features)."""
        if not x.is_cpu:  # a GPU step is launch-bound: skip ``uses_onednn``'s checks there (0.08 µs against ~1 µs)
            return F.linear(x, self.weight, self.bias)
        return cpu_linear(x, self.weight, self.bias)


class SmallImageConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3×3, zero padding, no groups or dilation) that computes small CPU inputs as unfold + one
    matrix multiply (``cpu_linear``).

    Same parameters and state-dict keys as the convolution it replaces; any other input goes to ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C_in, H, W) → (N, C_out, H', W'), the convolution's shapes."""
        out = small_image_conv(self, x, self.weight, self.bias)
        return super().forward(x) if out is None else out


def small_image_conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``conv`` (a layer ``matmul_form_fits``) applied to ``x`` (N, C_in, H, W) with ``weight``/``bias`` as unfold +
    one matrix multiply (``cpu_linear``) where ``uses_matmul`` says, → (N, C_out, H', W'); else None (run the
    convolution)."""
    height, width = (
        (size + 2 * pad - kernel) // stride + 1
        for size, pad, kernel, stride in zip(x.shape[-2:], conv.padding, conv.kernel_size, conv.stride, strict=True)
    )
    if not uses_matmul(x, height * width):
        return None
    batch, channels = x.shape[0], conv.out_channels
    columns = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (N, C_in·9, H'·W')
    columns = columns.transpose(1, 2).reshape(batch * height * width, columns.shape[1])
    out = cpu_linear(columns, weight.reshape(channels, -1), bias)  # (N·H'·W', C_out)
    return out.reshape(batch, height * width, channels).transpose(1, 2).reshape(batch, channels, height, width)


def uses_matmul(x: torch.Tensor, out_pixels: int) -> bool:
    """Whether ``SmallImageConv2d`` takes the matrix-multiply form for the 4-D input ``x`` (``MIN_CHANNELS``, ``MAX_PIXELS``)."""
    return x.device.type == "cpu" and x.dim() == 4 and x.shape[1] >= MIN_CHANNELS and 0 < out_pixels <= MAX_PIXELS


def eligible_conv(conv: nn.Module) -> bool:
    """A plain 3×3 ``nn.Conv2d`` (that exact type) the matrix-multiply form computes exactly."""
    return type(conv) is nn.Conv2d and matmul_form_fits(conv)


def matmul_form_fits(conv: nn.Conv2d) -> bool:
    """Whether ``small_image_conv`` computes ``conv`` exactly: 3×3, zero padding, no groups, no dilation, at least
    ``MIN_CHANNELS`` input channels."""
    return (
        conv.kernel_size == (3, 3)
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.in_channels >= MIN_CHANNELS
    )


def _small_image_conv(conv: nn.Conv2d) -> SmallImageConv2d:
    return SmallImageConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        bias=conv.bias is not None, device="meta",
    )  # fmt: skip


def _onednn_linear(layer: nn.Linear) -> OneDnnLinear:
    return OneDnnLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")


REPLACEMENTS: tuple[tuple[Callable[[nn.Module], bool], Callable[[nn.Module], nn.Module]], ...] = (
    (eligible_conv, _small_image_conv),
    (lambda layer: type(layer) is nn.Linear, _onednn_linear),
)
"""(which layers, what replaces them): exact types only, so subclasses with their own behaviour are left alone."""


def use_cpu_kernels(model: nn.Module, device: torch.device | str = "cpu") -> int:
    """Replace, in place, every layer of ``model`` that ``REPLACEMENTS`` names by its faster-on-CPU twin holding the
    same parameter objects (works on the meta device, before the weights are loaded), when ``model`` is to run on the
    CPU; elsewhere nothing (a GPU would pay a Python check per layer for nothing). Returns how many were replaced."""
    if torch.device(device).type not in CPU_DEVICE_TYPES:
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            for matches, make in REPLACEMENTS:
                if matches(child):
                    twin = make(child)
                    twin.weight, twin.bias = child.weight, child.bias
                    setattr(parent, name, twin)
                    replaced += 1
                    break
    return replaced
