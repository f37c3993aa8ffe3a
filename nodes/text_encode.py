"""Text-encode node: a prompt in any language → CONDITIONING."""

from __future__ import annotations

from ..altdiff_core import encode_prompt
from . import sockets


class AltDiffusionTextEncode:
    DESCRIPTION = (
        "Encodes a prompt in any of the model's languages (m9: English, Chinese, Spanish, French, Russian, Japanese, Korean, "
        "Arabic, Italian; m18 adds nine more; m2: English and Chinese) into CONDITIONING for the AltDiffusion Sampler or "
        "ComfyUI's KSampler."
    )
    CATEGORY = sockets.CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = (
        "Conditioning [1, 77·k, 768] (m2/m9) or [1, 77·k, 1024] (m18), where k is the number of 75-token windows of the prompt.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The prompt, in any language."}),
                "text_encoder": (sockets.TEXT_ENCODER, {"tooltip": "The text encoder from the AltDiffusion Loader."}),
            }
        }

    def encode(self, text: str, text_encoder):
        cond, pooled = encode_prompt(text_encoder, text)
        return ([[cond, {"pooled_output": pooled}]],)
