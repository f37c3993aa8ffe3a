"""Where a model comes from → the loader for it: one table, so a new kind of source is one row.

| source                                   | loader                            |
|------------------------------------------|-----------------------------------|
| a folder (``model_index.json`` inside)   | ``loading.load_folder``           |
| a ``.safetensors`` / ``.ckpt`` file      | ``single_file.load_checkpoint``   |

A Hub id (``BAAI/AltDiffusion-m9``) is turned into a local folder before it gets here (``hub.download``); a row for it
would go in ``SOURCE_KINDS`` once ids are resolved inside the loader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .components import LoadedModel
from .errors import ModelNotFoundError
from .loading import load_folder
from .single_file import load_checkpoint


def _folder(path: Path, tokenizer_folders: Iterable[Path], **kwargs) -> LoadedModel:
    return load_folder(path, **kwargs)  # a folder has its own tokenizer/


def _checkpoint(path: Path, tokenizer_folders: Iterable[Path], **kwargs) -> LoadedModel:
    return load_checkpoint(path, tokenizer_folders=tokenizer_folders, **kwargs)


SOURCE_KINDS: list[tuple[str, Callable[[Path], bool], Callable[..., LoadedModel]]] = [
    ("diffusers folder", Path.is_dir, _folder),
    ("single-file checkpoint", Path.is_file, _checkpoint),
]
"""(kind, test on the path, loader) in order; the first whose test passes loads."""


def load_model(
    source: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype | None = None,
    tokenizer_folders: Iterable[Path] = (),
) -> LoadedModel:
    """Load an AltDiffusion model from a diffusers folder or a single-file checkpoint.

    Args:
        source: the folder or the file.
        device: where the modules run.
        dtype: dtype of the text encoder and UNet.
        vae_dtype: dtype of the VAE; None = ``dtype``.
        tokenizer_folders: where else a single file's tokenizer may be (``single_file.find_tokenizer``).

    Raises:
        ModelNotFoundError, NotAltDiffusionError, ModelFormatError: naming the path and the fix.
    """
    source = Path(source)
    for _kind, matches, loader in SOURCE_KINDS:
        if matches(source):
            return loader(source, tokenizer_folders, device=device, dtype=dtype, vae_dtype=vae_dtype)
    raise ModelNotFoundError(
        f"{source} does not exist. Give a diffusers folder (with model_index.json) or a .safetensors/.ckpt checkpoint."
    )
