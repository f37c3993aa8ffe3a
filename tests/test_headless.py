"""The engine and the command line work with ComfyUI absent (``python .`` from the pack folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COMFY_MODULES = ("comfy", "comfy_extras", "folder_paths", "latent_preview", "server", "execution", "comfy_execution")


def run(args, **env):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)


def test_engine_imports_and_generates_without_comfyui(m9_folder):
    script = textwrap.dedent(
        f"""
        import runpy, sys, torch
        runpy.run_path("__main__.py", run_name="bootstrap")["load_pack"]()
        import comfyui_altdiffusion.altdiff_core as core
        from comfyui_altdiffusion.nodes import comfy_seam
        loaded = core.load_folder({str(m9_folder)!r})
        cond, _ = core.encode_prompt(loaded.text_encoder, "一只猫")
        latent = core.sample_latent(loaded.model, cond, cond, torch.zeros(1, 4, 8, 8), seed=1,
                                    steps=2, cfg=7.5, sampler_name="euler", scheduler="normal")
        image = core.decode_latent(loaded.vae, latent)
        assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
        assert not comfy_seam.IN_COMFYUI
        loaded_comfy = sorted(m for m in sys.modules if m.split(".")[0] in {COMFY_MODULES!r})
        assert not loaded_comfy, loaded_comfy
        print("OK")
        """
    )
    result = run([sys.executable, "-c", script])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_cli_txt2img(m9_folder, tmp_path):
    out = tmp_path / "cat.png"
    result = run([sys.executable, ".", "--model", str(m9_folder), "--prompt", "一只戴着帽子的猫", "--steps", "2",
                  "--width", "64", "--height", "48", "--seed", "3", "--output", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(out) as img:
        assert img.size == (64, 48) and img.mode == "RGB"
        assert np.asarray(img).std() > 0
    assert result.stderr.count("AltDiffusion-m9 (diffusers folder) from") == 1  # the loader's report, logged once
    # the terminal progress bar (tqdm rate-limits redraws, so which counts appear varies; its total is fixed)
    assert "AltDiffusion sampling" in result.stderr and "/2 [" in result.stderr


def test_cli_img2img_crops_like_vaeencode(m9_folder, tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(init)
    out = tmp_path / "out.png"
    result = run([sys.executable, ".", "--model", str(m9_folder), "--prompt", "un gato", "--steps", "3",
                  "--init-image", str(init), "--denoise", "0.5", "--sampler", "dpmpp_2m", "--output", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(out) as img:
        assert img.size == (64, 48)


def test_cli_offline_hub_id_names_the_folder_to_fill():
    result = run([sys.executable, ".", "--model", "BAAI/AltDiffusion-m9", "--prompt", "x"])
    assert result.returncode == 2
    assert "cannot download BAAI/AltDiffusion-m9" in result.stderr
    assert str(Path("models") / "altdiffusion" / "AltDiffusion-m9") in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_a_stable_diffusion_folder(sd_clip_folder):
    result = run([sys.executable, ".", "--model", str(sd_clip_folder), "--prompt", "x"])
    assert result.returncode == 2
    assert "not AltDiffusion" in result.stderr and "Traceback" not in result.stderr
