"""ComfyUI's CheckpointSave on the AltDiffusion Checkpoint Loader's MODEL/CLIP/VAE writes an A1111 AltDiffusion file.

In a real server, ``AltDiffusionCheckpointLoader`` (fp32) → ``CheckpointSave`` writes one ``.safetensors``; the pytest
process then reads it with the pack's engine (``altdiff_core.load_checkpoint``), without ComfyUI, and compares every
UNet, text-encoder and VAE weight with the source diffusers folder's (``altdiff_core.load_folder``): nothing may be
lost, renamed or rounded (max abs 0). The layout must be A1111's AltDiffusion one (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.roberta.*`` + the head), never an SD 1.x checkpoint's
``cond_stage_model.transformer.*`` (which every AltDiffusion loader, A1111's included, would take for CLIP).

A single file carries neither tokenizer nor configs. The tokenizer comes from the source folder (``tokenizer_folders``,
as the loader node searches model folders); the configs of these tiny models can't be inferred from shapes (only the
real sizes can), so the source's ``config.json`` files are put in the checkpoint's companion folder, as users of a
non-standard model do (``single_file`` docstring).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.comfyui

LAYOUT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
TEXT_PARTS = {
    "m9": ("roberta.", "transformation."),
    "m18": ("roberta.", "pre_LN.", "transformation_pre."),
}
"""What each variant's text encoder is in the file, after ``cond_stage_model.``: XLM-R and the head it computes with."""
CONTEXT_DIM = {"m9": 768, "m18": 1024}


def _save(comfy, variant: str) -> Path:
    from test_comfyui import run_ok

    prefix = f"checkpoints/alt_{variant}"
    graph = {
        "C": {"class_type": "AltDiffusionCheckpointLoader", "inputs": {"model_name": f"AltDiffusion-{variant}", "dtype": "fp32"}},
        "W": {
            "class_type": "CheckpointSave",
            "inputs": {"model": ["C", 0], "clip": ["C", 1], "vae": ["C", 2], "filename_prefix": prefix},
        },  # fmt: skip
    }
    before = set(comfy.output_dir.glob(f"{prefix}_*.safetensors"))
    run_ok(comfy, graph)
    written = sorted(set(comfy.output_dir.glob(f"{prefix}_*.safetensors")) - before)
    assert len(written) == 1, written
    return written[0]


def _state_dicts(loaded) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "unet": loaded.model.module.state_dict(),
        "text_encoder": loaded.text_encoder.module.state_dict(),
        "vae": loaded.vae.module.state_dict(),
    }


@pytest.fixture(scope="module")
def saved(comfy, comfy_models) -> dict[str, Path]:
    """variant → the file CheckpointSave wrote for the server's tiny ``AltDiffusion-<variant>``."""
    return {variant: _save(comfy, variant) for variant in ("m9", "m18")}


@pytest.mark.parametrize("variant", ["m9", "m18"])
def test_checkpoint_save_writes_the_a1111_altdiffusion_layout(pack, saved, variant):
    path = saved[variant]
    with safe_open(str(path), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    assert pack.altdiff_core.is_altdiffusion_checkpoint(path)
    assert "cond_stage_model.roberta.embeddings.word_embeddings.weight" in shapes  # A1111's own test for AltDiffusion
    assert all(key.startswith(LAYOUT_PREFIXES) for key in shapes), [k for k in shapes if not k.startswith(LAYOUT_PREFIXES)]
    assert not [key for key in shapes if key.startswith("cond_stage_model.transformer.")]  # an SD 1.x file's CLIP
    text = {key.removeprefix("cond_stage_model.") for key in shapes if key.startswith("cond_stage_model.")}
    assert {key.split(".")[0] + "." for key in text} == set(TEXT_PARTS[variant])
    assert not any(key.startswith("xlm_roberta.") or key.endswith("logit_scale") for key in text)
    assert any(key.startswith("model.diffusion_model.input_blocks.") for key in shapes)
    assert any(key.startswith("first_stage_model.encoder.") for key in shapes)
    assert "v_pred" not in shapes  # epsilon prediction: nothing that makes a loader switch to v
    # A1111's variant test: transformation_pre, or a 1024-row head, marks m18.
    head = "transformation_pre.weight" if variant == "m18" else "transformation.weight"
    assert shapes["cond_stage_model." + head][0] == CONTEXT_DIM[variant]


@pytest.mark.parametrize("variant", ["m9", "m18"])
def test_saved_checkpoint_loads_in_the_engine_with_the_source_weights(core, comfy_models, saved, variant):
    source = comfy_models / "altdiffusion" / f"AltDiffusion-{variant}"
    path = saved[variant]
    companion = path.parent / path.stem
    for component in ("unet", "vae", "text_encoder"):
        (companion / component).mkdir(parents=True, exist_ok=True)
        shutil.copy(source / component / "config.json", companion / component / "config.json")
    shutil.rmtree(companion / "tokenizer", ignore_errors=True)

    loaded = core.load_checkpoint(path, tokenizer_folders=[source / "tokenizer"])
    reference = core.load_folder(source)
    ours, theirs = _state_dicts(loaded), _state_dicts(reference)
    for part in ours:
        assert ours[part].keys() == theirs[part].keys(), (part, ours[part].keys() ^ theirs[part].keys())
        worst = max(float((ours[part][k].float() - theirs[part][k].float()).abs().max()) for k in ours[part])
        assert worst == 0.0, (part, worst)
    # m18 by its head; m2 and m9 share every shape, so only the checkpoint's own tokenizer config tells them apart.
    assert loaded.text_encoder.variant.name == {"m9": "m2/m9", "m18": "m18"}[variant]
    shutil.copytree(source / "tokenizer", companion / "tokenizer")
    assert core.load_checkpoint(path).text_encoder.variant.name == variant
