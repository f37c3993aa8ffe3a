"""The one module of the pack that touches ComfyUI (``comfy.*``, ``folder_paths``, ``latent_preview``).

Inside ComfyUI it uses ComfyUI's device choice, progress bar (which also checks the cancel button), latent
previews and model folders. Without ComfyUI (the command line, the engine tests) it falls back to plain
torch, a tqdm bar and the pack's own ``models/altdiffusion`` folder. Nothing else in the pack imports ComfyUI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

try:  # inside a ComfyUI server
    import comfy.latent_formats
    import comfy.model_management
    import comfy.utils
    import folder_paths
    import latent_preview

    IN_COMFYUI = True
except ImportError:  # a plain Python process: the CLI or the tests
    IN_COMFYUI = False

logger = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER = "altdiffusion"
"""Model folder type the pack registers in ComfyUI (``models/altdiffusion``; ``extra_model_paths.yaml`` may add more)."""

if IN_COMFYUI:
    folder_paths.add_model_folder_path(PACK_FOLDER, str(Path(folder_paths.models_dir) / PACK_FOLDER))


def torch_device() -> torch.device:
    """Where models run: ComfyUI's choice inside ComfyUI, else CUDA when present, else the CPU."""
    if IN_COMFYUI:
        return comfy.model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_roots() -> list[Path]:
    """Folders whose subfolders may hold AltDiffusion diffusers models, in search order."""
    if IN_COMFYUI:
        names = [n for n in (PACK_FOLDER, "diffusers") if n in folder_paths.folder_names_and_paths]
        return [Path(p) for n in names for p in folder_paths.get_folder_paths(n)]
    return [PACK_ROOT / "models" / PACK_FOLDER]


def checkpoint_roots() -> list[Path]:
    """Folders (searched recursively) that may hold single-file AltDiffusion checkpoints, in search order:
    ComfyUI's ``models/checkpoints`` (where A1111 users put them), then ``models/altdiffusion``."""
    if IN_COMFYUI:
        names = [n for n in ("checkpoints", PACK_FOLDER) if n in folder_paths.folder_names_and_paths]
        return [Path(p) for n in names for p in folder_paths.get_folder_paths(n)]
    return [PACK_ROOT / "models" / PACK_FOLDER]


def hub_download_dir() -> Path:
    """Where a Hub model is downloaded: ComfyUI's ``models/diffusers``, or the pack's ``models/altdiffusion``."""
    if IN_COMFYUI:
        return Path(folder_paths.get_folder_paths("diffusers")[0])
    return PACK_ROOT / "models" / PACK_FOLDER


def step_callback(total: int, device: torch.device) -> Callable[[int, int, torch.Tensor, torch.Tensor], None]:
    """A sampler callback: progress bar, cancel check and (in ComfyUI, when enabled) latent previews.

    In ComfyUI every ``ProgressBar`` update runs the server's hook, which raises
    ``InterruptProcessingException`` when the user pressed cancel; we also check explicitly so cancel works
    even with progress hooks replaced.
    """
    if IN_COMFYUI:
        previewer = latent_preview.get_previewer(device, comfy.latent_formats.SD15())
        bar = comfy.utils.ProgressBar(total)

        def callback(step: int, steps: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            preview = previewer.decode_latent_to_preview_image("JPEG", denoised) if previewer else None
            bar.update_absolute(step + 1, steps, preview)

        return callback

    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="AltDiffusion sampling", unit="step", leave=False)

    def callback(step: int, steps: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        bar.update(step + 1 - bar.n)
        if step + 1 >= steps:
            bar.close()

    return callback
