"""Our conditioning among ComfyUI's own nodes, in the real server: conditioning nodes into the stock KSampler, long
prompts of different lengths, the layer node, and ComfyUI's cache left intact."""

from __future__ import annotations

import pytest
import torch
from graphs import base_graph, encode, ksampler, sampler, save_latent, unet_loader
from test_comfyui import latents_of, run_ok

pytestmark = pytest.mark.comfyui

LONG = ", ".join(["a red cat", "一只戴着帽子的猫", "桜の木", "눈 내리는 밤", "قطة جميلة", "кошка на окне"] * 8)


def stock_ksampler(positive, negative=("N", 0), latent=("E", 0)):
    """KSampler on UNETLoader's model ``U``."""
    return ksampler(("U", 0), positive, negative, latent, seed=5, steps=2, cfg=6.0)


UNET = unet_loader("altdiffusion_m9_unet.safetensors")


@pytest.mark.parametrize(
    ("node", "inputs"),
    [
        ("ConditioningCombine", {"conditioning_1": ["P", 0], "conditioning_2": ["P2", 0]}),
        ("ConditioningConcat", {"conditioning_to": ["P", 0], "conditioning_from": ["P2", 0]}),
        ("ConditioningAverage", {"conditioning_to": ["P", 0], "conditioning_from": ["P2", 0], "conditioning_to_strength": 0.3}),
    ],
)
def test_conditioning_nodes_into_stock_ksampler(comfy, node, inputs):
    graph = base_graph()
    graph.update(
        {
            "U": UNET,
            "P2": encode("(watercolor:1.2), soft light"),
            "C": {"class_type": node, "inputs": inputs},
            "K": stock_ksampler(("C", 0)),
            "SL": save_latent(["K", 0], f"ks_{node}"),
        }
    )
    (latent,) = latents_of(comfy, run_ok(comfy, graph), "SL")
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()


def test_long_positive_short_negative_in_both_samplers(comfy):
    graph = base_graph(positive=LONG)
    graph.update(
        {
            "U": UNET,
            "K": stock_ksampler(("P", 0)),
            "S": sampler(["E", 0]),
            "SLK": save_latent(["K", 0], "long_ks"),
            "SLS": save_latent(["S", 0], "long_ours"),
        }
    )
    result = run_ok(comfy, graph)
    for node in ("SLK", "SLS"):
        (latent,) = latents_of(comfy, result, node)
        assert torch.isfinite(latent).all()


def test_set_last_layer_runs_and_changes_the_result(comfy):
    graph = base_graph()
    graph.update(
        {
            "LL": {"class_type": "AltDiffusionSetLastLayer", "inputs": {"text_encoder": ["L", 1], "stop_at_layer": -2}},
            "P2": {"class_type": "AltDiffusionTextEncode", "inputs": {"text": "一只戴着帽子的猫", "text_encoder": ["LL", 0]}},
            "S1": sampler(["E", 0]),
            "S2": sampler(["E", 0], positive=("P2", 0)),
            "SL1": save_latent(["S1", 0], "layer_default"),
            "SL2": save_latent(["S2", 0], "layer_minus2"),
        }
    )
    result = run_ok(comfy, graph)
    (default,) = latents_of(comfy, result, "SL1")
    (minus2,) = latents_of(comfy, result, "SL2")
    assert not torch.equal(default, minus2)


def test_second_run_of_the_same_graph_is_served_from_comfyuis_cache(comfy):
    """Nothing defeats ComfyUI's node cache: the same text on the same encoder is not encoded again."""
    graph = base_graph(positive="una casa junto al mar, (acuarela:1.2)")
    graph.update({"S1": sampler(["E", 0], seed=99), "SL": save_latent(["S1", 0], "cache_check")})
    run_ok(comfy, graph)
    graph["S1"]["inputs"]["seed"] = 100  # only the sampler's input changes
    second = run_ok(comfy, graph)
    cached = {n for e in second.events if e["type"] == "execution_cached" for n in e["data"]["nodes"]}
    executed = {e["data"]["node"] for e in second.events if e["type"] == "executing" and e["data"]["node"]}
    assert {"L", "P", "N"} <= cached
    assert not {"L", "P", "N"} & executed and "S1" in executed
