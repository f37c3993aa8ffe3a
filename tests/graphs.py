"""Building blocks of API-format prompts (``{node id: {"class_type", "inputs"}}``) shared by the server tests.

A link is ``[node id, output index]``; the builders take ``(id, index)`` tuples and write lists, as the API wants.
"""

from __future__ import annotations

SAMPLER_DEFAULTS = {"seed": 42, "steps": 3, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
"""KSampler's inputs besides the links, at the tests' cheap defaults (3 euler steps)."""


def sampler_node(class_type: str, model, positive, negative, latent, **overrides) -> dict:
    """A KSampler-shaped node (``KSampler`` or ``AltDiffusionSampler``, which take the same inputs)."""
    links = {"model": list(model), "positive": list(positive), "negative": list(negative), "latent_image": list(latent)}
    return {"class_type": class_type, "inputs": {**SAMPLER_DEFAULTS, **links, **overrides}}
