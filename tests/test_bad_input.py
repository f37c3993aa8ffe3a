"""Bad input gets an error that names the value and the fix — never a bare torch traceback as the only message."""

from __future__ import annotations

import shutil

import pytest
import torch


@pytest.fixture(scope="module")
def core(pack):
    return pack.altdiff_core


@pytest.fixture(scope="module")
def m9(core, m9_folder):
    return core.load_folder(m9_folder)


def test_missing_folder(core, tmp_path):
    with pytest.raises(core.ModelNotFoundError, match="does not exist") as err:
        core.load_folder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_folder_without_model_index(core, tmp_path):
    with pytest.raises(core.ModelFormatError, match="model_index.json"):
        core.load_folder(tmp_path)


def test_stable_diffusion_clip_folder_is_not_altdiffusion(core, sd_clip_folder):
    with pytest.raises(core.NotAltDiffusionError) as err:
        core.load_folder(sd_clip_folder)
    message = str(err.value)
    assert "CLIP" in message and "not AltDiffusion" in message and "CheckpointLoaderSimple" in message


@pytest.mark.parametrize(
    ("folder_fixture", "relative"),
    [
        ("m9_folder", "unet/diffusion_pytorch_model.safetensors"),
        ("m9_folder", "text_encoder/model.safetensors"),
        ("m9_bin_folder", "vae/diffusion_pytorch_model.bin"),
    ],
)
def test_truncated_weights(core, request, tmp_path, folder_fixture, relative):
    folder = tmp_path / "copy"
    shutil.copytree(request.getfixturevalue(folder_fixture), folder)
    path = folder / relative
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(core.ModelFormatError, match="damaged or truncated") as err:
        core.load_folder(folder)
    assert str(path) in str(err.value)


def test_missing_tokenizer(core, m9_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(m9_folder, folder)
    (folder / "tokenizer" / "sentencepiece.bpe.model").unlink()
    with pytest.raises(core.ModelFormatError, match="sentencepiece.bpe.model"):
        core.load_folder(folder)


def test_pickle_with_code_is_refused(core, m9_bin_folder, tmp_path):
    """A .bin holding a Python object (not only tensors) is not unpickled."""
    folder = tmp_path / "copy"
    shutil.copytree(m9_bin_folder, folder)
    path = folder / "unet" / "diffusion_pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    state["evil"] = ExecutesOnLoad()
    torch.save(state, path)
    with pytest.raises(core.ModelFormatError, match="not unpickled"):
        core.load_folder(folder)
    assert not ExecutesOnLoad.ran


class ExecutesOnLoad:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    ExecutesOnLoad.ran = True


def test_wrong_width_conditioning(core, m9):
    wide = [[torch.zeros(1, 77, 1024), {}]]
    with pytest.raises(core.InvalidInputError, match="1024 wide.*expects 768"):
        core.sample_latent(m9.model, wide, wide, torch.zeros(1, 4, 8, 8), seed=0, steps=2, cfg=7.0,
                           sampler_name="euler", scheduler="normal")


def test_zero_steps(core, m9):
    cond, _ = core.encode_prompt(m9.text_encoder, "")
    with pytest.raises(core.InvalidInputError, match="steps is 0"):
        core.sample_latent(m9.model, [[cond, {}]], [[cond, {}]], torch.zeros(1, 4, 8, 8), seed=0, steps=0, cfg=7.0,
                           sampler_name="euler", scheduler="normal")


def test_wrong_channel_latent(core, m9):
    cond, _ = core.encode_prompt(m9.text_encoder, "")
    with pytest.raises(core.InvalidInputError, match=r"\(1, 16, 8, 8\).*\[batch, 4"):
        core.sample_latent(m9.model, [[cond, {}]], [[cond, {}]], torch.zeros(1, 16, 8, 8), seed=0, steps=2, cfg=7.0,
                           sampler_name="euler", scheduler="normal")
    with pytest.raises(core.InvalidInputError, match="does not fit this VAE"):
        core.decode_latent(m9.vae, torch.zeros(1, 16, 8, 8))


def test_unknown_sampler_and_scheduler(core, m9):
    cond, _ = core.encode_prompt(m9.text_encoder, "")
    kwargs = dict(seed=0, steps=2, cfg=7.0)
    with pytest.raises(core.InvalidInputError, match="unknown sampler 'nope'"):
        core.sample_latent(m9.model, [[cond, {}]], [[cond, {}]], torch.zeros(1, 4, 8, 8), sampler_name="nope",
                           scheduler="normal", **kwargs)
    with pytest.raises(core.AltDiffusionError, match="nope"):
        core.sample_latent(m9.model, [[cond, {}]], [[cond, {}]], torch.zeros(1, 4, 8, 8), sampler_name="euler",
                           scheduler="nope", **kwargs)


def test_unsupported_conditioning_option_is_refused(core, m9):
    cond, _ = core.encode_prompt(m9.text_encoder, "")
    area = [[cond, {"area": (8, 8, 0, 0)}]]
    with pytest.raises(core.InvalidInputError, match="ConditioningSetArea.*KSampler"):
        core.sample_latent(m9.model, area, area, torch.zeros(1, 4, 8, 8), seed=0, steps=2, cfg=7.0,
                           sampler_name="euler", scheduler="normal")


def test_image_too_small_for_one_latent_cell(core, m9):
    with pytest.raises(core.InvalidInputError, match="smaller than one 8×8"):
        core.encode_image(m9.vae, torch.rand(1, 5, 5, 3))


def test_loader_lists_only_altdiffusion_folders(pack, m9_folder, sd_clip_folder, monkeypatch):
    loader = pack.nodes.loader
    monkeypatch.setattr(pack.nodes.comfy_seam, "model_roots", lambda: [m9_folder.parent])
    names = loader.list_models()
    assert "AltDiffusion-m9-tiny" in names and sd_clip_folder.name not in names
    assert loader.resolve_model("AltDiffusion-m9-tiny") == m9_folder.resolve()


def test_model_names_leaving_model_folders_are_refused(pack, m9_folder, tmp_path, monkeypatch):
    loader = pack.nodes.loader
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setattr(pack.nodes.comfy_seam, "model_roots", lambda: [root])
    escape = "../" * len(root.parts) + str(m9_folder).lstrip("/")
    for name in (escape, str(m9_folder)):
        with pytest.raises(pack.altdiff_core.ModelNotFoundError, match="not an AltDiffusion folder under"):
            loader.resolve_model(name)
