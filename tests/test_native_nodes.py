"""ComfyUI's own nodes on the AltDiffusion Checkpoint Loader's native MODEL, CLIP and VAE, inside a real ComfyUI 0.3.75.

Every graph starts from ``AltDiffusionCheckpointLoader`` and uses only stock nodes after it; each test checks a number
that would come out wrong if the MODEL/CLIP/VAE were not what those nodes expect (split sampling equals one run,
full-latent area and all-ones mask conditioning equal plain conditioning, FreeU at 1.0 is the identity, model merge
ratios pick each model, inpainting keeps the unmasked latent, ControlNet strength 0 changes nothing and 1 does).

fp32, 64×64 images (8×8 latents) and 1–3 steps keep it fast on the CPU; results come back through SaveLatent. The
"measured" comments give what this CPU computed, for judging the tolerances.
ControlNets are recognised by shape only, so those tests use full-size UNets (conftest's ``AltDiffusion-m9-fullunet``,
an SD 2.1-shaped m18 written here) and random ControlNets in the ControlNet-v1.1 single-file layout.
"""

from __future__ import annotations

import logging
import uuid

import graphs
import pytest
import torch
from factories import controlnet_state_dict, write_altdiffusion_folder, write_component_file
from safetensors.torch import load, save_file

pytestmark = pytest.mark.comfyui
logger = logging.getLogger(__name__)

M9, M18 = "AltDiffusion-m9", "AltDiffusion-m18"
M9_OTHER = "AltDiffusion-m9-merge-seed7"
"""A second tiny m9 (another seed) for ModelMergeSimple; written by the ``merge_partner`` fixture."""
M18_FULL = "AltDiffusion-m18-native-fullunet"
"""m18 with a full-size SD 2.1-base UNet (random, fp16 on disk) for the SD 2.1 ControlNet; written by
``controlnet_pair``."""
PROMPT, NEGATIVE = "一只戴着帽子的猫", "模糊"


# ----------------------------------------------------------------------------------------------- graph building


def checkpoint(model: str) -> dict:
    return {"class_type": "AltDiffusionCheckpointLoader", "inputs": {"model_name": model, "dtype": "fp32"}}


def text(prompt: str, clip=("L", 1)) -> dict:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": list(clip)}}


def ksampler(model=("L", 0), positive=("P", 0), negative=("N", 0), latent=("E", 0), **overrides) -> dict:
    """KSampler wired to ``base_graph``'s nodes unless told otherwise."""
    return graphs.ksampler(model, positive, negative, latent, **overrides)


def ksampler_advanced(latent, start: int, end: int, add_noise: bool, leftover: bool, steps: int = 3) -> dict:
    node = graphs.sampler_node("KSamplerAdvanced", ("L", 0), ("P", 0), ("N", 0), latent, steps=steps)
    seed = node["inputs"].pop("seed")
    del node["inputs"]["denoise"]
    node["inputs"] |= {"add_noise": "enable" if add_noise else "disable", "noise_seed": seed, "start_at_step": start,
                       "end_at_step": end, "return_with_leftover_noise": "enable" if leftover else "disable"}  # fmt: skip
    return node


def base_graph(model: str) -> dict:
    return {
        "L": checkpoint(model),
        "P": text(PROMPT),
        "N": text(NEGATIVE),
        "E": graphs.empty_latent(),
    }


def solid_mask(value: float, width: int = 64, height: int = 64) -> dict:
    return {"class_type": "SolidMask", "inputs": {"value": value, "width": width, "height": height}}


def run_latents(comfy, graph: dict, **saved) -> tuple[dict[str, torch.Tensor], object]:
    """Run ``graph`` plus one SaveLatent per ``name=(node, slot)``; returns ({name: latent [B,4,h,w]}, result).

    Each SaveLatent gets a fresh prefix, so ComfyUI never answers it from its cache.
    """
    tag = uuid.uuid4().hex[:8]
    graph = dict(graph)
    for name, source in saved.items():
        graph[f"save_{name}"] = graphs.save_latent(source, f"native_{tag}_{name}")
    result = comfy.run(graph, timeout=600)
    assert result.status_str == "success", (result.error, comfy.log_tail())
    # ComfyUI runs the outputs that pass validation and drops the others with only a log line: insist on all.
    missing = sorted(f"save_{name}" for name in saved if f"save_{name}" not in result.outputs)
    assert not missing, (missing, comfy.log_tail())
    latents = {}
    for name in saved:
        (ref,) = result.outputs[f"save_{name}"]["latents"]
        data = comfy.view(ref["filename"], ref.get("subfolder", ""), ref.get("type", "output"))
        latents[name] = load(data)["latent_tensor"]
    return latents, result


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a - b).abs().max().item()
    logger.info("max abs diff %.3g", diff)
    return diff


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude of ``b``."""
    diff = (a - b).abs().max().item() / b.abs().max().item()
    logger.info("relative diff %.3g", diff)
    return diff


# ----------------------------------------------------------------------------------------------- txt2img, split sampling


@pytest.fixture(scope="module", params=[M9, M18])
def txt2img(request, comfy):
    """One graph per variant: KSampler → VAEDecode → SaveImage, the same with another prompt, and KSamplerAdvanced
    split after step 1 of 3."""
    graph = base_graph(request.param)
    graph |= {
        "K": ksampler(),
        "D": graphs.vae_decode(("K", 0), ("L", 2)),
        "S": graphs.save_image(("D", 0), "native_test"),
        "P2": text("a red bicycle on a beach"),
        "K2": ksampler(positive=("P2", 0)),
        "A1": ksampler_advanced(("E", 0), 0, 1, add_noise=True, leftover=True),
        "A2": ksampler_advanced(("A1", 0), 1, 10000, add_noise=False, leftover=False),
    }
    latents, result = run_latents(comfy, graph, one=("K", 0), other_prompt=("K2", 0), first=("A1", 0), split=("A2", 0))
    return {"latents": latents, "images": result.images("S")}


def test_txt2img_decodes_an_image(txt2img):
    (image,) = txt2img["images"]
    assert image.shape == (64, 64, 3)
    assert image.std() > 0, "constant image"
    latent = txt2img["latents"]["one"]
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()


def test_clip_text_encode_reaches_the_unet(txt2img):
    """Another prompt moves the result (by about 0.5 % on these tiny random models: 1e-3 is far above rounding)."""
    latents = txt2img["latents"]
    assert rel_diff(latents["other_prompt"], latents["one"]) > 1e-3


def test_ksampler_advanced_split_equals_one_run(txt2img):
    """Two KSamplerAdvanced halves (leftover noise kept, then no new noise) give KSampler's result, up to the
    round trip through the unscaled latent between them."""
    latents = txt2img["latents"]
    assert rel_diff(latents["split"], latents["one"]) < 1e-4  # measured 5e-7 (m9), 4e-7 (m18)
    assert rel_diff(latents["first"], latents["one"]) > 1e-3  # the first half alone is not the result


# ----------------------------------------------------------------------------------------------- area and mask


def test_full_area_and_all_ones_mask_equal_plain_conditioning(comfy):
    graph = base_graph(M9)
    graph |= {
        "K": ksampler(),
        "Afull": {
            "class_type": "ConditioningSetArea",
            "inputs": {"conditioning": ["P", 0], "width": 64, "height": 64, "x": 0, "y": 0, "strength": 1.0},
        },
        "Kfull": ksampler(positive=("Afull", 0)),
        "Ahalf": {  # ConditioningSetArea's smallest area is 64×64 pixels: the whole latent here
            "class_type": "ConditioningSetAreaPercentage",
            "inputs": {"conditioning": ["P", 0], "width": 0.5, "height": 1.0, "x": 0.0, "y": 0.0, "strength": 1.0},
        },
        "Khalf": ksampler(positive=("Ahalf", 0)),
        "ones": solid_mask(1.0),
        "Mask": {
            "class_type": "ConditioningSetMask",
            "inputs": {"conditioning": ["P", 0], "mask": ["ones", 0], "strength": 1.0, "set_cond_area": "default"},
        },
        "Kmask": ksampler(positive=("Mask", 0)),
    }
    latents, _ = run_latents(comfy, graph, plain=("K", 0), full=("Kfull", 0), half=("Khalf", 0), mask=("Kmask", 0))
    assert rel_diff(latents["full"], latents["plain"]) < 1e-4  # measured 0: the same arithmetic with weight 1
    assert rel_diff(latents["mask"], latents["plain"]) < 1e-4  # measured 0
    assert rel_diff(latents["half"], latents["plain"]) > 1e-3


# ----------------------------------------------------------------------------------------------- FreeU


def test_freeu_v2_at_one_is_identity_and_defaults_change_the_result(comfy):
    """FreeU_V2 at b=s=1 scales the backbone features by exactly 1 but still passes the skip features through an
    FFT and back (``Fourier_filter``), which is the identity only up to float rounding."""
    freeu = {"model": ["L", 0], "b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0}
    defaults = {"model": ["L", 0], "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}
    graph = base_graph(M9)
    graph |= {
        "K": ksampler(),
        "F1": {"class_type": "FreeU_V2", "inputs": freeu},
        "K1": ksampler(model=("F1", 0)),
        "Fd": {"class_type": "FreeU_V2", "inputs": defaults},
        "Kd": ksampler(model=("Fd", 0)),
    }
    latents, _ = run_latents(comfy, graph, plain=("K", 0), ones=("K1", 0), defaults=("Kd", 0))
    assert rel_diff(latents["ones"], latents["plain"]) < 1e-4  # measured 2.4e-6 (the FFT round trip)
    assert rel_diff(latents["defaults"], latents["plain"]) > 1e-3


# ----------------------------------------------------------------------------------------------- model merging


@pytest.fixture(scope="module")
def merge_partner(comfy_models) -> str:
    write_altdiffusion_folder(comfy_models / "altdiffusion" / M9_OTHER, "m9", seed=7)
    return M9_OTHER


def test_model_merge_simple_ratios_pick_each_model(comfy, merge_partner):
    graph = base_graph(M9)
    graph |= {"L2": checkpoint(merge_partner), "K1": ksampler(), "K2": ksampler(model=("L2", 0))}
    for name, ratio in (("r1", 1.0), ("r0", 0.0), ("r05", 0.5)):
        merge = {"model1": ["L", 0], "model2": ["L2", 0], "ratio": ratio}
        graph[f"M{name}"] = {"class_type": "ModelMergeSimple", "inputs": merge}
        graph[f"K{name}"] = ksampler(model=(f"M{name}", 0))
    latents, _ = run_latents(comfy, graph, model1=("K1", 0), model2=("K2", 0), r1=("Kr1", 0), r0=("Kr0", 0), r05=("Kr05", 0))
    assert rel_diff(latents["model2"], latents["model1"]) > 1e-3  # the two models differ at all
    assert max_diff(latents["r1"], latents["model1"]) == 0
    assert max_diff(latents["r0"], latents["model2"]) == 0
    assert rel_diff(latents["r05"], latents["model1"]) > 1e-3
    assert rel_diff(latents["r05"], latents["model2"]) > 1e-3


# ----------------------------------------------------------------------------------------------- inpainting, hires fix


def test_vae_encode_for_inpaint_keeps_the_unmasked_latent(comfy):
    """Mask the left half (pixels x < 32; grown by 6 it covers x < 35, i.e. latent columns 0-3 after the bilinear
    resize to 8×8): KSampler resamples those columns and keeps columns 4-7 at the encoded latent."""
    graph = base_graph(M9)
    graph |= {
        "I": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xC04020}},
        "zeros": solid_mask(0.0),
        "left": solid_mask(1.0, width=32),
        "Mask": {
            "class_type": "MaskComposite",
            "inputs": {"destination": ["zeros", 0], "source": ["left", 0], "x": 0, "y": 0, "operation": "add"},
        },
        "V": {
            "class_type": "VAEEncodeForInpaint",
            "inputs": {"pixels": ["I", 0], "vae": ["L", 2], "mask": ["Mask", 0], "grow_mask_by": 6},
        },
        "K": ksampler(latent=("V", 0)),
        "D": graphs.vae_decode(("K", 0), ("L", 2)),
        "S": graphs.save_image(("D", 0), "native_test"),
    }
    latents, result = run_latents(comfy, graph, encoded=("V", 0), sampled=("K", 0))
    (image,) = result.images("S")
    assert image.shape == (64, 64, 3)
    encoded, sampled = latents["encoded"], latents["sampled"]
    assert encoded.shape == sampled.shape == (1, 4, 8, 8)
    assert rel_diff(sampled[..., 4:], encoded[..., 4:]) < 1e-4  # measured 6e-8
    assert rel_diff(sampled[..., :4], encoded[..., :4]) > 1e-3


def test_hires_fix_upscales_by_one_and_a_half(comfy):
    graph = base_graph(M9)
    graph |= {
        "K": ksampler(),
        "U": {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": ["K", 0], "upscale_method": "nearest-exact", "scale_by": 1.5},
        },
        "K2": ksampler(latent=("U", 0), steps=2, denoise=0.5),
        "D": graphs.vae_decode(("K2", 0), ("L", 2)),
        "S": graphs.save_image(("D", 0), "native_test"),
    }
    latents, result = run_latents(comfy, graph, upscaled=("U", 0), refined=("K2", 0))
    (image,) = result.images("S")
    assert image.shape == (96, 96, 3) and image.std() > 0
    assert latents["refined"].shape == (1, 4, 12, 12)
    assert rel_diff(latents["refined"], latents["upscaled"]) > 1e-3  # the second pass changed it


# ----------------------------------------------------------------------------------------------- ControlNet


@pytest.fixture(scope="module", params=["m9", "m18"])
def controlnet_pair(request, comfy_models, parity_models, tmp_path_factory) -> tuple[str, str]:
    """(AltDiffusion model with a full-size UNet, ControlNet file for it): m9 is conftest's parity model with a
    ControlNet of SD 1.5 shapes; m18 gets a full SD 2.1-base UNet (built here, fp16 on disk) and SD 2.1 shapes."""
    if request.param == "m9":
        model, family = parity_models["model"], "sd1"
    else:
        model, family = M18_FULL, "sd21"
        unet_file = tmp_path_factory.mktemp("m18_full_unet") / "m18_unet.safetensors"
        unet = write_component_file(unet_file, "unet", family=family, seed=1)
        write_altdiffusion_folder(comfy_models / "altdiffusion" / model, "m18", seed=1, unet_size="full", unet_file=unet)
    name = f"altdiffusion_test_{family}_controlnet.safetensors"
    save_file(controlnet_state_dict(family), comfy_models / "controlnet" / name)
    return model, name


def test_controlnet_strength_zero_changes_nothing_and_one_does(comfy, controlnet_pair):
    """One step at cfg 1 (no unconditional pass): a full-size UNet step costs seconds on a CPU even at 8×8."""
    model, controlnet = controlnet_pair
    cheap = {"steps": 1, "cfg": 1.0}
    graph = base_graph(model)
    graph |= {
        "K": ksampler(**cheap),
        "CN": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet}},
        "H": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3080F0}},
    }
    for name, strength in (("s0", 0.0), ("s1", 1.0)):
        apply = {"positive": ["P", 0], "negative": ["N", 0], "control_net": ["CN", 0], "image": ["H", 0],
                 "strength": strength, "start_percent": 0.0, "end_percent": 1.0, "vae": ["L", 2]}  # fmt: skip
        graph[f"C{name}"] = {"class_type": "ControlNetApplyAdvanced", "inputs": apply}
        graph[f"K{name}"] = ksampler(positive=(f"C{name}", 0), negative=(f"C{name}", 1), **cheap)
    log_start = len(comfy.log_text())
    latents, _ = run_latents(comfy, graph, plain=("K", 0), s0=("Ks0", 0), s1=("Ks1", 0))
    assert "missing controlnet keys" not in comfy.log_text()[log_start:]  # the file fits ComfyUI's ControlNet whole
    assert torch.isfinite(latents["s1"]).all()
    assert max_diff(latents["s0"], latents["plain"]) == 0
    assert rel_diff(latents["s1"], latents["plain"]) > 1e-3
