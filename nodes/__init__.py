"""ComfyUI nodes of the pack: thin adapters over ``altdiff_core``."""

from .loader import AltDiffusionCheckpointLoader, AltDiffusionLoader
from .sampler import AltDiffusionSampler, AltDiffusionSamplerAdvanced
from .text_encode import AltDiffusionSetLastLayer, AltDiffusionTextEncode
from .vae import AltDiffusionVAEDecode, AltDiffusionVAEEncode

# Node ids are public API: workflows refer to them. Never rename one once released.
NODE_CLASS_MAPPINGS = {
    "AltDiffusionLoader": AltDiffusionLoader,
    "AltDiffusionCheckpointLoader": AltDiffusionCheckpointLoader,
    "AltDiffusionTextEncode": AltDiffusionTextEncode,
    "AltDiffusionSetLastLayer": AltDiffusionSetLastLayer,
    "AltDiffusionSampler": AltDiffusionSampler,
    "AltDiffusionSamplerAdvanced": AltDiffusionSamplerAdvanced,
    "AltDiffusionVAEEncode": AltDiffusionVAEEncode,
    "AltDiffusionVAEDecode": AltDiffusionVAEDecode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "AltDiffusionLoader": "AltDiffusion Loader",
    "AltDiffusionCheckpointLoader": "AltDiffusion Checkpoint Loader (MODEL/CLIP/VAE)",
    "AltDiffusionTextEncode": "AltDiffusion Text Encode (multilingual)",
    "AltDiffusionSetLastLayer": "AltDiffusion Set Last Layer",
    "AltDiffusionSampler": "AltDiffusion Sampler",
    "AltDiffusionSamplerAdvanced": "AltDiffusion Sampler (Advanced)",
    "AltDiffusionVAEEncode": "AltDiffusion VAE Encode (img2img)",
    "AltDiffusionVAEDecode": "AltDiffusion VAE Decode",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
