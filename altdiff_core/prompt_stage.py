"""Prompt stage: text → conditioning tensor, in 77-token windows (see ``tokenizer``)."""

from __future__ import annotations

import torch

from .components import TextEncoder


def encode_prompt(text_encoder: TextEncoder, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``text`` (any language, any length, "" allowed).

    Returns:
        cond: float32 ``[1, 77·k, context_dim]`` on the CPU — the k windows' outputs concatenated along tokens.
        pooled: float32 ``[1, context_dim]`` — the projected ``<s>`` token of the first window (the "cls" pooling
            the BAAI configs name). The UNet does not use it; ComfyUI's conditioning nodes expect it.
    """
    windows = text_encoder.tokenizer.windows(text)
    with torch.inference_mode():
        out = text_encoder.module(
            windows.input_ids.to(text_encoder.device), windows.attention_mask.to(text_encoder.device)
        ).float()
    cond = out.reshape(1, -1, out.shape[-1]).cpu()
    pooled = out[:1, 0].cpu()
    return cond, pooled
