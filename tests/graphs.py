"""Building blocks of API-format prompts (``{node id: {"class_type", "inputs"}}``) shared by the server tests and benches.

A link is ``[node id, output index]``; the builders take ``(id, index)`` tuples and write lists, as the API wants.
"""

from __future__ import annotations

SAMPLER_DEFAULTS = {"seed": 42, "steps": 3, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
"""KSampler's inputs besides the links, at the tests' cheap defaults (3 euler steps)."""


def node(class_type: str, **inputs) -> dict:
    """A node of ``class_type`` with ``inputs``; links (tuples or lists) are written as new lists."""
    return {"class_type": class_type, "inputs": {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in inputs.items()}}


def sampler_node(class_type: str, model, positive, negative, latent, **overrides) -> dict:
    """A KSampler-shaped node (``KSampler`` or ``AltDiffusionSampler``, which take the same inputs)."""
    links = {"model": model, "positive": positive, "negative": negative, "latent_image": latent}
    return node(class_type, **{**SAMPLER_DEFAULTS, **links, **overrides})


def ksampler(model, positive, negative, latent, **overrides) -> dict:
    """ComfyUI's stock ``KSampler`` at ``SAMPLER_DEFAULTS`` but for ``overrides``."""
    return sampler_node("KSampler", model, positive, negative, latent, **overrides)


def sampler(latent, positive=("P", 0), negative=("N", 0), model=("L", 0), **overrides) -> dict:
    """The pack's ``AltDiffusionSampler``, wired to ``base_graph``'s nodes unless told otherwise."""
    return sampler_node("AltDiffusionSampler", model, positive, negative, latent, **overrides)


def loader(model: str = "AltDiffusion-m9", dtype: str = "auto") -> dict:
    """The pack's ``AltDiffusionLoader`` (outputs: model 0, text encoder 1, VAE 2)."""
    return node("AltDiffusionLoader", model_name=model, dtype=dtype)


def encode(text: str, loader_id: str = "L") -> dict:
    """The pack's ``AltDiffusionTextEncode`` of ``text`` on the text encoder of loader ``loader_id``."""
    return node("AltDiffusionTextEncode", text=text, text_encoder=(loader_id, 1))


def empty_latent(size: int = 64, batch: int = 1) -> dict:
    """``EmptyLatentImage`` of ``size``×``size`` pixels."""
    return node("EmptyLatentImage", width=size, height=size, batch_size=batch)


def base_graph(positive: str = "一只戴着帽子的猫", negative: str = "模糊") -> dict:
    """Our loader ``L``, positive ``P`` and negative ``N`` conditioning and a 64×64 empty latent ``E``."""
    return {"L": loader(), "P": encode(positive), "N": encode(negative), "E": empty_latent()}


def unet_loader(name: str, weight_dtype: str = "default") -> dict:
    """ComfyUI's ``UNETLoader`` of ``models/diffusion_models/<name>``."""
    return node("UNETLoader", unet_name=name, weight_dtype=weight_dtype)


def vae_loader(name: str) -> dict:
    """ComfyUI's ``VAELoader`` of ``models/vae/<name>``."""
    return node("VAELoader", vae_name=name)


def vae_decode(samples, vae) -> dict:
    """ComfyUI's ``VAEDecode``."""
    return node("VAEDecode", samples=samples, vae=vae)


def vae_encode(pixels, vae) -> dict:
    """ComfyUI's ``VAEEncode``."""
    return node("VAEEncode", pixels=pixels, vae=vae)


def save_latent(latent, prefix: str) -> dict:
    """``SaveLatent`` of ``latent`` under ``prefix``."""
    return node("SaveLatent", samples=latent, filename_prefix=prefix)


def save_image(images, prefix: str = "altdiff_test") -> dict:
    """``SaveImage`` of ``images`` under ``prefix``."""
    return node("SaveImage", images=images, filename_prefix=prefix)
