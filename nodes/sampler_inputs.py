"""ComfyUI's sampler sockets → ``altdiff_core.sample_latent``'s arguments, and its errors → the sockets to fix.

| socket                  | ComfyUI carries                                    | the engine takes                               |
|-------------------------|----------------------------------------------------|------------------------------------------------|
| CONDITIONING            | ``[[context [1,T,width], {options}], …]``          | ``[CondEntry(context, **options), …]``         |
| LATENT ``samples``      | ``[B,4,H/8,W/8]`` float32, raw (unscaled)           | ``latent``, the same tensor                    |
| LATENT ``noise_mask``   | ``[B?,H,W]`` 0..1 at image resolution (MASK)        | ``noise_mask``, the same tensor                |
| LATENT ``batch_index``  | ``[i, …]``, one per image (ComfyUI's batch nodes)   | ``batch_index``, the same list                 |

Only what the engine never sees is checked here: the payloads' structure (a list of [context, dict] pairs, a dict
whose ``samples`` and ``noise_mask`` are tensors) and options its sampler cannot honour. The engine checks the values
once, in its own terms, and ``sockets.socket_hints(SOCKET_HINTS)`` adds to its message which socket and which ComfyUI
node fix them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..altdiff_core import CondEntry, InvalidInputError, check_tensor

UNSUPPORTED_COND_KEYS = {
    "area": "area conditioning (ConditioningSetArea)",
    "mask": "mask conditioning (ConditioningSetMask)",
    "control": "ControlNet",
    "gligen": "GLIGEN",
    "hooks": "conditioning hooks",
}
"""Conditioning options the engine's sampler does not apply (ComfyUI's KSampler does, on the native MODEL)."""

ENTRY_OPTIONS = ("strength", "start_percent", "end_percent")
"""Conditioning options that become ``CondEntry`` fields (``ConditioningCombine`` / ``ConditioningSetTimestepRange``);
the engine checks their values."""

SOCKET_HINTS = {
    "latent": "Connect latent_image to an EmptyLatentImage (txt2img: its width, height and batch_size make the size) or "
    "to AltDiffusion VAE Encode (img2img).",
    "noise_mask": "The latent's noise_mask comes from SetLatentNoiseMask: give it a MASK from a LoadImage or a mask editor.",
    "batch_index": "Remove the LATENT's batch_index key, or rebuild the latent with ComfyUI's batch nodes (Latent From "
    "Batch, Repeat Latent Batch).",
    **{
        role: f"Connect {role} to an AltDiffusion Text Encode output (or a Conditioning node fed by one); set an option "
        "such as strength again in the node that added it."
        for role in ("positive", "negative")
    },
}
"""What to do in the graph about an engine ``SamplerInputError``, by its ``argument``."""


def to_cond_entries(conditioning: Sequence, role: str) -> list[CondEntry]:
    """A CONDITIONING list ``[[context, dict], …]`` → ``CondEntry``s (``pooled_output`` and other keys the UNet does
    not read are dropped; an option set to None counts as absent).

    Raises:
        InvalidInputError: not a non-empty list of [tensor, dict] pairs, or an option the engine cannot honour.
    """
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise InvalidInputError(
            f"{role} conditioning is an empty or non-list {type(conditioning).__name__}, not a CONDITIONING list "
            "[[tensor, dict], …]; connect a text-encode node's output."
        )
    entries = []
    for item in conditioning:
        pair = list(item) if isinstance(item, (list, tuple)) else []
        extras = pair[1] if len(pair) > 1 else {}
        if not pair or not isinstance(extras, dict):  # the context itself (pair[0]) is the engine's to check
            raise InvalidInputError(
                f"{role} conditioning holds {type(item).__name__} {_short(item)}, not a pair [[batch, tokens, width] "
                "tensor, dict]; connect a text-encode node's output."
            )
        for key, what in UNSUPPORTED_COND_KEYS.items():
            if extras.get(key) is not None:
                raise InvalidInputError(
                    f"{role} conditioning carries {what} ('{key}'), which the AltDiffusion sampler does not apply; "
                    "remove that node, or sample with ComfyUI's KSampler (AltDiffusion UNet loaded by UNETLoader)."
                )
        options = {key: extras[key] for key in ENTRY_OPTIONS if extras.get(key) is not None}
        entries.append(CondEntry(pair[0], **options))
    return entries


def _short(value: object) -> str:
    """A conditioning entry in a message: tensors by shape, anything else cut to 60 characters."""
    if isinstance(value, torch.Tensor):
        return f"of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value[:3]) + (", …]" if len(value) > 3 else "]")
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def latent_arguments(latent_image: dict) -> dict:
    """A LATENT dict → ``sample_latent``'s ``latent`` (``samples``), ``noise_mask`` and ``batch_index`` (None where
    the key is absent); its other keys are the node's to keep.

    Raises:
        InvalidInputError: ``samples`` or ``noise_mask`` that is not a real tensor.
    """
    samples = check_tensor(
        latent_image["samples"], "latent", "a [batch, 4, height/8, width/8] tensor", "connect a LATENT output."
    )
    mask = latent_image.get("noise_mask")
    if mask is not None:
        check_tensor(mask, "noise_mask", "a MASK tensor [batch, height, width]", "connect a MASK output.")
    return {"latent": samples, "noise_mask": mask, "batch_index": latent_image.get("batch_index")}
