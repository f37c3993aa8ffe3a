"""Socket type names and the category shared by the pack's nodes.

ComfyUI's own types (LATENT, CONDITIONING, IMAGE) are used wherever the payload is ComfyUI's; the engine's
own objects travel under prefixed names so they can never be wired into a node that expects something else.
"""

CATEGORY = "AltDiffusion"

MODEL = "ALTDIFF_MODEL"
"""altdiff_core.DiffusionModel: the UNet and its noise schedule."""
TEXT_ENCODER = "ALTDIFF_TEXT_ENCODER"
"""altdiff_core.TextEncoder: XLM-R + projection head + tokenizer."""
VAE = "ALTDIFF_VAE"
"""altdiff_core.VAE: the SD VAE."""
