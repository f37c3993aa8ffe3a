"""Checks on tensors arriving at a stage from a socket, shared by every stage that takes them, and the working-memory
estimates that refuse a size the device cannot hold before anything is allocated.

Why refuse early: on the CPU, running out of memory is not an exception — the kernel's OOM killer ends the whole
ComfyUI server. A LATENT of 1×4×8192×8192 (a 65536² image) typed by mistake must come back as a message, not as a
dead server or a swap storm.

Memory estimates are *lower bounds* of a stage's peak working memory (beyond its weights), in bytes: only tensors that
must exist at the same moment are counted, so a size refused here cannot have worked, and every size that works
passes. Real peaks are several times higher (the estimates leave out the feed-forward and projection activations):
measured on an H200 (torch 2.11, full-size SD1/SD2.1 UNet and SD VAE, fp16 and fp32, 512² and 1024²), the peaks were
6.5–8.2× the UNet estimate, 2.3–4.5× with the math attention path, 2.4× the VAE decode's and 3.0× the encode's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch

from .errors import InvalidInputError, TooLargeForMemoryError


def check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    """Refuse NaN/inf values: they would spread through every layer and come out as a black or garbage image."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InvalidInputError(f"{what} holds {bad} NaN/inf values out of {tensor.numel()}; {fix}")


def check_batch(tensor: torch.Tensor, what: str) -> None:
    """Refuse an empty batch (a LATENT or IMAGE of 0 items) before any model runs on it."""
    if tensor.shape[0] == 0:
        raise InvalidInputError(f"{what} batch is empty (0 images); it needs at least 1 image (a batch size of 1 or more).")


def check_tensor(value: object, what: str, expected: str, fix: str) -> torch.Tensor:
    """``value`` itself when it is a real-valued torch tensor; otherwise an error naming what arrived instead."""
    if not isinstance(value, torch.Tensor) or value.is_complex():
        got = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
        raise InvalidInputError(f"{what} is {got}, not {expected}; {fix}")
    return value


# ------------------------------------------------------------------------------------------------ working memory


class AttentionShape(NamedTuple):
    """The largest self-attention of a network: on ``(height // downscale) × (width // downscale)`` tokens."""

    downscale: int
    heads: int
    head_dim: int


def unet_top_attention(config: Mapping) -> AttentionShape | None:
    """The UNet's highest-resolution self-attention (diffusers ``UNet2DConditionModel`` config), or None if it has none.

    In the old configs AltDiffusion ships, ``attention_head_dim`` is the head *count* (diffusers reads it so when
    ``num_attention_heads`` is unset): SD1 has 8 heads of 40 at the top level, SD2.1 5 heads of 64.
    """
    channels = list(config["block_out_channels"])
    heads = config.get("num_attention_heads") or config.get("attention_head_dim") or 8
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
    for level, block in enumerate(config["down_block_types"]):
        if "CrossAttn" in block:
            return AttentionShape(2**level, int(heads[level]), channels[level] // int(heads[level]))
    return None


def vae_mid_attention(config: Mapping) -> AttentionShape | None:
    """The SD VAE's mid-block self-attention (one head as wide as the deepest block), on the latent's h×w tokens."""
    if not config.get("mid_block_add_attention", True):
        return None
    return AttentionShape(1, 1, int(config["block_out_channels"][-1]))


def unet_working_bytes(
    config: Mapping, batch: int, height: int, width: int, dtype: torch.dtype, *, fused_attention: bool = True
) -> int:
    """Lower bound, in bytes, of one UNet call's working memory on ``batch`` latents of ``height × width`` (latent
    pixels; ``batch`` counts the CFG rows, i.e. 2× the images when cfg ≠ 1).

    At the top level the UNet keeps ``1 + layers_per_block`` skip tensors of ``block_out_channels[0]`` channels for
    its up path while it computes the next one: ``(2 + layers_per_block) × batch × C₀ × h × w`` elements. With
    attention that computes its score matrix whole (``fused_attention=False``: torch's math SDPA path, no flash /
    memory-efficient kernel), add ``batch × heads × tokens²`` scores at the top attention level.
    """
    element = torch.empty((), dtype=dtype).element_size()
    layers = config.get("layers_per_block", 2)
    layers = max(layers) if isinstance(layers, (list, tuple)) else int(layers)
    need = (2 + layers) * batch * int(config["block_out_channels"][0]) * height * width * element
    attention = unet_top_attention(config)
    if attention is not None and not fused_attention:
        tokens = math.ceil(height / attention.downscale) * math.ceil(width / attention.downscale)
        need += batch * attention.heads * tokens**2 * element
    return need


def vae_working_bytes(
    config: Mapping,
    batch: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    *,
    decode: bool,
    fused_attention: bool = True,
) -> int:
    """Lower bound, in bytes, of an SD VAE's working memory for ``batch`` latents of ``height × width`` (latent pixels;
    the image is ``downscale`` times larger on each side).

    Decode: the last upsampler's convolution reads and writes ``block_out_channels[1]`` channels at full image
    resolution, both at once: ``2 × batch × C₁ × H × W`` elements. Encode: the first block's resnets read and write
    ``block_out_channels[0]`` channels at full resolution: ``2 × batch × C₀ × H × W``. With the math SDPA path
    (``fused_attention=False``) add the mid-block's ``batch × (h·w)²`` attention scores.
    """
    element = torch.empty((), dtype=dtype).element_size()
    channels = list(config["block_out_channels"])
    scale = 2 ** (len(channels) - 1)
    top = channels[1] if decode and len(channels) > 1 else channels[0]
    need = 2 * batch * int(top) * (height * scale) * (width * scale) * element
    attention = vae_mid_attention(config)
    if attention is not None and not fused_attention:
        need += batch * attention.heads * (height * width) ** 2 * element
    return need


def available_memory(device: torch.device) -> int | None:
    """Bytes a stage on ``device`` may use, or None where unknown (no check is made then).

    CPU: the memory the OS can give now without swapping (``MemAvailable``). CUDA: the card's *total* memory —
    ComfyUI's memory manager offloads other models to make room and a CUDA out-of-memory is an ordinary exception,
    so only what cannot fit even an empty card is refused there.
    """
    if device.type == "cpu":
        try:
            import psutil  # a ComfyUI requirement, not this pack's: /proc/meminfo below when it is missing
        except ImportError:
            try:
                for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                return None
            return None
        return int(psutil.virtual_memory().available)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"


def check_memory(need: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse, before allocating anything, a stage whose working memory ``need`` (bytes, a lower bound) exceeds what
    ``device`` has (``available_memory``).

    Raises:
        TooLargeForMemoryError: naming the stage and size, the estimated need, what the device has, and ``fix``.
    """
    have = available_memory(device)
    if have is not None and need > have:
        where = "free on the CPU" if device.type == "cpu" else f"on {device} in all"
        raise TooLargeForMemoryError(
            f"{what} needs at least {_gib(need)} of working memory, and there is {_gib(have)} {where}; {fix}"
        )
