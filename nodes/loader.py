"""Loader node: an AltDiffusion diffusers folder → model, text encoder and VAE."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..altdiff_core import DTYPES, ModelNotFoundError, is_altdiffusion_folder, load_folder
from . import comfy_seam, sockets

logger = logging.getLogger(__name__)

DTYPE_CHOICES = ["auto", *DTYPES]


def list_models() -> list[str]:
    """Names (relative paths with '/') of the AltDiffusion folders under the model roots, first root wins."""
    names: dict[str, None] = {}
    for root in comfy_seam.model_roots():
        if not root.is_dir():
            continue
        for index in sorted(root.glob("*/model_index.json")) + sorted(root.glob("*/*/model_index.json")):
            if is_altdiffusion_folder(index.parent):
                names.setdefault(index.parent.relative_to(root).as_posix(), None)
    return list(names)


def resolve_model(name: str) -> Path:
    """The folder of a listed model name; names that leave the model folders are refused."""
    for root in comfy_seam.model_roots():
        candidate = (root / name).resolve()
        if root.resolve() in candidate.parents and (candidate / "model_index.json").is_file():
            return candidate
    roots = ", ".join(str(r) for r in comfy_seam.model_roots())
    raise ModelNotFoundError(
        f"model {name!r} is not an AltDiffusion folder under the model folders ({roots}). Put the model's diffusers "
        "folder (with model_index.json) there and refresh the node list."
    )


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """'auto' = fp16 on CUDA, fp32 elsewhere (the CPU's fp16 is slow and bf16 drifts; see the README)."""
    if choice == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[choice]


class AltDiffusionLoader:
    DESCRIPTION = (
        "Loads an AltDiffusion model (BAAI AltDiffusion m2, m9 or m18) from a diffusers folder in models/diffusers or "
        "models/altdiffusion: the multilingual XLM-R text encoder, the UNet and the VAE."
    )
    CATEGORY = sockets.CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (sockets.MODEL, sockets.TEXT_ENCODER, sockets.VAE, "STRING")
    RETURN_NAMES = ("model", "text_encoder", "vae", "info")
    OUTPUT_TOOLTIPS = (
        "The AltDiffusion UNet, for the AltDiffusion Sampler.",
        "The multilingual text encoder, for AltDiffusion Text Encode.",
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
                        "tooltip": "An AltDiffusion diffusers folder (with model_index.json) under models/diffusers "
                        "or models/altdiffusion."
                    },
                ),
                "dtype": (
                    DTYPE_CHOICES,
                    {"default": "auto", "tooltip": "Weight dtype. auto = fp16 on a CUDA GPU, fp32 elsewhere."},
                ),
            }
        }

    def load(self, model_name: str, dtype: str):
        return self.load_path(resolve_model(model_name), dtype)

    @staticmethod
    def load_path(folder: Path, dtype: str = "auto"):
        """Load any AltDiffusion folder (the command line's path; the node only offers listed names)."""
        device = comfy_seam.torch_device()
        loaded = load_folder(folder, device=device, dtype=resolve_dtype(dtype, device))
        return (loaded.model, loaded.text_encoder, loaded.vae, loaded.describe())
