"""Loading an AltDiffusion diffusers folder exactly as the BAAI repositories lay it out.

A folder holds ``model_index.json`` (text encoder ``["alt_diffusion", "RobertaSeriesModelWithTransformation"]``),
``text_encoder/``, ``tokenizer/`` (``sentencepiece.bpe.model``, no ``tokenizer.json``), ``unet/``, ``vae/``,
``scheduler/`` and components we never load (``safety_checker/``, ``feature_extractor/``). Weights are
``.safetensors`` or pickled ``.bin`` (read with ``weights_only=True``); UNet/VAE configs may be years old
(``_diffusers_version`` 0.8) and old VAEs use pre-0.14 attention key names, which we rename.

Each module is built from its config on the meta device (no memory, no random initialisation) and filled with the
file's weights, read into memory the process owns (every key must match), each tensor cast to the requested dtype and
moved to the device on its own (``weights.load_into``). The ``build_*`` functions take a config dict and
diffusers-named weights, so the single-file loader (``single_file.py``) shares them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .components import VAE, DiffusionModel, LoadedModel, TextEncoder, parameter_count
from .cpu_kernels import use_cpu_kernels
from .errors import ModelFormatError, ModelNotFoundError, NotAltDiffusionError
from .schedules import DiscreteSchedule
from .text_encoder import XLMRobertaWithHead, ignored_key_prefixes, xlmr_config
from .tokenizer import XLMRTokenizer
from .variants import Variant, detect_variant
from .weights import build_empty, find_weight_file, load_into, read_state_dict

logger = logging.getLogger(__name__)

ALT_TEXT_ENCODER_CLASSES = {"RobertaSeriesModelWithTransformation"}
OTHER_TEXT_ENCODERS = {
    "CLIPTextModel": "Stable Diffusion 1.x/2.x (CLIP text encoder)",
    "CLIPTextModelWithProjection": "Stable Diffusion (CLIP text encoder)",
    "T5EncoderModel": "a T5-based diffusion model",
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Pre-0.14 diffusers VAE attention names (still in the m2/m9 .bin files) → current names.
LEGACY_VAE_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelFormatError(f"{path} is missing; download the model folder again (it must contain {path.name}).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFormatError(f"{path} is not valid JSON ({err}); download it again.") from err


def is_altdiffusion_folder(folder: Path) -> bool:
    """Whether ``folder/model_index.json`` declares an AltDiffusion text encoder (cheap: reads one JSON)."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    entry = index.get("text_encoder") or [None, None]
    return entry[0] == "alt_diffusion" or entry[-1] in ALT_TEXT_ENCODER_CLASSES


def check_folder(folder: Path) -> dict:
    """Validate that ``folder`` is an AltDiffusion diffusers folder; returns its ``model_index.json``.

    Raises:
        ModelNotFoundError: the folder does not exist.
        NotAltDiffusionError: a diffusion model with another text encoder.
        ModelFormatError: no ``model_index.json`` or no text encoder entry.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"model folder {folder} does not exist. Give the folder that holds model_index.json "
            "(e.g. ComfyUI/models/diffusers/AltDiffusion-m9)."
        )
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelFormatError(
            f"{folder} has no model_index.json, so it is not a diffusers model folder. "
            "Point to the folder that contains model_index.json, text_encoder/, tokenizer/, unet/ and vae/."
        )
    index = read_json(index_file)
    entry = index.get("text_encoder")
    if not entry:
        raise ModelFormatError(f"{index_file} names no text_encoder; this is not a text-to-image model folder.")
    cls = entry[-1]
    if entry[0] != "alt_diffusion" and cls not in ALT_TEXT_ENCODER_CLASSES:
        kind = OTHER_TEXT_ENCODERS.get(cls, f"a model whose text encoder is {cls}")
        raise NotAltDiffusionError(
            f"{folder} is {kind}, not AltDiffusion (its text encoder is {entry[0]}.{cls}, AltDiffusion's is "
            "alt_diffusion.RobertaSeriesModelWithTransformation); load it with a loader for that model family."
        )
    return index


def rename_legacy_vae_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename pre-0.14 VAE attention keys (``…attentions.0.query.weight``) to current ones (``…to_q.weight``)."""
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) >= 3 and "attentions" in parts and parts[-2] in LEGACY_VAE_ATTENTION_NAMES:
            key = ".".join(parts[:-2] + [LEGACY_VAE_ATTENTION_NAMES[parts[-2]], parts[-1]])
        renamed[key] = value
    return renamed


def read_component(folder: Path, stems: tuple[str, ...], cast: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], Path]:
    """The weights of one component folder (``unet/``, …) as a state dict (``weights.read_state_dict``; floating-point
    tensors already in ``cast`` where converting while reading is possible), and the file's path."""
    weight_file = find_weight_file(folder, stems)
    return read_state_dict(weight_file, cast=cast), weight_file


def build_text_encoder(
    config_dict: dict,
    state_dict: dict[str, torch.Tensor],
    tokenizer: XLMRTokenizer,
    source: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    variant: Variant | None = None,
) -> TextEncoder:
    """The text encoder from a ``text_encoder/config.json`` dict and its diffusers-named weights: ``roberta.*`` and
    the head layers the variant applies (m2/m9 ``transformation.*``, m18 ``pre_LN.*`` and ``transformation_pre.*``),
    all required; the others (m2/m9 ``pre_LN.*``, m18 ``transformation.*``), ``roberta.pooler.*`` and
    ``roberta.embeddings.position_ids`` are never used and may be there or not, as each writer left them.

    ``variant`` None: told from the config and the tokenizer's ``model_max_length`` (``detect_variant``).

    Raises:
        ModelFormatError: a weight the variant uses is missing or of the wrong shape (naming it and ``source``), or
            the tokenizer has more ids than the embeddings.
    """
    config = xlmr_config(config_dict)
    if variant is None:
        variant = detect_variant(
            has_pre_transformation=bool(config_dict.get("has_pre_transformation", False)),
            project_dim=int(config.project_dim),
            model_max_length=tokenizer.model_max_length,
        )
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelFormatError(
            f"tokenizer {tokenizer.model_file} has {tokenizer.vocab_size} ids but the text encoder in {source} only "
            f"{config.vocab_size}; the tokenizer belongs to another model. Use the tokenizer folder of the same model."
        )
    module = build_empty(lambda: XLMRobertaWithHead(config, variant))
    head_missing = sorted(k for k in module.state_dict() if not k.startswith("roberta.") and k not in state_dict)
    if head_missing:
        raise ModelFormatError(
            f"text encoder weights in {source} have no {', '.join(head_missing)}, which {variant.name} applies "
            f"({' then '.join(variant.head_layers)}) to make the UNet's conditioning. The file is incomplete, or it "
            f"is not {variant.name} and its config says otherwise; download the model again."
        )
    use_cpu_kernels(module, device)
    load_into(module, state_dict, source, ignored_key_prefixes(variant), dtype=dtype, device=device)
    return TextEncoder(module, tokenizer, variant, torch.device(device), dtype, source)


def build_unet(
    config: dict,
    state_dict: dict[str, torch.Tensor],
    source: Path,
    schedule: DiscreteSchedule,
    variant: Variant,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> DiffusionModel:
    """The UNet from a diffusers ``unet/config.json`` dict and diffusers-named weights, with ``cpu_kernels``' layers
    (faster on the CPU, the same elsewhere)."""
    unet = build_empty(lambda: UNet2DConditionModel.from_config(config))
    use_cpu_kernels(unet, device)
    load_into(unet, state_dict, source, dtype=dtype, device=device)
    return DiffusionModel(unet, schedule.to(device), variant, torch.device(device), dtype, source)


def build_vae(
    config: dict, state_dict: dict[str, torch.Tensor], source: Path, *, device: torch.device, dtype: torch.dtype
) -> VAE:
    """The VAE from a diffusers ``vae/config.json`` dict and diffusers-named weights (old attention names accepted)."""
    vae = build_empty(lambda: AutoencoderKL.from_config(config))
    use_cpu_kernels(vae, device)
    load_into(vae, rename_legacy_vae_keys(state_dict), source, dtype=dtype, device=device)
    scaling = float(config.get("scaling_factor", 0.18215))
    return VAE(vae, scaling, torch.device(device), dtype, source)


def load_text_encoder(folder: Path, *, device: torch.device, dtype: torch.dtype) -> TextEncoder:
    """Text encoder + tokenizer of an AltDiffusion folder (``text_encoder/`` and ``tokenizer/``)."""
    folder = Path(folder)
    tokenizer_dir = folder / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise ModelFormatError(
            f"{folder} has no tokenizer/ folder; copy the 'tokenizer' folder (sentencepiece.bpe.model) of the model's "
            "Hub repository into it."
        )
    tokenizer = XLMRTokenizer.from_folder(tokenizer_dir)
    config_dict = read_json(folder / "text_encoder" / "config.json")
    state_dict, weight_file = read_component(folder / "text_encoder", ("model", "pytorch_model"), dtype)
    return build_text_encoder(config_dict, state_dict, tokenizer, weight_file, device=device, dtype=dtype)


def schedule_from_config(scheduler_file: Path) -> DiscreteSchedule:
    """The discrete schedule a ``scheduler_config.json`` declares (SD's defaults where it is absent)."""
    sched = read_json(scheduler_file) if scheduler_file.is_file() else {}
    prediction = sched.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelFormatError(
            f"{scheduler_file} declares prediction_type {prediction!r}; AltDiffusion models predict 'epsilon'. "
            "Restore the model's original scheduler_config.json."
        )
    return DiscreteSchedule(
        beta_start=float(sched.get("beta_start", 0.00085)),
        beta_end=float(sched.get("beta_end", 0.012)),
        num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
    )


def load_unet(folder: Path, variant: Variant, *, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    """UNet (``unet/``) and the discrete schedule from ``scheduler/scheduler_config.json``."""
    folder = Path(folder)
    config = read_json(folder / "unet" / "config.json")
    schedule = schedule_from_config(folder / "scheduler" / "scheduler_config.json")
    state_dict, weight_file = read_component(folder / "unet", ("diffusion_pytorch_model",), dtype)
    return build_unet(config, state_dict, weight_file, schedule, variant, device=device, dtype=dtype)


def load_vae(folder: Path, *, device: torch.device, dtype: torch.dtype) -> VAE:
    """The VAE (``vae/``), accepting old attention key names."""
    folder = Path(folder)
    config = read_json(folder / "vae" / "config.json")
    state_dict, weight_file = read_component(folder / "vae", ("diffusion_pytorch_model",), dtype)
    return build_vae(config, state_dict, weight_file, device=device, dtype=dtype)


def assemble(text_encoder: TextEncoder, model: DiffusionModel, vae: VAE, source: Path, started: float, **info) -> LoadedModel:
    """The three parts as one ``LoadedModel``, after checking they fit together; logs ``describe()``.

    ``info`` adds entries to ``LoadedModel.info`` (e.g. ``format``, ``tokenizer``).
    """
    if model.context_dim != text_encoder.context_dim:
        raise ModelFormatError(
            f"in {source} the text encoder outputs {text_encoder.context_dim}-wide conditioning but the UNet expects "
            f"{model.context_dim}; the parts belong to different models."
        )
    model.latent_scale = vae.scaling_factor
    loaded = LoadedModel(
        text_encoder,
        model,
        vae,
        {
            "variant": text_encoder.variant.name,
            "source": str(source),
            "dtype": _dtype_name(model.dtype),
            "vae_dtype": _dtype_name(vae.dtype),
            "device": str(model.device),
            "context_dim": model.context_dim,
            "params": {
                "text_encoder": parameter_count(text_encoder.module),
                "unet": parameter_count(model.module),
                "vae": parameter_count(vae.module),
            },
            **info,
            "load_seconds": round(time.perf_counter() - started, 3),
        },
    )
    logger.info("%s (loaded in %.1f s)", loaded.describe(), loaded.info["load_seconds"])
    return loaded


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_folder(
    folder: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load every part of an AltDiffusion diffusers folder.

    Args:
        folder: the folder holding ``model_index.json``.
        device: where the modules run.
        dtype: dtype of the text encoder and the UNet (weights are cast tensor by tensor on the way from the file).
        vae_dtype: dtype of the VAE; None = ``dtype``.

    Raises:
        ModelNotFoundError, NotAltDiffusionError, ModelFormatError: with the path and the fix.
    """
    folder = Path(folder)
    device = torch.device(device)
    started = time.perf_counter()
    check_folder(folder)
    text_encoder = load_text_encoder(folder, device=device, dtype=dtype)
    model = load_unet(folder, text_encoder.variant, device=device, dtype=dtype)
    vae = load_vae(folder, device=device, dtype=vae_dtype or dtype)
    return assemble(text_encoder, model, vae, folder, started, format="diffusers folder")
