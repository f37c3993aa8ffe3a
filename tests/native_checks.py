"""Checks run inside ComfyUI (``comfy_child``) for ``test_native_types.py``: the native MODEL/CLIP/VAE against the
engine on the same tiny weights, and the pack's nodes against the stock nodes they now run.

Each function takes its work folder and returns plain numbers; the assertions (and the reasons for the bounds) are in
``test_native_types.py``. The engine's side is the headless path: ``altdiff_core.load_folder`` + ``encode_prompt`` /
``sample_latent`` / ``decode_latent``, on the same files.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import comfy.ldm.modules.attention
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import torch
from factories import write_altdiffusion_folder
from prompt_cases import PROMPTS

import nodes as comfy_nodes

PACK = sys.modules["comfyui_altdiffusion"]
CORE = PACK.altdiff_core
PACK_NODES = PACK.nodes


SEED, STEPS, CFG = 3, 3, 7.5
LATENT = (1, 4, 8, 8)


def _folder(work: Path, variant: str) -> Path:
    return write_altdiffusion_folder(work / f"AltDiffusion-{variant}", variant, seed={"m9": 0, "m18": 1}[variant])


def _both(work: Path, variant: str, dtype: str = "fp32"):
    """(engine LoadedModel, native (MODEL, CLIP, VAE, info)) of one tiny folder."""
    folder = _folder(work, variant)
    PACK_NODES.loader.MODEL_CACHE.clear()
    native = PACK_NODES.loader.AltDiffusionLoader.load_path(folder, dtype)
    return CORE.load_folder(folder), native


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def types_and_prediction(work: Path) -> dict:
    """What each loader hands out inside ComfyUI, the model config and prediction type per variant, and what SD20's
    own guess would make of an m18 UNet whose norm bias std is above its 0.09 threshold."""
    out = {}
    for variant in ("m9", "m18"):
        _, (model, clip, vae, info) = _both(work, variant)
        out[variant] = {
            "model": type(model).__name__,
            "base": type(model.model).__name__,
            "config_bases": [c.__name__ for c in type(model.model.model_config).__mro__],
            "model_type": model.model.model_type.name,
            "clip": type(clip).__name__,
            "clip_model": type(clip.cond_stage_model).__name__,
            "vae": type(vae).__name__,
            "info": info,
        }
        checkpoint_loader = PACK_NODES.loader.AltDiffusionCheckpointLoader()
        PACK_NODES.loader.MODEL_CACHE.clear()
        folder = _folder(work, variant)
        again = PACK_NODES.loader.AltDiffusionLoader.load_path(folder, "fp32")
        out[variant]["both_loaders_share"] = PACK_NODES.loader.AltDiffusionLoader.load_path(folder, "fp32")[0] is again[
            0
        ] and checkpoint_loader.RETURN_TYPES[:3] == ("MODEL", "CLIP", "VAE")
    import comfy.samplers

    offered = PACK_NODES.sampler.AltDiffusionSampler.INPUT_TYPES()["required"]
    out["samplers_comfy_lacks"] = sorted(set(offered["sampler_name"][0]) - set(comfy.samplers.KSampler.SAMPLERS))
    out["schedulers_comfy_lacks"] = sorted(set(offered["scheduler"][0]) - set(comfy.samplers.KSampler.SCHEDULERS))
    config = _both(work, "m18")[1][0].model.model_config
    v_like = {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.randn(320)}
    out["sd20_guess"] = comfy.supported_models.SD20(dict(config.unet_config)).model_type(v_like).name
    out["ours_on_same"] = config.model_type(v_like).name
    return out


def clip_parity(work: Path) -> dict:
    """Max abs difference native CLIPTextEncode − engine ``encode_prompt`` (cond and pooled) per prompt and variant,
    and the conditioning shapes (windows)."""
    out = {}
    for variant in ("m9", "m18"):
        engine, (_, clip, _, _) = _both(work, variant)
        for name, text in PROMPTS.items():
            ref, pooled = CORE.encode_prompt(engine.text_encoder, text)
            cond, extras = comfy_nodes.CLIPTextEncode().encode(clip, text)[0][0]
            out[(variant, name)] = {
                "cond": _max_abs(cond, ref) if cond.shape == ref.shape else float("inf"),
                "pooled": _max_abs(extras["pooled_output"], pooled),
                "shape": (tuple(cond.shape), tuple(ref.shape)),
                "scale": float(ref.abs().max()),
            }
    return out


def last_layer_parity(work: Path) -> dict:
    """CLIPSetLastLayer(n) + CLIPTextEncode against the engine's encoder reading layer n, for every layer; and the
    pack's Set Last Layer node on the native CLIP against the stock node."""
    out = {}
    for variant in ("m9", "m18"):
        engine, (_, clip, _, _) = _both(work, variant)
        layers = engine.text_encoder.module.num_layers
        for layer in range(-1, -layers - 1, -1):
            ref, _ = CORE.encode_prompt(dataclasses.replace(engine.text_encoder, layer=layer), PROMPTS["chinese"])
            stock = comfy_nodes.CLIPSetLastLayer().set_last_layer(clip, layer)[0]
            ours = PACK_NODES.text_encode.AltDiffusionSetLastLayer().set_layer(clip, layer)[0]
            cond = comfy_nodes.CLIPTextEncode().encode(stock, PROMPTS["chinese"])[0][0][0]
            cond_ours = PACK_NODES.text_encode.AltDiffusionTextEncode().encode(PROMPTS["chinese"], ours)[0][0][0]
            out[(variant, layer)] = {"engine": _max_abs(cond, ref), "pack_vs_stock": _max_abs(cond, cond_ours)}
        try:
            PACK_NODES.text_encode.AltDiffusionSetLastLayer().set_layer(clip, -layers - 1)
            out[(variant, "too_deep")] = "accepted"
        except CORE.InvalidInputError as err:
            out[(variant, "too_deep")] = str(err)
    return out


def _sample_pair(engine, model, clip, sampler: str, cfg: float = CFG, denoise: float = 1.0, latent=None):
    positive = comfy_nodes.CLIPTextEncode().encode(clip, PROMPTS["chinese"])[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(LATENT) if latent is None else latent}
    native = comfy_nodes.KSampler().sample(model, SEED, STEPS, CFG, sampler, "karras", positive, negative, latent, denoise)
    ours = PACK_NODES.sampler.AltDiffusionSampler().sample(model, SEED, STEPS, CFG, sampler, "karras", positive, negative,
                                                           latent, denoise)  # fmt: skip
    engine_out = CORE.sample_latent(engine.model, positive[0][0], negative[0][0], latent["samples"], seed=SEED, steps=STEPS,
                                    cfg=cfg, sampler_name=sampler, scheduler="karras", denoise=denoise)  # fmt: skip
    return native[0]["samples"], ours[0]["samples"], engine_out


def sampling_parity(work: Path) -> dict:
    """Stock KSampler on the native MODEL against (a) the pack's sampler node on it (the same code: bit-identical) and
    (b) the engine's own sampler on the same weights (another fp32 summation order); (c) the engine with cfg off by
    0.5, to show the bound tells a wrong result; img2img (denoise 0.6) and the pack's own pndm too."""
    out = {}
    init = torch.randn(LATENT, generator=torch.Generator().manual_seed(5))
    for variant in ("m9", "m18"):
        engine, (model, clip, _, _) = _both(work, variant)
        for sampler in ("euler", "dpmpp_2m", "euler_ancestral", "pndm"):
            native, ours, engine_out = _sample_pair(engine, model, clip, sampler)
            out[(variant, sampler)] = {
                "pack_vs_stock": _max_abs(ours, native) if sampler != "pndm" else None,
                "engine": _max_abs(ours, engine_out),
                "scale": float(engine_out.abs().max()),
            }
        _, ours, engine_out = _sample_pair(engine, model, clip, "euler", denoise=0.6, latent=init)
        out[(variant, "img2img")] = {"engine": _max_abs(ours, engine_out), "scale": float(engine_out.abs().max())}
        _, ours, wrong = _sample_pair(engine, model, clip, "euler", cfg=CFG - 0.5)
        out[(variant, "wrong_cfg")] = {"engine": _max_abs(ours, wrong), "scale": float(wrong.abs().max())}
    return out


def vae_parity(work: Path) -> dict:
    """Stock VAEDecode/VAEEncode on the native VAE against the engine's decode/encode, and the pack's VAE nodes on
    the native VAE against the stock nodes."""
    out = {}
    engine, (_, _, vae, _) = _both(work, "m9")
    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    image = comfy_nodes.VAEDecode().decode(vae, {"samples": latent})[0]
    ours = PACK_NODES.vae.AltDiffusionVAEDecode().decode({"samples": latent}, vae)[0]
    out["decode"] = {"engine": _max_abs(image, CORE.decode_latent(engine.vae, latent)), "pack_vs_stock": _max_abs(ours, image)}
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    encoded = comfy_nodes.VAEEncode().encode(vae, pixels)[0]["samples"]
    ours = PACK_NODES.vae.AltDiffusionVAEEncode().encode(pixels, vae)[0]["samples"]
    ref = CORE.encode_image(engine.vae, pixels)
    out["encode"] = {"engine": _max_abs(encoded, ref), "pack_vs_stock": _max_abs(ours, encoded), "scale": float(ref.abs().max())}
    return out


def dtypes(work: Path) -> dict:
    """The weight and compute dtypes of the three parts for each dtype choice."""
    out = {}
    for choice in ("fp32", "bf16", "fp16", "auto"):
        _, (model, clip, vae, info) = _both(work, "m9", choice)
        unet_weight = next(model.model.diffusion_model.parameters()).dtype
        out[choice] = {
            "unet": str(unet_weight),
            "unet_compute": str(model.model.get_dtype()),
            "manual_cast": str(model.model.manual_cast_dtype),
            "clip": str(next(clip.cond_stage_model.xlm_roberta.transformer.parameters()).dtype),
            "vae": str(vae.vae_dtype),
            "auto_resolves_to": str(CORE.resolve_dtype("auto", torch.device("cpu"))),
            "auto_vae_resolves_to": str(
                CORE.resolve_vae_dtype("auto", CORE.resolve_dtype("auto", torch.device("cpu")), torch.device("cpu"))
            ),
        }
        if choice != "fp32":
            positive = comfy_nodes.CLIPTextEncode().encode(clip, "a cat")[0]
            latent = comfy_nodes.KSampler().sample(model, 1, 2, CFG, "euler", "karras", positive, positive,
                                                   {"samples": torch.zeros(LATENT)})[0]["samples"]  # fmt: skip
            out[choice]["finite"] = bool(torch.isfinite(latent).all())
    return out


def memory_ownership(work: Path) -> dict:
    """ComfyUI's memory manager holds the three parts after use, and "Unload Models" empties the pack's cache."""
    PACK_NODES.loader.MODEL_CACHE.clear()
    _, (model, clip, vae, _) = _both(work, "m9")
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "a cat")[0]
    latent = comfy_nodes.KSampler().sample(model, 1, 1, CFG, "euler", "karras", positive, positive,
                                           {"samples": torch.zeros(LATENT)})[0]  # fmt: skip
    comfy_nodes.VAEDecode().decode(vae, latent)
    loaded = [type(m.model.model).__name__ for m in comfy.model_management.current_loaded_models if m.model is not None]
    cached_before = len(PACK_NODES.loader.MODEL_CACHE)
    logging.getLogger(__name__).info("unloading all models")
    comfy.model_management.unload_all_models()
    return {"loaded": loaded, "cached_before": cached_before, "cached_after": len(PACK_NODES.loader.MODEL_CACHE)}


def one_copy_and_cpu_kernels(work: Path) -> dict:
    """The native MODEL and CLIP hold the engine's own tensors (no second copy of the weights), and on the CPU the
    UNet computes with the engine's kernels (``CpuKernelOps``) and SDPA attention, counted during one KSampler run."""
    native = PACK_NODES.comfy_seam.native
    loaded = CORE.load_folder(_folder(work, "m9"))
    engine_unet = {p.data_ptr() for p in loaded.model.module.parameters()}
    engine_text = {p.data_ptr() for p in loaded.text_encoder.module.parameters()}
    model, clip, _ = native.native_parts(loaded)
    unet, text = model.model.diffusion_model, clip.cond_stage_model.xlm_roberta.transformer
    layers = {type(m).__qualname__ for m in unet.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    calls = {"attention_pytorch": 0, "linear": 0}

    def counted(name, func):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return func(*args, **kwargs)

        return wrapper

    # the names ComfyUI's attention and CpuKernelOps.Linear look up at each call
    attention, kernels = comfy.ldm.modules.attention, native
    originals = attention.attention_pytorch, kernels.cpu_linear
    attention.attention_pytorch = counted("attention_pytorch", originals[0])
    kernels.cpu_linear = counted("linear", originals[1])
    try:
        positive = comfy_nodes.CLIPTextEncode().encode(clip, "a cat")[0]
        calls["linear_in_text_encode"] = calls["linear"]
        comfy_nodes.KSampler().sample(model, 1, 1, CFG, "euler", "normal", positive, positive,
                                      {"samples": torch.zeros(LATENT)})  # fmt: skip
    finally:
        attention.attention_pytorch, kernels.cpu_linear = originals
    return {
        "unet_params": sum(1 for _ in unet.parameters()),
        "unet_shared": sum(p.data_ptr() in engine_unet for p in unet.parameters()),
        "text_params": sum(1 for _ in text.parameters()),
        "text_shared": sum(p.data_ptr() in engine_text for p in text.parameters()),
        "layers": sorted(layers),
        "override": model.model_options["transformer_options"].get("optimized_attention_override") is not None,
        "calls": calls,
        "attention_layers": sum(1 for m in unet.modules() if type(m).__name__ == "CrossAttention"),
    }


def kernels_with_a_chosen_attention(work: Path) -> dict:
    """With an attention chosen for ComfyUI (``--use-pytorch-cross-attention``, set on ComfyUI's parsed arguments
    for the build), the native UNet keeps the CPU kernels but leaves attention to ComfyUI: no override."""
    import comfy.cli_args

    native = PACK_NODES.comfy_seam.native
    loaded = CORE.load_folder(_folder(work, "m9"))
    flags = comfy.cli_args.args
    flags.use_pytorch_cross_attention = True
    try:
        model = native.native_model(loaded.model)
    finally:
        flags.use_pytorch_cross_attention = False
    unet = model.model.diffusion_model
    return {
        "layers": sorted({type(m).__qualname__ for m in unet.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}),
        "override": "optimized_attention_override" in model.model_options["transformer_options"],
    }
