"""Shared fixtures: the pack imported as ComfyUI imports it, and tiny random models in the real BAAI layouts.

Heavy fixtures are session-scoped: each model folder is written once per test run.
"""

from __future__ import annotations

import runpy
import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from comfy_server import ComfyServer  # noqa: E402
from factories import write_altdiffusion_folder, write_component_file, write_sd_clip_folder  # noqa: E402

SERVER_MODEL_FOLDERS = ("altdiffusion", "diffusion_models", "vae", "loras", "controlnet", "checkpoints", "embeddings")
"""Model folder types the test server reads from ``comfy_models/<type>`` (tests may add files to them while it runs:
ComfyUI lists a folder again when it changed)."""
PARITY_UNET_FILE = "altdiffusion_m9_unet.safetensors"
"""Full-size SD1 UNet (random, seed 0) in ``diffusion_models/``, for UNETLoader."""
PARITY_MODEL = "AltDiffusion-m9-fullunet"
"""AltDiffusion folder under ``altdiffusion/`` whose UNet weights are ``PARITY_UNET_FILE``'s."""

# The repository folder is a package whose name may contain '-': import it the way ComfyUI and `python .` do.
runpy.run_path(str(ROOT / "__main__.py"), run_name="altdiffusion_bootstrap")["load_pack"](ROOT)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: full-size UNet sweeps too slow for CI (hours on 2 cores); deselected unless -m selects them"
    )


def pytest_collection_modifyitems(config, items):
    """Leave ``slow`` tests out unless the ``-m`` expression names them (``-m slow``, ``-m "slow and comfyui"``)."""
    if "slow" in (config.option.markexpr or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def pack():
    """The pack package (``comfyui_altdiffusion``): ``pack.nodes``, ``pack.altdiff_core``."""
    return sys.modules["comfyui_altdiffusion"]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def m9_folder(models_dir) -> Path:
    """Tiny m9: safetensors weights, tokenizer declaring 512 tokens."""
    return write_altdiffusion_folder(models_dir / "AltDiffusion-m9-tiny", "m9", weights="safetensors", seed=0)


@pytest.fixture(scope="session")
def m9_bin_folder(models_dir) -> Path:
    """The same weights as ``m9_folder`` as pickled .bin files with pre-0.14 VAE attention names."""
    return write_altdiffusion_folder(models_dir / "AltDiffusion-m9-tiny-bin", "m9", weights="bin", seed=0)


@pytest.fixture(scope="session")
def m18_folder(models_dir) -> Path:
    return write_altdiffusion_folder(models_dir / "AltDiffusion-m18-tiny", "m18", weights="safetensors", seed=1)


@pytest.fixture(scope="session")
def sd_clip_folder(models_dir) -> Path:
    """A Stable Diffusion folder whose text encoder is CLIP: not AltDiffusion."""
    return write_sd_clip_folder(models_dir / "sd15-clip-tiny")


@pytest.fixture(scope="module")
def core(pack):
    """The engine package (``comfyui_altdiffusion.altdiff_core``)."""
    return pack.altdiff_core


@pytest.fixture(scope="module")
def m9(core, m9_folder):
    """The tiny m9 loaded (fp32, CPU); one per test module, so a module that changes it affects no other."""
    return core.load_folder(m9_folder)


@pytest.fixture(scope="module")
def m18(core, m18_folder):
    """The tiny m18 loaded (fp32, CPU); one per test module."""
    return core.load_folder(m18_folder)


@pytest.fixture(scope="session")
def comfy_models(tmp_path_factory) -> Path:
    """Model folders for the real ComfyUI, as a user lays them out.

    ``altdiffusion/AltDiffusion-m9`` and ``-m18`` (tiny; the names the shipped workflows use), and full-size files that
    ComfyUI's own loaders recognise by shape: an SD1 UNet in ``diffusion_models/`` (for UNETLoader + KSampler, ~1 min
    to build) and an SD VAE in ``vae/``. ``altdiffusion/AltDiffusion-m9-fullunet`` has that same UNet file (a hard
    link, fp16 on disk like the single file; both sides compute in fp32 on the CPU) with the tiny text encoder and
    VAE, so that our sampler and KSampler run the same weights (``test_ksampler_parity.py``).
    """
    base = tmp_path_factory.mktemp("comfy_models")
    write_altdiffusion_folder(base / "altdiffusion" / "AltDiffusion-m9", "m9", seed=0)
    write_altdiffusion_folder(base / "altdiffusion" / "AltDiffusion-m18", "m18", seed=1)
    (base / "diffusion_models").mkdir()
    (base / "vae").mkdir()
    unet = write_component_file(base / "diffusion_models" / PARITY_UNET_FILE, "unet", family="sd1", seed=0)
    write_altdiffusion_folder(base / "altdiffusion" / PARITY_MODEL, "m9", seed=0, unet_size="full", unet_file=unet)
    write_component_file(base / "vae" / "sd_vae.safetensors", "vae")
    return base


@pytest.fixture(scope="session")
def parity_models() -> dict[str, str]:
    """Names, as ComfyUI lists them, of the one UNet both samplers load: ``model`` for AltDiffusionLoader, ``unet`` for
    UNETLoader (``test_ksampler_parity.py``)."""
    return {"model": PARITY_MODEL, "unet": PARITY_UNET_FILE}


@pytest.fixture(scope="session")
def comfy(comfy_models, tmp_path_factory):
    """A real ComfyUI 0.3.75 server (CPU) with this pack in custom_nodes and the test models on its paths, plus the
    test-only nodes of ``comfy_test_nodes/`` (``TestModelInOtherOrder``, the parity tests' rounding yardstick).

    Started with ``--preview-method latent2rgb`` (ComfyUI's default is none), so both KSampler and our samplers send
    preview frames, as they do for a user who turned previews on; a 64×64 preview costs next to nothing.
    """
    paths = {name: [comfy_models / name] for name in SERVER_MODEL_FOLDERS}
    for name in SERVER_MODEL_FOLDERS:
        (comfy_models / name).mkdir(exist_ok=True)
    args = ("--preview-method", "latent2rgb")
    work = tmp_path_factory.mktemp("comfyui")
    (work / "custom_nodes").mkdir()
    shutil.copy(TESTS / "comfy_test_nodes" / "altdiffusion_test_nodes.py", work / "custom_nodes")
    with ComfyServer(ROOT, work, model_paths=paths, extra_args=args) as server:
        yield server
