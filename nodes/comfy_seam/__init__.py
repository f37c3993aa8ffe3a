"""The one package of the pack that touches ComfyUI (``comfy.*``, ``folder_paths``, ``latent_preview``).

Inside ComfyUI it uses ComfyUI's device choice, progress bar (which also checks the cancel button), latent
previews and model folders, and hands the model over as ComfyUI's own MODEL, CLIP and VAE (``native``), which
ComfyUI's sampler, memory manager and LoRA patching then run. Without ComfyUI (the command line, the engine tests) it
falls back to plain torch, a tqdm bar and the pack's own ``models/altdiffusion`` folder. Nothing else in the pack
imports ComfyUI.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...altdiff_core import LoadedModel

try:  # inside a ComfyUI server
    import comfy.latent_formats
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils
    import folder_paths
    import latent_preview

    IN_COMFYUI = True
except ImportError:  # a plain Python process: the CLI or the tests
    IN_COMFYUI = False

if IN_COMFYUI:
    from . import lora_names, native, native_ops  # noqa: F401 - native_ops is used by the nodes as comfy_seam.native_ops

    lora_names.install()

logger = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER = "altdiffusion"
"""Model folder type the pack registers in ComfyUI (``models/altdiffusion``; ``extra_model_paths.yaml`` may add more)."""

if IN_COMFYUI:
    folder_paths.add_model_folder_path(PACK_FOLDER, str(Path(folder_paths.models_dir) / PACK_FOLDER))


def torch_device() -> torch.device:
    """Where models run: ComfyUI's choice inside ComfyUI, else CUDA when present, else the CPU."""
    if IN_COMFYUI:
        return comfy.model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_device() -> torch.device:
    """Where the loader puts the weights: inside ComfyUI its offload device (normally the CPU; the memory manager
    moves each part to the GPU when a node needs it), else ``torch_device()`` directly."""
    if IN_COMFYUI:
        return comfy.model_management.unet_offload_device()
    return torch_device()


def native_parts(loaded: LoadedModel) -> tuple:
    """Inside ComfyUI: ``loaded`` as ComfyUI's own (MODEL, CLIP, VAE) (``native.native_parts``); the engine's modules
    can then be dropped. Outside ComfyUI there is nothing to hand over to: RuntimeError."""
    if not IN_COMFYUI:
        raise RuntimeError("ComfyUI's MODEL/CLIP/VAE exist only inside a ComfyUI server; use the engine's parts here.")
    return native.native_parts(loaded)


def on_unload_all(callback: Callable[[], None]) -> None:
    """Inside ComfyUI: run ``callback`` whenever ComfyUI unloads all models (the "Unload Models" button, ``POST /free``
    with ``unload_models``), after ComfyUI's own unloading, so a cache the pack keeps lets go of the models too.
    Elsewhere: nothing to hook. One wrapper per callback, however often this is called."""
    if not IN_COMFYUI:
        return
    original = comfy.model_management.unload_all_models
    if callback in getattr(original, "_altdiffusion_callbacks", ()):
        return

    def unload_all_models(*args, **kwargs):
        result = original(*args, **kwargs)
        callback()
        return result

    unload_all_models._altdiffusion_callbacks = (*getattr(original, "_altdiffusion_callbacks", ()), callback)
    comfy.model_management.unload_all_models = unload_all_models


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


def download_progress(total_bytes: int, description: str) -> DownloadBar:
    """The progress of a Hub download of ``total_bytes`` (``hub.download``'s ``progress``); use it as a context manager.

    Inside ComfyUI: ComfyUI's ProgressBar on the running node, counting bytes (its updates also raise when the user
    presses cancel, which stops the download there). Elsewhere: a terminal tqdm bar.
    """
    return DownloadBar(total_bytes, description)


class DownloadBar:
    """One bar for a whole download. ``tqdm_class`` goes to huggingface_hub: each per-file bar it makes is silent and
    adds its bytes here; ``advance_to(done_bytes)`` sets the bar after each file (also counting files that were already
    downloaded and so made no bar)."""

    def __init__(self, total_bytes: int, description: str):
        self._lock = threading.Lock()
        self._done = 0
        if IN_COMFYUI:
            self._bar = comfy.utils.ProgressBar(max(total_bytes, 1))
            # hf_xet reports from its own threads, which lack the context ComfyUI reads the running node from.
            self._context = contextvars.copy_context()
        else:
            self._bar = tqdm(total=total_bytes, desc=description, unit="B", unit_scale=True, unit_divisor=1024)
        add = self._add

        class FileBar(tqdm):
            def __init__(self, *args, **kwargs):
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)
                add(kwargs.get("initial") or 0)  # bytes of a resumed file that an earlier run downloaded

            def update(self, n=1):
                add(n or 0)  # negative when huggingface_hub restarts a file

            def update_transfer(self, n=1):
                """Network bytes (hf_xet); the bar counts the bytes written, which ``update`` gets. Defining this
                makes huggingface_hub make one bar per file instead of two."""

            def set_transfer_postfix_str(self, *args, **kwargs):
                pass

        self.tqdm_class = FileBar

    def advance_to(self, done_bytes: int) -> None:
        with self._lock:
            self._move(done_bytes)

    def _add(self, n: int) -> None:
        with self._lock:
            self._move(self._done + n)

    def _move(self, done: int) -> None:
        self._done = done
        if IN_COMFYUI:
            self._context.run(self._bar.update_absolute, done)
        else:
            self._bar.update(done - self._bar.n)

    def __enter__(self) -> DownloadBar:
        return self

    def __exit__(self, *exc_info) -> None:
        if not IN_COMFYUI:
            self._bar.close()


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

    bar = tqdm(total=total, desc="AltDiffusion sampling", unit="step", leave=False)

    def callback(step: int, steps: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        bar.update(step + 1 - bar.n)
        if step + 1 >= steps:
            bar.close()

    return callback
