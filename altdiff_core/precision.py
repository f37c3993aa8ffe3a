"""The dtype policy: what 'auto' means on the device a model runs on, decided from what this machine's kernels do.

| device | 'auto' weights | why |
|---|---|---|
| CUDA | fp16 | as ComfyUI runs SD1/SD2 there |
| CPU with native bf16 (AVX512-BF16, AMX) whose oneDNN builds bf16 kernels | bf16 | ~2× fp32's speed, fp32's range |
| any other CPU | fp32 | bf16/fp16 are emulated there: they work, but a matrix multiply is 10–100× slower |

The CPU row is decided by probes, not by the CPU's flags alone: ``ONEDNN_MAX_CPU_ISA=AVX2`` (or a virtual machine that
hides instructions) makes oneDNN refuse bf16 kernels on a CPU whose flags list AVX512-BF16.
"""

from __future__ import annotations

import functools
import logging

import torch

from .compat import cpu_has_bf16_instructions, onednn_linear_op
from .loading import DTYPES

logger = logging.getLogger(__name__)

VAE_AUTO_DTYPES = {torch.float32: torch.float32, torch.bfloat16: torch.bfloat16, torch.float16: None}
"""Model dtype → VAE dtype for vae_dtype 'auto'; None = bf16 where the device computes it fast, else fp32.

Never fp16: the SD VAE decoder's activations exceed fp16's 65504 at high resolutions and some fine-tuned VAEs
overflow even at 512 px (NaN → black image; A1111's ``--no-half-vae``). bf16 has fp32's range at fp16's memory, which
is ComfyUI's own default VAE dtype on such GPUs; the VAE is 84 M parameters, so fp32 costs only 170 MB more.
"""


@functools.cache
def cpu_bf16_is_fast() -> bool:
    """bf16 runs natively on this CPU: bf16 instructions (``compat.cpu_has_bf16_instructions``), and oneDNN's bf16
    linear computing a probe correctly (``compat.onednn_linear_op``; oneDNN capped below bf16, e.g.
    ``ONEDNN_MAX_CPU_ISA=AVX2``, fails it). Elsewhere bf16 is emulated and slower than fp32 (measured with
    ``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX512-BF16 EPYC: a 1024² bf16 matmul 1,970 ms, fp32 14 ms)."""
    fast = cpu_has_bf16_instructions() and onednn_linear_op(torch.bfloat16) is not None
    logger.debug("bf16 on this CPU: %s", "native" if fast else "emulated")
    return fast


def auto_dtype(device: torch.device) -> torch.dtype:
    """The fastest numerically safe weight dtype on ``device`` (see the module table)."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_bf16_is_fast():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """A dtype choice ('auto', 'fp32', 'fp16', 'bf16') → the weight dtype on ``device``."""
    return auto_dtype(device) if choice == "auto" else DTYPES[choice]


def resolve_vae_dtype(choice: str, model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' = the model's dtype, but never fp16 (``VAE_AUTO_DTYPES``); otherwise the dtype named."""
    if choice != "auto":
        return DTYPES[choice]
    auto = VAE_AUTO_DTYPES[model_dtype]
    if auto is None:
        bf16_fast = device.type == "cuda" and torch.cuda.is_bf16_supported()
        auto = torch.bfloat16 if bf16_fast else torch.float32
    return auto


def resolve_dtypes(choice: str, vae_choice: str | None, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(weight dtype, VAE dtype) on ``device`` for a model's dtype ``choice`` and its VAE's; ``vae_choice`` None = as
    asked for the whole model ('auto' stays 'auto', a named dtype applies to the VAE too)."""
    model_dtype = resolve_dtype(choice, device)
    return model_dtype, resolve_vae_dtype(vae_choice or choice, model_dtype, device)
