"""VAE nodes: IMAGE → LATENT for img2img, and LATENT → IMAGE."""

from __future__ import annotations

from ..altdiff_core import VAE, decode_latent, encode_image
from . import comfy_seam, sockets

ENCODE_HINTS = {"image": "Connect pixels to a Load Image or another node that outputs IMAGE."}
"""What to do in the graph about an ``encode_image`` input error."""

DECODE_HINTS = {
    "latent": "Connect samples to a sampler's or a VAE Encode's LATENT; an Empty Latent Image needs a width and "
    "height of at least 8."
}
"""What to do in the graph about a ``decode_latent`` input error."""


class AltDiffusionVAEEncode:
    DESCRIPTION = (
        "Encodes an image into a LATENT for img2img with the AltDiffusion Sampler (denoise < 1). Sizes that are not "
        "multiples of 8 are centre-cropped, as ComfyUI's VAE Encode does."
    )
    CATEGORY = sockets.CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("Raw (unscaled) latent [B, 4, H/8, W/8], usable by any SD1/SD2 sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pixels": ("IMAGE", {"tooltip": "The image to start from (e.g. from Load Image)."}),
                "vae": (sockets.VAE, {"tooltip": "The VAE from the AltDiffusion Loader."}),
            }
        }

    def encode(self, pixels, vae):
        if not isinstance(vae, VAE):  # inside ComfyUI: its own VAE (see the loader)
            return comfy_seam.native_ops.vae_encode(vae, pixels)
        with sockets.socket_hints(ENCODE_HINTS):
            return ({"samples": encode_image(vae, pixels)},)


class AltDiffusionVAEDecode:
    DESCRIPTION = "Decodes a LATENT into an IMAGE with the AltDiffusion VAE (the standard SD VAE)."
    CATEGORY = sockets.CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The image, [B, H, W, 3] float 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "A raw latent from a sampler."}),
                "vae": (sockets.VAE, {"tooltip": "The VAE from the AltDiffusion Loader."}),
            }
        }

    def decode(self, samples, vae):
        if not isinstance(vae, VAE):  # inside ComfyUI: its own VAE (see the loader)
            return comfy_seam.native_ops.vae_decode(vae, samples)
        with sockets.socket_hints(DECODE_HINTS):
            return (decode_latent(vae, samples["samples"]),)
