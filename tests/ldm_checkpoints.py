"""Write AltDiffusion diffusers folders (from ``factories``) as A1111/LDM single-file checkpoints, and an SD1 one.

The key mapping here is the inverse of what the loader does, written independently of the code under test: it
follows diffusers' own ``scripts/convert_diffusers_to_original_stable_diffusion.py`` (the prefix tables
``unet_conversion_map*`` and ``vae_conversion_map*``), generalised from SD's fixed 4 levels × 2 layers to any number of
levels and layers per block, so that the tiny test models convert too. Text encoder keys get ``cond_stage_model.``
in front, as A1111's AltDiffusion files have them.

Real files differ in the text encoder's optional keys: A1111's m2/m9 files carry ``cond_stage_model.pre_LN.*``, a file
converted from a diffusers save (``factories.TextEncoderLayout(writer="diffusers")``) has none; ``drop`` leaves out more.

A single file carries no tokenizer and its UNet/VAE/text-encoder configs can only be inferred from shapes for the
real-size models, so ``companion=True`` also writes ``<stem>/tokenizer/`` and ``<stem>/{unet,vae,text_encoder}/config.json``
next to the file (the layout the loader documents for such files).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

LDM_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."}

# (LDM, diffusers) pairs, from diffusers' convert_diffusers_to_original_stable_diffusion.py.
UNET_FIXED = [
    ("time_embed.0.weight", "time_embedding.linear_1.weight"),
    ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"),
    ("time_embed.2.bias", "time_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"),
    ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"),
    ("out.2.bias", "conv_out.bias"),
]
UNET_RESNET_PARTS = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]
VAE_FIXED_PARTS = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
VAE_ATTENTION_PARTS = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
# pre-0.14 names, as the .bin factory folders store them
VAE_OLD_ATTENTION_PARTS = [("q.", "query."), ("k.", "key."), ("v.", "value."), ("proj_out.", "proj_attn.")]

# Buffers and bookkeeping entries real LDM checkpoints carry besides the three models.
LDM_EXTRAS = ("betas", "alphas_cumprod", "model_ema.decay", "model_ema.num_updates")


def unet_prefix_map(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(LDM prefix, diffusers prefix) pairs for a UNet2DConditionModel config of any depth."""
    levels = len(config["block_out_channels"])
    per_block = config["layers_per_block"]
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    pairs = []
    for i in range(levels):
        for j in range(per_block):
            pairs.append((f"input_blocks.{(per_block + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                pairs.append((f"input_blocks.{(per_block + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(per_block + 1):
            pairs.append((f"output_blocks.{(per_block + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                pairs.append((f"output_blocks.{(per_block + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"input_blocks.{(per_block + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            pairs.append(
                (f"output_blocks.{(per_block + 1) * i + per_block}.{2 if up_attn[i] else 1}.", f"up_blocks.{i}.upsamplers.0.")
            )
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    fixed = {hf: sd for sd, hf in UNET_FIXED}
    layers = unet_prefix_map(config)
    out = {}
    for key, tensor in state_dict.items():
        name = fixed.get(key, key)
        if "resnets" in name:
            for sd_part, hf_part in UNET_RESNET_PARTS:
                name = name.replace(hf_part, sd_part)
        for sd_part, hf_part in layers:
            name = name.replace(hf_part, sd_part)
        out[name] = tensor
    return out


def vae_prefix_map(config: dict[str, Any]) -> list[tuple[str, str]]:
    levels = len(config["block_out_channels"])
    per_block = config["layers_per_block"]
    pairs = list(VAE_FIXED_PARTS)
    for i in range(levels):
        pairs += [(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.") for j in range(per_block)]
        if i < levels - 1:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{levels - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        pairs += [
            (f"decoder.up.{levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.") for j in range(per_block + 1)
        ]
    pairs += [(f"mid.block_{i + 1}.", f"mid_block.resnets.{i}.") for i in range(2)]
    return pairs


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    layers = vae_prefix_map(config)
    out = {}
    for key, tensor in state_dict.items():
        name = key
        for sd_part, hf_part in layers:
            name = name.replace(hf_part, sd_part)
        if "attentions" in key:
            for sd_part, hf_part in VAE_ATTENTION_PARTS + VAE_OLD_ATTENTION_PARTS:
                name = name.replace(hf_part, sd_part)
            if tensor.ndim == 2:  # LDM's attention projections are 1×1 convolutions
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[name] = tensor
    return out


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if files[0].suffix == ".safetensors":
        return safetensors.torch.load_file(str(files[0]))
    return torch.load(files[0], weights_only=True)


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def ldm_state_dict(folder: Path, dtype: torch.dtype | None = None, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """All weights of the diffusers ``folder`` under their LDM names, plus the usual LDM extras, less the keys that
    start with one of ``drop`` (LDM names, e.g. ``"cond_stage_model.pre_LN."``)."""
    folder = Path(folder)
    converters = {
        "unet": lambda sd: unet_to_ldm(sd, _config(folder / "unet")),
        "vae": lambda sd: vae_to_ldm(sd, _config(folder / "vae")),
        "text_encoder": lambda sd: sd,
    }
    out = {}
    for component, convert in converters.items():
        for key, tensor in convert(_read_weights(folder / component)).items():
            out[LDM_PREFIXES[component] + key] = tensor
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    out["betas"] = betas.float()
    out["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    out["model_ema.decay"] = torch.tensor(0.9999)
    out["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    if dtype is not None:
        out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    return {k: v for k, v in out.items() if not (drop and k.startswith(drop))}


def write_ldm_checkpoint(
    folder: Path,
    dest: Path,
    *,
    companion: bool = True,
    tokenizer: bool = True,
    dtype: torch.dtype | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """The diffusers ``folder`` as one LDM checkpoint ``dest`` (``.safetensors``, or ``.ckpt`` = a zip pickle holding
    ``{"state_dict": …, "global_step": 0}`` as Lightning writes it); returns ``dest``.

    ``companion``: also write ``<stem>/{unet,vae,text_encoder}/config.json``; ``tokenizer``: also ``<stem>/tokenizer/``;
    ``drop``: LDM key prefixes to leave out (e.g. ``("cond_stage_model.pre_LN.",)``, as files converted from a
    diffusers m2/m9 save have it).
    """
    folder, dest = Path(folder), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in ldm_state_dict(folder, dtype, drop).items()}
    if dest.suffix == ".safetensors":
        safetensors.torch.save_file(state, str(dest), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state, "global_step": 0, "epoch": 0}, dest)
    side = dest.parent / dest.stem
    if companion:
        for component in ("unet", "vae", "text_encoder"):
            (side / component).mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / component / "config.json", side / component / "config.json")
    if tokenizer:
        shutil.copytree(folder / "tokenizer", side / "tokenizer", dirs_exist_ok=True)
    return dest


def write_sd_clip_checkpoint(sd_folder: Path, dest: Path) -> Path:
    """A Stable Diffusion 1.x single file: the CLIP text encoder under ``cond_stage_model.transformer.*``."""
    sd_folder, dest = Path(sd_folder), Path(dest)
    state = {}
    state.update(
        {
            "model.diffusion_model." + k: v
            for k, v in unet_to_ldm(_read_weights(sd_folder / "unet"), _config(sd_folder / "unet")).items()
        }
    )
    state.update(
        {"first_stage_model." + k: v for k, v in vae_to_ldm(_read_weights(sd_folder / "vae"), _config(sd_folder / "vae")).items()}
    )
    state.update({"cond_stage_model.transformer." + k: v for k, v in _read_weights(sd_folder / "text_encoder").items()})
    dest.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(dest))
    return dest
