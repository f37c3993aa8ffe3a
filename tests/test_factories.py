"""The model factories write the BAAI on-disk layouts, and diffusers/transformers load them the reference way."""

import json
import pickle
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import sentencepiece
import torch

sys.path.insert(0, str(Path(__file__).parent))

from factories import (  # noqa: E402
    FAIRSEQ_OFFSET,
    LANGUAGE_SAMPLES,
    VARIANTS,
    WEIGHT_FILES,
    _trained_sentencepiece_model,
    reference_components,
    tokenizer_vocab_size,
    write_altdiffusion_folder,
    write_sd_clip_folder,
    write_tokenizer,
)

M18_LANGUAGES = ("en", "zh", "ja", "th", "ko", "hi", "uk", "ar", "tr", "vi", "pl", "nl", "pt", "it", "es", "de", "fr", "ru")
CASES = [(variant, weights) for variant in VARIANTS for weights in WEIGHT_FILES]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One folder per (variant, weights), written once for the module."""
    root = tmp_path_factory.mktemp("altdiffusion")
    return {case: write_altdiffusion_folder(root / "-".join(case), case[0], weights=case[1]) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_folder_loads_the_reference_way(folders, case):
    variant, _ = case
    spec = VARIANTS[variant]
    components = reference_components(folders[case])

    ids = components.tokenizer(["a cat", "一只猫"], padding="max_length", max_length=77, return_tensors="pt")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = components.text_encoder(input_ids=ids.input_ids, attention_mask=ids.attention_mask).projection_state
        noise = components.unet(latents, 10, encoder_hidden_states=text).sample
        image = components.vae.decode(latents).sample

    assert text.shape == (2, 77, spec.project_dim)
    assert noise.shape == latents.shape
    assert image.shape == (2, 3, 64, 64)
    assert all(torch.isfinite(t).all() for t in (text, noise, image))
    assert components.text_encoder.has_pre_transformation == spec.has_pre_transformation
    assert components.unet.config.cross_attention_dim == spec.project_dim
    assert components.vae.config.scaling_factor == pytest.approx(0.18215)
    assert components.scheduler.config.skip_prk_steps
    assert components.tokenizer.model_max_length == spec.tokenizer_max_length
    assert not components.text_encoder.training and not components.unet.training


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_layout_is_the_hub_layout(folders, case):
    variant, weights = case
    folder = folders[case]
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["text_encoder"] == ["alt_diffusion", "RobertaSeriesModelWithTransformation"]
    assert model_index["tokenizer"] == ["transformers", "XLMRobertaTokenizer"]

    assert sorted(p.name for p in (folder / "tokenizer").iterdir()) == [
        "sentencepiece.bpe.model",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(folder / "safety_checker" / "pytorch_model.bin", weights_only=True)
    assert (folder / "feature_extractor" / "preprocessor_config.json").is_file()

    te_file, diffusers_file = WEIGHT_FILES[weights]
    for component, name in (("text_encoder", te_file), ("unet", diffusers_file), ("vae", diffusers_file)):
        assert [p.name for p in (folder / component).iterdir() if p.suffix != ".json"] == [name]
    text_encoder = _load(folder / "text_encoder" / te_file)
    assert {"pre_LN.weight", "pre_LN.bias", "transformation.weight", "roberta.embeddings.position_ids"} <= set(text_encoder)
    assert ("transformation_pre.weight" in text_encoder) == VARIANTS[variant].has_pre_transformation
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert config["transformers_version"] == "4.24.0.dev0" and config["model_type"] == "xlm-roberta"
    assert config["vocab_size"] == tokenizer_vocab_size()

    vae_keys = set(_load(folder / "vae" / diffusers_file))
    old_names = "encoder.mid_block.attentions.0.query.weight" in vae_keys
    assert old_names == (weights == "bin")


def test_same_seed_gives_same_weights_in_both_formats(folders):
    safetensors_folder, bin_folder = folders["m9", "safetensors"], folders["m9", "bin"]
    for component, index in (("text_encoder", 0), ("unet", 1)):
        from_safetensors = _load(safetensors_folder / component / WEIGHT_FILES["safetensors"][index])
        from_bin = _load(bin_folder / component / WEIGHT_FILES["bin"][index])
        assert from_safetensors.keys() == from_bin.keys()
        assert all(torch.equal(from_safetensors[k], from_bin[k]) for k in from_safetensors)
    # The VAE differs in key names only, which diffusers undoes on load.
    vae_a = reference_components(safetensors_folder).vae.state_dict()
    vae_b = reference_components(bin_folder).vae.state_dict()
    assert all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)


def test_different_seeds_give_different_weights(tmp_path):
    a = write_altdiffusion_folder(tmp_path / "a", "m2", seed=1)
    b = write_altdiffusion_folder(tmp_path / "b", "m2", seed=2)
    name = WEIGHT_FILES["safetensors"][1]
    assert not torch.equal(_load(a / "unet" / name)["conv_in.weight"], _load(b / "unet" / name)["conv_in.weight"])


def test_float16_weights(tmp_path):
    folder = write_altdiffusion_folder(tmp_path / "half", "m18", dtype=torch.float16)
    weights = _load(folder / "unet" / WEIGHT_FILES["safetensors"][1])
    assert weights["conv_in.weight"].dtype == torch.float16
    assert json.loads((folder / "text_encoder" / "config.json").read_text())["torch_dtype"] == "float16"


def test_tokenizer_covers_every_m18_language(tmp_path):
    assert sorted(LANGUAGE_SAMPLES) == sorted(M18_LANGUAGES)
    from transformers import XLMRobertaTokenizer

    tokenizer = XLMRobertaTokenizer.from_pretrained(write_tokenizer(tmp_path / "tokenizer"))
    processor = sentencepiece.SentencePieceProcessor(model_proto=_trained_sentencepiece_model())
    for language in M18_LANGUAGES:
        for sentence in LANGUAGE_SAMPLES[language]:
            ids = tokenizer(sentence)["input_ids"]
            assert tokenizer.unk_token_id not in ids, (language, sentence)
            # fairseq ids: <s> + (sentencepiece id + 1) + </s>
            assert ids == [0] + [i + FAIRSEQ_OFFSET for i in processor.encode(sentence)] + [2]
    assert len(tokenizer) == tokenizer_vocab_size() == tokenizer.mask_token_id + 1
    assert tokenizer("，")["input_ids"] == tokenizer(",")["input_ids"]  # nmt_nfkc


def test_sd_clip_folder_is_not_altdiffusion(tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = write_sd_clip_folder(tmp_path / "sd")
    assert json.loads((folder / "model_index.json").read_text())["text_encoder"] == ["transformers", "CLIPTextModel"]
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    with torch.no_grad():
        hidden = text_encoder(**tokenizer(["a photo of a cat"], return_tensors="pt")).last_hidden_state
    assert hidden.shape[-1] == json.loads((folder / "unet" / "config.json").read_text())["cross_attention_dim"]


def test_tiny_folder_is_fast(tmp_path):
    _trained_sentencepiece_model()  # trained once per process; not part of the per-folder cost
    start = time.perf_counter()
    write_altdiffusion_folder(tmp_path / "tiny", "m18", weights="bin")
    assert time.perf_counter() - start < 3.0


def _load(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    return torch.load(path, weights_only=True)
