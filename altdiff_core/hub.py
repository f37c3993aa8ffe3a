"""Hub ids → local folders: download only what the pack loads, into a folder the user can see.

Nothing here runs unless the user asks for a Hub id (``BAAI/AltDiffusion-m9``); local folders never touch
the network.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import ModelNotFoundError

logger = logging.getLogger(__name__)

HUB_MODELS = ("BAAI/AltDiffusion", "BAAI/AltDiffusion-m9", "BAAI/AltDiffusion-m18")
NEEDED_FILES = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
]
WEIGHT_PATTERNS = {
    "safetensors": ["text_encoder/*.safetensors", "unet/*.safetensors", "vae/*.safetensors"],
    "bin": ["text_encoder/*.bin", "unet/*.bin", "vae/*.bin"],
}


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` with no local meaning (not an existing path, not absolute or relative)."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~")) and not Path(text).exists()


def local_folder_for(repo_id: str, models_dir: Path) -> Path:
    """Where a Hub model lives locally: ``models_dir/<name>`` (e.g. ``models/diffusers/AltDiffusion-m9``)."""
    return Path(models_dir) / repo_id.split("/")[-1]


def download(repo_id: str, models_dir: Path) -> Path:
    """Download ``repo_id``'s configs, tokenizer and weights (safetensors when the repo has them, else .bin;
    never the safety checker) into ``local_folder_for(repo_id, models_dir)``; returns that folder.

    Raises:
        ModelNotFoundError: offline, unknown id, or the download failed — naming the folder to fill by hand.
    """
    target = local_folder_for(repo_id, models_dir)
    if (target / "model_index.json").is_file():
        return target
    try:
        from huggingface_hub import list_repo_files, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        files = list_repo_files(repo_id)
        kind = "safetensors" if any(f.startswith("unet/") and f.endswith(".safetensors") for f in files) else "bin"
        logger.info("downloading %s (%s weights) into %s", repo_id, kind, target)
        snapshot_download(repo_id, local_dir=str(target), allow_patterns=NEEDED_FILES + WEIGHT_PATTERNS[kind])
    except ImportError as err:
        raise ModelNotFoundError(_offline_message(repo_id, target, "huggingface_hub is not installed")) from err
    except (OSError, ValueError, HfHubHTTPError, OfflineModeIsEnabled) as err:
        raise ModelNotFoundError(_offline_message(repo_id, target, f"{type(err).__name__}: {err}")) from err
    return target


def _offline_message(repo_id: str, target: Path, why: str) -> str:
    return (
        f"cannot download {repo_id} ({why}). Put the model's files in {target} by hand: model_index.json and the "
        "folders text_encoder/, tokenizer/, unet/, vae/ and scheduler/ from the repository's page; then pick that folder."
    )
