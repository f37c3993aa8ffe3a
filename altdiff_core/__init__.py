"""altdiff_core: the AltDiffusion engine (load → encode prompt → prepare latents → denoise → decode).

Pure torch/diffusers/transformers; it never imports ComfyUI. The nodes in ``nodes/`` are thin adapters
over these functions.
"""

from .components import VAE, DiffusionModel, LoadedModel, TextEncoder
from .denoise import CondEntry, SamplerInputError, prepare_noise, sample_latent
from .errors import (
    AltDiffusionError,
    InvalidInputError,
    ModelFormatError,
    ModelNotFoundError,
    NotAltDiffusionError,
    TooLargeForMemoryError,
)
from .loading import DTYPES, check_folder, is_altdiffusion_folder, load_folder
from .precision import resolve_dtype, resolve_vae_dtype
from .prompt_stage import encode_prompt
from .samplers import SAMPLERS
from .schedules import SCHEDULERS
from .single_file import is_altdiffusion_checkpoint, load_checkpoint
from .sources import load_model
from .vae_stage import decode_latent, encode_image
from .variants import VARIANTS, Variant

__all__ = [
    "DTYPES",
    "SAMPLERS",
    "SCHEDULERS",
    "VAE",
    "VARIANTS",
    "AltDiffusionError",
    "CondEntry",
    "DiffusionModel",
    "InvalidInputError",
    "LoadedModel",
    "ModelFormatError",
    "ModelNotFoundError",
    "NotAltDiffusionError",
    "SamplerInputError",
    "TooLargeForMemoryError",
    "TextEncoder",
    "Variant",
    "check_folder",
    "decode_latent",
    "encode_image",
    "encode_prompt",
    "is_altdiffusion_checkpoint",
    "is_altdiffusion_folder",
    "load_checkpoint",
    "load_folder",
    "load_model",
    "prepare_noise",
    "resolve_dtype",
    "resolve_vae_dtype",
    "sample_latent",
]
