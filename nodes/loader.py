"""Loader node: an AltDiffusion diffusers folder or single-file checkpoint → model, text encoder and VAE."""

from __future__ import annotations

import logging
from pathlib import Path

from ..altdiff_core import (
    DTYPES,
    AltDiffusionError,
    ModelFolders,
    NotAltDiffusionError,
    hub_models,
    list_model_names,
    load_model,
    resolve_dtypes,
    resolve_model_name,
)
from . import comfy_seam, sockets
from .model_cache import ModelCache, disk_signature

logger = logging.getLogger(__name__)

DTYPE_CHOICES = ["auto", *DTYPES]
VAE_DTYPE_CHOICES = ["auto", *DTYPES]

MODEL_CACHE: ModelCache[tuple] = ModelCache(capacity=1)
"""The last loaded model, process-wide: a second Loader node or a later workflow naming the same unchanged files gets
the same parts (inside ComfyUI the same MODEL, CLIP and VAE) instead of a second copy read from disk. ComfyUI's
"Unload Models" empties it (``comfy_seam.on_unload_all``)."""
comfy_seam.on_unload_all(MODEL_CACHE.clear)

OTHER_MODEL_HINT = "In ComfyUI, load it with Load Checkpoint (CheckpointLoaderSimple), or DiffusersLoader for a folder."
"""Added to the engine's ``NotAltDiffusionError`` (an SD/SDXL model picked by mistake): the stock loaders take it."""


def model_folders() -> ModelFolders:
    """This front end's model folders: ComfyUI's inside ComfyUI, the pack's own ``models/altdiffusion`` elsewhere."""
    return ModelFolders(tuple(comfy_seam.model_roots()), tuple(comfy_seam.checkpoint_roots()), comfy_seam.hub_download_dir())


def list_models() -> list[str]:
    """The names the loaders offer (``altdiff_core.list_model_names``): local folders, checkpoints, then the Hub ids."""
    return list_model_names(model_folders())


def resolve_model(name: str, *, download: bool = True) -> Path:
    """The folder or checkpoint file of a listed model name (``altdiff_core.resolve_model_name``); names that leave the
    model folders are refused. A Hub id not found locally is downloaded with ``download`` (into
    ``comfy_seam.hub_download_dir()``, with a progress bar); without, ModelNotFoundError (no network)."""
    return resolve_model_name(name, model_folders(), download=download, progress=comfy_seam.download_progress)


def local_model(name: str) -> Path | None:
    """The folder or file a model name means on this machine now, or None; never downloads, never raises."""
    try:
        return resolve_model(name, download=False)
    except AltDiffusionError:
        return None


class AltDiffusionLoader:
    DESCRIPTION = (
        "Loads an AltDiffusion model (BAAI AltDiffusion m2, m9 or m18): the multilingual XLM-R text encoder, the UNet and "
        "the VAE, from a diffusers folder in models/diffusers or models/altdiffusion, or from a single-file A1111 "
        "checkpoint (.safetensors) in models/checkpoints or models/altdiffusion."
    )
    CATEGORY = sockets.CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (sockets.MODEL, sockets.TEXT_ENCODER, sockets.VAE, "STRING")
    RETURN_NAMES = ("model", "text_encoder", "vae", "info")
    OUTPUT_TOOLTIPS = (
        "The AltDiffusion UNet, for the AltDiffusion Sampler (inside ComfyUI it is ComfyUI's own model, which the "
        "AltDiffusion Checkpoint Loader hands to stock nodes).",
        "The multilingual text encoder, for AltDiffusion Text Encode and AltDiffusion Set Last Layer.",
        "The VAE, for AltDiffusion VAE Encode and AltDiffusion VAE Decode.",
        "Variant, dtype, device and parameter counts of what was loaded.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (
                    list_models(),
                    {
                        "tooltip": "An AltDiffusion diffusers folder (with model_index.json) under models/diffusers or "
                        "models/altdiffusion, or a single-file checkpoint (.safetensors) under models/checkpoints or "
                        "models/altdiffusion. A single file carries no tokenizer: put the model's tokenizer folder "
                        "(sentencepiece.bpe.model) next to it as <file name>/tokenizer/, unless an AltDiffusion "
                        f"diffusers folder is installed too. Or a Hub id ({', '.join(hub_models())}): the folder "
                        "models/diffusers/<name> or models/altdiffusion/<name> when it exists, else downloaded once "
                        "into models/diffusers/<name> (configs, tokenizer and weights, several GB; no safety checker). "
                        "To download through a mirror, set the environment variable "
                        "HF_ENDPOINT to the mirror's URL before starting ComfyUI."
                    },
                ),
                "dtype": (
                    DTYPE_CHOICES,
                    {
                        "default": "auto",
                        "tooltip": "Weight dtype. auto = fp16 on a CUDA GPU; bf16 on a CPU with bf16 instructions "
                        "(AVX512-BF16 or AMX), about twice as fast as fp32 there; fp32 on other CPUs.",
                    },
                ),
            },
            "optional": {
                "vae_dtype": (
                    VAE_DTYPE_CHOICES,
                    {
                        "default": "auto",
                        "tooltip": "VAE weight dtype. auto = the weight dtype, except that fp16 becomes bf16 on a CUDA "
                        "GPU that supports it and fp32 elsewhere: an fp16 VAE overflows at high resolutions (black "
                        "images).",
                    },
                ),
            },
        }

    def load(self, model_name: str, dtype: str, vae_dtype: str = "auto"):
        return self.load_path(resolve_model(model_name), dtype, vae_dtype)

    @classmethod
    def IS_CHANGED(cls, model_name: str, dtype: str = "auto", vae_dtype: str = "auto"):
        """ComfyUI re-runs the loader (instead of serving its cached outputs) when the files on disk changed."""
        path = local_model(model_name)
        return disk_signature(path) if path is not None else model_name

    @staticmethod
    def load_path(path: Path, dtype: str = "auto", vae_dtype: str | None = None) -> tuple:
        """Load any AltDiffusion folder or checkpoint file (the command line's path; the node only offers listed names).

        Returns (model, text encoder, VAE, info line): inside ComfyUI its own MODEL (``ModelPatcher``), CLIP and VAE
        (what the stock nodes take, and what the pack's nodes run there); elsewhere the engine's parts. The last
        model loaded stays cached (``MODEL_CACHE``), so both loader nodes naming it share one copy.
        ``vae_dtype`` None: as asked for the whole model (``altdiff_core.resolve_dtypes``).
        """
        device = comfy_seam.torch_device()
        model_dtype, vae = resolve_dtypes(dtype, vae_dtype, device)
        search = model_folders().tokenizer_folders()
        path = Path(path).resolve()
        key = (str(path), disk_signature(path), model_dtype, vae, str(device))

        def load() -> tuple:
            try:
                loaded = load_model(path, device=comfy_seam.load_device(), dtype=model_dtype, vae_dtype=vae,
                                    tokenizer_folders=search)  # fmt: skip
            except NotAltDiffusionError as err:
                raise NotAltDiffusionError(f"{err} {OTHER_MODEL_HINT}").with_traceback(err.__traceback__) from None
            info = loaded.describe()  # the engine has logged it, with the load time
            if comfy_seam.IN_COMFYUI:
                return (*comfy_seam.native_parts(loaded), info)
            return (loaded.model, loaded.text_encoder, loaded.vae, info)

        return MODEL_CACHE.get_or_load(key, load)


class AltDiffusionCheckpointLoader:
    DESCRIPTION = (
        "Loads an AltDiffusion model (BAAI AltDiffusion m2, m9 or m18) as ComfyUI's own MODEL, CLIP and VAE, like Load "
        "Checkpoint: the multilingual XLM-R text encoder works in CLIP Text Encode, and the model with every stock node "
        "(KSampler, LoRA loaders, ControlNet, area and mask conditioning, FreeU, model merging, Checkpoint Save …)."
    )
    CATEGORY = sockets.CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE", "info")
    OUTPUT_TOOLTIPS = (
        "The UNet as ComfyUI's MODEL (SD 1.x for m2/m9, SD 2.x-base for m18; epsilon prediction).",
        "The multilingual text encoder as ComfyUI's CLIP, for CLIP Text Encode (prompts in any of the model's "
        "languages, (word:1.2) weights) and CLIP Set Last Layer.",
        "The VAE as ComfyUI's VAE.",
        "Variant, dtype, device and parameter counts of what was loaded.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        inputs = AltDiffusionLoader.INPUT_TYPES()
        return {"required": dict(inputs["required"]), "optional": dict(inputs["optional"])}

    @classmethod
    def IS_CHANGED(cls, model_name: str, dtype: str = "auto", vae_dtype: str = "auto"):
        return AltDiffusionLoader.IS_CHANGED(model_name, dtype, vae_dtype)

    def load(self, model_name: str, dtype: str, vae_dtype: str = "auto"):
        if not comfy_seam.IN_COMFYUI:
            raise AltDiffusionError(
                "AltDiffusion Checkpoint Loader hands out ComfyUI's MODEL/CLIP/VAE and runs only inside ComfyUI; "
                "elsewhere use the AltDiffusion Loader (or `python . --prompt …`)."
            )
        return AltDiffusionLoader.load_path(resolve_model(model_name), dtype, vae_dtype)
