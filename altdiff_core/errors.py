"""Exceptions the engine raises on bad input.

Every message names the offending value, what was expected, and how to fix it, so that the node (or the
command line) can show it to the user as it is. Nothing here imports torch.
"""


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


class SamplerInputError(InvalidInputError):
    """An input of ``sample_latent`` that another stage made cannot be sampled. ``argument`` names it: "latent",
    "noise_mask", "batch_index", "positive" or "negative". The message says what is wrong and how to fix it in the
    engine's terms; a caller that knows where the input came from (a node's socket) can add how to fix it there."""

    def __init__(self, message: str, argument: str):
        super().__init__(message)
        self.argument = argument
