"""Model names → the folder or file each means, and the names to offer: one resolver for every front end.

| a name                                                      | means                                                        |
|-------------------------------------------------------------|--------------------------------------------------------------|
| ``sub/folder`` holding ``model_index.json``, under a model  | that AltDiffusion diffusers folder                           |
| root                                                        |                                                              |
| ``sub/file.safetensors`` (or ``.ckpt``) under a checkpoint  | that single-file checkpoint                                  |
| root                                                        |                                                              |
| a variant's Hub id (``hub.hub_models``:                     | ``<root>/<name>`` holding ``model_index.json`` under any     |
| ``BAAI/AltDiffusion-m9``)                                   | root, else downloaded into ``<downloads>/<name>`` first      |
| with ``any_path`` (the command line): any existing path     | itself                                                       |

The first row that matches wins, in this order (an existing path first). Names under the roots never leave them
(absolute paths, drives and ``..`` are refused), so a workflow can name only the models its server offers. The roots are
the front end's (``ModelFolders``): ComfyUI's model folders for the nodes, the pack's own ``models/altdiffusion``
elsewhere (``nodes.comfy_seam``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import hub
from .errors import ModelNotFoundError
from .loading import is_altdiffusion_folder
from .single_file import CHECKPOINT_SUFFIXES, is_altdiffusion_checkpoint, tokenizer_folders


@dataclass(frozen=True)
class ModelFolders:
    """Where a front end keeps models, each tuple in search order."""

    models: tuple[Path, ...]
    """Roots whose subfolders (one or two levels down) are diffusers folders: ``models/diffusers``, …"""
    checkpoints: tuple[Path, ...]
    """Roots searched, recursively, for single-file checkpoints: ``models/checkpoints``, …"""
    downloads: Path
    """Where a Hub id is downloaded, as ``<downloads>/<name>``."""

    def roots(self) -> list[Path]:
        """Every root, once, model roots first."""
        return list(dict.fromkeys([*map(Path, self.models), *map(Path, self.checkpoints)]))

    def tokenizer_folders(self) -> Iterator[Path]:
        """Where a single file's tokenizer may be besides its own places (``single_file.tokenizer_folders``), lazily."""
        return tokenizer_folders(self.roots())


def _folder_names(roots: tuple[Path, ...]) -> Iterator[str]:
    for root in map(Path, roots):
        if root.is_dir():
            for index in sorted(root.glob("*/model_index.json")) + sorted(root.glob("*/*/model_index.json")):
                if is_altdiffusion_folder(index.parent):
                    yield index.parent.relative_to(root).as_posix()


def _checkpoint_names(roots: tuple[Path, ...]) -> Iterator[str]:
    """Checkpoint files under the roots (recursively, skipping diffusers folders) whose keys name XLM-R."""
    for root in map(Path, roots):
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            if "model_index.json" in filenames:  # a diffusers folder: listed by _folder_names, its parts are not models
                dirnames.clear()
                continue
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.suffix in CHECKPOINT_SUFFIXES and is_altdiffusion_checkpoint(path):
                    yield path.relative_to(root).as_posix()


def list_model_names(folders: ModelFolders) -> list[str]:
    """Names (relative paths with '/') of the AltDiffusion folders under the model roots, then of the AltDiffusion
    single-file checkpoints under the checkpoint roots (first root wins), then the Hub ids (``hub.hub_models``), offered
    always: a workflow naming one runs on any machine, which downloads the model once. Never touches the network."""
    return list(dict.fromkeys([*_folder_names(folders.models), *_checkpoint_names(folders.checkpoints), *hub.hub_models()]))


def resolve_model_name(
    name: str,
    folders: ModelFolders,
    *,
    download: bool = True,
    progress: hub.ProgressFactory | None = None,
    any_path: bool = False,
) -> Path:
    """The folder or checkpoint file ``name`` means (the module's table); absolute, except an existing path given
    with ``any_path``, which is returned as given.

    Args:
        name: a listed name (``list_model_names``), a Hub id, or (``any_path``) a path.
        folders: where the front end keeps models.
        download: whether a Hub id not found locally is downloaded (``hub.resolve``, with ``progress``); without,
            ModelNotFoundError, and no network.
        progress: the download's progress bar (``hub.download``).
        any_path: take an existing path as it is (the command line); the nodes offer only listed names.

    Raises:
        ModelNotFoundError: nothing by that name (naming the folders searched and the Hub ids known), a name leaving
            the model folders, a Hub id not downloaded (``download`` False) or whose download failed.
        ModelFormatError: the Hub repository does not hold an AltDiffusion diffusers folder.
    """
    if any_path and Path(name).expanduser().exists():
        return Path(name).expanduser()
    relative = Path(name)
    safe = bool(name) and not (relative.is_absolute() or relative.drive or ".." in relative.parts)
    if safe:
        for root in map(Path, folders.models):
            if (root / relative / "model_index.json").is_file():
                return (root / relative).resolve()
        for root in map(Path, folders.checkpoints):
            if relative.suffix in CHECKPOINT_SUFFIXES and (root / relative).is_file():
                return (root / relative).resolve()
    roots = ", ".join(str(root) for root in folders.roots())
    if safe and name in hub.hub_models():
        if download:
            return hub.resolve(name, folders.models, folders.downloads, progress).resolve()
        found = hub.find_local(name, [*folders.models, folders.downloads])
        if found is not None:
            return found.resolve()
        raise ModelNotFoundError(f"model {name!r} is not downloaded yet (no {hub.local_folder_for(name, folders.downloads)}).")
    if safe and len(relative.parts) == 2 and relative.suffix not in CHECKPOINT_SUFFIXES:  # owner/name: a Hub id?
        raise ModelNotFoundError(hub.unknown_id_message(name, roots))
    path = "an existing path nor " if any_path else ""
    raise ModelNotFoundError(
        f"model {name!r} is not {path}an AltDiffusion folder under the model folders nor a checkpoint file in them "
        f"({roots}). Put the model's diffusers folder (with model_index.json) or its .safetensors file there."
    )
