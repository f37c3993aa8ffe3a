"""Socket type names and the category shared by the pack's nodes, and ``socket_hints``, which turns an engine
message about an argument into one about the socket that feeds it.

ComfyUI's own types (LATENT, CONDITIONING, IMAGE) are used wherever the payload is ComfyUI's; the engine's
own objects travel under prefixed names so they can never be wired into a node that expects something else.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ..altdiff_core import StageInputError

CATEGORY = "AltDiffusion"

MODEL = "ALTDIFF_MODEL"
"""altdiff_core.DiffusionModel: the UNet and its noise schedule."""
TEXT_ENCODER = "ALTDIFF_TEXT_ENCODER"
"""altdiff_core.TextEncoder: XLM-R + projection head + tokenizer."""
VAE = "ALTDIFF_VAE"
"""altdiff_core.VAE: the SD VAE."""


@contextmanager
def socket_hints(hints: Mapping[str, str]) -> Iterator[None]:
    """Re-raise the engine's ``StageInputError`` with what to do in the graph added: ``hints[err.argument]``, the
    socket that feeds that argument and the ComfyUI nodes that fix it (the engine's message speaks of arguments only)."""
    try:
        yield
    except StageInputError as err:
        hint = hints.get(err.argument)
        if hint is None:
            raise
        raise type(err)(f"{err} {hint}", err.argument).with_traceback(err.__traceback__) from None
