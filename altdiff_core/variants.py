"""The three AltDiffusion models as data: how each turns XLM-R hidden states into UNet conditioning.

| variant | UNet base     | conditioning fed to the UNet                                  | width |
|---------|---------------|---------------------------------------------------------------|-------|
| m2, m9  | SD 1.x        | ``transformation(last_hidden_state)``                         | 768   |
| m18     | SD 2.1-base   | ``transformation_pre(pre_LN(hidden_states[-2]))`` (penultimate) | 1024  |

m2 and m9 have the same shapes; only the tokenizer config tells them apart (m9 declares
``model_max_length`` 512, m2 77). The maths is identical, so telling them apart only matters for
what the loader reports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """What distinguishes one AltDiffusion model from another, as the engine needs it.

    Attributes:
        name: "m2", "m9" or "m18".
        context_dim: width of the conditioning the UNet cross-attends to (768 or 1024).
        hidden_layer: which XLM-R hidden state feeds the head: -1 = last layer, -2 = penultimate.
        pre_layer_norm: whether ``pre_LN`` is applied before the projection.
        projection: name of the Linear that produces the conditioning (``transformation`` or
            ``transformation_pre``).
        unet_family: the Stable Diffusion generation of the UNet and VAE ("SD1" or "SD2").
        languages: ISO codes of the languages the model was trained on.
    """

    name: str
    context_dim: int
    hidden_layer: int
    pre_layer_norm: bool
    projection: str
    unet_family: str
    languages: tuple[str, ...]

    @property
    def head_layers(self) -> tuple[str, ...]:
        """Names of the head's layers this variant applies, in order (m2/m9 ``("transformation",)``, m18
        ``("pre_LN", "transformation_pre")``): the text encoder builds these and needs their weights, and no others."""
        return (("pre_LN",) if self.pre_layer_norm else ()) + (self.projection,)


VARIANTS: dict[str, Variant] = {
    "m2": Variant("m2", 768, -1, False, "transformation", "SD1", ("en", "zh")),
    "m9": Variant("m9", 768, -1, False, "transformation", "SD1", ("en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it")),
    "m18": Variant(
        "m18",
        1024,
        -2,
        True,
        "transformation_pre",
        "SD2",
        ("en", "zh", "ja", "th", "ko", "hi", "uk", "ar", "tr", "vi", "pl", "nl", "pt", "it", "es", "de", "fr", "ru"),
    ),
}


def detect_variant(*, has_pre_transformation: bool, project_dim: int, model_max_length: int | None) -> Variant:
    """Tell the variant from the text encoder's head and the tokenizer config.

    ``transformation_pre`` (or a 1024-wide projection) marks m18, as in A1111's detection; otherwise
    a tokenizer declaring 512 tokens marks m9 (its Hub config says so), anything else m2.
    """
    if has_pre_transformation or project_dim == 1024:
        return VARIANTS["m18"]
    return VARIANTS["m9"] if model_max_length == 512 else VARIANTS["m2"]
