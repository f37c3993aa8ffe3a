"""Text-encode node: a prompt in any language → CONDITIONING."""

from __future__ import annotations

import dataclasses

from ..altdiff_core import TextEncoder, check_layer, encode_prompt
from . import comfy_seam, sockets

TEXT_HINTS = {"prompt": "Connect text to a node that outputs STRING, or type the prompt into the node."}
"""What to do in the graph about an ``encode_prompt`` input error."""


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
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "tooltip": "The prompt, in any language. (word:1.3) or (word) emphasise as in CLIP Text Encode; "
                        "long prompts are encoded in 75-token windows.",
                    },
                ),
                "text_encoder": (sockets.TEXT_ENCODER, {"tooltip": "The text encoder from the AltDiffusion Loader."}),
            }
        }

    def encode(self, text: str, text_encoder):
        if not isinstance(text_encoder, TextEncoder):  # inside ComfyUI: its own CLIP (see the loader)
            return comfy_seam.native_ops.encode_text(text_encoder, text)
        with sockets.socket_hints(TEXT_HINTS):
            cond, pooled = encode_prompt(text_encoder, text)
        return ([[cond, {"pooled_output": pooled}]],)


class AltDiffusionSetLastLayer:
    DESCRIPTION = (
        "Chooses which XLM-R layer feeds the AltDiffusion text encoder's projection, like CLIP Set Last Layer does for "
        "CLIP. -1 is the last layer, -2 the penultimate. Without this node m2/m9 use -1 and m18 uses -2, the layers "
        "the models were trained on; other layers give a looser, more varied reading of the prompt."
    )
    CATEGORY = sockets.CATEGORY
    FUNCTION = "set_layer"
    RETURN_TYPES = (sockets.TEXT_ENCODER,)
    OUTPUT_TOOLTIPS = ("The same text encoder, reading the chosen layer.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder": (sockets.TEXT_ENCODER, {"tooltip": "The text encoder from the AltDiffusion Loader."}),
                "stop_at_layer": (
                    "INT",
                    {
                        "default": -1,
                        "min": -24,
                        "max": -1,
                        "step": 1,
                        "tooltip": "-1 = last layer, -2 = penultimate, … (XLM-R large has 24).",
                    },
                ),
            }
        }

    def set_layer(self, text_encoder, stop_at_layer: int):
        if not isinstance(text_encoder, TextEncoder):  # inside ComfyUI: its own CLIP (see the loader)
            check_layer(comfy_seam.native.clip_layers(text_encoder), stop_at_layer)
            return comfy_seam.native_ops.set_last_layer(text_encoder, stop_at_layer)
        layer = check_layer(text_encoder.module.num_layers, stop_at_layer)
        return (dataclasses.replace(text_encoder, layer=layer),)
