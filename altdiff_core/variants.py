"""The AltDiffusion models as data: one row of ``VARIANTS`` per model, holding every per-model fact the pack uses.

| variant | Hub repository        | UNet base   | conditioning fed to the UNet                      | width | max length |
|---------|-----------------------|-------------|---------------------------------------------------|-------|------------|
| m2      | BAAI/AltDiffusion     | SD 1.x      | ``transformation(last_hidden_state)``             | 768   | 77         |
| m9      | BAAI/AltDiffusion-m9  | SD 1.x      | ``transformation(last_hidden_state)``             | 768   | 512        |
| m18     | BAAI/AltDiffusion-m18 | SD 2.1-base | ``transformation_pre(pre_LN(hidden_states[-2]))`` | 1024  | 77         |

("max length": the ``model_max_length`` each model's ``tokenizer_config.json`` declares.)

Everything else reads these rows: the Hub ids the loader offers and downloads (``hub.hub_models``), the text encoder's
head (``Variant.head_layers``), the UNet family whose rules infer a single file's config (``ldm_to_diffusers``) and
ComfyUI's model class (``nodes/comfy_seam/native.py``), and the detection below. Adding a model is one row here (plus
its node strings in ``locales/``); rules that belong to a UNet family, not to a model, are tables keyed by
``Variant.unet_family``.

**Detection.** A text encoder's head tells the kind of head (``has_pre_transformation``, or a projection as wide as such
a variant's conditioning: A1111's test for m18); among the variants with that head, the tokenizer's declared
``model_max_length`` picks one. m2 and m9 have the same shapes and compute the same way; only the tokenizer config
tells them apart, so telling them apart only matters for what the loader reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ModelFormatError


@dataclass(frozen=True)
class Variant:
    """What distinguishes one AltDiffusion model from another, as the pack needs it.

    Attributes:
        name: "m2", "m9" or "m18".
        context_dim: width of the conditioning the UNet cross-attends to (768 or 1024).
        hidden_layer: which XLM-R hidden state feeds the head: -1 = last layer, -2 = penultimate.
        pre_layer_norm: whether ``pre_LN`` is applied before the projection.
        projection: name of the Linear that produces the conditioning (``transformation`` or
            ``transformation_pre``).
        unet_family: the Stable Diffusion generation of the UNet and VAE ("SD1" or "SD2"); keys the family tables
            (``ldm_to_diffusers.ATTENTION_HEADS``, ``native.MODEL_CONFIGS``).
        languages: ISO codes of the languages the model was trained on.
        hub_repo: the Hugging Face Hub repository of its diffusers folder (``BAAI/AltDiffusion-m9``).
        model_max_length: what its tokenizer's ``tokenizer_config.json`` declares; it tells apart variants whose text
            encoders have the same head (m2 77, m9 512). The tokenizer itself always encodes 77-token windows.
    """

    name: str
    context_dim: int
    hidden_layer: int
    pre_layer_norm: bool
    projection: str
    unet_family: str
    languages: tuple[str, ...]
    hub_repo: str
    model_max_length: int

    @property
    def head_layers(self) -> tuple[str, ...]:
        """Names of the head's layers this variant applies, in order (m2/m9 ``("transformation",)``, m18
        ``("pre_LN", "transformation_pre")``): the text encoder builds these and needs their weights, and no others."""
        return (("pre_LN",) if self.pre_layer_norm else ()) + (self.projection,)

    @property
    def has_pre_transformation(self) -> bool:
        """Whether the head is diffusers' ``has_pre_transformation`` one (``pre_LN`` + ``transformation_pre``)."""
        return self.projection == "transformation_pre"


VARIANTS: dict[str, Variant] = {
    "m2": Variant(
        name="m2",
        context_dim=768,
        hidden_layer=-1,
        pre_layer_norm=False,
        projection="transformation",
        unet_family="SD1",
        languages=("en", "zh"),
        hub_repo="BAAI/AltDiffusion",
        model_max_length=77,
    ),
    "m9": Variant(
        name="m9",
        context_dim=768,
        hidden_layer=-1,
        pre_layer_norm=False,
        projection="transformation",
        unet_family="SD1",
        languages=("en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it"),
        hub_repo="BAAI/AltDiffusion-m9",
        model_max_length=512,
    ),
    "m18": Variant(
        name="m18",
        context_dim=1024,
        hidden_layer=-2,
        pre_layer_norm=True,
        projection="transformation_pre",
        unet_family="SD2",
        languages=("en", "zh", "ja", "th", "ko", "hi", "uk", "ar", "tr", "vi", "pl", "nl", "pt", "it", "es", "de", "fr", "ru"),
        hub_repo="BAAI/AltDiffusion-m18",
        model_max_length=77,
    ),
}
"""Every AltDiffusion model the pack knows, by name; the first row of a head kind is the default of that kind."""

UNDETERMINED_SEPARATOR = "/"
"""Joins the names of variants not told apart (``either_of``): "m2/m9"."""


def variants_with_head(*, has_pre_transformation: bool, project_dim: int) -> list[Variant]:
    """The variants, in table order, whose text encoder has the head a ``text_encoder/config.json`` describes:
    ``has_pre_transformation``, or a ``project_dim`` as wide as a variant with that head (A1111's test: a 1024-wide
    projection is m18's), means the ``pre_LN`` + ``transformation_pre`` head; anything else the plain one.

    Raises:
        ModelFormatError: no variant has that head.
    """
    pre_widths = {v.context_dim for v in VARIANTS.values() if v.has_pre_transformation}
    pre = has_pre_transformation or project_dim in pre_widths
    found = [v for v in VARIANTS.values() if v.has_pre_transformation == pre]
    if not found:
        head = "pre_LN + transformation_pre" if pre else "transformation"
        raise ModelFormatError(
            f"no AltDiffusion variant ({', '.join(VARIANTS)}) has a text encoder with a {head} head of width "
            f"{project_dim}; this is not an AltDiffusion text encoder."
        )
    return found


def detect_variant(*, has_pre_transformation: bool, project_dim: int, model_max_length: int | None) -> Variant:
    """The variant of a text encoder (``variants_with_head``) whose tokenizer declares ``model_max_length``; where none
    of that head does, the first of them (m2 for the plain head)."""
    candidates = variants_with_head(has_pre_transformation=has_pre_transformation, project_dim=project_dim)
    return next((v for v in candidates if v.model_max_length == model_max_length), candidates[0])


def either_of(variants: Sequence[Variant]) -> Variant:
    """One of ``variants``, not told apart (they have the same head and compute the same way): the first's row, named
    "m2/m9" (``UNDETERMINED_SEPARATOR``), with every language any of them was trained on. One variant: itself."""
    if len(variants) == 1:
        return variants[0]
    languages = tuple(dict.fromkeys(language for v in variants for language in v.languages))
    name = UNDETERMINED_SEPARATOR.join(v.name for v in variants)
    return dataclasses.replace(variants[0], name=name, languages=languages)


def variant_named(name: str) -> Variant:
    """The variant called ``name``: a row of ``VARIANTS``, or variants not told apart ("m2/m9", ``either_of``).

    Raises:
        ModelFormatError: a name no row has, listing the known ones.
    """
    names = name.split(UNDETERMINED_SEPARATOR)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ModelFormatError(
            f"unknown AltDiffusion variant {name!r}; the known ones are {', '.join(VARIANTS)} (or several of them joined "
            f"with {UNDETERMINED_SEPARATOR!r} when not told apart)."
        )
    return either_of([VARIANTS[n] for n in names])
