"""Single-file A1111/LDM checkpoints: the same random weights as a diffusers folder and as one LDM file load to
modules with identical outputs; configs are inferred from shapes for real-size models; dtypes stay as asked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from factories import UNET_CONFIGS, VAE_CONFIGS, text_encoder_config
from ldm_checkpoints import ldm_state_dict, unet_to_ldm, vae_to_ldm, write_ldm_checkpoint, write_sd_clip_checkpoint

PROMPTS = ("一只戴着红色帽子的猫，油画风格", "A cat sleeping under a cherry tree, watercolor", "")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def m9_file(m9_folder, ckpt_dir) -> Path:
    return write_ldm_checkpoint(m9_folder, ckpt_dir / "alt-m9.safetensors")


@pytest.fixture(scope="module")
def m18_file(m18_folder, ckpt_dir) -> Path:
    return write_ldm_checkpoint(m18_folder, ckpt_dir / "alt-m18.safetensors")


def _outputs(loaded, core) -> dict[str, torch.Tensor]:
    """Text-encoder conditioning for a few prompts, one UNet call, one VAE decode and encode."""
    generator = torch.manual_seed(0)
    conds = [core.encode_prompt(loaded.text_encoder, p)[0] for p in PROMPTS]
    dtype = loaded.model.dtype
    x = torch.randn(1, 4, 8, 8, generator=generator).to(dtype)
    with torch.no_grad():
        eps = loaded.model.module(x, torch.tensor([500]), encoder_hidden_states=conds[0].to(dtype)).sample
        pixels = loaded.vae.module.decode(x.to(loaded.vae.dtype)).sample
        latent = loaded.vae.module.encode(pixels).latent_dist.mode()
    return {**{f"cond{i}": c for i, c in enumerate(conds)}, "eps": eps, "pixels": pixels, "latent": latent}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["as_stored", "cast_while_reading"])
@pytest.mark.parametrize(
    ("folder_fixture", "file_fixture", "variant"), [("m9_folder", "m9_file", "m9"), ("m18_folder", "m18_file", "m18")]
)
def test_single_file_gives_the_folder_model(core, request, folder_fixture, file_fixture, variant, dtype):
    """Same configs, the same weights bit for bit, the same outputs bit for bit (weights are read into fresh,
    aligned memory whatever the file's layout, so CPU kernels take the same paths), also when cast on reading."""
    from_folder = core.load_folder(request.getfixturevalue(folder_fixture), dtype=dtype)
    from_file = core.load_checkpoint(request.getfixturevalue(file_fixture), dtype=dtype)
    assert from_file.model.module.dtype == from_folder.model.module.dtype == dtype
    assert from_file.info["variant"] == variant and from_file.info["format"] == "single file"
    assert dict(from_file.model.module.config) == dict(from_folder.model.module.config)
    assert dict(from_file.vae.module.config) == dict(from_folder.vae.module.config)
    assert from_file.text_encoder.module.config.to_dict() == from_folder.text_encoder.module.config.to_dict()
    for part in ("text_encoder.module", "model.module", "vae.module"):
        a, b = (_attr(m, part).state_dict() for m in (from_folder, from_file))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    ours, theirs = _outputs(from_file, core), _outputs(from_folder, core)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert from_file.vae.scaling_factor == from_folder.vae.scaling_factor
    assert torch.equal(from_file.model.schedule.sigmas, from_folder.model.schedule.sigmas)


def _attr(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def test_ckpt_pickle_loads_like_safetensors(core, m9_folder, m9_file, ckpt_dir):
    ckpt = write_ldm_checkpoint(m9_folder, ckpt_dir / "alt-m9-pickle.ckpt")
    a, b = core.load_checkpoint(m9_file), core.load_checkpoint(ckpt)
    for part in ("text_encoder.module", "model.module", "vae.module"):
        sa, sb = _attr(a, part).state_dict(), _attr(b, part).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), part
    assert b.info["variant"] == "m9"


def test_ckpt_with_python_objects_is_refused(core, m9_folder, tmp_path):
    path = write_ldm_checkpoint(m9_folder, tmp_path / "evil.ckpt")
    torch.save({"state_dict": torch.load(path, weights_only=True)["state_dict"], "callback": RunsOnLoad()}, path)
    with pytest.raises(core.ModelFormatError, match="not unpickled") as err:
        core.load_checkpoint(path)
    assert str(path) in str(err.value) and ".safetensors" in str(err.value)
    assert not RunsOnLoad.ran


class RunsOnLoad:
    ran = False

    def __reduce__(self):
        return (_ran, ())


def _ran():
    RunsOnLoad.ran = True


class _Float32Allocations(torch.overrides.TorchFunctionMode):
    """Counts elements of float32 tensors produced off the meta device while active."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float32 and not out.is_meta:
            self.elements += out.numel()
        return out


def test_fp16_weights_are_never_widened_on_the_way(core, m9_folder, tmp_path):
    """An fp16 file loaded as fp16: no float32 copy of the weights exists at any time (modules are built on the meta
    device and each tensor goes from the file to its module as it is), for the folder and the single file."""
    half_file = write_ldm_checkpoint(m9_folder, tmp_path / "alt-m9-fp16.safetensors", dtype=torch.float16)
    half_folder = _fp16_copy(m9_folder, tmp_path / "fp16-folder")
    for load in (
        lambda: core.load_checkpoint(half_file, dtype=torch.float16),
        lambda: core.load_folder(half_folder, dtype=torch.float16),
    ):
        with _Float32Allocations() as counter:
            loaded = load()
        params = sum(loaded.info["params"].values())
        assert counter.elements < 0.05 * params, (counter.elements, params)  # the schedule's 1000 sigmas and such
        for module in (loaded.text_encoder.module, loaded.model.module, loaded.vae.module):
            assert {p.dtype for p in module.parameters()} == {torch.float16}
            assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])


def _fp16_copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    for weights in dest.glob("*/*.safetensors"):
        state = safetensors.torch.load_file(str(weights))
        safetensors.torch.save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    return dest


def test_vae_dtype_is_separate(core, m9_file):
    loaded = core.load_checkpoint(m9_file, dtype=torch.bfloat16, vae_dtype=torch.float32)
    assert {p.dtype for p in loaded.model.module.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.vae.module.parameters()} == {torch.float32} and loaded.vae.dtype == torch.float32
    assert "bfloat16 (VAE float32)" in loaded.describe()


def test_m2_and_m9_are_told_apart_only_by_the_checkpoints_own_tokenizer(core, m9_folder, tmp_path):
    path = write_ldm_checkpoint(m9_folder, tmp_path / "alt.safetensors", tokenizer=False)
    loaded = core.load_checkpoint(path, tokenizer_folders=[tmp_path / "nowhere", m9_folder / "tokenizer"])
    assert loaded.info["variant"] == "m2/m9" and loaded.info["tokenizer"] == str(m9_folder / "tokenizer")
    assert "AltDiffusion-m2/m9 (single file)" in loaded.describe()


def test_a_found_tokenizer_with_another_vocabulary_is_not_taken(core, m9_folder, tmp_path):
    path = write_ldm_checkpoint(m9_folder, tmp_path / "alt.safetensors", tokenizer=False)
    vocab = text_encoder_config("m9")["vocab_size"]
    tokenizer, own = core.single_file.find_tokenizer(path, vocab, [m9_folder / "tokenizer"])
    assert tokenizer.vocab_size == vocab and not own
    with pytest.raises(core.ModelFormatError, match="carries no tokenizer"):
        core.single_file.find_tokenizer(path, vocab + 8, [m9_folder / "tokenizer"])


def test_missing_tokenizer_says_where_to_put_it(core, m9_folder, tmp_path):
    path = write_ldm_checkpoint(m9_folder, tmp_path / "alt.safetensors", tokenizer=False)
    with pytest.raises(core.ModelFormatError) as err:
        core.load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and str(tmp_path / "alt" / "tokenizer") in message
    assert "sentencepiece.bpe.model" in message and "huggingface.co/BAAI/AltDiffusion-m9" in message


def test_stable_diffusion_checkpoint_is_refused(core, sd_clip_folder, tmp_path):
    path = write_sd_clip_checkpoint(sd_clip_folder, tmp_path / "sd15.safetensors")
    assert not core.is_altdiffusion_checkpoint(path)
    with pytest.raises(core.NotAltDiffusionError) as err:
        core.load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "CLIP" in message and "not AltDiffusion" in message
    assert "loader for that model family" in message  # the loader node adds ComfyUI's (test_conventions)


def test_header_check_lists_safetensors_and_zip_ckpt(core, m9_file, m9_folder, ckpt_dir):
    assert core.is_altdiffusion_checkpoint(m9_file)
    assert core.is_altdiffusion_checkpoint(write_ldm_checkpoint(m9_folder, ckpt_dir / "listed.ckpt", companion=False))
    assert not core.is_altdiffusion_checkpoint(m9_folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert not core.is_altdiffusion_checkpoint(ckpt_dir / "missing.safetensors")


def test_another_noise_schedule_is_refused(core, m9_folder, tmp_path):
    state = ldm_state_dict(m9_folder)
    state["betas"] = torch.linspace(0.0001, 0.02, 1000)  # LDM "linear" with DDPM's numbers: not SD's schedule
    path = tmp_path / "other-schedule.safetensors"
    safetensors.torch.save_file(state, str(path))
    shutil.copytree(m9_folder / "tokenizer", tmp_path / "other-schedule" / "tokenizer")
    for part in ("unet", "vae", "text_encoder"):
        (tmp_path / "other-schedule" / part).mkdir()
        shutil.copy(m9_folder / part / "config.json", tmp_path / "other-schedule" / part / "config.json")
    with pytest.raises(core.ModelFormatError, match="noise schedule"):
        core.load_checkpoint(path)


def test_tiny_model_without_configs_asks_for_them(core, m9_folder, tmp_path):
    """A non-standard size can't have its attention heads read from shapes: refused, naming the config to add."""
    path = write_ldm_checkpoint(m9_folder, tmp_path / "tiny.safetensors", companion=False)
    with pytest.raises(core.ModelFormatError, match=r"text_encoder/config\.json.*companion folder"):
        core.load_checkpoint(path)


# ------------------------------------------------------------------------------------------- configs from shapes


def _meta(factory):
    with torch.device("meta"):
        return factory()


def _heads(module) -> list[int]:
    return [m.heads for m in module.modules() if type(m).__name__ == "Attention"]


@pytest.mark.parametrize(("family", "key"), [("SD1", "sd1"), ("SD2", "sd21")])
def test_full_size_unet_config_is_inferred_from_shapes(core, family, key):
    """The real SD1 (m2/m9) and SD2.1-base (m18) UNets: same modules, shapes and attention heads as their configs."""
    from diffusers import UNet2DConditionModel

    config = UNET_CONFIGS[key, "full"]
    real = _meta(lambda: UNet2DConditionModel.from_config(config))
    ldm = unet_to_ldm(real.state_dict(), config)
    inferred = core.ldm_to_diffusers.unet_config_from_shapes({k: v.shape for k, v in ldm.items()}, family, Path("x"))
    rebuilt = _meta(lambda: UNet2DConditionModel.from_config(inferred))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    assert _heads(rebuilt) == _heads(real)
    converted = core.ldm_to_diffusers.convert_unet({f"model.diffusion_model.{k}": v for k, v in ldm.items()}, inferred, Path("x"))
    assert set(converted) == set(real.state_dict())


def test_full_size_vae_and_text_encoder_configs_are_inferred_from_shapes(core, pack):
    from diffusers import AutoencoderKL

    vae = _meta(lambda: AutoencoderKL.from_config(VAE_CONFIGS["full"]))
    shapes = {k: v.shape for k, v in vae_to_ldm(vae.state_dict(), VAE_CONFIGS["full"]).items()}
    rebuilt = _meta(lambda: AutoencoderKL.from_config(core.ldm_to_diffusers.vae_config_from_shapes(shapes, Path("x"))))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in vae.state_dict().items()}

    text_encoder = pack.altdiff_core.text_encoder
    for variant in ("m9", "m18"):
        real = text_encoder_config(variant, "full")
        module = _meta(lambda r=real, v=variant: text_encoder.XLMRobertaWithHead(text_encoder.xlmr_config(r), core.VARIANTS[v]))
        shapes = {k: v.shape for k, v in module.state_dict().items()}
        inferred = core.ldm_to_diffusers.text_encoder_config_from_shapes(shapes, Path("x"))
        assert {k: inferred.get(k) for k in real if k in inferred} == {k: real[k] for k in real if k in inferred}
        assert inferred["num_attention_heads"] == real["num_attention_heads"] == 16


# ------------------------------------------------------------------------------------------------------ the node


@pytest.fixture
def roots(pack, m9_folder, m9_file, sd_clip_folder, tmp_path, monkeypatch):
    """models/altdiffusion (a diffusers folder) and models/checkpoints (our file, an SD1 file, a stray component)."""
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "sub").mkdir(parents=True)
    shutil.copy(m9_file, checkpoints / "sub" / m9_file.name)
    shutil.copytree(m9_file.parent / m9_file.stem, checkpoints / "sub" / m9_file.stem)
    write_sd_clip_checkpoint(sd_clip_folder, checkpoints / "sd15.safetensors")
    shutil.copy(m9_folder / "unet" / "diffusion_pytorch_model.safetensors", checkpoints / "unet_only.safetensors")
    seam = pack.nodes.comfy_seam
    monkeypatch.setattr(seam, "model_roots", lambda: [m9_folder.parent])
    monkeypatch.setattr(seam, "checkpoint_roots", lambda: [checkpoints])
    return checkpoints


def test_loader_lists_altdiffusion_checkpoints_after_folders(pack, roots, m9_folder):
    names = pack.nodes.loader.list_models()
    assert "sub/alt-m9.safetensors" in names and m9_folder.name in names
    assert names.index(m9_folder.name) < names.index("sub/alt-m9.safetensors")
    assert "sd15.safetensors" not in names and "unet_only.safetensors" not in names
    assert not any(n.startswith(m9_folder.name + "/") for n in names)  # a folder's own weight files are not models


def test_loader_node_loads_a_checkpoint_with_info(pack, roots):
    node = pack.nodes.loader.AltDiffusionLoader()
    model, text_encoder, vae, info = node.load("sub/alt-m9.safetensors", "fp32", "auto")
    assert "AltDiffusion-m9 (single file)" in info and "float32 on cpu" in info and "UNet" in info
    assert model.dtype == vae.dtype == torch.float32


def test_vae_dtype_auto_never_fp16(pack):
    resolve = pack.altdiff_core.resolve_vae_dtype  # the engine's dtype policy, which the loader node applies
    cpu = torch.device("cpu")
    assert resolve("auto", torch.float16, cpu) == torch.float32
    assert resolve("auto", torch.bfloat16, cpu) == torch.bfloat16
    assert resolve("auto", torch.float32, cpu) == torch.float32
    assert resolve("fp16", torch.float32, cpu) == torch.float16
    both = pack.altdiff_core.resolve_dtypes  # no VAE choice: as asked for the whole model
    assert both("fp16", None, cpu) == (torch.float16, torch.float16)
    assert both("fp16", "auto", cpu) == (torch.float16, torch.float32)
    assert both("fp32", "bf16", cpu) == (torch.float32, torch.bfloat16)


def test_vae_dtype_input_is_optional_and_last(pack):
    spec = pack.nodes.loader.AltDiffusionLoader.INPUT_TYPES()
    assert list(spec["required"]) == ["model_name", "dtype"]  # saved workflows' widget values keep their places
    assert list(spec["optional"]) == ["vae_dtype"] and spec["optional"]["vae_dtype"][1]["default"] == "auto"


def test_legacy_pickle_checkpoint_loads(core, m9_folder, m9_file, tmp_path):
    """A pre-zip torch.save file (no memory map possible) is read once, whole, with weights_only."""
    path = write_ldm_checkpoint(m9_folder, tmp_path / "old.ckpt")
    state = torch.load(path, weights_only=True)
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert not core.weights.reads_parts(path)
    a, b = core.load_checkpoint(m9_file), core.load_checkpoint(path)
    sa, sb = a.model.module.state_dict(), b.model.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------- inside a real ComfyUI


@pytest.mark.comfyui
def test_checkpoint_in_comfyui_gives_the_folder_latent(comfy, comfy_models):
    """A single file next to the tiny m9 folder in models/altdiffusion is listed and samples what the folder samples."""
    from graphs import encode, sampler, save_latent
    from test_comfyui import latents_of, run_ok

    name = "AltDiffusion-m9-single.safetensors"
    write_ldm_checkpoint(comfy_models / "altdiffusion" / "AltDiffusion-m9", comfy_models / "altdiffusion" / name)
    assert name in comfy.object_info("AltDiffusionLoader")["input"]["required"]["model_name"][0]
    latents = []
    for model_name in ("AltDiffusion-m9", name):
        prompt = {
            "L": {"class_type": "AltDiffusionLoader", "inputs": {"model_name": model_name, "dtype": "auto", "vae_dtype": "auto"}},
            "P": encode("一只戴着帽子的猫"),
            "N": encode(""),
            "E": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "S": sampler(("E", 0), steps=2),
            "V": save_latent(("S", 0), f"single_file_{len(latents)}"),
        }
        latents.append(latents_of(comfy, run_ok(comfy, prompt), "V")[0])
    assert torch.equal(latents[0], latents[1])
    assert "AltDiffusion-m9 (single file)" in comfy.log_text()
