"""AltDiffusion's text encoder: XLM-RoBERTa large plus the projection head the UNet was trained on.

The module keeps the state-dict names of diffusers' ``RobertaSeriesModelWithTransformation`` (and so of
the BAAI ``text_encoder`` folders): ``roberta.*``, ``transformation.*``, ``pre_LN.*`` and, for m18,
``transformation_pre.*``. Real m2/m9 weights carry ``pre_LN`` too, although m2/m9 never use it; we load it
so a checkpoint's keys match exactly.

Output: ``[B, 77, context_dim]`` in the module's dtype — for m2/m9 ``transformation(h[-1])``, for m18
``transformation_pre(pre_LN(h[-2]))``, where ``h`` are XLM-R's hidden states with the attention mask applied.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaModel

from .variants import Variant

IGNORED_KEY_PREFIXES = ("roberta.pooler.", "logit_scale", "roberta.embeddings.position_ids")
"""Keys found in real checkpoints that the conditioning never uses."""


class AltTextEncoder(nn.Module):
    """XLM-R trunk + AltDiffusion projection head.

    Args:
        config: the XLM-R configuration (``text_encoder/config.json``); ``project_dim`` is the output width.
        variant: the model variant, which picks the hidden layer and the head.
    """

    def __init__(self, config: XLMRobertaConfig, variant: Variant):
        super().__init__()
        self.variant = variant
        self.config = config
        self.roberta = XLMRobertaModel(config, add_pooling_layer=False)
        self.transformation = nn.Linear(config.hidden_size, config.project_dim)
        self.pre_LN = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if variant.projection == "transformation_pre":
            self.transformation_pre = nn.Linear(config.hidden_size, config.project_dim)

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
        variant = self.variant
        layer = variant.hidden_layer if layer is None else layer
        need_all = layer != -1
        out = self.roberta(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_all)
        hidden = out.hidden_states[layer] if need_all else out.last_hidden_state
        if variant.pre_layer_norm:
            hidden = self.pre_LN(hidden)
        return getattr(self, variant.projection)(hidden)


def xlmr_config(config_dict: dict) -> XLMRobertaConfig:
    """An ``XLMRobertaConfig`` from a BAAI ``text_encoder/config.json``, old keys kept as attributes."""
    cleaned = {k: v for k, v in config_dict.items() if not k.startswith("_") and k not in ("architectures",)}
    cleaned.setdefault("project_dim", cleaned.get("hidden_size"))
    return XLMRobertaConfig(**cleaned)
