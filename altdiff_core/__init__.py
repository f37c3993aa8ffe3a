"""altdiff_core: the AltDiffusion engine (load → encode prompt → prepare latents → denoise → decode).

Pure torch/diffusers/transformers; it never imports ComfyUI. The nodes in ``nodes/`` are thin adapters over these
functions and import nothing but the names in ``__all__`` (``tests/test_conventions.py`` holds them to it): the stages,
the model names and variants, the checks a node makes before it hands ComfyUI's own objects to ComfyUI, and what
``nodes/comfy_seam/native.py`` builds ComfyUI's classes from (tokenizer ids, head layers, CPU kernels, PLMS).
"""

from .checks import check_tensor
from .components import VAE, DiffusionModel, LoadedModel, TextEncoder
from .cpu_kernels import cpu_linear, matmul_form_fits, small_image_conv
from .denoise import CondEntry, check_context_width, prepare_noise, sample_latent
from .errors import (
    AltDiffusionError,
    InvalidInputError,
    ModelFormatError,
    ModelNotFoundError,
    NotAltDiffusionError,
    SamplerInputError,
    StageInputError,
    TooLargeForMemoryError,
)
from .hub import hub_models
from .loading import DTYPES, check_folder, is_altdiffusion_folder, load_folder
from .model_names import ModelFolders, list_model_names, resolve_model_name
from .precision import resolve_dtype, resolve_dtypes, resolve_vae_dtype
from .prompt_stage import check_layer, encode_prompt
from .samplers import SAMPLERS, sample_pndm
from .schedules import SCHEDULERS
from .single_file import is_altdiffusion_checkpoint, load_checkpoint
from .sources import load_model
from .text_encoder import build_head_layer
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, WINDOW_LENGTH, XLMRTokenizer
from .vae_stage import decode_latent, encode_image
from .variants import VARIANTS, Variant, variant_named

__all__ = [
    "BOS_ID",
    "DTYPES",
    "EOS_ID",
    "PAD_ID",
    "SAMPLERS",
    "SCHEDULERS",
    "VAE",
    "VARIANTS",
    "WINDOW_LENGTH",
    "AltDiffusionError",
    "CondEntry",
    "DiffusionModel",
    "InvalidInputError",
    "LoadedModel",
    "ModelFolders",
    "ModelFormatError",
    "ModelNotFoundError",
    "NotAltDiffusionError",
    "SamplerInputError",
    "StageInputError",
    "TooLargeForMemoryError",
    "TextEncoder",
    "Variant",
    "XLMRTokenizer",
    "build_head_layer",
    "check_context_width",
    "check_folder",
    "check_layer",
    "check_tensor",
    "cpu_linear",
    "decode_latent",
    "encode_image",
    "encode_prompt",
    "hub_models",
    "is_altdiffusion_checkpoint",
    "is_altdiffusion_folder",
    "list_model_names",
    "load_checkpoint",
    "load_folder",
    "load_model",
    "matmul_form_fits",
    "prepare_noise",
    "resolve_dtype",
    "resolve_dtypes",
    "resolve_model_name",
    "resolve_vae_dtype",
    "sample_latent",
    "sample_pndm",
    "small_image_conv",
    "variant_named",
]
