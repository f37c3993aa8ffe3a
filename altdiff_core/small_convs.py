"""3×3 convolutions on small, wide feature maps as one matrix multiply, on the CPU.

oneDNN (torch's CPU convolution) is slow on the UNet's deepest layers: 1280–2560 input channels over a few pixels
(4×4 and 8×8 at 256², 8×8 at 512²). The same convolution written as ``unfold`` (the 3×3 neighbourhoods as columns)
and one ``addmm`` runs at the matrix multiply's rate. Measured per layer shape on the 2-core EPYC VM (CFG batch 2,
GFLOP/s, oneDNN → unfold + addmm):

=========================  ==========  ===========
layer (input → output)     fp32        bf16
=========================  ==========  ===========
2560 ch, 4×4 → 1280        41 → 112    81 → 265
2560 ch, 8×8 → 1280        112 → 158   210 → 340
1920 ch, 8×8 → 1280        113 → 153   204 → 330
1280 ch, 8×8 → 1280        104 → 148   338 → 334
1280 ch, 8×8 → 4×4 (s 2)   37 → 106    207 → 258
1280 ch, 4×4 → 1280        35 → 101    203 → 251
640 ch, 8×8 → 1280         191 → 147   371 → 335
1280 ch, 16×16 → 1280      176 → 163   441 → 340
=========================  ==========  ===========

Hence the rule (``uses_matmul``): CPU, at least ``MIN_CHANNELS`` input channels, at most ``MAX_PIXELS`` output pixels
per image. A whole fp32 UNet call at 256² went from 2.99 to 2.66 s (median of 4, interleaved; 0.87×), bf16 1.29 →
1.22 s (0.95×); the outputs differ from oneDNN's by 1e-6 (fp32, outputs up to 1.3) — summation order only. GPUs
(cuDNN) keep the plain convolution, so CUDA results are untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_CHANNELS = 1280
"""Fewest input channels for the matrix-multiply form (640 channels at 8×8: oneDNN is faster, 191 against 147)."""

MAX_PIXELS = 64
"""Most output pixels per image for the matrix-multiply form (16×16: oneDNN is as fast or faster)."""


class SmallImageConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3×3, zero padding, no groups or dilation) that computes small CPU inputs as unfold + addmm.

    Same parameters and state-dict keys as the convolution it replaces; any other input goes to ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C_in, H, W) → (N, C_out, H', W'), the convolution's shapes."""
        height, width = (
            (size + 2 * pad - kernel) // stride + 1
            for size, pad, kernel, stride in zip(x.shape[-2:], self.padding, self.kernel_size, self.stride, strict=True)
        )
        if not uses_matmul(x, height * width):
            return super().forward(x)
        batch = x.shape[0]
        columns = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C_in·9, H'·W')
        columns = columns.transpose(1, 2).reshape(batch * height * width, columns.shape[1])
        weight = self.weight.reshape(self.out_channels, -1).t()
        out = torch.mm(columns, weight) if self.bias is None else torch.addmm(self.bias, columns, weight)
        channels = self.out_channels
        return out.reshape(batch, height * width, channels).transpose(1, 2).reshape(batch, channels, height, width)


def uses_matmul(x: torch.Tensor, out_pixels: int) -> bool:
    """Whether ``SmallImageConv2d`` takes the matrix-multiply form for the 4-D input ``x`` (see the module table)."""
    return x.device.type == "cpu" and x.dim() == 4 and x.shape[1] >= MIN_CHANNELS and 0 < out_pixels <= MAX_PIXELS


def eligible(conv: nn.Module) -> bool:
    """A plain 3×3 ``nn.Conv2d`` the matrix-multiply form computes exactly (zero padding, no groups, no dilation)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.in_channels >= MIN_CHANNELS
    )


def use_small_image_convs(model: nn.Module) -> int:
    """Replace, in place, every eligible convolution of ``model`` by a ``SmallImageConv2d`` holding the same
    parameters (works on the meta device, before the weights are loaded). Returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if eligible(child):
                conv = SmallImageConv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    bias=child.bias is not None,
                    device="meta",
                )
                conv.weight, conv.bias = child.weight, child.bias
                setattr(parent, name, conv)
                replaced += 1
    return replaced
