"""How weights are read: the safetensors library's values, in one aligned buffer the process owns (a file changed
after loading can't touch a loaded model)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file


@pytest.fixture
def io(pack):
    return pack.altdiff_core.safetensors_io


@pytest.fixture
def weight_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "big": torch.randn(1024, 1024, generator=g),
        "odd": torch.randn(3, 5, generator=g).half(),  # 30 bytes: the next tensor must still be aligned
        "bf": torch.randn(7, generator=g).bfloat16(),
        "ints": torch.arange(11, dtype=torch.int64),
        "empty": torch.empty(0, 4),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    return path


def test_values_alignment_and_one_shared_buffer(io, weight_file):
    ours, reference = io.read_tensors(weight_file), load_file(str(weight_file))
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():
        assert tensor.dtype == reference[name].dtype and torch.equal(tensor, reference[name]), name
        assert tensor.data_ptr() % io.ALIGNMENT == 0, name
    storages = {t.untyped_storage().data_ptr() for t in ours.values() if t.numel()}
    assert len(storages) == 1


def test_loaded_tensors_do_not_depend_on_the_file(io, weight_file):
    tensors = io.read_tensors(weight_file)
    expected = {name: t.clone() for name, t in tensors.items()}
    data = weight_file.read_bytes()
    with weight_file.open("r+b") as f:  # rewritten in place, then truncated: a memory-mapped tensor would now SIGBUS
        f.write(bytes(len(data)))
        f.truncate(16)
    assert all(torch.equal(tensors[name], expected[name]) for name in tensors)


@pytest.mark.parametrize("cast", [torch.float32, torch.bfloat16, torch.float16])
def test_cast_while_reading_equals_casting_after(io, weight_file, cast):
    """Floating tensors come out in ``cast`` exactly as ``.to(cast)`` of the stored values; others as stored. Converted
    tensors own their memory: no buffer of the stored dtype stays alive behind them."""
    stored, converted = io.read_tensors(weight_file), io.read_tensors(weight_file, cast=cast)
    for name, tensor in stored.items():
        expected = tensor.to(cast) if tensor.is_floating_point() else tensor
        assert converted[name].dtype == expected.dtype and torch.equal(converted[name], expected), name
        if tensor.is_floating_point() and tensor.dtype != cast and tensor.numel():
            assert converted[name].untyped_storage().nbytes() == converted[name].nbytes, name


def test_a_folder_loads_the_same_whether_cast_while_reading_or_after(pack, m9_folder):
    core = pack.altdiff_core
    loaded = core.load_folder(m9_folder, dtype=torch.bfloat16)  # the tiny folder is stored in fp32: cast while reading
    for part in ("text_encoder", "unet", "vae"):
        module = (loaded.model if part == "unet" else getattr(loaded, part)).module
        folder = m9_folder / part
        stems = ("model", "pytorch_model") if part == "text_encoder" else ("diffusion_pytorch_model",)
        raw, _ = core.loading.read_component(folder, stems)
        state = module.state_dict()
        for key, value in raw.items():
            if key in state:
                assert torch.equal(state[key], value.to(state[key].dtype)), (part, key)


@pytest.mark.parametrize("workers, chunk_bytes", [(1, 2**25), (2, 4098), (3, 4096), (8, 2**16)])
@pytest.mark.parametrize("cast", [None, torch.bfloat16])
def test_pieces_read_by_several_threads_give_the_same_tensors(io, weight_file, workers, chunk_bytes, cast):
    """Tensors cut into pieces (down to a few elements, not a multiple of their element size) and shared out to
    threads arrive whole and in place, as stored or cast, in the one aligned buffer."""
    reference = io.read_tensors(weight_file, cast=cast, workers=1, chunk_bytes=2**30)
    ours = io.read_tensors(weight_file, cast=cast, workers=workers, chunk_bytes=chunk_bytes)
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():
        assert tensor.dtype == reference[name].dtype and torch.equal(tensor, reference[name]), name
        assert tensor.data_ptr() % io.ALIGNMENT == 0, name


def test_pieces_tile_each_tensor_exactly(io):
    entry = io.TensorEntry(torch.float16, (1001,), begin=100, end=100 + 2002)
    target = torch.empty(1001, dtype=torch.float16)
    pieces = io._pieces("t", entry, target, chunk_bytes=333)  # 166 elements a piece, the last one shorter
    assert [p.target.numel() for p in pieces] == [166] * 6 + [5]
    assert [p.begin for p in pieces] == [100 + 332 * k for k in range(7)]
    assert [p.target.data_ptr() for p in pieces] == [target.data_ptr() + 332 * k for k in range(7)]
    assert io._pieces("t", entry, target, chunk_bytes=1)[0].target.numel() == 1  # a piece holds at least one element


def test_a_file_cut_short_while_threads_read_it_is_named(io, weight_file, monkeypatch):
    """The header was valid when checked, then the file shrank: a reader thread's short read surfaces as the usual
    ModelFormatError from ``read_tensors``, not as a thread's traceback or a half-filled tensor."""
    checked = io.read_header

    def header_then_truncate(path):
        entries = checked(path)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 1000)
        return entries

    monkeypatch.setattr(io, "read_header", header_then_truncate)
    with pytest.raises(io.ModelFormatError, match="damaged or truncated.*tensor 'big'"):
        io.read_tensors(weight_file, workers=4, chunk_bytes=4096)


@pytest.mark.parametrize("cast", [None, torch.bfloat16])
def test_reader_threads_work_under_inference_mode(io, weight_file, cast):
    """ComfyUI runs every node under ``torch.inference_mode()``, which is per thread: the reader threads must write
    into the caller's inference tensors in the same mode, or torch refuses the in-place copy."""
    reference = io.read_tensors(weight_file, cast=cast, workers=1)
    with torch.inference_mode():
        ours = io.read_tensors(weight_file, cast=cast, workers=3, chunk_bytes=4096)
    assert all(torch.equal(ours[name], reference[name]) for name in reference)
