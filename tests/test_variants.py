"""A model variant is one row of ``altdiff_core.variants.VARIANTS``: every per-model fact elsewhere is read from it.

Two pins: no other module of the engine or the nodes keeps a table keyed by variant names or Hub ids (read from the
source), and a hypothetical fourth variant registered in the table alone is offered, known as a Hub id, detected in a
diffusers folder and in a single file, and named in messages, with nothing else changed.
"""

from __future__ import annotations

import ast
import importlib
import json
import shutil
from pathlib import Path

import pytest
from ldm_checkpoints import write_ldm_checkpoint

ROOT = Path(__file__).resolve().parents[1]

M4 = {
    "name": "m4",
    "context_dim": 768,
    "hidden_layer": -1,
    "pre_layer_norm": False,
    "projection": "transformation",
    "unet_family": "SD1",
    "languages": ("en", "zh", "de", "pt"),
    "hub_repo": "BAAI/AltDiffusion-m4",
    "model_max_length": 256,
}
"""A fourth model that does not exist: m9's shapes and computation, its own Hub id and tokenizer length."""


def variant_tables(root: Path, names: set[str]) -> list[str]:
    """Places outside ``altdiff_core/variants.py`` (in ``altdiff_core/`` and ``nodes/``) whose code keys, lists or
    compares variants by one of ``names`` (variant names, Hub ids): a dict with such a key or value, a tuple/list/set of
    two or more, a comparison or a subscript with one. Docstrings and prose in messages are not code, so not counted."""

    def constants(nodes) -> list[str]:
        found = []
        for node in nodes:
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                found += constants(node.elts)
            elif isinstance(node, ast.Constant) and node.value in names:
                found.append(node.value)
        return found

    places = []
    files = [*sorted((root / "altdiff_core").glob("*.py")), *sorted((root / "nodes").rglob("*.py"))]
    for path in files:
        if path == root / "altdiff_core" / "variants.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):
                hits = constants([k for k in node.keys if k is not None] + node.values)
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                hits = constants(node.elts)
                hits = hits if len(hits) >= 2 else []  # one default (the command line's --model) is not a table
            elif isinstance(node, ast.Compare):
                hits = constants([node.left, *node.comparators])
            elif isinstance(node, ast.Subscript):
                hits = constants([node.slice])
            else:
                continue
            if hits:
                places.append(f"{path.relative_to(root)}:{node.lineno} {type(node).__name__} {sorted(set(hits))}")
    return places


def test_no_module_but_variants_keeps_a_table_of_variants(core):
    names = {*core.VARIANTS, *(v.hub_repo for v in core.VARIANTS.values())}
    assert variant_tables(ROOT, names) == []


def test_the_rows_can_be_told_apart_and_computed(core):
    """Detection picks by head, then by the tokenizer's declared length, so that pair is unique; variants that share a
    head compute alike (a single file not told apart runs as either of them); each UNet family has its rules."""
    rows = list(core.VARIANTS.values())
    assert all(name == row.name for name, row in core.VARIANTS.items())
    keys = [(row.has_pre_transformation, row.model_max_length) for row in rows]
    assert len(set(keys)) == len(keys), keys
    assert len({row.hub_repo for row in rows}) == len(rows)
    for head in {row.has_pre_transformation for row in rows}:
        alike = {(r.context_dim, r.hidden_layer, r.head_layers, r.unet_family) for r in rows if r.has_pre_transformation == head}
        assert len(alike) == 1, alike
    assert {row.unet_family for row in rows} <= set(core.ldm_to_diffusers.ATTENTION_HEADS)


def test_detection_as_before(core):
    """The real rows give the detection the pack always had (A1111's m18 test; 512 = m9, else m2)."""
    detect = core.variants.detect_variant
    assert detect(has_pre_transformation=True, project_dim=32, model_max_length=512).name == "m18"
    assert detect(has_pre_transformation=False, project_dim=1024, model_max_length=77).name == "m18"
    assert detect(has_pre_transformation=False, project_dim=768, model_max_length=512).name == "m9"
    for length in (77, None, 1000):
        assert detect(has_pre_transformation=False, project_dim=768, model_max_length=length).name == "m2"
    either = core.variants.either_of([core.VARIANTS["m2"], core.VARIANTS["m9"]])
    assert either.name == "m2/m9" and either.languages == core.VARIANTS["m9"].languages
    assert core.variant_named("m2/m9") == either and core.variant_named("m18") is core.VARIANTS["m18"]
    with pytest.raises(core.ModelFormatError, match="unknown AltDiffusion variant 'm7'.*m2, m9, m18"):
        core.variant_named("m7")


@pytest.fixture
def m4(core, monkeypatch):
    """The fourth row, in the one table (``monkeypatch`` takes it out again)."""
    row = core.Variant(**M4)
    monkeypatch.setitem(core.VARIANTS, row.name, row)
    return row


@pytest.fixture
def folders(pack, tmp_path, monkeypatch):
    """Empty model folders for the nodes (models/altdiffusion, models/diffusers = downloads, models/checkpoints)."""
    seam = pack.nodes.comfy_seam
    made = {name: tmp_path / name for name in ("altdiffusion", "diffusers", "checkpoints")}
    for folder in made.values():
        folder.mkdir()
    monkeypatch.setattr(seam, "model_roots", lambda: [made["altdiffusion"], made["diffusers"]])
    monkeypatch.setattr(seam, "checkpoint_roots", lambda: [made["checkpoints"]])
    monkeypatch.setattr(seam, "hub_download_dir", lambda: made["diffusers"])
    return made


def test_a_fourth_variant_is_offered_and_known_as_a_hub_id(pack, core, m4, folders, m9_folder):
    loader = pack.nodes.loader
    assert core.hub_models() == ("BAAI/AltDiffusion", "BAAI/AltDiffusion-m9", "BAAI/AltDiffusion-m18", m4.hub_repo)
    assert loader.list_models() == list(core.hub_models())
    spec = loader.AltDiffusionLoader.INPUT_TYPES()["required"]["model_name"]
    assert m4.hub_repo in spec[0] and m4.hub_repo in spec[1]["tooltip"]
    cli = importlib.import_module("comfyui_altdiffusion.nodes.cli")
    assert m4.hub_repo in cli.build_parser().format_help()

    with pytest.raises(core.ModelNotFoundError, match="not downloaded yet"):  # known, so not an unknown id
        loader.resolve_model(m4.hub_repo, download=False)
    with pytest.raises(core.ModelNotFoundError, match=f"someone/x.*{m4.hub_repo}"):
        loader.resolve_model("someone/x")
    local = folders["diffusers"] / "AltDiffusion-m4"
    shutil.copytree(m9_folder, local)
    assert loader.resolve_model(m4.hub_repo, download=False) == local.resolve()
    assert cli.resolve_model_argument(m4.hub_repo) == local.resolve()  # found there, so no download


def _declare_length(tokenizer_folder: Path, length: int) -> None:
    config_file = tokenizer_folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, "model_max_length": length}), encoding="utf-8")


def test_a_fourth_variant_is_detected_in_a_folder_and_a_single_file(core, m4, m9_folder, tmp_path):
    folder = tmp_path / "AltDiffusion-m4"
    shutil.copytree(m9_folder, folder)
    _declare_length(folder / "tokenizer", m4.model_max_length)
    loaded = core.load_folder(folder)
    assert loaded.text_encoder.variant is m4 and loaded.model.variant is m4 and loaded.info["variant"] == "m4"
    assert core.load_folder(m9_folder).text_encoder.variant.name == "m9"  # the others as before

    path = write_ldm_checkpoint(m9_folder, tmp_path / "alt-m4.safetensors")
    _declare_length(tmp_path / "alt-m4" / "tokenizer", m4.model_max_length)  # the checkpoint's own tokenizer
    assert core.load_checkpoint(path).text_encoder.variant is m4

    shutil.rmtree(tmp_path / "alt-m4" / "tokenizer")  # a tokenizer from elsewhere: not told apart, named all three
    undetermined = core.load_checkpoint(path, tokenizer_folders=[m9_folder / "tokenizer"]).text_encoder.variant
    assert undetermined.name == "m2/m9/m4" and set(m4.languages) <= set(undetermined.languages)
    assert core.variant_named(undetermined.name) == undetermined  # what ComfyUI's CLIP is built from (native.py)


def test_a_fourth_variant_is_named_in_the_width_message(core, m4):
    """The sampler's width check lists every variant's conditioning width from the table."""
    with pytest.raises(core.InvalidInputError, match=r"\(m2/m9/m4 give 768, m18 gives 1024\)"):
        core.check_context_width(1024, m4, "positive")
