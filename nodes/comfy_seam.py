"""The one module of the pack that touches ComfyUI (``comfy.*``, ``folder_paths``, ``latent_preview``).

Inside ComfyUI it uses ComfyUI's device choice, progress bar (which also checks the cancel button), latent
previews and model folders. Without ComfyUI (the command line, the engine tests) it falls back to plain
torch, a tqdm bar and the pack's own ``models/altdiffusion`` folder. Nothing else in the pack imports ComfyUI.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..altdiff_core.components import VAE, DiffusionModel, LoadedModel, TextEncoder

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


def load_device() -> torch.device:
    """Where the loader puts the weights: inside ComfyUI its offload device (normally the CPU; the memory manager
    moves each part to the GPU when a node needs it), else ``torch_device()`` directly."""
    if IN_COMFYUI:
        return comfy.model_management.unet_offload_device()
    return torch_device()


def manage(loaded: LoadedModel) -> LoadedModel:
    """Inside ComfyUI: give the text encoder, UNet and VAE each a ``ModelPatcher`` (in ``handle``), so ComfyUI's
    memory manager loads them to the GPU on use and can offload them when other models need the memory. Elsewhere:
    unchanged (plain device placement)."""
    if IN_COMFYUI:
        run_on, park_on = torch_device(), comfy.model_management.unet_offload_device()
        for part, module in _parts(loaded):
            part.handle = comfy.model_patcher.ModelPatcher(module, load_device=run_on, offload_device=park_on)
    return loaded


class Managed(torch.nn.Module):
    """What a ModelPatcher holds: the module as its one child. ModelPatcher writes bookkeeping attributes onto the
    model it manages (``device``, ``model_lowvram``, …), which a diffusers model refuses (its ``device`` is a
    read-only property); the wrapper takes them, and moving it moves the module."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module


class AltDiffusionTextEncoder(Managed):
    """The XLM-R text encoder, as ComfyUI's memory manager names it in its log."""


class AltDiffusionUNet(Managed):
    """The UNet, as ComfyUI's memory manager names it in its log."""


class AltDiffusionVAE(Managed):
    """The VAE, as ComfyUI's memory manager names it in its log."""


def _parts(loaded: LoadedModel) -> list[tuple[TextEncoder | DiffusionModel | VAE, torch.nn.Module]]:
    """(part, its module wrapped for the ModelPatcher); the wrapper's class name is what ComfyUI's log shows."""
    return [
        (loaded.text_encoder, AltDiffusionTextEncoder(loaded.text_encoder.module)),
        (loaded.model, AltDiffusionUNet(loaded.model.unet)),
        (loaded.vae, AltDiffusionVAE(loaded.vae.module)),
    ]


def use(part: TextEncoder | DiffusionModel | VAE, memory_required: int = 0) -> None:
    """Make ``part`` ready to run: through ComfyUI's ``load_models_gpu`` when it has a ModelPatcher (which may
    offload other models to make room), and record where its module now is in ``part.device``.

    The modules are plain torch (diffusers) modules, not ComfyUI's cast-on-the-fly ops, so they must be loaded whole
    (``force_full_load``); where ComfyUI still loads only part of one (``--novram``), the rest is moved too.
    """
    patcher = part.handle
    if patcher is None:
        return
    comfy.model_management.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
    module = patcher.model
    target = patcher.load_device
    if any(t.device != target for t in (*module.parameters(), *module.buffers())):
        logger.warning("%s was only partly loaded to %s; moving all of it there", type(module).__name__, target)
        module.to(target)
    part.device = target
    if isinstance(part, DiffusionModel):
        part.schedule = part.schedule.to(target)  # with the UNet, as ComfyUI's model_sampling (schedules.to)


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
