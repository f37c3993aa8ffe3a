"""AltDiffusion's text encoder: XLM-RoBERTa large plus the projection head the UNet was trained on.

The module keeps the state-dict names of diffusers' ``RobertaSeriesModelWithTransformation`` (and so of
the BAAI ``text_encoder`` folders): ``roberta.*``, then the head layers ``transformation.*`` (m2/m9) or
``pre_LN.*`` and ``transformation_pre.*`` (m18).

It builds only the head layers its variant applies (``Variant.head_layers``), and a file must hold exactly their
weights; the head layers a variant never applies are optional, because writers disagree about them. BAAI's m2/m9
files and A1111/LDM single files carry a ``pre_LN`` that m2/m9 never use; diffusers builds ``pre_LN`` only when
``has_pre_transformation`` is set, so an m2/m9 text encoder it saves (``save_pretrained``, fine-tune and DreamBooth
scripts) has none; every writer keeps m18's unused ``transformation``. ``roberta.pooler.*`` and
``roberta.embeddings.position_ids`` likewise come and go between writers and transformers versions
(``ignored_key_prefixes``).

Output: ``[B, 77, context_dim]`` in the module's dtype — for m2/m9 ``transformation(h[-1])``, for m18
``transformation_pre(pre_LN(h[-2]))``, where ``h`` are XLM-R's hidden states with the attention mask applied.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaModel

from .variants import Variant

IGNORED_KEY_PREFIXES = ("roberta.pooler.", "logit_scale", "roberta.embeddings.position_ids")
"""Keys found in real checkpoints that no variant's conditioning uses (present or not, depending on the writer)."""

HEAD_LAYERS: dict[str, str] = {"transformation": "Linear", "pre_LN": "LayerNorm", "transformation_pre": "Linear"}
"""Every head layer of ``RobertaSeriesModelWithTransformation`` (its attribute names) → its kind: a Linear maps
``[..., hidden_size]`` → ``[..., project_dim]``, the LayerNorm keeps ``[..., hidden_size]``."""


def build_head_layer(name: str, hidden_size: int, project_dim: int, eps: float, operations: Any = nn, **factory) -> nn.Module:
    """Head layer ``name`` (a key of ``HEAD_LAYERS``) built from ``operations`` (``torch.nn``, or a host's namespace of
    drop-in layer classes, e.g. ComfyUI's casting ops); ``factory`` = ``dtype``/``device`` keywords."""
    if HEAD_LAYERS[name] == "LayerNorm":
        return operations.LayerNorm(hidden_size, eps=eps, **factory)
    return operations.Linear(hidden_size, project_dim, **factory)


def ignored_key_prefixes(variant: Variant) -> tuple[str, ...]:
    """Key prefixes a text-encoder file may or may not hold for ``variant``: ``IGNORED_KEY_PREFIXES`` and the head
    layers the variant never applies (m2/m9: ``pre_LN.``, ``transformation_pre.``; m18: ``transformation.``)."""
    unused = tuple(f"{name}." for name in HEAD_LAYERS if name not in variant.head_layers)
    return IGNORED_KEY_PREFIXES + unused


class XLMRobertaWithHead(nn.Module):
    """The text encoder's torch module: XLM-R trunk + AltDiffusion projection head (diffusers'
    ``RobertaSeriesModelWithTransformation``); ``components.TextEncoder`` holds it with its tokenizer.

    Args:
        config: the XLM-R configuration (``text_encoder/config.json``); ``project_dim`` is the output width.
        variant: the model variant, which picks the hidden layer and the head layers built
            (``Variant.head_layers``).
    """

    def __init__(self, config: XLMRobertaConfig, variant: Variant):
        super().__init__()
        self.variant = variant
        self.config = config
        self.roberta = XLMRobertaModel(config, add_pooling_layer=False)
        for name in variant.head_layers:  # only what the variant applies: the others' weights are optional on disk
            self.add_module(name, build_head_layer(name, config.hidden_size, config.project_dim, config.layer_norm_eps))

    @property
    def context_dim(self) -> int:
        return self.config.project_dim

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Conditioning for ``input_ids`` ``[B, T]`` (int64, fairseq ids) → ``[B, T, context_dim]``.

        ``layer`` (-1 = last … -num_layers = first transformer layer) picks the hidden state fed to the variant's head;
        None = the variant's own (m2/m9 the last, m18 the penultimate).
        """
        layer = self.variant.hidden_layer if layer is None else layer
        need_all = layer != -1
        out = self.roberta(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_all)
        hidden = out.hidden_states[layer] if need_all else out.last_hidden_state
        for name in self.variant.head_layers:  # m2/m9: transformation; m18: pre_LN, then transformation_pre
            hidden = getattr(self, name)(hidden)
        return hidden


def xlmr_config(config_dict: dict) -> XLMRobertaConfig:
    """An ``XLMRobertaConfig`` from a BAAI ``text_encoder/config.json``, old keys kept as attributes."""
    cleaned = {k: v for k, v in config_dict.items() if not k.startswith("_") and k not in ("architectures",)}
    cleaned.setdefault("project_dim", cleaned.get("hidden_size"))
    return XLMRobertaConfig(**cleaned)
