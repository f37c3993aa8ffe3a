"""LoRA names for AltDiffusion's CLIP, taught to ComfyUI's LoRA loader.

ComfyUI maps a LoRA's key names to model weights in ``comfy.lora.model_lora_keys_clip``, which knows CLIP, OpenCLIP,
T5 and a few more, not XLM-R. ``install()`` wraps it, and ``comfy.sd.load_lora_for_models`` (what ``LoraLoader`` and
``LoraLoaderModelOnly`` call), so that for an AltDiffusion model only:

- a text-encoder LoRA in the names diffusers' LoRA training writes for ``text_encoder`` (PEFT ``lora_A``/``lora_B``,
  older ``lora_linear_layer``, on ``roberta.encoder.layer.N.attention.self.query`` …) or kohya-style ``lora_te_``
  names of the same modules patches XLM-R's weights;
- the text-encoder part of an SD 1.x/2.x LoRA (CLIP's ``text_model.*`` and the like, which has no counterpart in
  XLM-R) is left out with one warning, instead of one "lora key not loaded" line per weight; its UNet part applies;
- a UNet LoRA in today's diffusers or PEFT names (``unet.<module>.lora.down.weight`` / ``.lora_A.weight``), which
  ComfyUI 0.3.75 does not map for any model, patches the UNet.

Every other model goes through ComfyUI's functions untouched.
"""

from __future__ import annotations

import functools
import logging

import comfy.lora
import comfy.sd
import comfy.utils

from .native import TRANSFORMER_PREFIX, AltDiffusionClipModel, _EpsPinned

logger = logging.getLogger(__name__)

TEXT_ENCODER_LORA_PREFIXES = ("lora_te", "text_encoder", "text_encoders.", "te.", "te_", "cond_stage_model.")
"""How text-encoder weights of a LoRA begin, in every naming ComfyUI reads (kohya ``lora_te_``/``lora_te1_``,
diffusers/PEFT ``text_encoder.``, ComfyUI's generic ``text_encoders.``)."""

_INSTALLED = "_altdiffusion_wrapped"


def xlmr_lora_names(weight_keys) -> dict[str, str]:
    """LoRA module name → the CLIP weight it patches, for every Linear/Embedding/LayerNorm weight of XLM-R and head.

    For ``xlm_roberta.transformer.roberta.encoder.layer.0.attention.self.query.weight``: diffusers/PEFT
    ``text_encoder.roberta.encoder.layer.0.attention.self.query``, a bare PEFT save
    ``base_model.model.roberta.encoder.layer.0.attention.self.query`` and kohya
    ``lora_te_roberta_encoder_layer_0_attention_self_query``.
    """
    names = {}
    for key in weight_keys:
        if key.startswith(TRANSFORMER_PREFIX) and key.endswith(".weight"):
            module = key[len(TRANSFORMER_PREFIX) : -len(".weight")]
            for name in (f"text_encoder.{module}", f"base_model.model.{module}", "lora_te_" + module.replace(".", "_")):
                names[name] = key
    return names


def diffusers_unet_lora_names(unet_config: dict) -> dict[str, str]:
    """Today's diffusers (``save_lora_weights``: ``unet.<module>.lora.down.weight``) and PEFT (``unet.<module>.lora_A
    .weight``) UNet LoRA module names → ComfyUI's UNet weight. ComfyUI 0.3.75 maps only the older
    ``unet.<attention>.processor.to_q`` form, so such a LoRA would load nothing (one "lora key not loaded" per key)."""
    names = comfy.utils.unet_to_diffusers(unet_config)
    return {
        f"unet.{name[: -len('.weight')]}": f"diffusion_model.{ldm}" for name, ldm in names.items() if name.endswith(".weight")
    }


def _is_ours(model, clip) -> bool:
    if clip is not None:
        return isinstance(clip.cond_stage_model, AltDiffusionClipModel)
    return model is not None and isinstance(getattr(model.model, "model_config", None), _EpsPinned)


def _foreign_text_encoder_keys(lora: dict, clip) -> list[str]:
    """The LoRA's text-encoder keys that name no weight of our CLIP (all of them when there is no CLIP)."""
    ours = tuple(xlmr_lora_names(clip.cond_stage_model.state_dict())) if clip is not None else ()
    return [
        key
        for key in lora
        if key.startswith(TEXT_ENCODER_LORA_PREFIXES)
        and not any(key.startswith(f"{name}.") or key.startswith(f"{name}_") for name in ours)  # fmt: skip
    ]


def _wrap_keys_clip(original):
    @functools.wraps(original)
    def model_lora_keys_clip(model, key_map={}):  # noqa: B006 - ComfyUI's signature
        key_map = original(model, key_map)
        if isinstance(model, AltDiffusionClipModel):
            key_map.update(xlmr_lora_names(model.state_dict()))
        return key_map

    return model_lora_keys_clip


def _wrap_keys_unet(original):
    @functools.wraps(original)
    def model_lora_keys_unet(model, key_map={}):  # noqa: B006 - ComfyUI's signature
        key_map = original(model, key_map)
        if isinstance(getattr(model, "model_config", None), _EpsPinned):
            for name, key in diffusers_unet_lora_names(model.model_config.unet_config).items():
                key_map.setdefault(name, key)
        return key_map

    return model_lora_keys_unet


def _wrap_load_lora(original):
    @functools.wraps(original)
    def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
        if _is_ours(model, clip):
            foreign = _foreign_text_encoder_keys(lora, clip)
            if foreign:
                has_unet = any(not key.startswith(TEXT_ENCODER_LORA_PREFIXES) for key in lora)
                unet = " its UNet weights are applied." if has_unet else ""
                if clip is not None:
                    logger.warning(
                        "AltDiffusion: this LoRA's %d text-encoder weights (e.g. %s) name no weight of XLM-R, "
                        "AltDiffusion's text encoder (they are for CLIP/OpenCLIP, or for a layer this model does not use): "
                        "left out.%s", len(foreign), foreign[0], unet,
                    )  # fmt: skip
                else:
                    logger.info("AltDiffusion: %d text-encoder weights of this LoRA left out: no CLIP was given.", len(foreign))
                foreign_set = set(foreign)
                lora = {k: v for k, v in lora.items() if k not in foreign_set}
        return original(model, clip, lora, strength_model, strength_clip)

    return load_lora_for_models


def install() -> None:
    """Wrap ComfyUI's two LoRA functions once per process (a second call changes nothing)."""
    wrappers = ((comfy.lora, "model_lora_keys_clip", _wrap_keys_clip), (comfy.lora, "model_lora_keys_unet", _wrap_keys_unet),
                (comfy.sd, "load_lora_for_models", _wrap_load_lora))  # fmt: skip
    for module, name, wrap in wrappers:
        current = getattr(module, name)
        if not getattr(current, _INSTALLED, False):
            wrapped = wrap(current)
            setattr(wrapped, _INSTALLED, True)
            setattr(module, name, wrapped)
