"""Inside a real ComfyUI 0.3.75 server: the pack imports, documents itself, runs the shipped workflows, mixes with
ComfyUI's own nodes, reports progress, cancels, and turns bad input into ComfyUI errors.

One server serves the whole session (see ``conftest.comfy``); graphs use 64×64 images to stay fast on the CPU.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_server import PromptRejectedError, ui_to_api
from factories import controlnet_state_dict, text_encoder_lora, write_lora
from graphs import (
    base_graph,
    empty_latent,
    encode,
    ksampler,
    loader,
    sampler,
    save_image,
    save_latent,
    unet_loader,
    vae_decode,
    vae_loader,
)
from safetensors.torch import load, save_file

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
NODE_IDS = list(sys.modules["comfyui_altdiffusion"].nodes.NODE_CLASS_MAPPINGS)  # every node the pack registers

pytestmark = pytest.mark.comfyui


# ----------------------------------------------------------------------------------------------- running graphs


def latents_of(comfy, result, node_id):
    """The tensors a SaveLatent node wrote, fetched through /view."""
    refs = result.outputs[node_id]["latents"]
    return [load(comfy.view(r["filename"], r.get("subfolder", ""), r.get("type", "output")))["latent_tensor"] for r in refs]


def run_ok(comfy, prompt, timeout=300):
    result = comfy.run(prompt, timeout=timeout)
    assert result.status_str == "success", (result.error, comfy.log_tail())
    return result


# ----------------------------------------------------------------------------------------------- the pack as ComfyUI sees it


def test_pack_imports_without_failure(comfy):
    assert not comfy.pack_import_failed(), comfy.log_tail()


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_object_info_documents_every_node(comfy, node_id):
    info = comfy.object_info(node_id)
    assert info["display_name"] and info["display_name"] != node_id
    assert info["category"].split("/")[0] == "AltDiffusion"
    assert len(info["description"]) > 40
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            options = spec[1] if len(spec) > 1 else {}
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert len(info["output_tooltips"]) == len(info["output"]) and all(info["output_tooltips"])


def test_loader_lists_the_test_models(comfy):
    names = comfy.object_info("AltDiffusionLoader")["input"]["required"]["model_name"][0]
    assert {"AltDiffusion-m9", "AltDiffusion-m18"} <= set(names)


# ----------------------------------------------------------------------------------------------- shipped workflows


def test_workflows_are_listed_as_templates(comfy):
    templates = comfy.workflow_templates()
    listed = next(v for k, v in templates.items() if "AltDiffusion" in k)
    assert {p.stem for p in WORKFLOWS} <= set(listed)
    assert len(WORKFLOWS) >= 3


@pytest.fixture(scope="module")
def workflow_files(comfy_models, parity_models) -> dict[str, str]:
    """The LoRA and ControlNet files the shipped LoRA + ControlNet workflow names: a kohya LoRA of XLM-R's layers (the
    text encoder of the parity model, whose UNet is full size) and a random SD1.5 ControlNet, which ComfyUI
    recognises only at full size."""
    folder = comfy_models / "altdiffusion" / parity_models["model"]
    write_lora(comfy_models / "loras" / "example_lora.safetensors", text_encoder_lora(folder, "kohya"))
    save_file(controlnet_state_dict("sd1"), comfy_models / "controlnet" / "control_v11p_sd15_canny_fp16.safetensors")
    return parity_models


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_runs(comfy, workflow, request):
    """Each shipped workflow, converted as the frontend converts it, runs in the server. The ControlNet one runs on
    the full-size parity UNet (a ControlNet fits only a full-size UNet) at 64×64 and 2 steps: at its own 512² and 25
    steps a full-size step takes tens of seconds on a CPU."""
    from PIL import Image

    ui = json.loads(workflow.read_text(encoding="utf-8"))
    controlnet = any(n["type"] == "ControlNetLoader" for n in ui["nodes"])
    size = 64 if controlnet else 512
    if any(n["type"] == "LoadImage" for n in ui["nodes"]):
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
        comfy.upload_image(image, name="example.png")
    prompt = ui_to_api(ui, comfy.object_info())
    if controlnet:
        full_unet = request.getfixturevalue("workflow_files")["model"]
        for node in prompt.values():
            if node["class_type"] == "AltDiffusionCheckpointLoader":
                node["inputs"]["model_name"] = full_unet
            if node["class_type"] == "KSampler":
                node["inputs"]["steps"] = 2
            if node["class_type"] == "EmptyLatentImage":
                node["inputs"].update(width=size, height=size)
    started = time.monotonic()
    log_start = len(comfy.log_text())
    result = run_ok(comfy, prompt, timeout=600)
    images = result.images()
    assert images, "the workflow saved no image"
    for image in images:
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= size
        assert image.std() > 0, "constant image"
    log = comfy.log_text()[log_start:]
    assert "lora key not loaded" not in log and "control could not be applied" not in log
    logging.getLogger(__name__).info("%s ran in %.1f s", workflow.stem, time.monotonic() - started)


# ----------------------------------------------------------------------------------------------- mixing with ComfyUI's nodes


def test_our_conditioning_drives_ksampler_with_unetloader(comfy):
    graph = base_graph()
    graph.update(
        {
            "U": unet_loader("altdiffusion_m9_unet.safetensors"),
            "K": ksampler(("U", 0), ("P", 0), ("N", 0), ("E", 0), seed=1, steps=2, cfg=7.0),
            "V": vae_loader("sd_vae.safetensors"),
            "D": vae_decode(("K", 0), ("V", 0)),
            "S": save_image(["D", 0]),
            "SL": save_latent(["K", 0], "ksampler"),
        }
    )
    result = run_ok(comfy, graph)
    (image,) = result.images("S")
    assert image.shape == (64, 64, 3)
    (latent,) = latents_of(comfy, result, "SL")
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()


def test_hires_fix_through_latentupscaleby(comfy):
    graph = base_graph()
    graph.update(
        {
            "S1": sampler(["E", 0]),
            "UP": {
                "class_type": "LatentUpscaleBy",
                "inputs": {"samples": ["S1", 0], "upscale_method": "nearest-exact", "scale_by": 2.0},
            },
            "S2": sampler(["UP", 0], denoise=0.5),
            "D": {"class_type": "AltDiffusionVAEDecode", "inputs": {"samples": ["S2", 0], "vae": ["L", 2]}},
            "S": save_image(["D", 0]),
            "SL": save_latent(["S2", 0], "hires"),
        }
    )
    result = run_ok(comfy, graph)
    (image,) = result.images("S")
    assert image.shape == (128, 128, 3)
    (latent,) = latents_of(comfy, result, "SL")
    assert latent.shape == (1, 4, 16, 16) and torch.isfinite(latent).all()


def test_loadimage_our_encode_our_sampler_comfy_vaedecode(comfy):
    from PIL import Image

    name = comfy.upload_image(Image.fromarray(np.full((72, 64, 3), 120, dtype=np.uint8)), name="altdiff_init.png")
    graph = base_graph()
    graph.update(
        {
            "I": {"class_type": "LoadImage", "inputs": {"image": name}},
            "EN": {"class_type": "AltDiffusionVAEEncode", "inputs": {"pixels": ["I", 0], "vae": ["L", 2]}},
            "S1": sampler(["EN", 0], denoise=0.6),
            "V": vae_loader("sd_vae.safetensors"),
            "D": vae_decode(("S1", 0), ("V", 0)),
            "S": save_image(["D", 0]),
            "SL": save_latent(["S1", 0], "img2img"),
        }
    )
    result = run_ok(comfy, graph)
    (image,) = result.images("S")
    assert image.shape == (72, 64, 3)
    (latent,) = latents_of(comfy, result, "SL")
    assert latent.shape == (1, 4, 9, 8) and torch.isfinite(latent).all()


CONDITIONING_NODES = {
    "ConditioningCombine": {"conditioning_1": ["P", 0], "conditioning_2": ["P2", 0]},
    "ConditioningConcat": {"conditioning_to": ["P", 0], "conditioning_from": ["P2", 0]},
    "ConditioningAverage": {"conditioning_to": ["P", 0], "conditioning_from": ["P2", 0], "conditioning_to_strength": 0.3},
    "ConditioningSetTimestepRange": {"conditioning": ["P", 0], "start": 0.0, "end": 0.5},
}


@pytest.mark.parametrize("node", list(CONDITIONING_NODES))
def test_comfy_conditioning_nodes_are_honoured(comfy, node):
    """Each of ComfyUI's conditioning nodes changes the result (it is applied, not ignored) and samples finitely."""
    graph = base_graph()
    graph.update(
        {
            "P2": encode("watercolor, soft light"),
            "C": {"class_type": node, "inputs": CONDITIONING_NODES[node]},
            "S1": sampler(["E", 0], positive=("C", 0)),
            "S0": sampler(["E", 0]),
            "SL1": save_latent(["S1", 0], f"cond_{node}"),
            "SL0": save_latent(["S0", 0], f"plain_{node}"),
        }
    )
    result = run_ok(comfy, graph)
    (mixed,) = latents_of(comfy, result, "SL1")
    (plain,) = latents_of(comfy, result, "SL0")
    assert torch.isfinite(mixed).all() and mixed.shape == plain.shape == (1, 4, 8, 8)
    assert not torch.equal(mixed, plain)


def test_setlatentnoisemask_keeps_unmasked_latent(comfy):
    """Mask = right half. The left latent columns come back exactly (KSamplerX0Inpaint semantics); decoded, the left
    half changes less than the right (not zero: the VAE decoder's mid-block attention mixes the whole image)."""
    from PIL import Image

    rng = np.random.default_rng(5)
    name = comfy.upload_image(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), name="altdiff_mask_src.png")
    graph = base_graph()
    graph.update(
        {
            "I": {"class_type": "LoadImage", "inputs": {"image": name}},
            "EN": {"class_type": "AltDiffusionVAEEncode", "inputs": {"pixels": ["I", 0], "vae": ["L", 2]}},
            "M": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}},
            "M1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}},
            "MC": {
                "class_type": "MaskComposite",
                "inputs": {"destination": ["M", 0], "source": ["M1", 0], "x": 32, "y": 0, "operation": "add"},
            },
            "NM": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["EN", 0], "mask": ["MC", 0]}},
            "S1": sampler(["NM", 0], steps=4),
            "D1": {"class_type": "AltDiffusionVAEDecode", "inputs": {"samples": ["S1", 0], "vae": ["L", 2]}},
            "D0": {"class_type": "AltDiffusionVAEDecode", "inputs": {"samples": ["EN", 0], "vae": ["L", 2]}},
            "S": save_image(["D1", 0], "inpaint"),
            "S0": save_image(["D0", 0], "inpaint_src"),
            "SL1": save_latent(["S1", 0], "inpaint"),
            "SL0": save_latent(["EN", 0], "inpaint_src"),
        }
    )
    result = run_ok(comfy, graph)
    (sampled,) = latents_of(comfy, result, "SL1")
    (source,) = latents_of(comfy, result, "SL0")
    assert (sampled[..., :4] - source[..., :4]).abs().max() <= 1e-5  # mask 0 over latent columns 0..3
    assert (sampled[..., 4:] - source[..., 4:]).abs().max() > 1e-2
    (inpainted,) = result.images("S")
    (decoded_source,) = result.images("S0")
    change = np.abs(inpainted.astype(int) - decoded_source.astype(int))
    # (measured 30 against 50 mean levels with the 32-group tiny VAE, whose mid-block attention mixes more)
    assert change[:, :32].mean() < change[:, 32:].mean()


# ----------------------------------------------------------------------------------------------- memory manager


def loads_in(log: str, path: str) -> int:
    """Disk reads of the model at ``path`` in ``log`` (the loader's "… from <path>: … (loaded in X s)" line).

    Matches ``from <path>:`` with the colon, so ``…/AltDiffusion-m9`` does not also count ``…/AltDiffusion-m9-fault``.
    """
    return sum(1 for line in log.splitlines() if f"from {path}:" in line.replace("\\", "/") and "(loaded in" in line)


def test_model_survives_another_models_graph_without_disk_reload(comfy, comfy_models):
    """Ours, then a graph with only ComfyUI's own VAE model, then ours again: the second run of ours reads nothing from
    disk, re-runs the loader node (ComfyUI dropped its cached outputs) and gives the same latent; our parts went
    through ComfyUI's memory manager (its 'Requested to load' lines name our module classes)."""
    name = (comfy_models / "altdiffusion" / "AltDiffusion-m18").resolve().as_posix()
    graph = base_graph()
    graph["L"] = loader("AltDiffusion-m18")
    graph.update(
        {
            "S1": sampler(["E", 0], seed=11),
            "SL": save_latent(["S1", 0], "mm"),
            "D": {"class_type": "AltDiffusionVAEDecode", "inputs": {"samples": ["S1", 0], "vae": ["L", 2]}},
            "I": save_image(["D", 0], "mm_ours"),
        }
    )
    (first,) = latents_of(comfy, run_ok(comfy, graph), "SL")
    loads = loads_in(comfy.log_text(), name)
    assert loads >= 1

    other = {
        "E": empty_latent(),
        "V": vae_loader("sd_vae.safetensors"),
        "D": vae_decode(("E", 0), ("V", 0)),
        "I": save_image(["D", 0], "mm_other"),
    }
    run_ok(comfy, other)

    again = run_ok(comfy, graph)
    cached = {n for e in again.events if e["type"] == "execution_cached" for n in e["data"]["nodes"]}
    assert "L" not in cached  # ComfyUI ran the loader node again: the model came from the pack's cache
    assert loads_in(comfy.log_text(), name) == loads
    (second,) = latents_of(comfy, again, "SL")
    assert torch.equal(first, second)
    log = comfy.log_text()
    for module in ("AltDiffusionClipModel", "BaseModel", "AutoencoderKL"):  # ComfyUI's own MODEL, CLIP and VAE
        assert f"Requested to load {module}" in log


# ----------------------------------------------------------------------------------------------- progress and cancel


def test_progress_events_and_interrupt_within_one_step(comfy):
    graph = base_graph()
    graph.update({"S1": sampler(["E", 0], steps=400, seed=7), "SL": save_latent(["S1", 0], "interrupted")})
    state = {"pressed_at": None}

    def press_cancel(event):
        if event["type"] == "progress" and event["data"]["value"] >= 3 and state["pressed_at"] is None:
            state["pressed_at"] = event["data"]["value"]
            comfy.interrupt()

    result = comfy.run(graph, timeout=300, on_event=press_cancel)
    progress = [e["data"] for e in result.events if e["type"] == "progress"]
    assert progress and progress[0]["max"] == 400 and progress[0]["node"] == "S1"
    assert result.interrupted, result.event_types()
    assert max(p["value"] for p in progress) <= state["pressed_at"] + 1
    assert "SL" not in result.outputs  # nothing after the sampler ran

    graph["S1"]["inputs"]["steps"] = 2
    after = run_ok(comfy, graph)
    (latent,) = latents_of(comfy, after, "SL")
    assert torch.isfinite(latent).all()


# ----------------------------------------------------------------------------------------------- errors


def test_bad_model_name_is_a_validation_error(comfy):
    graph = base_graph()
    graph["L"] = loader("AltDiffusion-m99")
    graph.update({"S1": sampler(["E", 0]), "SL": save_latent(["S1", 0], "bad")})
    with pytest.raises(PromptRejectedError) as err:
        comfy.run(graph)
    assert err.value.status == 400
    errors = err.value.body["node_errors"]["L"]["errors"]
    assert errors[0]["type"] == "value_not_in_list" and "model_name" in errors[0]["details"]


def test_out_of_range_value_is_a_validation_error(comfy):
    graph = base_graph()
    graph.update({"S1": sampler(["E", 0], steps=0), "SL": save_latent(["S1", 0], "bad")})
    with pytest.raises(PromptRejectedError) as err:
        comfy.run(graph)
    errors = err.value.body["node_errors"]["S1"]["errors"]
    assert errors[0]["type"] == "value_smaller_than_min" and "steps" in errors[0]["details"]


def test_runtime_failure_is_our_message_and_server_keeps_serving(comfy):
    """m18 conditioning (1024 wide) into the m9 sampler: an execution_error whose message says what to fix."""
    graph = base_graph()
    graph.update(
        {
            "L18": loader("AltDiffusion-m18"),
            "P18": encode("a cat", "L18"),
            "S1": sampler(["E", 0], positive=("P18", 0)),
            "SL": save_latent(["S1", 0], "mismatch"),
        }
    )
    result = comfy.run(graph)
    assert result.status_str == "error"
    error = result.error
    assert error["node_id"] == "S1" and error["exception_type"].endswith("InvalidInputError")
    assert "1024 wide" in error["exception_message"] and "same model" in error["exception_message"]
    good = base_graph()
    good.update({"S1": sampler(["E", 0]), "SL": save_latent(["S1", 0], "after_error")})
    run_ok(comfy, good)


# ----------------------------------------------------------------------------------------------- translations


@pytest.mark.parametrize("lang", ["zh", "ja", "ko"])
def test_i18n_serves_translated_node_definitions(comfy, lang):
    node_defs = comfy.get_json("/i18n")[lang]["nodeDefs"]
    for node_id in NODE_IDS:
        entry = node_defs[node_id]
        assert entry["display_name"] and entry["display_name"] != comfy.object_info(node_id)["display_name"]
        assert all(v.get("tooltip") for v in entry["inputs"].values())
