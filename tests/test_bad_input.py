"""Bad input gets an error that names the value and the fix — never a bare torch traceback as the only message."""

from __future__ import annotations

import gc
import json
import shutil

import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from ldm_checkpoints import ldm_state_dict, write_ldm_checkpoint


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
    assert "CLIP" in message and "not AltDiffusion" in message and "loader for that model family" in message


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


def sample(core, m9, conditioning=None, latent=None, **overrides):
    """``sample_latent`` on the tiny m9 with valid defaults; ``overrides`` replace one of them (the bad value)."""
    if conditioning is None:
        conditioning, _ = core.encode_prompt(m9.text_encoder, "")
    kwargs = dict(seed=0, steps=2, cfg=7.0, sampler_name="euler", scheduler="normal") | overrides
    latent = torch.zeros(1, 4, 8, 8) if latent is None else latent
    return core.sample_latent(m9.model, conditioning, conditioning, latent, **kwargs)


def test_wrong_width_conditioning(core, m9):
    with pytest.raises(core.InvalidInputError, match="1024 wide.*expects 768"):
        sample(core, m9, conditioning=torch.zeros(1, 77, 1024))


def test_zero_steps(core, m9):
    with pytest.raises(core.InvalidInputError, match="steps must be a whole number >= 1, got 0"):
        sample(core, m9, steps=0)


def test_wrong_channel_latent(core, m9):
    with pytest.raises(core.InvalidInputError, match=r"\(1, 16, 8, 8\).*\[batch, 4"):
        sample(core, m9, latent=torch.zeros(1, 16, 8, 8))
    with pytest.raises(core.InvalidInputError, match="does not fit this VAE"):
        core.decode_latent(m9.vae, torch.zeros(1, 16, 8, 8))


def test_zero_batch_latent_is_refused_by_the_sampler(core, m9):
    with pytest.raises(core.InvalidInputError, match="latent batch is empty"):
        sample(core, m9, latent=torch.zeros(0, 4, 8, 8))


def test_unknown_sampler_and_scheduler(core, m9):
    with pytest.raises(core.InvalidInputError, match="unknown sampler 'nope'"):
        sample(core, m9, sampler_name="nope")
    with pytest.raises(core.AltDiffusionError, match="nope"):
        sample(core, m9, scheduler="nope")


def test_unsupported_conditioning_option_is_refused(core, pack, m9):
    cond, _ = core.encode_prompt(m9.text_encoder, "")
    conditioning = [[cond, {"area": (8, 8, 0, 0)}]]
    with pytest.raises(core.InvalidInputError, match="ConditioningSetArea.*KSampler"):
        pack.nodes.sampler.AltDiffusionSampler().sample(
            m9.model, 0, 2, 7.0, "euler", "normal", conditioning, conditioning, {"samples": torch.zeros(1, 4, 8, 8)}
        )


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


# ------------------------------------------------------------------------------- single-file checkpoints, paths


@pytest.fixture(scope="module")
def m9_checkpoint(m9_folder, tmp_path_factory):
    return write_ldm_checkpoint(m9_folder, tmp_path_factory.mktemp("ckpt") / "alt-m9.safetensors")


def _copy_checkpoint(path, dest_dir):
    dest = dest_dir / path.name
    shutil.copy(path, dest)
    shutil.copytree(path.parent / path.stem, dest_dir / path.stem)
    return dest


def test_truncated_checkpoint(core, m9_checkpoint, tmp_path):
    path = _copy_checkpoint(m9_checkpoint, tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(core.ModelFormatError, match="damaged or truncated.*Download it again") as err:
        core.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_component_file_is_not_a_checkpoint(core, m9_folder, tmp_path):
    """A diffusers UNet file picked as a checkpoint: wrong keys, named, with what a checkpoint holds."""
    path = tmp_path / "unet.safetensors"
    shutil.copy(m9_folder / "unet" / "diffusion_pytorch_model.safetensors", path)
    with pytest.raises(core.ModelFormatError, match="not an AltDiffusion checkpoint.*model.diffusion_model") as err:
        core.load_checkpoint(path)
    assert str(path) in str(err.value) and "conv_in" in str(err.value)


@pytest.mark.parametrize(
    ("dropped", "expected"),
    [
        ("model.diffusion_model.out.2.weight", r"1 missing \(e\.g\. conv_out\.weight\)"),
        ("first_stage_model.", r"no vae \(first_stage_model\.\*\)"),
        ("cond_stage_model.transformation.weight", "transformation.weight"),
    ],
)
def test_checkpoint_with_missing_keys(core, m9_folder, tmp_path, dropped, expected):
    path = write_ldm_checkpoint(m9_folder, tmp_path / "alt.safetensors")
    state = {k: v for k, v in ldm_state_dict(m9_folder).items() if not k.startswith(dropped)}
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(core.ModelFormatError, match=expected) as err:
        core.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_checkpoint(core, tmp_path):
    for load in (core.load_checkpoint, core.load_model):
        with pytest.raises(core.ModelNotFoundError, match="does not exist") as err:
            load(tmp_path / "nowhere.safetensors")
        assert str(tmp_path / "nowhere.safetensors") in str(err.value)


def test_folder_without_tokenizer_folder(core, m9_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(m9_folder, folder)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(core.ModelFormatError, match="no tokenizer/ folder.*sentencepiece.bpe.model") as err:
        core.load_folder(folder)
    assert str(folder) in str(err.value)


def test_checkpoint_names_leaving_model_folders_are_refused(pack, m9_checkpoint, tmp_path, monkeypatch):
    loader = pack.nodes.loader
    root = tmp_path / "checkpoints"
    (root / "inner").mkdir(parents=True)
    monkeypatch.setattr(pack.nodes.comfy_seam, "model_roots", lambda: [root])
    monkeypatch.setattr(pack.nodes.comfy_seam, "checkpoint_roots", lambda: [root / "inner"])
    shutil.copy(m9_checkpoint, root / "outside.safetensors")  # in a model folder, but not under a checkpoint root
    for name in ("../outside.safetensors", str(m9_checkpoint), "inner/../../outside.safetensors"):
        with pytest.raises(pack.altdiff_core.ModelNotFoundError, match="not an AltDiffusion folder under") as err:
            loader.resolve_model(name)
        assert repr(name) in str(err.value)


def test_failed_load_keeps_nothing(core, m9_folder, tmp_path):
    """The text encoder and UNet are built before the VAE fails; once the error is gone, so are they."""
    path = write_ldm_checkpoint(m9_folder, tmp_path / "alt.safetensors")
    vae_config = tmp_path / "alt" / "vae" / "config.json"
    config = json.loads(vae_config.read_text(encoding="utf-8"))
    vae_config.write_text(json.dumps({**config, "block_out_channels": [64, 64, 64, 64]}), encoding="utf-8")
    kinds = (core.text_encoder.XLMRobertaWithHead, UNet2DConditionModel, AutoencoderKL)

    def alive():
        gc.collect()
        return sum(type(o) in kinds for o in gc.get_objects())

    before = alive()
    with pytest.raises(core.ModelFormatError, match=r"do not fit.*(encoder|decoder)\.") as err:
        core.load_checkpoint(path)
    del err
    assert alive() == before


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_latent_or_image_is_refused(core, m9, bad):
    latent = torch.zeros(1, 4, 8, 8)
    latent[0, 1, 2, 3] = bad
    with pytest.raises(core.InvalidInputError, match="1 NaN/inf values out of 256"):
        core.decode_latent(m9.vae, latent)
    image = torch.rand(1, 16, 16, 3)
    image[0, 0, 0, 0] = bad
    with pytest.raises(core.InvalidInputError, match="NaN/inf"):
        core.encode_image(m9.vae, image)


def test_zero_batch_is_refused_by_the_vae(core, m9):
    with pytest.raises(core.InvalidInputError, match="batch is empty"):
        core.decode_latent(m9.vae, torch.zeros(0, 4, 8, 8))
    with pytest.raises(core.InvalidInputError, match="batch is empty"):
        core.encode_image(m9.vae, torch.zeros(0, 16, 16, 3))


def test_vae_overflow_is_reported_with_the_fix(core, m9, monkeypatch):
    """A VAE whose output overflows (fp16 at high resolution) gives a message naming vae_dtype, not a black image."""
    real_decode = m9.vae.module.decode

    def overflowing(latent):
        out = real_decode(latent)
        out.sample[..., 0, 0] = float("inf")
        return out

    monkeypatch.setattr(m9.vae.module, "decode", overflowing)
    with pytest.raises(core.InvalidInputError, match="vae_dtype fp32"):
        core.decode_latent(m9.vae, torch.zeros(1, 4, 8, 8))


def _safetensors(header: str, data: bytes = b"", claimed: int | None = None) -> bytes:
    raw = header.encode()
    return (len(raw) if claimed is None else claimed).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x00", "too short"),
        (_safetensors("{}", claimed=2**62), "header claims"),
        (_safetensors("not json at all!"), "not JSON"),
        (_safetensors("[]"), "not a JSON object"),
        (_safetensors('{"w": {"dtype": "XX", "shape": [4], "data_offsets": [0, 16]}}', bytes(16)), "invalid header"),
        (_safetensors('{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}}', bytes(64)), "needs 64 bytes"),
        (_safetensors('{"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}', bytes(16)), "negative"),
        (_safetensors('{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', bytes(8)), "ends at byte"),
        (_safetensors('{"w": {"dtype": "F32", "shape": [1000000000000], "data_offsets": [0, 4000000000000]}}'), "ends at"),
    ],
    ids=["short", "huge-length", "not-json", "not-object", "dtype", "size", "negative", "beyond-file", "absurd-shape"],
)
def test_absurd_safetensors_headers_are_refused(core, tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(core.ModelFormatError, match=message) as err:
        core.weights.read_state_dict(path)
    assert str(path) in str(err.value)


def test_loaded_model_no_longer_depends_on_its_file(core, m9_folder, tmp_path):
    """Truncating or deleting the weight files after loading changes nothing (no memory map to fault on)."""
    folder = tmp_path / "copy"
    shutil.copytree(m9_folder, folder)
    loaded = core.load_folder(folder)
    cond, _ = core.encode_prompt(loaded.text_encoder, "a cat")
    before = sample(core, loaded, conditioning=cond, seed=1, cfg=5.0)
    for weights in folder.rglob("*.safetensors"):
        weights.write_bytes(b"")
    after = sample(core, loaded, conditioning=cond, seed=1, cfg=5.0)
    assert torch.equal(before, after)
    assert torch.equal(core.encode_prompt(loaded.text_encoder, "a cat")[0], cond)
