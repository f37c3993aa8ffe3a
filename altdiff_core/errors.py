"""Exceptions the engine raises on bad input.

Every message names the offending value, what was expected, and how to fix it, in the engine's terms (its arguments,
shapes and files, never a front end's widgets), so that the command line can show it as it is and a node can add
where in the graph to fix it (``StageInputError.argument``). Nothing here imports torch.
"""

from collections.abc import Iterator
from contextlib import contextmanager


class AltDiffusionError(Exception):
    """Base class: a problem the user can fix (a file, a folder, a value)."""


class ModelNotFoundError(AltDiffusionError, FileNotFoundError):
    """A model folder or file does not exist, or a Hub model is not downloaded."""


class NotAltDiffusionError(AltDiffusionError):
    """The files are a diffusion model, but not AltDiffusion (e.g. Stable Diffusion with a CLIP text encoder)."""


class ModelFormatError(AltDiffusionError):
    """The files look like AltDiffusion but are damaged or incomplete (truncated weights, missing config, wrong keys)."""


class InvalidInputError(AltDiffusionError, ValueError):
    """A value given to a node or engine function is out of range or does not fit the model."""


class TooLargeForMemoryError(InvalidInputError):
    """A requested size (image, latent, batch) needs more working memory than the device has: refused before
    anything is allocated, so the server never runs out of memory trying."""


class StageInputError(InvalidInputError):
    """An input of a stage (``encode_prompt``, ``encode_image``, ``decode_latent``, ``sample_latent``) that another
    stage or the caller made cannot be used. ``argument`` names the stage's parameter ("prompt", "image", "latent", …);
    a caller that knows where the input came from (a node's socket) can add how to fix it there."""

    def __init__(self, message: str, argument: str):
        super().__init__(message)
        self.argument = argument


class SamplerInputError(StageInputError):
    """An input of ``sample_latent``: ``argument`` is "latent", "noise_mask", "batch_index", "positive" or
    "negative"."""


@contextmanager
def about(argument: str, error: type[StageInputError] = StageInputError) -> Iterator[None]:
    """Re-raise the ``InvalidInputError`` of a check inside as ``error`` about ``argument``. A memory refusal
    (``TooLargeForMemoryError``: about a size, not one input) and an error already about an argument pass as they are."""
    try:
        yield
    except (TooLargeForMemoryError, StageInputError):
        raise
    except InvalidInputError as err:
        raise error(str(err), argument).with_traceback(err.__traceback__) from None
