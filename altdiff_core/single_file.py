"""Single-file AltDiffusion checkpoints in the A1111/LDM layout (``Alt-Diffusion-M9.safetensors``, ``m18.ckpt``, …).

One file holds the three models under their LDM names:

| prefix in the file                                                     | model        | to diffusers names                |
|------------------------------------------------------------------------|--------------|-----------------------------------|
| ``model.diffusion_model.*``                                            | UNet         | ``ldm_to_diffusers.convert_unet`` |
| ``first_stage_model.*``                                                | VAE          | ``ldm_to_diffusers.convert_vae``  |
| ``cond_stage_model.`` + ``roberta.*``, ``transformation.*``, ``pre_LN.*``, | text encoder | prefix removed                    |
| m18 also ``transformation_pre.*``                                      |              |                                   |

The text encoder needs only the head layers its variant applies (``text_encoder.py``): ``cond_stage_model.pre_LN.*``,
which A1111's m2/m9 files carry and files converted from a diffusers save lack, is optional for m2/m9.

``.safetensors`` is memory-mapped; ``.ckpt`` is read only through ``torch.load(weights_only=True)`` and refused when that
fails (a file holding Python objects is never unpickled). Everything else in the file (``betas``, ``model_ema.*``, …)
is ignored, except that ``betas``, when present, must be Stable Diffusion's schedule, the one sampled here.

**Variant** (``variants.variants_with_head``). ``transformation_pre`` or a 1024-wide ``transformation`` marks m18
(SD2.1-base UNet). m2 and m9 have the same shapes; only a tokenizer config in the companion folder tells them apart
(its ``model_max_length``, ``Variant.model_max_length``: 512 = m9, 77 = m2); otherwise the variant is reported as
"m2/m9" (``variants.either_of``: both compute the same way).

**Companion folder** ``<folder>/<stem>/`` next to ``<folder>/<stem>.safetensors``, all optional:
``tokenizer/`` (the model's ``sentencepiece.bpe.model`` + ``tokenizer_config.json``), and diffusers configs
``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``, used instead of configs inferred from the
weights' shapes (``ldm_to_diffusers``; needed only for models that are not standard-size SD1/SD2).

**Tokenizer**, first found (a single file carries none; every AltDiffusion release uses XLM-R's 250,002-id one):
``<stem>/tokenizer/``, ``tokenizer/`` next to the file, ``sentencepiece.bpe.model`` next to the file, then the
caller's ``tokenizer_folders`` (the nodes pass the ``tokenizer/`` of every AltDiffusion diffusers folder and
``models/altdiffusion/tokenizer``), of which only one with exactly the text encoder's vocabulary is taken.
"""

from __future__ import annotations

import functools
import logging
import struct
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .components import LoadedModel
from .errors import ModelFormatError, ModelNotFoundError, NotAltDiffusionError
from .ldm_to_diffusers import (
    convert_unet,
    convert_vae,
    text_encoder_config_from_shapes,
    unet_config_from_shapes,
    vae_config_from_shapes,
)
from .loading import assemble, build_text_encoder, build_unet, build_vae, is_altdiffusion_folder, read_json
from .schedules import DiscreteSchedule
from .tokenizer import SENTENCEPIECE_FILE, XLMRTokenizer
from .variants import Variant, either_of, variants_with_head
from .weights import read_layout, read_state_dict, reads_parts

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."}
"""Component → its key prefix in an LDM checkpoint."""
ALTDIFFUSION_MARKER = "cond_stage_model.roberta.embeddings.word_embeddings.weight"
"""The key that marks an AltDiffusion checkpoint (A1111's own test)."""
OTHER_TEXT_ENCODERS = {
    "cond_stage_model.transformer.": "a Stable Diffusion 1.x checkpoint (its text encoder is CLIP, "
    "cond_stage_model.transformer.*)",
    "cond_stage_model.model.": "a Stable Diffusion 2.x checkpoint (its text encoder is OpenCLIP, cond_stage_model.model.*)",
    "conditioner.embedders.": "an SDXL checkpoint (its text encoders are CLIP, conditioner.embedders.*)",
}
"""Key prefix → what a checkpoint with that text encoder is."""
SCHEDULE_TOLERANCE = 1e-2
"""Relative difference allowed between a file's ``betas`` and SD's (fp16 files store them rounded)."""
HEADER_LIMIT = 100 * 2**20
"""Largest safetensors header / ckpt pickle index read when listing (real ones are well under 1 MB)."""


def companion_folder(path: Path) -> Path:
    """``<folder>/<stem>/`` for ``<folder>/<stem>.safetensors``: where the checkpoint's tokenizer and configs go."""
    path = Path(path)
    return path.parent / path.stem


def is_altdiffusion_checkpoint(path: Path) -> bool:
    """Whether a ``.safetensors``/``.ckpt`` file names AltDiffusion's text encoder, cheaply (reads the safetensors
    header or the pickle index of a zip ``.ckpt`` as bytes; never unpickles, never raises). For listing models."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return False
    return _mentions_marker(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _mentions_marker(path: str, size: int, mtime_ns: int) -> bool:
    """Memoised per (file, size, mtime): the node list is rebuilt on every ComfyUI refresh."""
    try:
        return ALTDIFFUSION_MARKER.encode() in _key_index_bytes(Path(path))
    except (OSError, zipfile.BadZipFile, struct.error):
        return False


def _key_index_bytes(path: Path) -> bytes:
    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            return f.read(length) if length <= HEADER_LIMIT else b""
    if path.suffix == ".ckpt" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            index = next((i for i in archive.infolist() if i.filename.endswith("data.pkl")), None)
            return archive.read(index) if index is not None and index.file_size <= HEADER_LIMIT else b""
    return b""


def split_checkpoint(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The LDM state dict as ``{"unet": …, "vae": …, "text_encoder": …}``, keys keeping their prefixes.

    Raises:
        NotAltDiffusionError: an SD1/SD2/SDXL checkpoint (CLIP text encoder).
        ModelFormatError: not an LDM checkpoint, or a part is missing.
    """
    if ALTDIFFUSION_MARKER not in state_dict:
        _refuse(state_dict, path)
    parts = {name: {k: v for k, v in state_dict.items() if k.startswith(prefix)} for name, prefix in PREFIXES.items()}
    missing = [f"{name} ({PREFIXES[name]}*)" for name, part in parts.items() if not part]
    if missing:
        raise ModelFormatError(
            f"{path} has AltDiffusion's text encoder but no {', '.join(missing)} weights; it is incomplete. "
            "Use the full checkpoint (or the model's diffusers folder)."
        )
    return parts


def read_part(
    path: Path, name: str, loaded: dict[str, torch.Tensor] | None = None, cast: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The weights of one part (``PREFIXES``) of a checkpoint, prefix removed, read on their own so that only one part
    is in memory before it is placed; floating-point ones already in ``cast`` for a safetensors file
    (``weights.read_state_dict``). ``loaded``: the whole state dict, for a pickle (read whole, once)."""
    prefix = PREFIXES[name]
    tensors = read_state_dict(path, (prefix,), cast) if loaded is None else loaded
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _refuse(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    for prefix, kind in OTHER_TEXT_ENCODERS.items():
        if any(k.startswith(prefix) for k in state_dict):
            raise NotAltDiffusionError(
                f"{path} is {kind}, not AltDiffusion (whose text encoder is XLM-R, cond_stage_model.roberta.*); "
                "load it with a loader for that model family."
            )
    sample = ", ".join(sorted(state_dict)[:3]) or "no tensors"
    raise ModelFormatError(
        f"{path} is not an AltDiffusion checkpoint: it has no {ALTDIFFUSION_MARKER} (AltDiffusion's XLM-R text encoder); "
        f"its keys start {sample}. Pick an A1111/LDM AltDiffusion checkpoint (model.diffusion_model.*, "
        "first_stage_model.*, cond_stage_model.roberta.*) or the model's diffusers folder."
    )


def _shapes(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Size]:
    return {k.removeprefix(prefix): v.shape for k, v in state_dict.items()}


def _companion_config(path: Path, component: str) -> dict | None:
    config_file = companion_folder(path) / component / "config.json"
    return read_json(config_file) if config_file.is_file() else None


def find_tokenizer(path: Path, vocab_size: int, tokenizer_folders: Iterable[Path] = ()) -> tuple[XLMRTokenizer, bool]:
    """The tokenizer for checkpoint ``path`` (search order in the module docstring) and whether it is the
    checkpoint's own (``<stem>/tokenizer/``, whose config may tell m2 from m9).

    Raises:
        ModelFormatError: none found, naming the folder to put it in and what to put there.
    """
    path = Path(path)
    own = [companion_folder(path) / "tokenizer", path.parent / "tokenizer", path.parent]
    for folder in own:
        if (folder / SENTENCEPIECE_FILE).is_file():
            return XLMRTokenizer.from_folder(folder), folder == own[0]
    searched = []
    for folder in map(Path, tokenizer_folders):  # lazily: the caller's search may walk model folders
        searched.append(folder)
        if (folder / SENTENCEPIECE_FILE).is_file():
            tokenizer = XLMRTokenizer.from_folder(folder)
            if tokenizer.vocab_size == vocab_size:
                logger.info("%s: using the tokenizer in %s", path.name, folder)
                return tokenizer, False
            logger.debug("%s: tokenizer in %s has %d ids, not %d; skipped", path.name, folder, tokenizer.vocab_size, vocab_size)
    looked = ", ".join(str(f) for f in own + searched)
    raise ModelFormatError(
        f"{path} is a single-file checkpoint, which carries no tokenizer, and none was found (looked in {looked}). "
        f"Put the model's {SENTENCEPIECE_FILE} and tokenizer_config.json — the 'tokenizer' folder of its Hub repository, "
        f"e.g. https://huggingface.co/BAAI/AltDiffusion-m9/tree/main/tokenizer — into {companion_folder(path) / 'tokenizer'}."
    )


def checkpoint_variant(text_config: dict, tokenizer: XLMRTokenizer, own_tokenizer: bool) -> Variant:
    """The variants with the text encoder's head (m18 by its head alone); among several, the one the checkpoint's own
    tokenizer config declares (``Variant.model_max_length``: m2 or m9); else all of them, not told apart ("m2/m9").

    A tokenizer found elsewhere (another model's folder) says nothing about this file, so only its own counts.
    """
    candidates = variants_with_head(
        has_pre_transformation=bool(text_config.get("has_pre_transformation", False)),
        project_dim=int(text_config.get("project_dim", text_config["hidden_size"])),
    )
    declared = tokenizer.model_max_length if own_tokenizer else None
    named = [variant for variant in candidates if variant.model_max_length == declared]
    return named[0] if named else either_of(candidates)


def schedule_from_betas(betas: torch.Tensor | None, path: Path) -> DiscreteSchedule:
    """SD's discrete schedule; a file's own ``betas`` (LDM stores them) must agree with it.

    Raises:
        ModelFormatError: the file declares another schedule, which AltDiffusion was not trained with.
    """
    if betas is None:
        return DiscreteSchedule()
    schedule = DiscreteSchedule(num_train_timesteps=len(betas))
    expected = torch.linspace(schedule.beta_start**0.5, schedule.beta_end**0.5, len(betas), dtype=torch.float64) ** 2
    if not torch.allclose(betas.double(), expected, rtol=SCHEDULE_TOLERANCE, atol=0.0):
        raise ModelFormatError(
            f"{path} declares a noise schedule (betas {float(betas[0]):.5g} … {float(betas[-1]):.5g}) that is not Stable "
            "Diffusion's scaled-linear 0.00085 … 0.012 that AltDiffusion is trained and sampled with; it is not an "
            "AltDiffusion checkpoint this pack can sample."
        )
    return schedule


def check_checkpoint_path(path: Path) -> Path:
    """``path`` as a ``Path`` if it is an existing ``.safetensors``/``.ckpt`` file.

    Raises:
        ModelNotFoundError: no such file. ModelFormatError: another extension.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"checkpoint {path} does not exist. Put the .safetensors file in ComfyUI/models/checkpoints (or "
            "models/altdiffusion) and pick it from the list."
        )
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ModelFormatError(
            f"{path} has the extension {path.suffix!r}; single-file checkpoints are {' or '.join(CHECKPOINT_SUFFIXES)}."
        )
    return path


def load_checkpoint(
    path: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype | None = None,
    tokenizer_folders: Iterable[Path] = (),
) -> LoadedModel:
    """Load an A1111/LDM AltDiffusion checkpoint: the same modules ``load_folder`` builds from a diffusers folder.

    Args:
        path: the ``.safetensors`` or ``.ckpt`` file.
        device: where the modules run.
        dtype: dtype of the text encoder and UNet (each tensor cast on its own on the way from the file).
        vae_dtype: dtype of the VAE; None = ``dtype``.
        tokenizer_folders: more folders to look for the tokenizer in (after the checkpoint's own places).

    Raises:
        ModelNotFoundError, NotAltDiffusionError, ModelFormatError: naming the file and the fix.
    """
    path = check_checkpoint_path(path)
    device = torch.device(device)
    started = time.perf_counter()
    everything = read_layout(path)  # safetensors: the header only, as meta tensors; pickles: read whole, once
    shapes = {name: _shapes(part, PREFIXES[name]) for name, part in split_checkpoint(everything, path).items()}
    betas = read_state_dict(path, ("betas",)).get("betas") if reads_parts(path) and "betas" in everything else None
    schedule = schedule_from_betas(betas if reads_parts(path) else everything.get("betas"), path)
    loaded = None if reads_parts(path) else everything  # safetensors: each part is read on its own
    del everything

    text_config = _companion_config(path, "text_encoder") or text_encoder_config_from_shapes(shapes["text_encoder"], path)
    tokenizer, own_tokenizer = find_tokenizer(path, int(text_config["vocab_size"]), tokenizer_folders)
    variant = checkpoint_variant(text_config, tokenizer, own_tokenizer)
    text_encoder = build_text_encoder(
        text_config, read_part(path, "text_encoder", loaded, dtype), tokenizer, path, device=device, dtype=dtype, variant=variant
    )

    unet_config = _companion_config(path, "unet") or unet_config_from_shapes(shapes["unet"], variant.unet_family, path)
    unet_weights = convert_unet(_prefixed(read_part(path, "unet", loaded, dtype), "unet"), unet_config, path)
    model = build_unet(unet_config, unet_weights, path, schedule, variant, device=device, dtype=dtype)
    del unet_weights  # on a GPU load, the UNet's file pages go before the VAE's are read

    vae_config = _companion_config(path, "vae") or vae_config_from_shapes(shapes["vae"], path)
    vae_weights = convert_vae(read_part(path, "vae", loaded, vae_dtype or dtype), vae_config, path)
    vae = build_vae(vae_config, vae_weights, path, device=device, dtype=vae_dtype or dtype)
    return assemble(text_encoder, model, vae, path, started, format="single file", tokenizer=str(tokenizer.model_file.parent))


def _prefixed(part: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Keys with their LDM prefix back: diffusers' UNet converter selects keys by ``model.diffusion_model.``."""
    return {PREFIXES[name] + k: v for k, v in part.items()}


def tokenizer_folders(roots: Iterable[Path]) -> Iterator[Path]:
    """Tokenizer folders under model roots, for ``load_checkpoint`` (lazily): each root's ``tokenizer/``, then the
    ``tokenizer/`` of every AltDiffusion diffusers folder directly in it."""
    for root in map(Path, roots):
        yield root / "tokenizer"
        if root.is_dir():
            for index in sorted(root.glob("*/model_index.json")):
                if is_altdiffusion_folder(index.parent):
                    yield index.parent / "tokenizer"
