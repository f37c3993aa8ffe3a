"""AltDiffusion as ComfyUI's own MODEL, CLIP and VAE, so that every stock node works with it.

Imported only inside a ComfyUI server (``comfy_seam.IN_COMFYUI``). The engine reads the model from any format users
have (``altdiff_core.load_model``); this module hands its weights to ComfyUI's own classes (the UNet's and the
encoder's tensors themselves: the classes are built on the meta device and assigned them, so there is one copy):

| part  | ComfyUI class                                        | built from                                        |
|-------|------------------------------------------------------|---------------------------------------------------|
| MODEL | ``ModelPatcher`` over ``model_base.BaseModel``      | the diffusers UNet's weights, renamed to LDM keys  |
|       | (SD 1.x config for m2/m9, SD 2.x for m18; EPS pinned) |                                                   |
| CLIP  | ``comfy.sd.CLIP`` over ``XLMRClipModel`` (a         | the engine's XLM-R + head weights, same key names  |
|       | ``sd1_clip.SDClipModel``) and ``XLMRTokenizer``       |                                                   |
| VAE   | ``comfy.sd.VAE``                                     | the diffusers VAE's weights (ComfyUI converts them) |

The CLIP encodes exactly as the engine does (same windows, weights, positions and head; ``encode_prompt``): XLM-R
numbers positions ``padding_idx + 1 + i`` and gives padding the position ``padding_idx`` (fairseq), where core's
BERT numbers from 0; the m2/m9 head reads the last layer, m18's ``transformation_pre(pre_LN(·))`` the penultimate,
and ``CLIPSetLastLayer`` picks another layer for the same head. Its state-dict keys are the engine's
(``xlm_roberta.transformer.roberta.*``, ``…transformation.*``), which is what LoRA key names map to
(``lora_names``) and what ``CheckpointSave`` writes as ``cond_stage_model.*`` (the A1111 AltDiffusion layout).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import comfy.cli_args
import comfy.latent_formats
import comfy.ldm.modules.attention
import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import folder_paths
import torch
from comfy.text_encoders import bert

from ...altdiff_core import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    VAE,
    WINDOW_LENGTH,
    DiffusionModel,
    LoadedModel,
    ModelFormatError,
    TextEncoder,
    Variant,
    XLMRTokenizer,
    build_head_layer,
    cpu_linear,
    matmul_form_fits,
    small_image_conv,
    variant_named,
)

logger = logging.getLogger(__name__)

CLIP_NAME = "xlm_roberta"
"""The CLIP's one encoder, as ComfyUI names it: state-dict prefix ``xlm_roberta.``, token dict key, embedding key."""
TRANSFORMER_PREFIX = f"{CLIP_NAME}.transformer."
"""Prefix of the encoder's weights in ``CLIP.get_sd()``; after it come the engine's names (``roberta.*``, heads)."""
CHECKPOINT_TEXT_PREFIX = "cond_stage_model."
"""Where an A1111 AltDiffusion checkpoint keeps the text encoder (``single_file.PREFIXES``)."""
TOKENIZER_KEY = "altdiffusion_tokenizer"
"""``tokenizer_data`` key carrying the engine's ``XLMRTokenizer`` to the CLIP's tokenizer."""


# --- MODEL ----------------------------------------------------------------------------------------------------------


def _heads(config: dict) -> dict[str, int]:
    """ComfyUI's head options for a diffusers UNet config, whose ``attention_head_dim`` is the head *count* (an int
    for SD 1.x, one per level for SD 2.x): a constant count is ``num_heads``, a constant head width
    ``num_head_channels``."""
    heads = config.get("num_attention_heads") or config["attention_head_dim"]
    channels = config["block_out_channels"]
    if isinstance(heads, int):
        return {"num_heads": heads, "num_head_channels": -1}
    widths = {c // h for c, h in zip(channels, heads, strict=True)}
    if len(widths) != 1:
        raise ModelFormatError(
            f"the UNet's attention heads {heads} over channels {channels} have no common width; ComfyUI's UNet needs "
            "one head count or one head width for all levels."
        )
    return {"num_heads": -1, "num_head_channels": widths.pop()}


def _block_layout(config: dict) -> dict[str, Any]:
    """The block layout ``comfy.utils.unet_to_diffusers`` needs, from a diffusers UNet config."""
    per_level = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    down = ["CrossAttn" in kind for kind in config["down_block_types"]]
    up = ["CrossAttn" in kind for kind in config["up_block_types"]]
    return {
        "num_res_blocks": [per_level] * levels,
        "channel_mult": [c // config["block_out_channels"][0] for c in config["block_out_channels"]],
        "transformer_depth": [int(cross) for cross in down for _ in range(per_level)],
        # listed from the highest resolution down, as detect_unet_config lists them; up_blocks run the other way
        "transformer_depth_output": [int(up[levels - 1 - level]) for level in range(levels) for _ in range(per_level + 1)],
        "transformer_depth_middle": 1,
    }


class _EpsPinned:
    """What both model configs share: epsilon prediction whatever the weights look like, AltDiffusion's CLIP, and the
    A1111 AltDiffusion layout when ``CheckpointSave`` writes the text encoder."""

    unet_extra_config: dict = {}  # heads come from the model's own config (_heads), not SD's defaults

    def model_type(self, state_dict, prefix=""):
        # SD20's guess (v-prediction when a norm bias's std > 0.09) is wrong for m18, which predicts epsilon.
        return comfy.model_base.ModelType.EPS

    def clip_target(self, state_dict={}):  # noqa: B006 - ComfyUI's signature
        return comfy.supported_models_base.ClipTarget(AltDiffusionTokenizer, AltDiffusionClipModel)

    def process_clip_state_dict_for_saving(self, state_dict):
        return {
            CHECKPOINT_TEXT_PREFIX + key[len(TRANSFORMER_PREFIX) :]: value
            for key, value in state_dict.items()
            if key.startswith(TRANSFORMER_PREFIX)
        }


class AltDiffusionSD1(_EpsPinned, comfy.supported_models.SD15):
    """m2/m9: ComfyUI's SD 1.x model config (a subclass, so nodes that test for SD15 recognise it)."""


class AltDiffusionSD2(_EpsPinned, comfy.supported_models.SD20):
    """m18: ComfyUI's SD 2.x model config, epsilon prediction, attention in fp32 as SD 2.x needs."""

    unet_extra_config = {"attn_precision": torch.float32}


MODEL_CONFIGS: dict[str, type[comfy.supported_models_base.BASE]] = {"SD1": AltDiffusionSD1, "SD2": AltDiffusionSD2}
"""``Variant.unet_family`` → ComfyUI model config class."""


class CpuKernelOps(comfy.ops.disable_weight_init):
    """ComfyUI's plain operations, with the engine's CPU kernels (``altdiff_core.cpu_kernels``) for the layers whose
    weights ComfyUI neither casts nor patches on the fly: linears through oneDNN's matrix multiply, the deep 3×3
    convolutions over a few pixels as unfold + one multiply. Same parameters and keys; anything else (GPU inputs,
    cast or patched weights, other shapes) runs ComfyUI's own forward. Used for MODELs whose load device is the CPU."""

    class Linear(comfy.ops.disable_weight_init.Linear):
        def forward(self, x, *args, **kwargs):
            if not x.is_cpu or self.comfy_cast_weights or self.weight_function or self.bias_function:
                return super().forward(x, *args, **kwargs)
            comfy.ops.run_every_op()
            return cpu_linear(x, self.weight, self.bias)

    class Conv2d(comfy.ops.disable_weight_init.Conv2d):
        def forward(self, x, *args, **kwargs):
            plain = not (self.comfy_cast_weights or self.weight_function or self.bias_function)
            out = small_image_conv(self, x, self.weight, self.bias) if plain and self.matmul_form else None
            return super().forward(x, *args, **kwargs) if out is None else out

        @functools.cached_property
        def matmul_form(self) -> bool:
            return matmul_form_fits(self)


def _sdpa_attention(func, *args, **kwargs):
    """``optimized_attention_override``: ComfyUI's ``attention_pytorch`` (SDPA) for the attention ``func`` ComfyUI
    picked. On a CPU ComfyUI picks ``attention_sub_quad`` unless told otherwise; SDPA's fused CPU kernel gives the same
    numbers (0 to 1.3e-6 in fp32) in ~0.77 of the UNet call's time at 256² (bench/reports)."""
    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


def _runs_on_cpu() -> bool:
    """Whether ComfyUI runs MODELs on the CPU (``--cpu``, or no GPU): then ``CpuKernelOps`` computes them."""
    return comfy.model_management.get_torch_device().type == "cpu"


def _attention_left_to_default() -> bool:
    """Whether the user left ComfyUI's attention to its default (on a CPU: sub-quadratic), which SDPA may replace."""
    flags = comfy.cli_args.args
    return not (flags.use_split_cross_attention or flags.use_quad_cross_attention or flags.use_pytorch_cross_attention)


def native_model(model: DiffusionModel) -> comfy.model_patcher.ModelPatcher:
    """ComfyUI's MODEL holding ``model``'s UNet weights (ComfyUI's own UNet, in ``model.dtype``, computing in it).

    The UNet is built on the meta device and handed the engine's tensors themselves (``assign``): no second copy of
    the weights, ever. On a CPU it computes with ``CpuKernelOps``, and with SDPA attention unless the user chose an
    attention for ComfyUI (``_attention_left_to_default``).

    Raises:
        ModelFormatError: the UNet has a layout ComfyUI's UNet can't express.
    """
    config = dict(model.module.config)
    diffusers_sd = model.module.state_dict()
    names = comfy.utils.unet_to_diffusers(_block_layout(config))  # every name such a UNet may have
    ldm_sd = {names[name]: tensor for name, tensor in diffusers_sd.items() if name in names}
    unplaced = [name for name in diffusers_sd if name not in names]
    if unplaced:
        raise ModelFormatError(f"{model.source}: ComfyUI's UNet has no place for {unplaced[:3]} ({len(unplaced)} weights).")
    unet_config = comfy.model_detection.detect_unet_config(ldm_sd, "")
    unet_config.update(_heads(config))
    model_config = MODEL_CONFIGS[model.variant.unet_family](unet_config)
    model_config.altdiffusion_variant = model.variant  # for the pack's nodes' checks (model_variant)
    # Compute in the weights' dtype, as the pack's dtype choice means; ComfyUI would upcast bf16 to fp32 on a CPU.
    model_config.set_inference_dtype(model.dtype, None)
    on_cpu = _runs_on_cpu()
    if on_cpu:
        model_config.custom_operations = CpuKernelOps
    base = model_config.get_model(ldm_sd, "", device=torch.device("meta"))
    missing, _ = base.diffusion_model.load_state_dict(ldm_sd, strict=False, assign=True)
    _check_filled(base.diffusion_model, missing, model.source, "the UNet")
    base.device = next(iter(ldm_sd.values())).device  # where the weights now are (ModelPatcher reads it)
    load_device, offload = comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device()
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=load_device, offload_device=offload)
    if on_cpu and _attention_left_to_default():
        patcher.model_options["transformer_options"]["optimized_attention_override"] = _sdpa_attention
    return patcher


def _check_filled(module: torch.nn.Module, missing: list[str], source, part: str) -> None:
    """Raise ``ModelFormatError`` when a module built on the meta device was not given every tensor it holds."""
    empty = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    if missing or empty:
        raise ModelFormatError(
            f"{source}: {part} lacks {(missing or empty)[:3]} ({len(missing or empty)} weights ComfyUI's model needs)."
        )


def model_variant(model: comfy.model_patcher.ModelPatcher) -> Variant | None:
    """The AltDiffusion variant of a MODEL from ``native_model`` (also after LoRAs, merges …), else None."""
    return getattr(model.model.model_config, "altdiffusion_variant", None)


# --- CLIP -----------------------------------------------------------------------------------------------------------


class XLMRobertaEmbeddings(bert.BertEmbeddings):
    """Core's BERT embeddings with XLM-R's positions: token ``i`` of the text is at ``padding_idx + 1 + i``, padding
    at ``padding_idx`` (fairseq's ``make_positions``); ``mask`` marks the text (1) and the padding (0)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.padding_idx = PAD_ID

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.cumsum(mask, dim=1) * mask + self.padding_idx
        x = embeds + self.position_embeddings(positions, out_dtype=embeds.dtype)
        x = x + comfy.ops.cast_to_input(self.token_type_embeddings.weight[0], x)
        return self.LayerNorm(x)


class XLMRoberta(torch.nn.Module):
    """XLM-R's trunk (``roberta.embeddings``, ``roberta.encoder``: core's BERT blocks, the same maths and key names)."""

    def __init__(self, config: dict, dtype, device, operations):
        super().__init__()
        hidden, eps = config["hidden_size"], config["layer_norm_eps"]
        sizes = (config["vocab_size"], config["max_position_embeddings"], config["type_vocab_size"], PAD_ID, hidden, eps)
        self.embeddings = XLMRobertaEmbeddings(*sizes, dtype, device, operations)
        self.encoder = bert.BertEncoder(config["num_hidden_layers"], hidden, config["intermediate_size"],
                                        config["num_attention_heads"], eps, dtype, device, operations)  # fmt: skip


class AltDiffusionTextTransformer(torch.nn.Module):
    """``SDClipModel``'s ``model_class``: XLM-R plus the variant's head, applied to the layer ComfyUI asks for.

    ``forward`` returns (head(last layer), head(requested layer) or None, pooled = the projected ``<s>`` of whichever
    of the two is used), each ``[B, T, context_dim]`` / ``[B, context_dim]``.
    """

    def __init__(self, config: dict, dtype, device, operations):
        super().__init__()
        self.variant: Variant = variant_named(config["variant"])  # "m2/m9" too: a single file not told apart
        self.num_layers = int(config["num_hidden_layers"])
        self.roberta = XLMRoberta(config, dtype, device, operations)
        for name in self.variant.head_layers:
            layer = build_head_layer(name, config["hidden_size"], config["project_dim"], config["layer_norm_eps"],
                                     operations, dtype=dtype, device=device)  # fmt: skip
            self.add_module(name, layer)

    def get_input_embeddings(self):
        return self.roberta.embeddings.word_embeddings

    def set_input_embeddings(self, embeddings):
        self.roberta.embeddings.word_embeddings = embeddings

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        for name in self.variant.head_layers:
            hidden = getattr(self, name)(hidden)
        return hidden

    def forward(self, input_tokens, attention_mask=None, embeds=None, num_tokens=None, intermediate_output=None,
                final_layer_norm_intermediate=True, dtype=torch.float32, embeds_info=()):  # fmt: skip
        if embeds is None:
            embeds = self.get_input_embeddings()(input_tokens, out_dtype=dtype)
        if attention_mask is None:
            attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        x = self.roberta.embeddings(embeds, attention_mask.to(embeds.device))
        additive = (1.0 - attention_mask.to(x.dtype))[:, None, None, :].expand(-1, 1, x.shape[1], -1)
        additive = additive.masked_fill(additive.to(torch.bool), -torch.finfo(x.dtype).max)
        last, intermediate = self.roberta.encoder(x, additive, intermediate_output)
        last = self.head(last)
        intermediate = self.head(intermediate) if intermediate is not None else None
        pooled = (intermediate if intermediate is not None else last)[:, 0]
        return last, intermediate, pooled


class XLMRClipModel(comfy.sd1_clip.SDClipModel):
    """AltDiffusion's text encoder as core's ``SDClipModel``: fairseq specials (``<s>`` 0, ``</s>`` 2, padding 1),
    the attention mask on, and the variant's own layer by default (m18: the penultimate)."""

    def __init__(self, device="cpu", dtype=None, model_options={}, config: dict | None = None):  # noqa: B006
        variant = variant_named(config["variant"])
        super().__init__(device=device, dtype=dtype, model_options=model_options, textmodel_json_config=dict(config),
                         model_class=AltDiffusionTextTransformer, special_tokens={"start": BOS_ID, "end": EOS_ID, "pad": PAD_ID},
                         layer_norm_hidden_state=False, enable_attention_masks=True)  # fmt: skip
        if variant.hidden_layer != -1:
            self.set_clip_options({"layer": variant.hidden_layer})
            self.options_default = (self.layer, self.layer_idx, self.return_projected_pooled)

    def gen_empty_tokens(self, special_tokens, length):
        """The empty window prompt weights are measured against: ``<s> </s>`` and padding, as the engine's."""
        return [BOS_ID, EOS_ID] + [PAD_ID] * (length - 2)


class AltDiffusionClipModel(comfy.sd1_clip.SD1ClipModel):
    """The CLIP's ``cond_stage_model``: one ``XLMRClipModel`` named ``xlm_roberta``."""

    def __init__(self, device="cpu", dtype=None, model_options={}, config: dict | None = None):  # noqa: B006
        super().__init__(device=device, dtype=dtype, model_options=model_options, name=CLIP_NAME, clip_model=XLMRClipModel,
                         config=config)  # fmt: skip


class _SentencePieceVocab:
    """What ``SDTokenizer`` asks of its ``tokenizer_class``, answered by the engine's tokenizer."""

    def __init__(self, tokenizer: XLMRTokenizer):
        self.xlmr = tokenizer

    @classmethod
    def from_pretrained(cls, tokenizer: XLMRTokenizer, **kwargs):
        return cls(tokenizer)

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [BOS_ID, *self.xlmr.encode(text), EOS_ID]}

    def get_vocab(self) -> dict[str, int]:
        return self.xlmr.vocab()


EMBEDDING_REFERENCE = re.compile(r"(?:^|(?<=[\s(,]))embedding:([^\s,()]+)")
"""``embedding:name`` in a prompt (core's textual-inversion syntax)."""


class XLMRTokenizer77(comfy.sd1_clip.SDTokenizer):
    """Core's tokenizer interface over the engine's windows (``XLMRTokenizer.windows``: 77-token windows broken at
    commas and word boundaries, ``(text:1.2)`` weights, escapes), so CLIPTextEncode cuts a prompt exactly as
    AltDiffusion Text Encode does.

    Textual inversions are refused: they are trained for CLIP's token table, and an SD 2.x embedding is 1024 wide
    like XLM-R's, so width alone can't tell a usable one. ``embedding:name`` is dropped from the prompt with a warning.
    """

    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006
        tokenizer: XLMRTokenizer = tokenizer_data[TOKENIZER_KEY]
        super().__init__(tokenizer, max_length=WINDOW_LENGTH, pad_with_end=False, embedding_directory=embedding_directory,
                         embedding_size=tokenizer_data.get("embedding_size", 1024), embedding_key=CLIP_NAME,
                         tokenizer_class=_SentencePieceVocab, pad_token=PAD_ID, tokenizer_data=tokenizer_data)  # fmt: skip
        self.xlmr = tokenizer

    def _refuse_embeddings(self, text: str) -> str:
        for name in dict.fromkeys(EMBEDDING_REFERENCE.findall(text)):
            found = None
            if self.embedding_directory is not None:
                found = comfy.sd1_clip.load_embed(name, self.embedding_directory, self.embedding_size, self.embedding_key)
            width = f"{found.shape[-1]} wide, " if found is not None else "not found, "
            logger.warning(
                "AltDiffusion: embedding:%s ignored (%sand textual inversions are trained for CLIP's token table, not "
                "XLM-R's; none is spliced into an AltDiffusion prompt).", name, width,
            )  # fmt: skip
        return EMBEDDING_REFERENCE.sub("", text)

    def tokenize_with_weights(self, text: str, return_word_ids=False, tokenizer_options={}, **kwargs):  # noqa: B006
        text = self._refuse_embeddings(text)
        windows = self.xlmr.windows(text, parse_weights=not kwargs.get("disable_weights", False))
        rows = []
        word = 0
        columns = (windows.input_ids.tolist(), windows.weights.tolist(), windows.attention_mask.tolist())
        for ids, weights, mask in zip(*columns, strict=True):
            row = []
            for position, (token, weight, used) in enumerate(zip(ids, weights, mask, strict=True)):
                text_token = used and 0 < position and token != EOS_ID
                word += int(text_token)
                row.append((token, weight, word if text_token else 0))
            rows.append(row if return_word_ids else [(t, w) for t, w, _ in row])
        return rows


class AltDiffusionTokenizer(comfy.sd1_clip.SD1Tokenizer):
    """The CLIP's tokenizer: one ``XLMRTokenizer77`` named ``xlm_roberta``."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, name=CLIP_NAME,
                         tokenizer=XLMRTokenizer77)  # fmt: skip


def clip_layers(clip: comfy.sd.CLIP) -> int:
    """How many transformer layers an AltDiffusion CLIP's XLM-R has (24 in the real models)."""
    return getattr(clip.cond_stage_model, CLIP_NAME).num_layers


def _text_config(text_encoder: TextEncoder) -> dict[str, Any]:
    config = text_encoder.module.config
    keys = ("vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_size", "layer_norm_eps",
            "num_hidden_layers", "intermediate_size", "num_attention_heads", "project_dim")  # fmt: skip
    return {**{key: getattr(config, key) for key in keys}, "variant": text_encoder.variant.name}


def native_clip(text_encoder: TextEncoder) -> comfy.sd.CLIP:
    """ComfyUI's CLIP holding ``text_encoder``'s weights in ``text_encoder.dtype`` (ComfyUI computes in fp32).

    Raises:
        ModelFormatError: a weight of the engine's encoder has no place in the CLIP, or the reverse.
    """
    target = comfy.supported_models_base.ClipTarget(AltDiffusionTokenizer, AltDiffusionClipModel)
    config = _text_config(text_encoder)
    target.params = {"config": config}
    state_dict = {k: v for k, v in text_encoder.module.state_dict().items() if not k.startswith("roberta.pooler.")}
    state_dict.pop("roberta.embeddings.position_ids", None)
    clip = comfy.sd.CLIP(
        target,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        tokenizer_data={TOKENIZER_KEY: text_encoder.tokenizer, "embedding_size": config["hidden_size"]},
        parameters=sum(v.numel() for v in state_dict.values()),
        # built on the meta device and handed the engine's tensors themselves (assign): no second copy
        model_options={"dtype": text_encoder.dtype, "initial_device": torch.device("meta")},
    )
    transformer = getattr(clip.cond_stage_model, CLIP_NAME).transformer
    missing, unexpected = transformer.load_state_dict(state_dict, strict=False, assign=True)
    if unexpected:
        raise ModelFormatError(f"{text_encoder.source}: ComfyUI's CLIP has no place for {unexpected[:3]}.")
    _check_filled(transformer, missing, text_encoder.source, "the text encoder")
    return clip


# --- VAE ------------------------------------------------------------------------------------------------------------

COMFY_VAE_GROUPS = 32
"""ComfyUI's VAE blocks normalise over 32 groups (``Normalize``), as every SD VAE does."""


def native_vae(vae: VAE) -> comfy.sd.VAE:
    """ComfyUI's VAE holding ``vae``'s weights in ``vae.dtype``.

    Raises:
        ModelFormatError: the VAE's normalisation groups are not ComfyUI's 32.
    """
    config = vae.module.config
    if config.norm_num_groups != COMFY_VAE_GROUPS:
        raise ModelFormatError(
            f"{vae.source}: the VAE normalises over {config.norm_num_groups} groups; ComfyUI's VAE needs "
            f"{COMFY_VAE_GROUPS}, as every Stable Diffusion VAE has. Use the AltDiffusion Loader's own VAE instead."
        )
    channels = list(config.block_out_channels)
    ddconfig = {
        "double_z": True, "z_channels": config.latent_channels, "resolution": 256, "in_channels": config.in_channels,
        "out_ch": config.out_channels, "ch": channels[0], "ch_mult": [c // channels[0] for c in channels],
        "num_res_blocks": config.layers_per_block, "attn_resolutions": [], "dropout": 0.0,
    }  # fmt: skip
    params = {"ddconfig": ddconfig, "embed_dim": config.latent_channels}
    out = comfy.sd.VAE(sd=vae.module.state_dict(), config={"params": params}, dtype=vae.dtype)
    out.downscale_ratio = out.upscale_ratio = vae.downscale
    out.latent_channels = config.latent_channels
    return out


# --- all three ------------------------------------------------------------------------------------------------------


def native_parts(loaded: LoadedModel) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """(MODEL, CLIP, VAE) for ``loaded``: the UNet and text encoder hold the engine's own tensors, the VAE a copy
    (small); drop ``loaded`` afterwards.

    Raises:
        ModelFormatError: a part ComfyUI's classes can't hold (named, with the fix).
    """
    if abs(loaded.model.latent_scale - comfy.latent_formats.SD15().scale_factor) > 1e-6:
        raise ModelFormatError(f"{loaded.model.source}: latent scale {loaded.model.latent_scale} is not SD's 0.18215.")
    return native_model(loaded.model), native_clip(loaded.text_encoder), native_vae(loaded.vae)
