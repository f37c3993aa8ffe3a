"""The loaded parts of an AltDiffusion model, as the nodes pass them between each other.

Each is a plain dataclass around a torch module, always under the name ``module``: the text encoder's
``XLMRobertaWithHead``, the diffusion model's ``UNet2DConditionModel``, the VAE's ``AutoencoderKL``. The nodes send them
under the pack's own socket types (``ALTDIFF_TEXT_ENCODER``, ``ALTDIFF_MODEL``, ``ALTDIFF_VAE``). Devices and dtypes are
recorded so that every stage can put its inputs where the module lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .schedules import DiscreteSchedule
from .text_encoder import XLMRobertaWithHead
from .tokenizer import XLMRTokenizer
from .variants import Variant


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(eq=False)
class TextEncoder:
    """XLM-R encoder + head, and its tokenizer. ``module`` runs on ``device`` in ``dtype``."""

    module: XLMRobertaWithHead
    tokenizer: XLMRTokenizer
    variant: Variant
    device: torch.device
    dtype: torch.dtype
    source: Path
    layer: int | None = None
    """XLM-R hidden layer feeding the head (-1 = last); None = the variant's trained choice (m2/m9 -1, m18 -2)."""
    handle: object | None = field(default=None, repr=False)
    """The host's memory-manager handle for ``module`` (ComfyUI's ModelPatcher); set and read only by the host."""

    @property
    def context_dim(self) -> int:
        return self.module.context_dim


@dataclass(eq=False)
class DiffusionModel:
    """The UNet (epsilon prediction, ``module``) and its discrete noise schedule. ``module`` runs on ``device`` in
    ``dtype``."""

    module: UNet2DConditionModel
    schedule: DiscreteSchedule
    variant: Variant
    device: torch.device
    dtype: torch.dtype
    source: Path
    latent_scale: float = 0.18215
    """Raw VAE latent × this = what the UNet was trained on (the SD VAE's scaling factor)."""
    handle: object | None = field(default=None, repr=False)
    """The host's memory-manager handle for ``module`` (ComfyUI's ModelPatcher); set and read only by the host."""

    @property
    def context_dim(self) -> int:
        return int(self.module.config.cross_attention_dim)

    @property
    def latent_channels(self) -> int:
        return int(self.module.config.in_channels)


@dataclass(eq=False)
class VAE:
    """The SD VAE. Latents outside it are raw (unscaled); ``scaling_factor`` maps them to model space."""

    module: AutoencoderKL
    scaling_factor: float
    device: torch.device
    dtype: torch.dtype
    source: Path
    handle: object | None = field(default=None, repr=False)
    """The host's memory-manager handle for ``module`` (ComfyUI's ModelPatcher); set and read only by the host."""

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.module.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.module.config.latent_channels)


@dataclass(eq=False)
class LoadedModel:
    """Everything one AltDiffusion checkpoint provides."""

    text_encoder: TextEncoder
    model: DiffusionModel
    vae: VAE
    info: dict = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs and the loader's info output: variant, format, source, dtypes, device, parameter counts."""
        i = self.info
        fmt = f" ({i['format']})" if i.get("format") else ""
        vae_dtype = i.get("vae_dtype", i["dtype"])
        vae = f" (VAE {vae_dtype})" if vae_dtype != i["dtype"] else ""
        return (
            f"AltDiffusion-{i['variant']}{fmt} from {i['source']}: {i['dtype']}{vae} on {i['device']}; parameters: "
            f"text encoder {i['params']['text_encoder'] / 1e6:.1f} M, UNet {i['params']['unet'] / 1e6:.1f} M, "
            f"VAE {i['params']['vae'] / 1e6:.1f} M; conditioning width {i['context_dim']}"
        )
