"""Reading ``.safetensors`` files into memory the process owns, with every header field checked first.

Why not memory-map (safetensors' own loader): a mapped tensor is a view of the file's pages, so a model file truncated
or rewritten in place while a long-lived ComfyUI server holds the model turns the next access into SIGBUS — the whole
server dies, not a node. Read into fresh buffers, the loaded model no longer depends on the file at all, tensors sit at
the allocator's alignment (the same weights give the same bits whatever file they came from), and peak memory is one
copy of what was asked for: pages are read through the page cache, never mapped into the process.

Format: 8-byte little-endian header length, a JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {…}}``, then the data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelFormatError

HEADER_LIMIT = 100 * 2**20
"""Largest header accepted (real ones are well under 1 MB; the format's own limit is 100 MB)."""

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the header: dtype, shape, and where its bytes are (absolute file offsets)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _bad(path: Path, what: str) -> ModelFormatError:
    return ModelFormatError(f"weight file {path} is damaged or truncated ({what}). Download it again.")


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors a ``.safetensors`` file declares, validated against the file's size (nothing else is read).

    Raises:
        ModelFormatError: a header that is too long, not JSON, or declares tensors beyond the file or of a size that
            does not match their shape — naming the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise _bad(path, f"{size} bytes, too short for a header")
            (length,) = struct.unpack("<Q", raw)
            if length > min(HEADER_LIMIT, size - 8):
                raise _bad(path, f"header claims {length} bytes, the file has {size}")
            text = f.read(length)
    except OSError as err:
        raise ModelFormatError(f"cannot read weight file {path} ({err}).") from err
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _bad(path, f"header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    data_start = 8 + length
    entries = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(path, name, spec, data_start, size)
    return entries


def _entry(path: Path, name: str, spec: object, data_start: int, size: int) -> TensorEntry:
    try:
        dtype = DTYPES[spec["dtype"]]
        shape = tuple(int(d) for d in spec["shape"])
        begin, end = (int(o) for o in spec["data_offsets"])
    except (KeyError, TypeError, ValueError) as err:
        raise _bad(path, f"tensor {name!r} has an invalid header entry {spec!r}") from err
    if any(d < 0 for d in shape):
        raise _bad(path, f"tensor {name!r} has a negative dimension {shape}")
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if begin < 0 or end - begin != nbytes:
        raise _bad(path, f"tensor {name!r} of shape {shape} needs {nbytes} bytes, its offsets give {end - begin}")
    if data_start + end > size:
        raise _bad(path, f"tensor {name!r} ends at byte {data_start + end}, the file has {size}")
    return TensorEntry(dtype, shape, data_start + begin, data_start + end)


def read_tensors(path: Path, prefixes: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
    """The tensors whose names start with one of ``prefixes``, each read into a fresh CPU buffer (see the module
    docstring), in file order.

    Raises:
        ModelFormatError: as ``read_header``, or the file ended early while reading (it changed under us).
    """
    path = Path(path)
    entries = {k: e for k, e in read_header(path).items() if k.startswith(prefixes)}
    tensors = {}
    try:
        with path.open("rb", buffering=0) as f:
            for name, entry in sorted(entries.items(), key=lambda item: item[1].begin):
                buffer = torch.empty(entry.end - entry.begin, dtype=torch.uint8)
                f.seek(entry.begin)
                got = f.readinto(memoryview(buffer.numpy())) if len(buffer) else 0
                if got != len(buffer):
                    raise _bad(path, f"tensor {name!r}: {got} of {len(buffer)} bytes")
                tensors[name] = buffer.view(entry.dtype).reshape(entry.shape)
    except OSError as err:
        raise ModelFormatError(f"cannot read weight file {path} ({err}).") from err
    return tensors


def meta_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every declared tensor as a ``meta`` tensor (shape and dtype, no data): for inspecting a checkpoint's layout."""
    return {name: torch.empty(e.shape, dtype=e.dtype, device="meta") for name, e in read_header(path).items()}
