"""Every text-encoder layout real tools write loads and encodes like its BAAI-layout twin (issue 14, part 4).

Writers disagree about keys the conditioning never uses: BAAI's Hub files and A1111/LDM single files carry ``pre_LN``
for m2/m9, diffusers' ``RobertaSeriesModelWithTransformation.save_pretrained`` (fine-tune and DreamBooth scripts,
``AltDiffusionPipeline.save_pretrained``) builds it only for m18; ``roberta.pooler.*`` and
``roberta.embeddings.position_ids`` come and go with writers and transformers versions. Those are optional; the weights
a variant applies (m2/m9 ``transformation``, m18 ``pre_LN`` and ``transformation_pre``) and the XLM-R trunk are required,
and a file without them is refused with a message naming the missing key.

Twins share the seed, so their shared weights are equal: the conditioning must agree to 1e-6 (it is bitwise equal).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from factories import DIFFUSERS_SAVED_MODEL_INDEX, POSITION_IDS_KEY, TextEncoderLayout, write_altdiffusion_folder
from ldm_checkpoints import write_ldm_checkpoint

PROMPTS = ("一只戴着红色帽子的猫，油画风格", "A cat sleeping under a cherry tree, (watercolor:1.3)", "")
TOL = 1e-6
SEEDS = {"m2": 0, "m9": 0, "m18": 1}
DIFFUSERS = TextEncoderLayout(writer="diffusers")

# id → (variant, weights, layout, keys the written text-encoder file must hold, keys it must not hold)
FOLDER_LAYOUTS: dict[str, tuple[str, str, TextEncoderLayout, set[str], set[str]]] = {
    # the case: an m9 text encoder saved by diffusers has no pre_LN
    "m9-diffusers-safetensors": (
        "m9",
        "safetensors",
        DIFFUSERS,
        {"roberta.pooler.dense.weight"},
        {"pre_LN.weight", POSITION_IDS_KEY},
    ),
    "m9-diffusers-bin": ("m9", "bin", DIFFUSERS, {"roberta.pooler.dense.weight"}, {"pre_LN.weight", POSITION_IDS_KEY}),
    "m9-diffusers-no-pooler": (
        "m9",
        "safetensors",
        TextEncoderLayout(writer="diffusers", pooler=False),
        set(),
        {"pre_LN.weight", "roberta.pooler.dense.weight", POSITION_IDS_KEY},
    ),
    "m9-diffusers-bin-position-ids": (  # transformers < 4.31 saved position_ids
        "m9",
        "bin",
        TextEncoderLayout(writer="diffusers", position_ids=True),
        {POSITION_IDS_KEY},
        {"pre_LN.weight"},
    ),
    "m9-diffusers-with-pre-ln": (
        "m9",
        "safetensors",
        TextEncoderLayout(writer="diffusers", pre_ln=True),
        {"pre_LN.weight"},
        {POSITION_IDS_KEY},
    ),
    "m2-diffusers-safetensors": ("m2", "safetensors", DIFFUSERS, {"transformation.weight"}, {"pre_LN.weight"}),
    "m2-diffusers-bin-no-pooler": (
        "m2",
        "bin",
        TextEncoderLayout(writer="diffusers", pooler=False),
        set(),
        {"pre_LN.weight", "roberta.pooler.dense.weight"},
    ),
    "m9-baai-stripped": (  # the Hub config and key names, every optional key gone
        "m9",
        "bin",
        TextEncoderLayout(pre_ln=False, pooler=False, position_ids=False),
        {"transformation.weight"},
        {"pre_LN.weight", "roberta.pooler.dense.weight", POSITION_IDS_KEY},
    ),
    "m18-diffusers-safetensors": (
        "m18",
        "safetensors",
        DIFFUSERS,
        {"pre_LN.weight", "transformation_pre.weight"},
        {POSITION_IDS_KEY},
    ),
    "m18-diffusers-bin-no-pooler": (
        "m18",
        "bin",
        TextEncoderLayout(writer="diffusers", pooler=False, position_ids=True),
        {"pre_LN.weight", POSITION_IDS_KEY},
        {"roberta.pooler.dense.weight"},
    ),
    "m18-without-transformation": (  # m18 never applies `transformation`
        "m18",
        "safetensors",
        TextEncoderLayout(drop=("transformation.",)),
        {"pre_LN.weight", "transformation_pre.weight"},
        {"transformation.weight"},
    ),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("text_encoder_layouts")


@pytest.fixture(scope="module")
def twins(core, root):
    """The BAAI-layout folder of each variant, loaded once: the reference every other layout must match."""
    folders = {v: write_altdiffusion_folder(root / f"baai-{v}", v, seed=seed) for v, seed in SEEDS.items()}
    return {v: (folder, core.load_folder(folder)) for v, folder in folders.items()}


def _text_encoder_keys(folder: Path) -> set[str]:
    (weights,) = [p for p in (folder / "text_encoder").iterdir() if p.suffix in (".safetensors", ".bin")]
    if weights.suffix == ".safetensors":
        return set(safetensors.torch.load_file(str(weights)))
    return set(torch.load(weights, weights_only=True))


def _max_diff(core, loaded, twin) -> float:
    """Largest |conditioning − twin's| over ``PROMPTS``, after checking both tokenize every prompt alike."""
    worst = 0.0
    for prompt in PROMPTS:
        ours, theirs = (m.text_encoder.tokenizer.windows(prompt) for m in (loaded, twin))
        assert torch.equal(ours.input_ids, theirs.input_ids) and torch.equal(ours.weights, theirs.weights)
        a, b = (core.encode_prompt(m.text_encoder, prompt)[0] for m in (loaded, twin))
        assert a.shape == b.shape
        worst = max(worst, float((a - b).abs().max()))
    return worst


@pytest.mark.parametrize("case", FOLDER_LAYOUTS)
def test_folder_layout_encodes_like_the_baai_twin(core, root, twins, case):
    variant, weights, layout, present, absent = FOLDER_LAYOUTS[case]
    folder = write_altdiffusion_folder(root / case, variant, seed=SEEDS[variant], weights=weights, text_encoder=layout)
    keys = _text_encoder_keys(folder)
    assert present <= keys and not absent & keys, "the factory did not write the layout this case is about"
    assert core.is_altdiffusion_folder(folder)

    loaded = core.load_folder(folder)

    twin_folder, twin = twins[variant]
    assert loaded.info["variant"] == twin.info["variant"] == variant
    assert loaded.text_encoder.module.config.project_dim == twin.text_encoder.module.config.project_dim
    assert _max_diff(core, loaded, twin) <= TOL


def test_diffusers_writer_files_are_what_save_pretrained_writes(root):
    """The factory's diffusers layout: save_pretrained's own config.json (transformers 5 keys) and weights file."""
    folder = write_altdiffusion_folder(root / "m9-diffusers-files", "m9", text_encoder=DIFFUSERS)
    assert sorted(p.name for p in (folder / "text_encoder").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert config["architectures"] == ["RobertaSeriesModelWithTransformation"]
    assert config["transformers_version"] != "4.24.0.dev0" and "has_pre_transformation" not in config
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["text_encoder"] == ["diffusers", "RobertaSeriesModelWithTransformation"]


def test_pipeline_save_pretrained_folder_loads(core, root, twins):
    """A real ``AltDiffusionPipeline.save_pretrained`` (the BAAI m9 twin's components, no safety checker): its
    model_index.json is the one the factory writes, our folder detection accepts it, its text encoder has no pre_LN,
    and the folder encodes like the twin. transformers 5 saves the tokenizer as tokenizer.json only, so the model's
    sentencepiece tokenizer folder is copied in (transformers 4 saved sentencepiece.bpe.model itself)."""
    from diffusers.pipelines.deprecated.alt_diffusion.pipeline_alt_diffusion import AltDiffusionPipeline
    from factories import reference_components
    from transformers import CLIPImageProcessor

    twin_folder, twin = twins["m9"]
    ref = reference_components(twin_folder)
    pipe = AltDiffusionPipeline(
        vae=ref.vae,
        text_encoder=ref.text_encoder,
        tokenizer=ref.tokenizer,
        unet=ref.unet,
        scheduler=ref.scheduler,
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(),
        requires_safety_checker=False,
    )
    saved = root / "pipeline-save"
    pipe.save_pretrained(saved)

    model_index = json.loads((saved / "model_index.json").read_text())
    assert {k: model_index[k] for k in DIFFUSERS_SAVED_MODEL_INDEX} == DIFFUSERS_SAVED_MODEL_INDEX
    assert core.is_altdiffusion_folder(saved)
    core.check_folder(saved)
    assert not any(k.startswith("pre_LN.") for k in _text_encoder_keys(saved))

    shutil.rmtree(saved / "tokenizer")
    shutil.copytree(twin_folder / "tokenizer", saved / "tokenizer")
    loaded = core.load_folder(saved)
    assert loaded.info["variant"] == "m9"
    assert _max_diff(core, loaded, twin) <= TOL


# id → (variant, layout of the folder it is converted from, LDM key prefixes left out, suffix)
SINGLE_FILE_LAYOUTS: dict[str, tuple[str, TextEncoderLayout, tuple[str, ...], str]] = {
    "m9-a1111-without-pre-ln": ("m9", TextEncoderLayout(), ("cond_stage_model.pre_LN.",), ".safetensors"),
    "m9-a1111-without-pre-ln-ckpt": ("m9", TextEncoderLayout(), ("cond_stage_model.pre_LN.",), ".ckpt"),
    "m9-a1111-without-pooler-position-ids": (
        "m9",
        TextEncoderLayout(),
        ("cond_stage_model.roberta.pooler.", "cond_stage_model.roberta.embeddings.position_ids"),
        ".safetensors",
    ),
    "m9-from-diffusers-save": ("m9", DIFFUSERS, (), ".safetensors"),
    "m2-from-diffusers-save": ("m2", DIFFUSERS, (), ".ckpt"),
    "m18-from-diffusers-save": ("m18", DIFFUSERS, (), ".safetensors"),
    "m18-without-transformation": ("m18", TextEncoderLayout(), ("cond_stage_model.transformation.",), ".safetensors"),
}


@pytest.mark.parametrize("case", SINGLE_FILE_LAYOUTS)
def test_single_file_layout_encodes_like_the_baai_twin(core, root, twins, case):
    variant, layout, drop, suffix = SINGLE_FILE_LAYOUTS[case]
    folder = write_altdiffusion_folder(root / f"src-{case}", variant, seed=SEEDS[variant], text_encoder=layout)
    path = write_ldm_checkpoint(folder, root / f"{case}{suffix}", drop=drop)
    loaded = core.load_checkpoint(path)

    twin_folder, twin = twins[variant]
    assert loaded.info["variant"] == variant
    assert _max_diff(core, loaded, twin) <= TOL


def test_baai_layout_single_file_still_loads(core, root, twins):
    """A1111's own m9 layout, ``cond_stage_model.pre_LN.*`` included (present, unused): unchanged behaviour."""
    twin_folder, twin = twins["m9"]
    path = write_ldm_checkpoint(twin_folder, root / "m9-a1111.safetensors")
    assert "cond_stage_model.pre_LN.weight" in safetensors.torch.load_file(str(path))
    assert _max_diff(core, core.load_checkpoint(path), twin) <= TOL


# id → (variant, folder layout, LDM prefixes left out or None for the folder itself, what the error must name)
REFUSED: dict[str, tuple[str, TextEncoderLayout, tuple[str, ...] | None, str]] = {
    "m18-folder-without-pre-ln": ("m18", TextEncoderLayout(pre_ln=False), None, r"pre_LN\.bias, pre_LN\.weight.*m18"),
    "m18-diffusers-folder-without-transformation-pre": (
        "m18",
        TextEncoderLayout(writer="diffusers", drop=("transformation_pre.",)),
        None,
        r"transformation_pre\.bias, transformation_pre\.weight.*m18",
    ),
    "m9-diffusers-folder-without-transformation": (
        "m9",
        TextEncoderLayout(writer="diffusers", drop=("transformation.",)),
        None,
        r"transformation\.bias, transformation\.weight.*m9",
    ),
    "m9-folder-without-a-trunk-layer": (
        "m9",
        TextEncoderLayout(writer="diffusers", drop=("roberta.encoder.layer.1.output.dense.",)),
        None,
        r"2 missing \(e\.g\. roberta\.encoder\.layer\.1\.output\.dense",
    ),
    "m18-file-without-pre-ln": ("m18", TextEncoderLayout(), ("cond_stage_model.pre_LN.",), r"pre_LN\.bias, pre_LN\.weight.*m18"),
    "m18-file-without-transformation-pre": (
        "m18",
        TextEncoderLayout(),
        ("cond_stage_model.transformation_pre.",),
        r"transformation_pre\.bias, transformation_pre\.weight.*m18",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_weights_the_variant_uses_are_required(core, root, case):
    variant, layout, drop, names = REFUSED[case]
    folder = write_altdiffusion_folder(root / f"refused-{case}", variant, seed=SEEDS[variant], text_encoder=layout)
    path = folder if drop is None else write_ldm_checkpoint(folder, root / f"{case}.safetensors", drop=drop)
    load = core.load_folder if drop is None else core.load_checkpoint
    with pytest.raises(core.ModelFormatError, match=names) as err:
        load(path)
    assert str(path) in str(err.value)


def test_module_holds_only_the_head_layers_its_variant_applies(core, twins):
    from comfyui_altdiffusion.altdiff_core.text_encoder import ignored_key_prefixes

    heads = {
        v: {k.split(".")[0] for k in twins[v][1].text_encoder.module.state_dict() if not k.startswith("roberta.")} for v in SEEDS
    }
    assert heads == {"m2": {"transformation"}, "m9": {"transformation"}, "m18": {"pre_LN", "transformation_pre"}}
    assert core.VARIANTS["m18"].head_layers == ("pre_LN", "transformation_pre")
    assert "pre_LN." in ignored_key_prefixes(core.VARIANTS["m9"])
    assert "transformation." in ignored_key_prefixes(core.VARIANTS["m18"])
    assert "pre_LN." not in ignored_key_prefixes(core.VARIANTS["m18"])
