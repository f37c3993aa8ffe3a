"""LDM (A1111 single-file) weights → diffusers names, and diffusers configs inferred from the weights' shapes.

The key renaming of the UNet and the VAE is diffusers' own (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, imported through ``compat``; pure functions, no network). Their configs are
inferred here from tensor shapes alone, without the original LDM yaml or any download:

| part  | read from the shapes                                                    | not in the shapes: family rule       |
|-------|-------------------------------------------------------------------------|--------------------------------------|
| UNet  | in/out channels, channels per level, levels, layers per block, which     | attention heads (``ATTENTION_HEADS``: |
|       | levels attend, transformer depth, cross-attention width, linear or conv  | SD1 8 per level, SD2 64 channels per |
|       | projections                                                             | head), GroupNorm 32                  |
| VAE   | channels per level, layers per block, latent channels                   | GroupNorm 32, scaling factor 0.18215 |
| XLM-R | vocabulary, width, layers, MLP width, positions, projection width, m18  | 64 channels per attention head       |
|       | head (``transformation_pre``)                                           | (``XLMR_HEAD_WIDTH``)                |

The family rules hold for every released SD1/SD2 model (and so for AltDiffusion m2/m9/m18); a model whose widths do
not fit them (a tiny test model, a pruned model) is refused with a message asking for its config files, which
``single_file.py`` reads from a companion folder instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .compat import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from .errors import ModelFormatError

Shapes = Mapping[str, torch.Size]
"""Key → shape of a state dict (prefix removed), e.g. ``{"input_blocks.0.0.weight": (320, 4, 3, 3), …}``."""

ATTENTION_HEADS: dict[str, Callable[[int], int]] = {
    "SD1": lambda channels: 8,  # LDM v1 configs: num_heads 8 at every level
    "SD2": lambda channels: channels // 64,  # LDM v2 configs: num_head_channels 64
}
"""UNet family (``Variant.unet_family``) → number of attention heads of a level with ``channels`` channels: a rule of
the Stable Diffusion generation, shared by every variant built on it."""

MIN_HEAD_WIDTH = 32
"""No released SD UNet has attention heads narrower than 40 channels; narrower means the family rule does not apply."""

XLMR_HEAD_WIDTH = 64
"""Channels per attention head of XLM-RoBERTa base (768 = 12 × 64) and large (1024 = 16 × 64)."""

GROUP_NORM_GROUPS = 32
"""LDM's ``Normalize`` is always GroupNorm(32, C)."""

SD_LATENT_SCALE = 0.18215

TEXT_ENCODER_CONSTANTS: dict[str, Any] = {
    "architectures": ["RobertaSeriesModelWithTransformation"],
    "model_type": "xlm-roberta",
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-05,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "position_embedding_type": "absolute",
}
"""What every XLM-R text encoder of AltDiffusion has and no shape tells (``text_encoder/config.json`` values)."""


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers N of keys matching ``pattern`` (a regex with one group), e.g. ``input_blocks\\.(\\d+)\\.``."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in shapes if (m := regex.match(key))})


def _shape(shapes: Shapes, key: str, source: Path, what: str) -> torch.Size:
    if key not in shapes:
        raise ModelFormatError(
            f"{source} has no {what} weight {key!r}; it is not a complete Stable Diffusion/AltDiffusion checkpoint. "
            "Download the file again."
        )
    return shapes[key]


def _heads(family: str, channels: int, source: Path) -> int:
    heads = ATTENTION_HEADS[family](channels)
    if heads < 1 or channels % heads or channels // heads < MIN_HEAD_WIDTH:
        raise ModelFormatError(
            f"{source}: a UNet level of {channels} channels does not fit the {family} attention layout "
            f"({heads} heads); this is not a standard-size model, so its attention heads can't be read from the "
            "weights. Put its diffusers unet/config.json in the checkpoint's companion folder (see the loader's docs)."
        )
    return heads


def _check_group_norm(channels: list[int], source: Path, what: str) -> None:
    if any(c % GROUP_NORM_GROUPS for c in channels):
        raise ModelFormatError(
            f"{source}: {what} channels {channels} are not multiples of {GROUP_NORM_GROUPS} (LDM's GroupNorm); this is "
            f"not a standard-size model. Put its diffusers {what.lower()}/config.json in the checkpoint's companion folder."
        )


def unet_config_from_shapes(shapes: Shapes, family: str, source: Path) -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` config for LDM UNet weights (keys without ``model.diffusion_model.``).

    ``family`` ("SD1" or "SD2") supplies the attention heads, which no shape records.
    """
    conv_in = _shape(shapes, "input_blocks.0.0.weight", source, "UNet")
    downsamplers = [i for i in _indices(shapes, r"input_blocks\.(\d+)\.0\.op\.weight") if i > 0]
    levels = len(downsamplers) + 1
    num_inputs = len(_indices(shapes, r"input_blocks\.(\d+)\."))
    per_block, remainder = divmod(num_inputs - levels, levels)
    if remainder or per_block < 1:
        raise ModelFormatError(
            f"{source}: the UNet's {num_inputs} input blocks do not form {levels} levels; the file is damaged."
        )
    firsts = [1 + level * (per_block + 1) for level in range(levels)]
    channels = [int(_shape(shapes, f"input_blocks.{b}.0.out_layers.3.weight", source, "UNet")[0]) for b in firsts]
    down_attention = [f"input_blocks.{b}.1.proj_in.weight" in shapes for b in firsts]
    up_attention = [f"output_blocks.{level * (per_block + 1)}.1.proj_in.weight" in shapes for level in range(levels)]
    attention_keys = [k for k in shapes if k.endswith("attn2.to_k.weight")]
    if not attention_keys:
        raise ModelFormatError(f"{source}: the UNet has no cross-attention (attn2) weights; it is not a text-to-image UNet.")
    depth = [len(_indices(shapes, rf"input_blocks\.{b}\.1\.transformer_blocks\.(\d+)\.")) or 1 for b in firsts]
    proj_in = next(k for k in shapes if k.endswith(".1.proj_in.weight"))
    _check_group_norm(channels, source, "UNet")
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 64,
        "in_channels": int(conv_in[1]),
        "out_channels": int(_shape(shapes, "out.2.weight", source, "UNet")[0]),
        "block_out_channels": channels,
        "layers_per_block": per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention],
        "cross_attention_dim": int(shapes[attention_keys[0]][1]),
        # diffusers' (misnamed) head count per level; the mid block uses the last level's, attending or not.
        "attention_head_dim": [_heads(family, c, source) for c in channels],
        "transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else depth,
        "use_linear_projection": len(shapes[proj_in]) == 2,
        "norm_num_groups": GROUP_NORM_GROUPS,
    }


def vae_config_from_shapes(shapes: Shapes, source: Path) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` config for LDM VAE weights (keys without ``first_stage_model.``)."""
    levels = _indices(shapes, r"encoder\.down\.(\d+)\.")
    per_block = len(_indices(shapes, r"encoder\.down\.0\.block\.(\d+)\."))
    if not levels or not per_block:
        raise ModelFormatError(f"{source}: the VAE encoder has no down blocks; the file is damaged or not an SD checkpoint.")
    channels = [int(_shape(shapes, f"encoder.down.{i}.block.0.conv2.weight", source, "VAE")[0]) for i in levels]
    _check_group_norm(channels, source, "VAE")
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": int(_shape(shapes, "encoder.conv_in.weight", source, "VAE")[1]),
        "out_channels": int(_shape(shapes, "decoder.conv_out.weight", source, "VAE")[0]),
        "latent_channels": int(_shape(shapes, "decoder.conv_in.weight", source, "VAE")[1]),
        "block_out_channels": channels,
        "layers_per_block": per_block,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "norm_num_groups": GROUP_NORM_GROUPS,
        "sample_size": 512,
        "scaling_factor": SD_LATENT_SCALE,
    }


def text_encoder_config_from_shapes(shapes: Shapes, source: Path) -> dict[str, Any]:
    """A ``text_encoder/config.json`` dict for AltDiffusion text-encoder weights (keys without ``cond_stage_model.``)."""
    vocab, hidden = _shape(shapes, "roberta.embeddings.word_embeddings.weight", source, "text encoder")
    if hidden % XLMR_HEAD_WIDTH:
        raise ModelFormatError(
            f"{source}: a text encoder {hidden} wide is not an XLM-R base/large; its attention heads can't be read from "
            "the weights. Put its text_encoder/config.json in the checkpoint's companion folder."
        )
    projection = "transformation_pre.weight" if "transformation_pre.weight" in shapes else "transformation.weight"
    config = {
        **TEXT_ENCODER_CONSTANTS,
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "num_attention_heads": int(hidden) // XLMR_HEAD_WIDTH,
        "num_hidden_layers": len(_indices(shapes, r"roberta\.encoder\.layer\.(\d+)\.")),
        "intermediate_size": int(_shape(shapes, "roberta.encoder.layer.0.intermediate.dense.weight", source, "text encoder")[0]),
        "max_position_embeddings": int(
            _shape(shapes, "roberta.embeddings.position_embeddings.weight", source, "text encoder")[0]
        ),
        "type_vocab_size": int(_shape(shapes, "roberta.embeddings.token_type_embeddings.weight", source, "text encoder")[0]),
        # m18 never applies `transformation` (every writer keeps it); its own projection has the same width.
        "project_dim": int(_shape(shapes, projection, source, "text encoder")[0]),
    }
    if "transformation_pre.weight" in shapes:
        config["has_pre_transformation"] = True
    return config


def convert_unet(state_dict: dict[str, torch.Tensor], config: dict[str, Any], source: Path) -> dict[str, torch.Tensor]:
    """LDM UNet weights (keys with ``model.diffusion_model.``) → diffusers names; tensors are not copied."""
    try:
        return convert_ldm_unet_checkpoint(state_dict, config)
    except (KeyError, IndexError) as err:
        raise ModelFormatError(f"{source}: the UNet weights are incomplete ({err!r} missing); download the file again.") from err


def convert_vae(state_dict: dict[str, torch.Tensor], config: dict[str, Any], source: Path) -> dict[str, torch.Tensor]:
    """LDM VAE weights (keys with ``first_stage_model.``) → diffusers names; 1×1-conv attention weights become views
    of Linear shape, not copies."""
    try:
        return convert_ldm_vae_checkpoint(state_dict, config)
    except (KeyError, IndexError) as err:
        raise ModelFormatError(f"{source}: the VAE weights are incomplete ({err!r} missing); download the file again.") from err
