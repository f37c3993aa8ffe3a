"""Security posture and determinism: no network unless a Hub id is picked, bit-identical results across processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

GENERATE = """
import hashlib, runpy, sys, torch
runpy.run_path("__main__.py", run_name="bootstrap")["load_pack"]()
import comfyui_altdiffusion.altdiff_core as core
loaded = core.load_folder(sys.argv[1])
cond, _ = core.encode_prompt(loaded.text_encoder, "(一只猫:1.2), watercolor")
neg, _ = core.encode_prompt(loaded.text_encoder, "")
latent = core.sample_latent(loaded.model, cond, neg, torch.zeros(1, 4, 8, 8), seed=123, steps=3,
                            cfg=7.5, sampler_name="dpmpp_2m", scheduler="karras")
image = core.decode_latent(loaded.vae, latent)
print(hashlib.sha256(latent.numpy().tobytes() + image.numpy().tobytes()).hexdigest())
"""

NO_NETWORK = """
import socket
def refuse(*args, **kwargs):
    raise RuntimeError(f"network access attempted: {args[:2]}")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
"""


def run_script(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment
    )


def test_no_network_at_import_or_when_loading_a_local_model(m9_folder):
    """Import, load, encode, sample and decode a local folder with every socket connection refused (and the Hub's
    offline switch NOT set, so nothing is hiding a download attempt)."""
    result = run_script(NO_NETWORK + GENERATE, str(m9_folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "network access attempted" not in result.stderr


def test_same_inputs_give_bit_identical_outputs_across_processes(m9_folder, pack):
    first = run_script(GENERATE, str(m9_folder))
    second = run_script(GENERATE, str(m9_folder))
    assert first.returncode == second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    assert first.stdout.strip() == second.stdout.strip()
    # … and in this process too (a long-lived process, other tests have run before).
    core = pack.altdiff_core
    loaded = core.load_folder(m9_folder)
    cond, _ = core.encode_prompt(loaded.text_encoder, "(一只猫:1.2), watercolor")
    neg, _ = core.encode_prompt(loaded.text_encoder, "")
    latent = core.sample_latent(
        loaded.model,
        cond,
        neg,
        torch.zeros(1, 4, 8, 8),
        seed=123,
        steps=3,
        cfg=7.5,
        sampler_name="dpmpp_2m",
        scheduler="karras",
    )
    image = core.decode_latent(loaded.vae, latent)
    digest = hashlib.sha256(latent.numpy().tobytes() + image.numpy().tobytes()).hexdigest()
    assert digest == first.stdout.strip()


def test_hub_is_only_contacted_for_a_hub_id(m9_folder, tmp_path):
    """The command line with a local folder never touches the network; with a Hub id it asks the Hub (refused here,
    so it says which folder to fill)."""
    local = run_script(
        NO_NETWORK
        + textwrap.dedent("""
        import runpy, sys
        sys.argv = ["python .", "--model", sys.argv[1], "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64",
                    "--output", sys.argv[2]]
        runpy.run_path("__main__.py", run_name="__main__")
    """),
        str(m9_folder),
        str(tmp_path / "a.png"),
    )
    assert local.returncode == 0, local.stderr[-2000:]
    hub = run_script(
        NO_NETWORK
        + textwrap.dedent("""
        import runpy, sys
        import huggingface_hub
        def contacted(*args, **kwargs):
            print("HUB CONTACTED", args, file=sys.stderr)
            raise ConnectionRefusedError("no network in this test")
        huggingface_hub.list_repo_files = huggingface_hub.snapshot_download = contacted
        huggingface_hub.get_hf_file_metadata = contacted  # the first request: is the Hub reachable at all
        sys.argv = ["python .", "--model", "BAAI/AltDiffusion-m18", "--prompt", "x", "--output", sys.argv[1]]
        runpy.run_path("__main__.py", run_name="__main__")
    """),
        str(tmp_path / "b.png"),
        env={"HF_HUB_DISABLE_TELEMETRY": "1"},
    )
    assert hub.returncode == 2
    assert "HUB CONTACTED ('https://huggingface.co/BAAI/AltDiffusion-m18/resolve/main/model_index.json',)" in hub.stderr
    assert "cannot download BAAI/AltDiffusion-m18" in hub.stderr and "Traceback" not in hub.stderr
