"""Checks run inside ComfyUI (``comfy_child``) for ``test_native_lora.py``: ComfyUI's own LoRA loaders and textual
inversions on the native MODEL/CLIP of the AltDiffusion Checkpoint Loader.

Each function takes its work folder and returns plain numbers and message lists; the assertions are in
``test_native_lora.py``. LoRA files come from ``factories`` in the key names real trainers write (kohya, diffusers,
PEFT); what a patched weight must be is computed here from the LoRA's own factors, independently of ComfyUI's
LoRA code: ``W + strength · alpha/rank · up @ down`` on the module the LoRA names (the UNet's diffusers names mapped to
ComfyUI's by ``comfy.utils.unet_to_diffusers``; the text encoder's under the CLIP's ``xlm_roberta.transformer.``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import safetensors.torch
import torch
from factories import (
    TEXT_ENCODER_LORA_SCHEMES,
    UNET_LORA_SCHEMES,
    LoraLayers,
    clip_l_lora,
    text_encoder_lora,
    unet_lora,
    write_altdiffusion_folder,
    write_lora,
)

import nodes as comfy_nodes

PACK = sys.modules["comfyui_altdiffusion"]
PACK_NODES = PACK.nodes

SEEDS = {"m9": 0, "m18": 1}
STRENGTH = 0.7
"""Not 1, so that a loader ignoring the strength is caught."""
PROMPT = "一只戴着红色围巾的橘猫坐在雪地里, a cat in the snow"
LATENT = (1, 4, 8, 8)
NOT_LOADED = ("lora key not loaded", "NOT LOADED")
"""ComfyUI's per-key messages for LoRA keys it found no weight for (``comfy.lora.load_lora``, ``comfy.sd``)."""
CLIP_PREFIX = "xlm_roberta.transformer."


# --- set-up ---------------------------------------------------------------------------------------------------------


def _shared(work: Path) -> Path:
    """The folder all checks of one child share (the parent of each check's own folder): models, loras, embeddings."""
    shared = Path(work).parent / "shared"
    for kind in ("loras", "embeddings"):
        (shared / kind).mkdir(parents=True, exist_ok=True)
        if str(shared / kind) not in folder_paths.get_folder_paths(kind):
            folder_paths.add_model_folder_path(kind, str(shared / kind), is_default=True)
    return shared


def _folder(work: Path, variant: str) -> Path:
    folder = _shared(work) / f"AltDiffusion-{variant}"
    if not (folder / "model_index.json").is_file():
        write_altdiffusion_folder(folder, variant, seed=SEEDS[variant])
    return folder


def _load(work: Path, variant: str):
    """(MODEL, CLIP) of the tiny ``variant`` as AltDiffusionCheckpointLoader hands them out (fp32), built afresh so
    that the CLIP sees the embeddings folder registered in ``_shared``."""
    folder = _folder(work, variant)
    PACK_NODES.loader.MODEL_CACHE.clear()
    comfy.model_management.unload_all_models()
    model, clip, _, _ = PACK_NODES.loader.AltDiffusionLoader.load_path(folder, "fp32")
    return model, clip


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def _logged() -> Iterator[_Records]:
    """Every log record emitted meanwhile (ComfyUI logs through the root logger, the pack through its own)."""
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _write(work: Path, name: str, lora: LoraLayers) -> str:
    write_lora(_shared(work) / "loras" / name, lora)
    return name


def _lora_loader(model, clip, name: str, strength_model: float, strength_clip: float):
    """ComfyUI's LoraLoader node (a fresh instance: it caches the last file read), with the log it wrote."""
    with _logged() as log:
        patched = comfy_nodes.LoraLoader().load_lora(model, clip, name, strength_model, strength_clip)
    return patched, log


# --- what the weights must become -----------------------------------------------------------------------------------


def _unet_key(model, module: str) -> str:
    """ComfyUI's UNet weight for a diffusers module name, by ComfyUI's own diffusers → LDM table."""
    table = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    return "diffusion_model." + table[module + ".weight"]


def _clip_key(module: str) -> str:
    return CLIP_PREFIX + module + ".weight"


def _expected(base: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor, float], strength: float) -> torch.Tensor:
    up, down, scale = factors
    diff = torch.mm(up.flatten(start_dim=1).float(), down.flatten(start_dim=1).float()).reshape(base.shape)
    return base.float() + (strength * scale) * diff


def _weights(patcher, keys: list[str]) -> dict[str, torch.Tensor]:
    """The weights ``patcher``'s model computes with once ComfyUI loads it (patches applied), copied."""
    comfy.model_management.load_models_gpu([patcher], force_patch_weights=True, force_full_load=True)
    return {key: comfy.utils.get_attr(patcher.model, key).detach().float().clone() for key in keys}


def _patch_report(patcher, base: dict[str, torch.Tensor], factors: dict, keys: dict[str, str], strength: float) -> dict:
    """Patched keys vs the LoRA's modules; max |patched − expected| and max |patched − base| over them."""
    patched = _weights(patcher, list(keys.values()))
    errors = [float((patched[keys[m]] - _expected(base[keys[m]], f, strength)).abs().max()) for m, f in factors.items()]
    changes = [float((patched[k] - base[k]).abs().max()) for k in keys.values()]
    return {
        "patched_keys": sorted(patcher.patches),
        "expected_keys": sorted(keys.values()),
        "max_abs_vs_expected": max(errors),
        "min_change": min(changes),
        "weight_scale": max(float(base[k].abs().max()) for k in keys.values()),
    }


def _base_weights(patcher, keys) -> dict[str, torch.Tensor]:
    comfy.model_management.unload_all_models()
    return {key: comfy.utils.get_attr(patcher.model, key).detach().float().clone() for key in keys}


def _not_loaded(log: _Records) -> list[str]:
    return [m for m in log.messages() if m.startswith(NOT_LOADED)]


def _encode(clip, text: str = PROMPT) -> torch.Tensor:
    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0][0][0].clone()


def _sample(model, clip) -> torch.Tensor:
    positive = comfy_nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(LATENT)}
    return comfy_nodes.common_ksampler(model, 5, 2, 7.5, "euler", "normal", positive, negative, latent)[0]["samples"]


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# --- checks ---------------------------------------------------------------------------------------------------------


def unet_lora_schemes(work: Path) -> dict:
    """LoraLoader with a UNet LoRA per naming scheme (m9; kohya also on m18, whose SD 2.x UNet has Linear proj_in):
    per-key warnings, which weights got patches, and the patched weights against W + s·alpha/rank·up@down."""
    out = {}
    for variant, schemes in (("m9", UNET_LORA_SCHEMES), ("m18", ("kohya",))):
        model, clip = _load(work, variant)
        for scheme in schemes:
            lora = unet_lora(_folder(work, variant), scheme)
            keys = {m: _unet_key(model, m) for m in lora.factors}
            base = _base_weights(model, keys.values())
            name = _write(work, f"unet_{variant}_{scheme}.safetensors", lora)
            (patched_model, patched_clip), log = _lora_loader(model, clip, name, STRENGTH, STRENGTH)
            out[(variant, scheme)] = {
                "lora_keys": len(lora.tensors),
                "not_loaded": _not_loaded(log),
                "warnings": log.messages(),
                "clip_patches": len(patched_clip.patcher.patches),
                **_patch_report(patched_model, base, lora.factors, keys, STRENGTH),
            }
            comfy.model_management.unload_all_models()
            out[(variant, scheme)]["restored"] = max(_max_abs(w, base[k]) for k, w in _base_weights(model, keys.values()).items())
    return out


def text_encoder_lora_schemes(work: Path) -> dict:
    """LoraLoader with an AltDiffusion text-encoder LoRA per naming scheme, m9 and m18: per-key warnings, patched
    CLIP weights against the expected ones, and CLIPTextEncode with the LoRA (strength_clip 0.7, then 0) against
    without."""
    out = {}
    for variant in ("m9", "m18"):
        model, clip = _load(work, variant)
        reference = _encode(clip)
        for scheme in TEXT_ENCODER_LORA_SCHEMES:
            lora = text_encoder_lora(_folder(work, variant), scheme)
            keys = {m: _clip_key(m) for m in lora.factors}
            base = _base_weights(clip.patcher, keys.values())
            name = _write(work, f"te_{variant}_{scheme}.safetensors", lora)
            (patched_model, patched_clip), log = _lora_loader(model, clip, name, STRENGTH, STRENGTH)
            result = {
                "lora_keys": len(lora.tensors),
                "not_loaded": _not_loaded(log),
                "warnings": log.messages(),
                "model_patches": len(patched_model.patches),
                **_patch_report(patched_clip.patcher, base, lora.factors, keys, STRENGTH),
            }
            result["cond_change"] = _max_abs(_encode(patched_clip), reference)
            (_, clip_zero), log_zero = _lora_loader(model, clip, name, 1.0, 0.0)
            result["cond_change_strength_0"] = _max_abs(_encode(clip_zero), reference)
            result["warnings_strength_0"] = log_zero.messages()
            result["cond_after"] = _max_abs(_encode(clip), reference)  # the unpatched CLIP again: patches undone
            result["cond_scale"] = float(reference.abs().max())
            out[(variant, scheme)] = result
    return out


def strengths(work: Path) -> dict:
    """A LoRA for both UNet and text encoder (kohya) at strengths (model, clip) = (0, 0), (0, 1), (1, 0), (1, 1):
    the KSampler latent and the conditioning against the model without the LoRA, and the UNet weights at strength 0."""
    model, clip = _load(work, "m9")
    folder = _folder(work, "m9")
    lora = unet_lora(folder, "kohya") + text_encoder_lora(folder, "kohya")
    name = _write(work, "both_m9_kohya.safetensors", lora)
    unet_keys = [_unet_key(model, m) for m in lora.factors if not m.startswith(("roberta.", "transformation"))]
    base_unet = _base_weights(model, unet_keys)
    reference = {"sample": _sample(model, clip), "cond": _encode(clip)}
    out = {"sample_scale": float(reference["sample"].abs().max())}
    for strength_model, strength_clip in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)):
        (lora_model, lora_clip), log = _lora_loader(model, clip, name, strength_model, strength_clip)
        weights = _weights(lora_model, unet_keys)
        out[(strength_model, strength_clip)] = {
            "sample": _max_abs(_sample(lora_model, lora_clip), reference["sample"]),
            "cond": _max_abs(_encode(lora_clip), reference["cond"]),
            "unet_weights": max(_max_abs(weights[k], base_unet[k]) for k in unet_keys),
            "warnings": log.messages(),
        }
    out["sample_again"] = _max_abs(_sample(model, clip), reference["sample"])  # base model after the LoRA runs
    return out


def sd15_loras(work: Path) -> dict:
    """Stable Diffusion 1.5 LoRAs (a UNet part that fits, and CLIP-L text-encoder keys that can't) through LoraLoader
    and LoraLoaderModelOnly: the log, the CLIP left untouched, the UNet patched as expected."""
    model, clip = _load(work, "m9")
    folder = _folder(work, "m9")
    reference = _encode(clip)
    out = {}
    for label, unet_scheme, clip_scheme in (("kohya", "kohya", "kohya"), ("diffusers", "diffusers_attn_procs", "diffusers")):
        unet_part = unet_lora(folder, unet_scheme)
        clip_part = clip_l_lora(clip_scheme)
        name = _write(work, f"sd15_{label}.safetensors", unet_part + clip_part)
        keys = {m: _unet_key(model, m) for m in unet_part.factors}
        base = _base_weights(model, keys.values())
        (lora_model, lora_clip), log = _lora_loader(model, clip, name, STRENGTH, STRENGTH)
        result = {
            "clip_l_keys": len(clip_part.tensors),
            "warnings": log.messages(),
            "not_loaded": _not_loaded(log),
            "clip_patches": len(lora_clip.patcher.patches),
            "cond_change": _max_abs(_encode(lora_clip), reference),
            **_patch_report(lora_model, base, unet_part.factors, keys, STRENGTH),
        }
        with _logged() as log_model_only:
            (model_only,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, STRENGTH)
        result["model_only_warnings"] = log_model_only.messages()
        result["model_only_info"] = [m for m in log_model_only.messages(logging.INFO) if "AltDiffusion" in m]
        result["model_only_patched_keys"] = sorted(model_only.patches)
        out[label] = result
    # LoraLoaderModelOnly with a text-encoder-only LoRA for XLM-R: nothing for the UNet, nothing to warn about.
    name = _write(work, "te_only_for_model_only.safetensors", text_encoder_lora(folder, "kohya"))
    with _logged() as log:
        (model_only,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)
    out["te_model_only"] = {"warnings": log.messages(), "patches": len(model_only.patches)}
    return out


EMBEDDINGS = {
    "sd2emb": ("sd2emb.safetensors", {"emb_params": (2, 1024)}),
    "sd1emb": ("sd1emb.pt", {"string_to_param": (3, 768)}),
    "tinyemb": ("tinyemb.safetensors", {"emb_params": (2, 32)}),
}
"""Textual inversions: name → (file, layout): an SD 2.x one (1024 wide, XLM-R large's width too), an SD 1.x one in
A1111's ``.pt`` layout (768, CLIP-L's width) and one as wide as the tiny XLM-R's token table (32): width alone
can't tell whether an embedding belongs to this model, and none of them was trained for XLM-R's tokens."""


def _write_embeddings(work: Path) -> None:
    folder = _shared(work) / "embeddings"
    generator = torch.Generator().manual_seed(7)
    for name, (file, layout) in EMBEDDINGS.items():
        ((key, shape),) = layout.items()
        vectors = torch.randn(shape, generator=generator)
        if file.endswith(".pt"):
            torch.save({"string_to_param": {"*": vectors}, "name": name, "step": 1000}, folder / file)
        else:
            safetensors.torch.save_file({key: vectors}, str(folder / file))


def textual_inversion(work: Path) -> dict:
    """CLIPTextEncode of ``a photo of embedding:<name>`` on the native CLIP against ``a photo of `` (the reference
    dropped), per embedding and variant, with the warnings logged; plus a name that has no file."""
    _write_embeddings(work)
    out = {}
    for variant in ("m9", "m18"):
        _, clip = _load(work, variant)
        reference = _encode(clip, "a photo of ")
        for name in (*EMBEDDINGS, "nosuchemb"):
            with _logged() as log:
                cond = _encode(clip, f"a photo of embedding:{name}")
            out[(variant, name)] = {
                "max_abs": _max_abs(cond, reference) if cond.shape == reference.shape else float("inf"),
                "shapes": (tuple(cond.shape), tuple(reference.shape)),
                "warnings": log.messages(),
                "about_it": [m for m in log.messages() if name in m],
            }
        with _logged() as log:
            cond = _encode(clip, "a photo of embedding:sd2emb, in the style of embedding:sd2emb")
        out[(variant, "twice")] = {
            "max_abs": _max_abs(cond, _encode(clip, "a photo of , in the style of ")),
            "about_it": [m for m in log.messages() if "sd2emb" in m],
        }
    return out


def unused_m18_head(work: Path) -> dict:
    """An m18 text-encoder LoRA that also patches ``transformation``, the head Linear m18's file carries but never
    computes with (an "all Linear layers" PEFT target list would include it): the log and what got patched."""
    model, clip = _load(work, "m18")
    lora = text_encoder_lora(_folder(work, "m18"), "peft", unused_head=True)
    (_, lora_clip), log = _lora_loader(model, clip, _write(work, "te_m18_unused_head.safetensors", lora), 1.0, 1.0)
    return {
        "warnings": log.messages(),
        "not_loaded": _not_loaded(log),
        "patched_keys": sorted(lora_clip.patcher.patches),
        "expected_keys": sorted(_clip_key(m) for m in lora.factors if m != "transformation"),
    }
