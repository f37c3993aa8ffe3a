"""Version quirks of the libraries under the engine, in one place: each private API it probes, each import whose home
depends on the library's version, and each optional dependency, with the version that needs it.

| here                               | quirk: library, version                                           | for              |
|------------------------------------|-------------------------------------------------------------------|------------------|
| ``onednn_linear_op``               | torch ≥ 2.0: private op ``torch.ops.mkldnn._linear_pointwise``    | cpu_kernels,     |
|                                    |                                                                   | precision        |
| ``cpu_has_bf16_instructions``      | torch ≥ 2.1: private ``torch.cpu._is_avx512_bf16_supported``,     | precision        |
|                                    | ``_is_amx_tile_supported``                                        |                  |
| ``attention_is_fused``             | torch ≥ 2.0: private ``torch._fused_sdp_choice``                  | denoise,         |
|                                    |                                                                   | vae_stage        |
| ``restore_non_persistent_buffers`` | transformers ≥ 4.31: XLM-R's ``position_ids``, ``token_type_ids`` | weights          |
| (``NON_PERSISTENT_BUFFERS``)       | never saved; torch ≥ 1.6: private ``_non_persistent_buffers_set`` |                  |
| ``hub_network_errors``             | huggingface_hub raises requests' errors < 1.0, httpx's 1.x,       | hub              |
|                                    | httpx2's 2.x                                                      |                  |
| ``convert_ldm_unet_checkpoint``,   | diffusers: not public API, in ``loaders.single_file_utils`` since | ldm_to_diffusers |
| ``convert_ldm_vae_checkpoint``     | the 0.26 single-file refactor (before: ``convert_from_ckpt``)     |                  |
| ``optional_import``                | scipy, torchsde: ComfyUI's requirements, optional for the pack    | schedules,       |
|                                    |                                                                   | samplers         |

Each torch quirk is a probe of the feature itself (the attribute exists, the op computes a known answer), not a
comparison of version numbers: these private APIs depend on the build and the CPU as much as on the release (a torch
built without oneDNN has no ``torch.ops.mkldnn``; oneDNN builds bf16 kernels only on CPUs with bf16 instructions), and
every probe that fails falls back to the public path. The versions named are those the probes were written against;
the pack's tested ranges are in ``pyproject.toml`` (torch ≥ 2.4, diffusers 0.42, transformers 5, huggingface_hub ≥ 0.34).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from torch import nn
from torch.nn.attention import SDPBackend

logger = logging.getLogger(__name__)

__all__ = [
    "NON_PERSISTENT_BUFFERS",
    "attention_is_fused",
    "convert_ldm_unet_checkpoint",
    "convert_ldm_vae_checkpoint",
    "cpu_has_bf16_instructions",
    "hub_network_errors",
    "onednn_linear_op",
    "optional_import",
    "restore_non_persistent_buffers",
]


# --------------------------------------------------------------------------------------------------------- torch


@functools.cache
def onednn_linear_op(dtype: torch.dtype = torch.float32) -> Callable[..., torch.Tensor] | None:
    """``torch.ops.mkldnn._linear_pointwise`` where this torch has it and it computes a 2×3 probe in ``dtype``
    correctly; else None.

    torch ≥ 2.0: a private op (the one torch's compiler emits for CPU linears), hence the probe, run per dtype on the
    real op: oneDNN builds bf16 kernels only on CPUs with bf16 instructions (AVX512-BF16, AMX) or AVX-512 emulation, and
    on an AVX2-only CPU its bf16 inner product raises "could not create a primitive descriptor" (then ``F.linear``,
    emulated, still works)."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
        # Small integers: exact in fp32 and bf16, so the probe compares for equality.
        x, weight, bias = (t.to(dtype) for t in (torch.ones(2, 3), torch.arange(12.0).reshape(4, 3), torch.ones(4)))
        works = torch.equal(op(x, weight, bias, "none", [], ""), F.linear(x, weight, bias))
    except (AttributeError, RuntimeError, TypeError) as err:  # missing op, another signature, no kernel for dtype
        logger.info("oneDNN linear not usable for %s in torch %s (%s); using F.linear", dtype, torch.__version__, err)
        return None
    return op if works else None


def cpu_has_bf16_instructions() -> bool:
    """The CPU's flags list bf16 matrix instructions (AVX512-BF16: AMD Zen 4+, Intel Cooper Lake+; AMX: Sapphire
    Rapids+).

    torch ≥ 2.1: private probes ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``; a torch without
    them counts as 'no'."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def attention_is_fused(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether torch's ``scaled_dot_product_attention`` (diffusers' ``AttnProcessor2_0``) runs a flash or
    memory-efficient kernel for these heads on ``device``, i.e. never holds the whole tokens² score matrix.

    Torch 2.x picks flash attention on the CPU for every float dtype; on CUDA it depends on the dtype, the head size
    and the card. torch ≥ 2.0: asked through torch's own private chooser ``torch._fused_sdp_choice`` on a one-token
    probe; if torch cannot answer, the attention counts as fused, so that no size that might work is refused.
    """
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None or device.type == "meta":
        return True
    try:
        probe = torch.zeros(1, 1, 1, head_dim, device=device, dtype=dtype)
        return int(choose(probe, probe, probe)) != int(SDPBackend.MATH)
    except (RuntimeError, TypeError, ValueError):
        return True


# -------------------------------------------------------------------------------------------------- transformers

NON_PERSISTENT_BUFFERS: dict[str, Callable[[torch.Size], torch.Tensor]] = {
    # transformers ≥ 4.31 registers both of XLMRobertaEmbeddings' buffers with persistent=False: no state dict holds
    # them, so a module built on the meta device would keep them on meta. Recomputed exactly as its __init__ does.
    "position_ids": lambda shape: torch.arange(shape[-1]).expand(shape),
    "token_type_ids": lambda shape: torch.zeros(shape, dtype=torch.long),
}
"""Buffer name → how to recompute it from its shape, for buffers that are never in a state dict."""


def restore_non_persistent_buffers(module: nn.Module, device: torch.device) -> None:
    """Give every non-persistent buffer of ``module`` still on the meta device its value (``NON_PERSISTENT_BUFFERS``),
    on ``device``.

    torch ≥ 1.6: which buffers are non-persistent is only in the private ``Module._non_persistent_buffers_set``.

    Raises:
        RuntimeError: a buffer this table cannot recompute (a new transformers/diffusers version?).
    """
    for owner_name, owner in module.named_modules():
        for name in owner._non_persistent_buffers_set:
            buffer = owner._buffers.get(name)
            if buffer is None or not buffer.is_meta:
                continue
            if name not in NON_PERSISTENT_BUFFERS:
                raise RuntimeError(
                    f"buffer {owner_name}.{name} of {type(module).__name__} is not stored in weight files and this "
                    "pack does not know how to recompute it (a new transformers/diffusers version?); add it to "
                    "altdiff_core.compat.NON_PERSISTENT_BUFFERS."
                )
            owner._buffers[name] = NON_PERSISTENT_BUFFERS[name](buffer.shape).to(device)


# ------------------------------------------------------------------------------------------------ huggingface_hub


def hub_network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions huggingface_hub raises for a refused connection, a timeout, a broken file or a bad size.

    huggingface_hub raises its HTTP library's errors, and that library changed: requests below 1.0, httpx from 1.0
    (httpx2 in 2.x). ``HfHubHTTPError`` derives from that library's base error, so its bases name it whatever the
    version; OSError covers a broken file, ValueError a bad size. Imports huggingface_hub (call it only to download).
    """
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, ValueError, *HfHubHTTPError.__bases__)


# ----------------------------------------------------------------------------------------- optional dependencies


def optional_import(module: str, needed_by: str) -> ModuleType:
    """Import a package that ComfyUI installs but this pack does not require (scipy, torchsde), or say how to get it.

    Raises:
        ImportError: naming the package, what needs it (``needed_by``) and the ``pip install`` that fixes it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        raise ImportError(
            f"the '{package}' package is needed for {needed_by}; ComfyUI installs it, elsewhere run "
            f"'pip install {package}' or choose another sampler/scheduler."
        ) from e
