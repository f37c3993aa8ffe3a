"""Prompt stage: text → conditioning tensor, in 77-token windows with ComfyUI's prompt weighting.

Weighting is applied as ComfyUI applies token weights for SD1 (``ClipTokenWeightEncoder.encode_token_weights``):
the windows and one empty window (``<s> </s>`` + padding) are encoded together, and each token whose weight ``w`` is
not 1 becomes ``empty + (token − empty)·w``, the empty window's output taken at the same position.
"""

from __future__ import annotations

import torch

from .components import TextEncoder
from .errors import InvalidInputError, StageInputError
from .tokenizer import TokenWindows


def check_layer(deepest: int, layer: int) -> int:
    """``layer`` if it names one of an encoder's ``deepest`` transformer layers (-1 … -deepest), else an error saying
    the range."""
    if not -deepest <= layer <= -1:
        raise InvalidInputError(
            f"layer {layer} does not exist: this text encoder has {deepest} layers, so use -1 (last) to -{deepest}."
        )
    return layer


def encode_windows(text_encoder: TextEncoder, windows: TokenWindows) -> torch.Tensor:
    """Encode token windows ``[k, 77]`` → float32 ``[k, 77, context_dim]`` (weights applied) on the encoder's device."""
    ids, mask = windows.input_ids, windows.attention_mask
    weighted = windows.weighted
    if weighted:
        empty = text_encoder.tokenizer.windows("", parse_weights=False)
        ids, mask = torch.cat([ids, empty.input_ids]), torch.cat([mask, empty.attention_mask])
    with torch.inference_mode():
        out = text_encoder.module(ids.to(text_encoder.device), mask.to(text_encoder.device), text_encoder.layer).float()
        if not weighted:
            return out
        out, z_empty = out[:-1], out[-1:]
        w = windows.weights.to(out.device)[..., None]
        return torch.where(w != 1.0, (out - z_empty) * w + z_empty, out)


def encode_prompt(text_encoder: TextEncoder, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``text`` (any language, any length, "" allowed, ComfyUI's ``(text:1.2)`` weights).

    Returns:
        cond: float32 ``[1, 77·k, context_dim]`` on the CPU — the k windows' outputs concatenated along tokens.
        pooled: float32 ``[1, context_dim]`` — the projected ``<s>`` token of the first window (the "cls" pooling
            the BAAI configs name). The UNet does not use it; ComfyUI's conditioning nodes expect it.

    Raises:
        StageInputError: about "prompt": ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise StageInputError(f"prompt is a {type(text).__name__}, not text (a str); pass the prompt as a string.", "prompt")
    out = encode_windows(text_encoder, text_encoder.tokenizer.windows(text))
    cond = out.reshape(1, -1, out.shape[-1]).cpu()
    pooled = out[:1, 0].cpu()
    return cond, pooled
