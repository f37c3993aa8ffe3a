"""ComfyUI's socket conventions at the nodes' edges: shapes, dtypes, ranges, scales, and LATENT dict handling; and the
nodes' one way into the engine, ``altdiff_core.__all__``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from factories import reference_components

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts(pack, m9_folder):
    """Loaded as a user loads it ("auto": bf16 on a CPU with bf16 instructions): the edges must not depend on it."""
    return pack.nodes.loader.AltDiffusionLoader.load_path(m9_folder, "auto")


@pytest.fixture(scope="module")
def parts_fp32(pack, m9_folder):
    """fp32, for comparisons with the fp32 diffusers reference."""
    return pack.nodes.loader.AltDiffusionLoader.load_path(m9_folder, "fp32")


@pytest.fixture(scope="module")
def nodes(pack):
    return pack.nodes


def test_conditioning_is_comfyui_conditioning(nodes, parts):
    _, text_encoder, _, _ = parts
    (cond,) = nodes.text_encode.AltDiffusionTextEncode().encode("一只猫", text_encoder)
    assert isinstance(cond, list) and len(cond) == 1 and len(cond[0]) == 2
    tensor, extras = cond[0]
    assert tensor.shape == (1, 77, 768) and tensor.dtype == torch.float32 and tensor.device.type == "cpu"
    assert set(extras) == {"pooled_output"} and extras["pooled_output"].shape == (1, 768)
    assert torch.isfinite(tensor).all()


def test_empty_prompt_encodes_as_one_window(nodes, parts, pack):
    _, text_encoder, _, _ = parts
    (cond,) = nodes.text_encode.AltDiffusionTextEncode().encode("", text_encoder)
    assert cond[0][0].shape == (1, 77, 768)
    windows = text_encoder.tokenizer.windows("")
    assert windows.input_ids[0, :3].tolist() == [0, 2, 1] and int(windows.attention_mask.sum()) == 2


def test_auto_dtype_is_the_fast_safe_one_for_this_cpu(pack, parts):
    model, text_encoder, vae, info = parts
    expected = torch.bfloat16 if pack.altdiff_core.precision.cpu_bf16_is_fast() else torch.float32
    assert model.dtype == text_encoder.dtype == vae.dtype == expected
    assert "m9" in info and str(expected).removeprefix("torch.") in info and "cpu" in info


@pytest.mark.parametrize(
    ("device", "fast_bf16", "expected"),
    [
        ("cpu", True, torch.bfloat16),
        ("cpu", False, torch.float32),
        ("cuda", False, torch.float16),
        ("mps", True, torch.float32),
    ],
)
def test_auto_dtype_table(pack, monkeypatch, device, fast_bf16, expected):
    precision = pack.altdiff_core.precision
    monkeypatch.setattr(precision, "cpu_bf16_is_fast", lambda: fast_bf16)
    assert precision.resolve_dtype("auto", torch.device(device)) == expected
    assert precision.resolve_dtype("fp32", torch.device(device)) == torch.float32


def test_sampler_returns_raw_latent_and_keeps_other_keys(nodes, parts):
    model, text_encoder, _, _ = parts
    (pos,) = nodes.text_encode.AltDiffusionTextEncode().encode("a cat", text_encoder)
    latent = {"samples": torch.zeros(2, 4, 8, 8), "batch_index": [3, 5], "custom": "kept"}
    (out,) = nodes.sampler.AltDiffusionSampler().sample(model, 1, 2, 5.0, "euler", "normal", pos, pos, latent, 1.0)
    assert out is not latent and latent["samples"].abs().sum() == 0  # input not modified
    assert out["custom"] == "kept" and out["batch_index"] == [3, 5]
    assert out["samples"].shape == (2, 4, 8, 8) and out["samples"].dtype == torch.float32
    assert out["samples"].device.type == "cpu"


def test_same_seed_same_latent_other_seed_differs(nodes, parts):
    model, text_encoder, _, _ = parts
    (pos,) = nodes.text_encode.AltDiffusionTextEncode().encode("a cat", text_encoder)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    run = lambda seed: nodes.sampler.AltDiffusionSampler().sample(  # noqa: E731
        model, seed, 2, 5.0, "euler_ancestral", "karras", pos, pos, latent, 1.0
    )[0]["samples"]
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_noise_is_ksampler_noise(pack):
    """CPU ``torch.manual_seed(seed)`` + ``randn`` of the latent's shape; per index with batch_index."""
    latent = torch.zeros(3, 4, 5, 6)
    noise = pack.altdiff_core.prepare_noise(latent, 2**63 + 5)
    assert torch.equal(noise, torch.randn(latent.shape, generator=torch.manual_seed(2**63 + 5)))
    per_index = pack.altdiff_core.prepare_noise(latent, 11, [2, 0, 2])
    generator = torch.manual_seed(11)
    draws = [torch.randn((1, 4, 5, 6), generator=generator)[0] for _ in range(3)]  # indices 0, 1, 2 in sequence
    assert torch.equal(per_index[0], draws[2]) and torch.equal(per_index[1], draws[0]) and torch.equal(per_index[2], draws[2])


def test_vae_encode_is_raw_posterior_mode_and_decode_is_unscaled(nodes, parts_fp32, m9_folder):
    """IMAGE → LATENT is the unscaled posterior mode; LATENT → IMAGE decodes ``samples`` directly (no 0.18215)."""
    _, _, vae, _ = parts_fp32
    ref = reference_components(m9_folder)
    image = torch.rand(1, 64, 48, 3, generator=torch.manual_seed(0))
    (latent,) = nodes.vae.AltDiffusionVAEEncode().encode(image, vae)
    with torch.no_grad():
        expected = ref.vae.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    assert latent["samples"].shape == (1, 4, 8, 6)
    assert (latent["samples"] - expected).abs().max() <= 1e-5
    (decoded,) = nodes.vae.AltDiffusionVAEDecode().decode(latent, vae)
    with torch.no_grad():
        pixels = ref.vae.decode(expected).sample
    assert decoded.shape == (1, 64, 48, 3) and decoded.dtype == torch.float32 and decoded.device.type == "cpu"
    assert decoded.min() >= 0 and decoded.max() <= 1
    assert (decoded - ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)).abs().max() <= 1e-5


def test_sizes_not_multiple_of_8_are_centre_cropped_like_vaeencode(nodes, parts):
    """61×67 → 56×64, starting at (61 % 8) // 2 = 2 and (67 % 8) // 2 = 1, as ComfyUI's vae_encode_crop_pixels."""
    _, _, vae, _ = parts
    image = torch.rand(1, 61, 67, 4, generator=torch.manual_seed(1))  # RGBA: alpha dropped
    (latent,) = nodes.vae.AltDiffusionVAEEncode().encode(image, vae)
    (cropped,) = nodes.vae.AltDiffusionVAEEncode().encode(image[:, 2:58, 1:65, :3].contiguous(), vae)
    assert latent["samples"].shape == (1, 4, 7, 8)
    assert torch.equal(latent["samples"], cropped["samples"])
    (decoded,) = nodes.vae.AltDiffusionVAEDecode().decode(latent, vae)
    assert decoded.shape == (1, 56, 64, 3)


def test_round_trip_keeps_shapes_and_batch(nodes, parts):
    _, _, vae, _ = parts
    image = torch.rand(3, 40, 32, 3, generator=torch.manual_seed(2))
    (latent,) = nodes.vae.AltDiffusionVAEEncode().encode(image, vae)
    (decoded,) = nodes.vae.AltDiffusionVAEDecode().decode(latent, vae)
    assert latent["samples"].shape == (3, 4, 5, 4) and decoded.shape == image.shape


def test_noise_mask_keeps_unmasked_latent(nodes, parts):
    """Where the mask is 0 the output latent is the input latent (KSamplerX0Inpaint pins x0 to it)."""
    model, text_encoder, vae, _ = parts
    (pos,) = nodes.text_encode.AltDiffusionTextEncode().encode("a cat", text_encoder)
    (latent,) = nodes.vae.AltDiffusionVAEEncode().encode(torch.rand(1, 64, 64, 3, generator=torch.manual_seed(3)), vae)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0
    masked = dict(latent, noise_mask=mask)
    (out,) = nodes.sampler.AltDiffusionSampler().sample(model, 5, 3, 6.0, "euler", "normal", pos, pos, masked, 1.0)
    kept = out["samples"][..., :3]  # latent columns 0..2 come from mask pixels 0..23, all zero after resize
    assert (kept - latent["samples"][..., :3]).abs().max() <= 1e-5
    assert (out["samples"][..., 5:] - latent["samples"][..., 5:]).abs().max() > 1e-2


def test_cfg_one_skips_the_negative_pass(nodes, parts):
    """cfg = 1: the negative prompt cannot change the result (its UNet pass is skipped, as in KSampler)."""
    model, text_encoder, _, _ = parts
    enc = nodes.text_encode.AltDiffusionTextEncode()
    (pos,), (neg_a,), (neg_b,) = enc.encode("a cat", text_encoder), enc.encode("", text_encoder), enc.encode("dog", text_encoder)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    a = nodes.sampler.AltDiffusionSampler().sample(model, 1, 2, 1.0, "euler", "normal", pos, neg_a, latent, 1.0)[0]
    b = nodes.sampler.AltDiffusionSampler().sample(model, 1, 2, 1.0, "euler", "normal", pos, neg_b, latent, 1.0)[0]
    assert torch.equal(a["samples"], b["samples"])


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_reduced_precision_dtypes_load_and_generate(nodes, m9_folder, dtype):
    """fp16/bf16 weights: every module in that dtype, sockets still float32, results finite."""
    model, text_encoder, vae, info = nodes.loader.AltDiffusionLoader.load_path(m9_folder, dtype)
    wanted = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert {p.dtype for p in model.module.parameters()} == {wanted}
    assert {p.dtype for p in text_encoder.module.parameters()} == {wanted}
    assert {p.dtype for p in vae.module.parameters()} == {wanted}
    (pos,) = nodes.text_encode.AltDiffusionTextEncode().encode("一只猫", text_encoder)
    assert pos[0][0].dtype == torch.float32
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (out,) = nodes.sampler.AltDiffusionSampler().sample(model, 3, 2, 7.5, "euler", "normal", pos, pos, latent, 1.0)
    (image,) = nodes.vae.AltDiffusionVAEDecode().decode(out, vae)
    assert out["samples"].dtype == image.dtype == torch.float32
    assert torch.isfinite(out["samples"]).all() and torch.isfinite(image).all()


# --------------------------------------------------------------------------------------------- the nodes' imports


def engine_imports_past_all(root: Path, exported: set[str]) -> list[str]:
    """Every import in ``root/nodes`` (``nodes/comfy_seam`` included) of anything of the engine but a name in
    ``exported`` from the ``altdiff_core`` package itself: a submodule (``altdiff_core.single_file``), a name outside
    ``__all__``, ``*``, or the package as a whole (``from .. import altdiff_core``), as ``file:line what``."""
    found = []
    for path in sorted((root / "nodes").rglob("*.py")):
        package = path.relative_to(root).parent.parts  # ("nodes",) or ("nodes", "comfy_seam"); the pack is the root
        where = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [f"{where}:{node.lineno} import {a.name}" for a in node.names if "altdiff_core" in a.name.split(".")]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else ()
                module = (*base, *(node.module or "").split(".")) if node.module else base
                names = [a.name for a in node.names]
                text = f"{where}:{node.lineno} from {'.' * node.level}{node.module or ''} import {', '.join(names)}"
                if "altdiff_core" in module:
                    inside = module[module.index("altdiff_core") + 1 :]
                    if inside or any(name not in exported for name in names):
                        found.append(text)
                elif "altdiff_core" in names:
                    found.append(text)
    return found


def test_nodes_import_only_what_the_engine_exports(pack):
    """The nodes are adapters over the engine's public names: a node that needs more gets it added to ``__all__``."""
    exported = set(pack.altdiff_core.__all__)
    assert all(hasattr(pack.altdiff_core, name) for name in exported)
    assert engine_imports_past_all(ROOT, exported) == []


FRONT_END_WORDS = re.compile(
    r"\bconnect\b|\bsocket|\bwidget|\b(IMAGE|LATENT|STRING|CONDITIONING|MASK)\b|EmptyLatentImage|Empty Latent Image|"
    r"LoadImage|Load Image|CheckpointLoaderSimple|Load Checkpoint|DiffusersLoader|VAELoader|UNETLoader|KSampler|"
    r"VAE (En|De)code"
)
"""ComfyUI's vocabulary for a graph: its verbs, socket types and node names."""


def front_end_words_in_engine_errors(root: Path) -> list[str]:
    """``file:line word`` for each of ``FRONT_END_WORDS`` in the text of a ``raise`` in ``altdiff_core``."""
    found = []
    for path in sorted((root / "altdiff_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                parts = (c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str))
                found += [f"{path.name}:{node.lineno} {m.group()}" for m in FRONT_END_WORDS.finditer("".join(parts))]
    return found


def test_engine_errors_speak_of_arguments_not_of_the_graph(tmp_path):
    """The engine also runs headless (``python . --prompt``), where "connect a LoadImage" means nothing: its messages
    name arguments, shapes and files, and the nodes add the socket and the ComfyUI node that fix them
    (``nodes/sockets.socket_hints``). The scan itself is checked on a planted message."""
    assert front_end_words_in_engine_errors(ROOT) == []
    planted = tmp_path / "altdiff_core" / "planted.py"
    planted.parent.mkdir()
    planted.write_text('raise ValueError(f"latent {x} is empty; " "connect an EmptyLatentImage.")\n', encoding="utf-8")
    assert front_end_words_in_engine_errors(tmp_path) == ["planted.py:1 connect", "planted.py:1 EmptyLatentImage"]


NODE_HINT_CASES = [  # (engine call, node call, argument, the engine's message, the node's addition)
    (
        lambda core, pack, m9: core.encode_image(m9.vae, "picture.png"),
        lambda core, pack, m9: pack.nodes.vae.AltDiffusionVAEEncode().encode("picture.png", m9.vae),
        "image",
        r"image is a str, not a \[batch, height, width, 3\] float tensor",
        "Connect pixels to a Load Image",
    ),
    (
        lambda core, pack, m9: core.encode_image(m9.vae, torch.zeros(1, 4, 4, 3)),
        lambda core, pack, m9: pack.nodes.vae.AltDiffusionVAEEncode().encode(torch.zeros(1, 4, 4, 3), m9.vae),
        "image",
        "smaller than one 8×8 latent cell",
        "Connect pixels to a Load Image",
    ),
    (
        lambda core, pack, m9: core.decode_latent(m9.vae, torch.zeros(1, 4, 0, 8)),
        lambda core, pack, m9: pack.nodes.vae.AltDiffusionVAEDecode().decode({"samples": torch.zeros(1, 4, 0, 8)}, m9.vae),
        "latent",
        "holds no pixels to decode",
        "an Empty Latent Image needs a width and height of at least 8",
    ),
    (
        lambda core, pack, m9: core.encode_prompt(m9.text_encoder, 42),
        lambda core, pack, m9: pack.nodes.text_encode.AltDiffusionTextEncode().encode(42, m9.text_encoder),
        "prompt",
        r"prompt is a int, not text \(a str\)",
        "Connect text to a node that outputs STRING",
    ),
]


@pytest.mark.parametrize("case", NODE_HINT_CASES, ids=["image-type", "image-size", "latent-size", "prompt-type"])
def test_stage_errors_name_the_argument_and_the_nodes_add_the_socket(core, pack, m9, case):
    """An engine stage's bad input raises ``StageInputError`` naming the argument, in engine terms; its node re-raises
    it with the socket to fix and the ComfyUI node that feeds it."""
    engine, node, argument, message, hint = case
    with pytest.raises(core.StageInputError, match=message) as err:
        engine(core, pack, m9)
    assert err.value.argument == argument and hint not in str(err.value)
    with pytest.raises(core.StageInputError, match=f"{message}.*{hint}") as err:
        node(core, pack, m9)
    assert err.value.argument == argument


def test_the_loader_node_names_comfyuis_loaders_for_another_model(core, pack, sd_clip_folder):
    """The engine says an SD model is not AltDiffusion; the loader node adds which stock ComfyUI loaders take it."""
    with pytest.raises(core.NotAltDiffusionError) as err:
        core.load_folder(sd_clip_folder)
    assert "not AltDiffusion" in str(err.value) and "CheckpointLoaderSimple" not in str(err.value)
    with pytest.raises(core.NotAltDiffusionError, match="not AltDiffusion.*CheckpointLoaderSimple.*DiffusersLoader"):
        pack.nodes.loader.AltDiffusionLoader.load_path(sd_clip_folder, "fp32")
