"""Hostile files and values: every outcome is a valid result or one of the pack's own errors with a message.

Property-based (hypothesis) where the space is large: the weight-file parsers get arbitrary bytes, headers with
absurd fields and mutated real files; the nodes get random steps/cfg/denoise/seeds (edge values included), latents of
random small shapes and dtypes with NaN sprinkled in, and images of random small sizes. The rest pins each refusal:
NaN/inf latents and masks, empty latents, out-of-range seeds, sizes far beyond memory (refused before allocating),
and models whose weights hold NaN (a message, not a black image). ``tests/test_bad_input.py`` has the simpler cases.
"""

from __future__ import annotations

import io
import json
import math
import random
import resource
import shutil
import time

import pytest
import safetensors.torch
import torch
from factories import UNET_CONFIGS, VAE_CONFIGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def fuzz(examples: int) -> settings:
    """Hypothesis settings: ``examples`` cases, no per-example deadline (2 shared CPU cores), no example database in
    the tree; the fixtures used are module- or session-scoped (one tiny model for every example)."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.fixture(scope="module")
def context(core, m9):
    """The engine's conditioning: the text encoder's [1, 77, 768]."""
    return core.encode_prompt(m9.text_encoder, "a cat")[0]


@pytest.fixture(scope="module")
def cond(context):
    """The same as the nodes' CONDITIONING."""
    return [[context, {}]]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for the files the fuzzers write (one file per example, overwritten)."""
    return tmp_path_factory.mktemp("hostile")


# ------------------------------------------------------------------------------------------ weight-file parsing


def _frame(header: bytes, data: bytes = b"", claimed: int | None = None) -> bytes:
    return (len(header) if claimed is None else claimed).to_bytes(8, "little") + header + data


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def _read(core, path):
    """``read_state_dict``: a dict of tensors, or the pack's format error (anything else fails the test)."""
    try:
        return core.weights.read_state_dict(path)
    except core.ModelFormatError as err:
        assert str(path) in str(err) and len(str(err)) < 2000, str(err)[:3000]
        return None


@fuzz(150)
@given(content=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_a_format_error(core, scratch, content):
    path = scratch / "random.safetensors"
    path.write_bytes(content)
    tensors = _read(core, path)
    assert tensors is None or all(isinstance(t, torch.Tensor) for t in tensors.values())


JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
DIMENSIONS = st.sampled_from([0, 1, 2, 3, 4, 7, -1, 2**31, 2**62, 2**63, 2**64 + 5]) | st.integers(-3, 12) | JSON_SCALARS
DTYPE_NAMES = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "U64", "XX", ""])


@st.composite
def tensor_specs(draw, data_size: int):
    """One header entry: mostly well-formed, with any field replaced by something absurd some of the time."""
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    dtype = draw(DTYPE_NAMES)
    size = math.prod(shape) * {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2}.get(dtype, 1)
    begin = draw(st.integers(0, max(data_size, 1)))
    spec = {"dtype": dtype, "shape": shape, "data_offsets": [begin, begin + size]}
    field = draw(st.sampled_from(["none", "dtype", "shape", "offsets", "missing", "whole"]))
    if field == "dtype":
        spec["dtype"] = draw(JSON_SCALARS | st.lists(DTYPE_NAMES, max_size=2))
    elif field == "shape":
        spec["shape"] = draw(st.lists(DIMENSIONS, max_size=4) | JSON_SCALARS | st.just([1] * 70))
    elif field == "offsets":
        spec["data_offsets"] = draw(st.lists(DIMENSIONS, max_size=3) | JSON_SCALARS)
    elif field == "missing":
        del spec[draw(st.sampled_from(sorted(spec)))]
    elif field == "whole":
        spec = draw(JSON_SCALARS | st.lists(JSON_SCALARS, max_size=3))
    return spec


@st.composite
def safetensors_files(draw):
    """(file bytes, header dict, data) of a file whose header may lie about anything."""
    data = draw(st.binary(max_size=200))
    names = draw(st.lists(st.text(max_size=12), max_size=4, unique=True))
    header = {name: draw(tensor_specs(len(data))) for name in names}
    if draw(st.booleans()):
        header["__metadata__"] = draw(JSON_SCALARS | st.dictionaries(st.text(max_size=4), JSON_SCALARS, max_size=2))
    text = json.dumps(header).encode()
    framing = draw(st.sampled_from(["exact", "padded", "claims-more", "claims-any", "not-utf8"]))
    if framing == "padded":  # the format allows trailing spaces in the header
        text += b" " * draw(st.integers(0, 7))
    if framing == "not-utf8":
        text = text[:1] + b"\xff\xfe" + text[1:]
    claimed = {"claims-more": len(text) + len(data) + 1, "claims-any": draw(st.integers(0, 2**64 - 1))}.get(framing)
    return _frame(text, data, claimed), header, data


@fuzz(300)
@given(case=safetensors_files())
def test_absurd_headers_give_consistent_tensors_or_a_format_error(core, scratch, case):
    """Either every declared tensor comes back with the header's dtype, shape and bytes, or ModelFormatError."""
    content, header, data = case
    path = scratch / "header.safetensors"
    path.write_bytes(content)
    tensors = _read(core, path)
    if tensors is None:
        return
    start = 8 + int.from_bytes(content[:8], "little")
    declared = {k: v for k, v in header.items() if k != "__metadata__"}
    assert set(tensors) == set(declared)
    for name, tensor in tensors.items():
        spec = declared[name]
        begin, end = spec["data_offsets"]
        assert tensor.dtype == core.safetensors_io.DTYPES[spec["dtype"]] and list(tensor.shape) == spec["shape"]
        assert _bytes(tensor) == content[start + begin : start + end]
    assert core.weights.read_layout(path).keys() == tensors.keys()


def _valid_file() -> bytes:
    tensors = {
        "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "a.bias": torch.ones(3, dtype=torch.float16),
        "b": torch.tensor([1, 2], dtype=torch.int64),
        "empty": torch.zeros(0, 5),
    }
    return safetensors.torch.save(tensors, metadata={"format": "pt"})


@fuzz(200)
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(["flip", "int64", "cut", "insert"]), st.floats(0, 1), st.integers(0, 2**64 - 1)),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_files_read_as_the_reference_reader_reads_them(core, scratch, mutations):
    """A real file with bytes flipped, 64-bit numbers spliced in, cut or grown: our reader agrees with the
    safetensors library wherever both accept the file, and otherwise raises ModelFormatError."""
    content = bytearray(_valid_file())
    for op, where, value in mutations:
        at = int(where * (len(content) - 1))
        if op == "flip":
            content[at] ^= 1 << (value % 8)
        elif op == "int64":
            content[at : at + 8] = value.to_bytes(8, "little")
        elif op == "cut":
            del content[at:]
        else:
            content[at:at] = bytes([value % 256]) * (value % 5 + 1)
        if not content:
            content = bytearray(b"\0")
    path = scratch / "mutated.safetensors"
    path.write_bytes(bytes(content))
    ours = _read(core, path)
    try:
        theirs = safetensors.torch.load(bytes(content))
    except Exception:  # the reference refuses: ours may read a lenient file (a gap between tensors) or refuse it
        return
    known = set(core.safetensors_io.DTYPES.values())
    assert ours is not None or any(t.dtype not in known for t in theirs.values()), "a file the reference reads is refused"
    if ours is not None:
        assert ours.keys() == theirs.keys()
        for name, tensor in ours.items():
            assert tensor.dtype == theirs[name].dtype and tensor.shape == theirs[name].shape
            assert _bytes(tensor) == _bytes(theirs[name])


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "not JSON"),  # nested past Python's recursion limit
        (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}', "not JSON"),
        (b'{"w": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}', "not a list of whole numbers"),
        (b'{"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}', "not a list of whole numbers"),
        (b'{"w": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', "not a list of whole numbers"),
        (b'{"w": {"dtype": "F32", "shape": [0, 18446744073709551621], "data_offsets": [0, 0]}}', "larger than the file"),
        (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}', "not two whole numbers"),
        (b'{"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}', "unknown dtype 'F8_E4M3'"),
        (b'{"w": "F32"}', "invalid header entry"),
        (b'{"' + b"x" * 100_000 + b'": 1}', "characters"),  # a huge name is cut short in the message
    ],
    ids=[
        "deep-nesting",
        "5000-digit-number",
        "infinity",
        "float",
        "bool",
        "huge-empty",
        "three-offsets",
        "fp8",
        "string",
        "huge-name",
    ],
)
def test_absurd_header_fields_are_named(core, tmp_path, header, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(_frame(header, bytes(16)))
    with pytest.raises(core.ModelFormatError, match=message) as err:
        core.weights.read_state_dict(path)
    assert len(str(err.value)) < 1000


def test_overlapping_tensors_are_refused_before_reading(core, tmp_path):
    """Many tensors declared over the same bytes would make the reader allocate many times the file's size."""
    header = {f"t{i}": {"dtype": "U8", "shape": [1024], "data_offsets": [0, 1024]} for i in range(1000)}
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(_frame(json.dumps(header).encode(), bytes(1024)))
    with pytest.raises(core.ModelFormatError, match="overlap"):
        core.weights.read_state_dict(path)


def _torch_save(legacy: bool) -> bytes:
    buffer = io.BytesIO()
    torch.save({"a.weight": torch.randn(4, 3), "b": torch.arange(5)}, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on a mutated header
@fuzz(80)
@given(
    legacy=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    op=st.sampled_from(["flip", "cut", "int64"]),
)
def test_mutated_pickles_load_or_give_a_format_error(core, scratch, legacy, seed, op):
    """torch.load (weights only) raises a dozen exception types on damaged bytes; all come out as ModelFormatError."""
    rng = random.Random(seed)
    content = bytearray(_torch_save(legacy))
    if op == "cut":
        del content[rng.randrange(len(content)) :]
    elif op == "flip":
        for _ in range(rng.randint(1, 8)):
            content[rng.randrange(len(content))] = rng.randrange(256)
    else:
        at = rng.randrange(len(content) - 8)
        content[at : at + 8] = rng.choice([2**31, 2**40, 2**62, 2**64 - 1]).to_bytes(8, "little")
    path = scratch / "mutated.bin"
    path.write_bytes(bytes(content))
    tensors = _read(core, path)
    assert tensors is None or all(isinstance(t, torch.Tensor) for t in tensors.values())


def test_damaged_pickle_is_not_reported_as_code(core, tmp_path):
    """A damaged .bin is 'damaged', not 'contains Python objects' — and the message carries no unsafe-load advice."""
    path = tmp_path / "damaged.bin"
    path.write_bytes(b"\x80\x02\xff\xff\xff")  # a pickle whose second opcode does not exist
    with pytest.raises(core.ModelFormatError, match=r"damaged or truncated \(Unsupported operand 255\)") as err:
        core.weights.read_state_dict(path)
    assert "weights_only" not in str(err.value) and "\x1b[" not in str(err.value)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_float_weight_stored_as_integers_is_refused(core, m9_folder, tmp_path, dtype):
    folder = tmp_path / "copy"
    shutil.copytree(m9_folder, folder)
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = safetensors.torch.load_file(path)
    state["conv_in.weight"] = state["conv_in.weight"].to(dtype)
    safetensors.torch.save_file(state, path)
    with pytest.raises(core.ModelFormatError, match=f"instead of floats.*conv_in.weight: {str(dtype)[6:]}") as err:
        core.load_folder(folder)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------- NaN weights, NaN values


def _poisoned(core, m9_folder, tmp_path, part: str, key: str):
    """The tiny m9 with one weight of ``part`` set to NaN: loading does not scan weights (it would cost a pass over
    gigabytes), so the stage that runs it must say what went wrong."""
    folder = tmp_path / f"nan-{key}"
    shutil.copytree(m9_folder, folder)
    path = next((folder / part).glob("*.safetensors"))
    state = safetensors.torch.load_file(path)
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    safetensors.torch.save_file(state, path)
    return core.load_folder(folder)


def test_unet_with_nan_weights_stops_at_the_first_step_with_the_fix(core, m9_folder, tmp_path, context):
    loaded = _poisoned(core, m9_folder, tmp_path, "unet", "conv_in.weight")
    calls = []
    with pytest.raises(core.InvalidInputError, match="at step 1 of 4: its weights contain NaN/inf.*dtype fp32"):
        core.sample_latent(
            loaded.model, context, context, torch.zeros(1, 4, 8, 8), seed=0, steps=4, cfg=7.0, sampler_name="euler",
            scheduler="normal", callback=lambda *args: calls.append(args),
        )  # fmt: skip
    assert calls == []  # no NaN preview reached the progress callback


def test_vae_with_nan_weights_is_named(core, m9_folder, tmp_path):
    loaded = _poisoned(core, m9_folder, tmp_path, "vae", "decoder.conv_in.weight")
    with pytest.raises(core.InvalidInputError, match="VAE's float32 output holds.*weights contain NaN/inf"):
        core.decode_latent(loaded.vae, torch.zeros(1, 4, 4, 4))
    loaded = _poisoned(core, m9_folder, tmp_path, "vae", "encoder.conv_in.weight")
    with pytest.raises(core.InvalidInputError, match="VAE's float32 latent holds.*download the model's VAE"):
        core.encode_image(loaded.vae, torch.rand(1, 16, 16, 3))


def test_text_encoder_with_nan_weights_is_named_by_the_sampler(core, m9_folder, tmp_path, m9):
    loaded = _poisoned(core, m9_folder, tmp_path, "text_encoder", "transformation.weight")
    poisoned = core.encode_prompt(loaded.text_encoder, "a cat")[0]
    with pytest.raises(core.InvalidInputError, match="positive conditioning holds .* NaN/inf.*text encoder"):
        core.sample_latent(
            m9.model, poisoned, poisoned, torch.zeros(1, 4, 8, 8), seed=0, steps=2, cfg=7.0, sampler_name="euler",
            scheduler="normal",
        )  # fmt: skip


def _sample(core, m9, context, latent=None, **overrides):
    """The engine's sampler on the tiny m9 with valid settings; ``overrides`` replace one of them (the bad value)."""
    kwargs = dict(seed=0, steps=2, cfg=7.0, sampler_name="euler", scheduler="normal") | overrides
    latent = torch.zeros(1, 4, 8, 8) if latent is None else latent
    return core.sample_latent(m9.model, context, context, latent, **kwargs)


def _node(pack, m9, cond, latent_image=None):
    """The sampler node on the tiny m9 with valid settings: the message a user of the graph sees."""
    latent_image = {"samples": torch.zeros(1, 4, 8, 8)} if latent_image is None else latent_image
    node = pack.nodes.sampler.AltDiffusionSampler()
    return node.sample(m9.model, 0, 2, 7.0, "euler", "normal", cond, cond, latent_image, 1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_sampler_refuses_non_finite_latent_and_mask(core, pack, m9, context, cond, bad):
    """The engine says what is wrong in its terms; the node adds which socket and node to fix."""
    latent = torch.zeros(1, 4, 8, 8)
    latent[0, 2, 3, 4] = bad
    with pytest.raises(core.SamplerInputError, match="latent holds 1 NaN/inf values out of 256.*all-zero latent") as err:
        _sample(core, m9, context, latent)
    assert err.value.argument == "latent"
    with pytest.raises(core.InvalidInputError, match="latent holds 1 NaN/inf values out of 256.*EmptyLatentImage"):
        _node(pack, m9, cond, {"samples": latent})
    mask = torch.ones(1, 8, 8)
    mask[0, 0, 0] = bad
    with pytest.raises(core.InvalidInputError, match="noise_mask holds 1 NaN/inf.*from 0 \\(keep\\) to 1"):
        _sample(core, m9, context, noise_mask=mask)
    with pytest.raises(core.InvalidInputError, match="noise_mask holds 1 NaN/inf.*SetLatentNoiseMask"):
        _node(pack, m9, cond, {"samples": torch.zeros(1, 4, 8, 8), "noise_mask": mask})


@pytest.mark.parametrize("shape", [(1, 4, 0, 8), (1, 4, 8, 0), (1, 4, 0, 0)])
def test_latent_without_pixels_is_refused(core, pack, m9, context, cond, shape):
    with pytest.raises(core.InvalidInputError, match=r"holds no pixels.*at least 8"):
        _sample(core, m9, context, torch.zeros(shape))
    with pytest.raises(core.InvalidInputError, match=r"holds no pixels.*Connect latent_image to an EmptyLatentImage"):
        _node(pack, m9, cond, {"samples": torch.zeros(shape)})
    with pytest.raises(core.InvalidInputError, match=r"holds no pixels to decode"):
        core.decode_latent(m9.vae, torch.zeros(shape))


def test_smallest_sizes_work(core, m9, context):
    """A 1×1 latent (an 8×8 image) samples and decodes; an 8×8 image encodes to it. Smaller images are refused,
    naming their size (ComfyUI's VAEEncode would crop a 1×1 image to nothing).

    The tiny UNet has one channel per group-norm group, so a lone latent of at most 2×2 (1×1 at its second level)
    would give torch a group of one value (a raw ValueError the fuzzers below found): refused, naming the smallest
    size that works. Real SD UNets have 10 channels per group."""
    out = _sample(core, m9, context, torch.zeros(2, 4, 1, 1))
    assert out.shape == (2, 4, 1, 1) and torch.isfinite(out).all()
    assert core.decode_latent(m9.vae, out[:1]).shape == (1, 8, 8, 3)
    for h, w in ((1, 1), (1, 2), (2, 2)):  # the tiny UNet's second level would see 1×1 with one channel per group
        with pytest.raises(core.InvalidInputError, match=f"latent of {h}×{w} is too small for this UNet.*at least 3×3"):
            _sample(core, m9, context, torch.zeros(1, 4, h, w), cfg=1.0)
    assert _sample(core, m9, context, torch.zeros(1, 4, 3, 3), cfg=1.0).shape == (1, 4, 3, 3)  # what the message advises
    assert core.encode_image(m9.vae, torch.rand(1, 8, 8, 3)).shape == (1, 4, 1, 1)
    for h, w in ((1, 1), (7, 64), (64, 7)):
        with pytest.raises(core.InvalidInputError, match=f"image of {w}×{h} pixels.*at least 8 pixels on each side"):
            core.encode_image(m9.vae, torch.rand(1, h, w, 3))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seed": -1}, "seed is -1; give a whole number from 0 to 18446744073709551615"),
        ({"seed": 2**64}, "seed is 18446744073709551616"),
        ({"seed": 1.5}, "seed is 1.5"),
        ({"cfg": float("nan")}, "cfg is nan; give a finite guidance scale"),
        ({"cfg": float("inf")}, "cfg is inf"),
        ({"steps": 2.0}, "steps must be a whole number >= 1, got 2.0"),
        ({"noise_mask": torch.ones(8)}, r"noise_mask of shape \(8,\) is not a mask"),
        ({"noise_mask": torch.ones(1, 0, 8)}, "is not a mask"),
        ({"batch_index": [-1]}, r"batch_index \[-1\] is not one index ≥ 0 per image"),
        ({"batch_index": [0, 1]}, "of its batch of 1"),
        ({"sigmas": torch.tensor([14.6, float("nan"), 0.0])}, "sigmas holds 1 NaN/inf"),
    ],
    ids=[
        "seed-negative",
        "seed-2^64",
        "seed-float",
        "cfg-nan",
        "cfg-inf",
        "steps-float",
        "mask-1d",
        "mask-empty",
        "batch-index-negative",
        "batch-index-length",
        "sigmas-nan",
    ],
)
def test_out_of_range_sampler_values_are_named(core, m9, context, overrides, message):
    with pytest.raises(core.InvalidInputError, match=message):
        _sample(core, m9, context, **overrides)


def test_denoise_too_small_for_its_steps_is_named(core, m9, context):
    with pytest.raises(core.InvalidInputError, match=r"steps 1 with denoise 2.22e-16 means a schedule of 4.5e\+15 steps"):
        _sample(core, m9, context, steps=1, denoise=2.220446049250313e-16)


def test_largest_seed_works_with_every_noise_source(core, m9, context):
    """2⁶⁴−1 is KSampler's largest seed; ddim's inpainting noise (seed + 1) used to overflow torch.manual_seed."""
    mask = torch.ones(1, 8, 8)
    for sampler in ("ddim", "euler_ancestral"):
        out = _sample(core, m9, context, seed=2**64 - 1, sampler_name=sampler, noise_mask=mask)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("extras", "message"),
    [({"strength": float("nan")}, "'strength' is nan"), ({"start_percent": "x"}, "'start_percent' is 'x'")],
)
def test_non_finite_conditioning_options_are_named(core, pack, m9, context, extras, message):
    with pytest.raises(core.InvalidInputError, match=f"{message}.*in the node that added it"):
        _node(pack, m9, [[context, extras]])
    with pytest.raises(core.SamplerInputError, match=message):
        _sample(core, m9, [core.CondEntry(context, **extras)])


def test_empty_or_malformed_conditioning_is_named(core, pack, m9, context):
    with pytest.raises(core.InvalidInputError, match="empty tensor of shape.*Connect positive"):
        _node(pack, m9, [[torch.zeros(1, 0, 768), {}]])
    with pytest.raises(core.InvalidInputError, match=r"holds Tensor of shape \(1, \d+, 768\), not a pair"):
        _node(pack, m9, [context])
    with pytest.raises(core.InvalidInputError, match=r"not a CONDITIONING list.*connect a text-encode node"):
        _node(pack, m9, [])
    with pytest.raises(core.SamplerInputError, match=r"is a list of list, not a \[batch, tokens, width\] tensor"):
        _sample(core, m9, [[context, {}]])  # CONDITIONING is the nodes' to unpack
    with pytest.raises(core.SamplerInputError, match=r"of shape \(77, 768\), not a real \[batch, tokens, width\]"):
        _sample(core, m9, context[0])
    with pytest.raises(core.InvalidInputError, match=r"context is a str, not a real \[batch, tokens.*Connect positive"):
        _node(pack, m9, [["a cat", {}]])


def test_node_errors_name_the_socket_to_fix(core, pack, m9, cond):
    """What only the graph knows (a LATENT's keys, a MASK socket) is named by the node, with the node to fix it."""
    latent = torch.zeros(1, 4, 8, 8)
    with pytest.raises(core.InvalidInputError, match="latent is a list, not a .*connect a LATENT output"):
        _node(pack, m9, cond, {"samples": [[0.0]]})
    with pytest.raises(core.InvalidInputError, match="noise_mask is a str, not a MASK tensor.*connect a MASK output"):
        _node(pack, m9, cond, {"samples": latent, "noise_mask": "mask"})
    with pytest.raises(core.InvalidInputError, match=r"batch_index \[-1\] is not one index.*Latent From Batch"):
        _node(pack, m9, cond, {"samples": latent, "batch_index": [-1]})
    with pytest.raises(core.InvalidInputError, match="has 16 channels.*Connect latent_image"):
        _node(pack, m9, cond, {"samples": torch.zeros(1, 16, 8, 8)})
    with pytest.raises(core.InvalidInputError, match="1024 wide.*same model.*Connect positive"):
        _node(pack, m9, [[torch.zeros(1, 77, 1024), {}]])


# ------------------------------------------------------------------------------------------------ working memory


def test_ordinary_sizes_pass_with_4_gib(core):
    """512² and 1024² (batch 1, CFG doubling the UNet batch) stay well under 4 GiB for the real SD1 / SD2.1 UNet and
    the SD VAE, in fp32 and fp16; 512² does even with attention that holds its whole score matrix."""
    checks = core.checks
    limit = 4 * 2**30
    for side in (512, 1024):
        h = w = side // 8
        for dtype in (torch.float32, torch.float16):
            for family in ("sd1", "sd21"):
                assert checks.unet_working_bytes(UNET_CONFIGS[(family, "full")], 2, h, w, dtype) < limit / 4
            for decode in (True, False):
                assert checks.vae_working_bytes(VAE_CONFIGS["full"], 1, h, w, dtype, decode=decode) < limit
    assert checks.unet_working_bytes(UNET_CONFIGS[("sd1", "full")], 2, 64, 64, torch.float32, fused_attention=False) < limit
    assert checks.vae_working_bytes(VAE_CONFIGS["full"], 1, 64, 64, torch.float32, decode=True, fused_attention=False) < limit


def test_estimates_are_the_documented_formulas(core):
    checks = core.checks
    sd1 = UNET_CONFIGS[("sd1", "full")]
    # (2 + layers_per_block) × rows × C₀ × h × w × 4 bytes; + rows × heads × (h·w)² × 4 with math attention
    assert checks.unet_working_bytes(sd1, 2, 64, 64, torch.float32) == 4 * 2 * 320 * 64 * 64 * 4
    scores = 2 * 8 * (64 * 64) ** 2 * 4
    assert checks.unet_working_bytes(sd1, 2, 64, 64, torch.float32, fused_attention=False) == 4 * 2 * 320 * 4096 * 4 + scores
    assert checks.unet_top_attention(sd1) == checks.AttentionShape(1, 8, 40)
    assert checks.unet_top_attention(UNET_CONFIGS[("sd21", "full")]) == checks.AttentionShape(1, 5, 64)
    vae = VAE_CONFIGS["full"]
    # decode: 2 × B × C₁ (256) × H × W; encode: 2 × B × C₀ (128) × H × W; fp16 halves both
    assert checks.vae_working_bytes(vae, 1, 64, 64, torch.float16, decode=True) == 2 * 256 * 512 * 512 * 2
    assert checks.vae_working_bytes(vae, 1, 64, 64, torch.float16, decode=False) == 2 * 128 * 512 * 512 * 2
    assert checks.vae_mid_attention(vae) == checks.AttentionShape(1, 1, 512)


def test_cpu_attention_is_fused_and_memory_is_known(core, monkeypatch):
    """torch 2.x runs flash attention on the CPU (no tokens² matrix); the available memory is read with or without
    psutil (a ComfyUI requirement, not the pack's)."""
    checks = core.checks
    assert core.compat.attention_is_fused(torch.device("cpu"), torch.float32, 40)
    assert core.compat.attention_is_fused(torch.device("cpu"), torch.float32, 512)
    with_psutil = checks.available_memory(torch.device("cpu"))
    monkeypatch.setitem(__import__("sys").modules, "psutil", None)
    without = checks.available_memory(torch.device("cpu"))
    assert with_psutil > 0 and without > 0 and abs(with_psutil - without) < 2**30
    assert checks.available_memory(torch.device("meta")) is None


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("side", [8192, 2**16])
def test_size_far_beyond_memory_is_refused_before_allocating(core, pack, m9, context, cond, monkeypatch, side):
    """A 1×4×side×side LATENT (a 65536² or 524288² image; an expanded view, so the test itself allocates nothing)
    is refused by the sampler, the VAE decode and their nodes in well under a second, without growing the process."""
    if side == 8192:  # the real machine may have more than that needs: pin what it has
        monkeypatch.setattr(core.checks, "available_memory", lambda device: 4 * 2**30)
    latent = torch.zeros(1, 1, 1, 1).expand(1, 4, side, side)
    image = torch.zeros(1, 1, 1, 1).expand(1, side * 8, side * 8, 3)
    before, start = _max_rss(), time.perf_counter()
    for run in (
        lambda: _sample(core, m9, context, latent),
        lambda: core.decode_latent(m9.vae, latent),
        lambda: core.encode_image(m9.vae, image),
        lambda: pack.nodes.sampler.AltDiffusionSampler().sample(
            m9.model, 0, 20, 7.0, "euler", "normal", cond, cond, {"samples": latent}, 1.0
        ),
        lambda: pack.nodes.vae.AltDiffusionVAEDecode().decode({"samples": latent}, m9.vae),
    ):
        with pytest.raises(core.TooLargeForMemoryError, match=r"needs at least [\d,.]+ [GT]iB of working memory.*smaller"):
            run()
    assert time.perf_counter() - start < 5.0
    assert _max_rss() - before < 256 * 2**20


def test_refusal_names_size_need_and_what_is_available(core, m9, context, monkeypatch):
    monkeypatch.setattr(core.checks, "available_memory", lambda device: 2**30)
    with pytest.raises(core.TooLargeForMemoryError) as err:
        _sample(core, m9, context, torch.zeros(1, 1, 1, 1).expand(2, 4, 1024, 1024))
    message = str(err.value)
    assert "sampling 2 latent(s) of 1024×1024 (8192×8192 pixels)" in message
    assert "there is 1.0 GiB free on the CPU" in message and "smaller width/height or batch size" in message
    with pytest.raises(core.TooLargeForMemoryError, match="decoding 1 image\\(s\\) of 8192×8192.*smaller size or batch"):
        core.decode_latent(m9.vae, torch.zeros(1, 1, 1, 1).expand(1, 4, 1024, 1024))
    assert isinstance(err.value, core.InvalidInputError)  # what callers already catch


# --------------------------------------------------------------------------------------------- nodes, fuzzed


def _sprinkle(draw, tensor: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``tensor`` with NaN/inf put in a few places some of the time; whether any was put in."""
    if not draw(st.booleans()):
        return tensor, False
    flat = tensor.flatten().clone()
    for index in draw(st.lists(st.integers(0, flat.numel() - 1), min_size=1, max_size=3)):
        flat[index] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    return flat.reshape(tensor.shape), True


@st.composite
def latents(draw, max_side: int = 5, for_unet: bool = False):
    """A LATENT dict of a random small shape and dtype (sometimes with a noise mask), and whether it holds NaN/inf.

    ``for_unet``: never a lone latent of at most 2×2, the clean shapes the tiny UNet refuses (its second level would
    normalise one value per group; that refusal and its message are pinned by ``test_smallest_sizes_work``), so that
    every clean latent drawn must sample."""
    shape = (draw(st.integers(1, 2)), 4, draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    if for_unet and shape[0] == 1 and max(shape[2:]) <= 2:
        shape = (2, *shape[1:])
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    values = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16)))) * 3
    values, poisoned = _sprinkle(draw, values)
    latent = {"samples": values.to(dtype)}
    if draw(st.booleans()):
        latent["noise_mask"] = torch.rand(draw(st.integers(1, 2)), draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    return latent, poisoned


SEEDS = st.sampled_from([0, 1, 2**32, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)
CFGS = st.sampled_from([0.0, 1.0, 7.5, 100.0]) | st.floats(0.0, 100.0)
DENOISES = st.sampled_from([0.0, 0.01, 0.5, 1.0]) | st.floats(1e-3, 1.0)
"""Valid denoise values for steps ≤ 4 (steps / denoise ≤ 100000; smaller ones are refused: see
``test_denoise_too_small_for_its_steps_is_named``)."""


def _check_outcome(core, run, shape, poisoned: bool):
    """A clean input gives a finite LATENT of the input's shape (any error fails the test); an input holding NaN/inf
    is refused with the pack's ``InvalidInputError`` and a message, never passed through."""
    if poisoned:
        with pytest.raises(core.InvalidInputError) as refused:
            run()
        assert len(str(refused.value)) > 20
        return None
    (out,) = run()
    samples = out["samples"] if isinstance(out, dict) else out
    assert torch.isfinite(samples).all()
    if isinstance(out, dict):
        assert samples.shape == shape and samples.dtype == torch.float32
    return out


@fuzz(30)
@given(data=st.data(), seed=SEEDS, steps=st.integers(1, 3), cfg=CFGS, denoise=DENOISES)
def test_sampler_node_takes_any_inputs(core, pack, m9, cond, data, seed, steps, cfg, denoise):
    latent, poisoned = data.draw(latents(for_unet=True))
    sampler = data.draw(st.sampled_from(list(core.samplers.SAMPLER_NAMES)))
    scheduler = data.draw(st.sampled_from(list(core.SCHEDULERS)))
    node = pack.nodes.sampler.AltDiffusionSampler()
    run = lambda: node.sample(m9.model, seed, steps, cfg, sampler, scheduler, cond, cond, latent, denoise)  # noqa: E731
    _check_outcome(core, run, latent["samples"].shape, poisoned)


@fuzz(25)
@given(
    data=st.data(),
    seed=SEEDS,
    steps=st.integers(1, 4),
    start=st.sampled_from([0, 1, 2, 3, 10000]),
    end=st.sampled_from([0, 1, 2, 4, 10000]),
    add_noise=st.sampled_from(["enable", "disable"]),
    leftover=st.sampled_from(["enable", "disable"]),
)
def test_advanced_sampler_node_takes_any_inputs(core, pack, m9, cond, data, seed, steps, start, end, add_noise, leftover):
    latent, poisoned = data.draw(latents(for_unet=True))
    node = pack.nodes.sampler.AltDiffusionSamplerAdvanced()
    run = lambda: node.sample(  # noqa: E731
        m9.model, add_noise, seed, steps, 7.5, "euler", "karras", cond, cond, latent, start, end, leftover
    )
    _check_outcome(core, run, latent["samples"].shape, poisoned)


@fuzz(30)
@given(data=st.data())
def test_vae_decode_node_takes_any_latent(core, pack, m9, data):
    latent, poisoned = data.draw(latents(max_side=6))
    node = pack.nodes.vae.AltDiffusionVAEDecode()
    image = _check_outcome(core, lambda: node.decode(latent, m9.vae), None, poisoned)
    if image is not None:
        b, _, h, w = latent["samples"].shape
        assert image.shape == (b, h * 8, w * 8, 3) and 0 <= float(image.min()) <= float(image.max()) <= 1


@fuzz(30)
@given(
    data=st.data(),
    size=st.tuples(st.integers(1, 2), st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3, 4])),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.float64]),
)
def test_vae_encode_node_takes_any_image(core, pack, m9, data, size, dtype):
    image, poisoned = _sprinkle(data.draw, torch.rand(size))
    node = pack.nodes.vae.AltDiffusionVAEEncode()
    try:
        (latent,) = node.encode(image.to(dtype), m9.vae)
    except core.InvalidInputError as err:
        b, h, w, c = size
        assert poisoned or c < 3 or h < 8 or w < 8, str(err)
        return
    assert not poisoned and size[1] >= 8 and size[2] >= 8 and size[3] >= 3
    assert latent["samples"].shape == (size[0], 4, size[1] // 8, size[2] // 8)
    assert torch.isfinite(latent["samples"]).all()


@pytest.mark.parametrize("denoise", [1e-9, 5e-324])
def test_tiny_denoise_is_refused_instead_of_computing_billions_of_sigmas(core, m9, context, denoise):
    """img2img computes int(steps / denoise) σs: 1e-9 would hang the server (ComfyUI's KSampler does), 5e-324
    overflowed to a raw OverflowError."""
    start = time.perf_counter()
    with pytest.raises(core.InvalidInputError, match=r"means a schedule of .* steps.*denoise ≥ 0\.0002"):
        _sample(core, m9, context, steps=20, denoise=denoise)
    with pytest.raises(core.InvalidInputError, match="steps is 1000000; give at most 100000"):
        _sample(core, m9, context, steps=10**6)
    assert time.perf_counter() - start < 2.0
