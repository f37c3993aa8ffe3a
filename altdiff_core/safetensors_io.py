"""Reading ``.safetensors`` files into memory the process owns, with every header field checked first.

Why not memory-map (safetensors' own loader): a mapped tensor is a view of the file's pages, so a model file truncated
or rewritten in place while a long-lived ComfyUI server holds the model turns the next access into SIGBUS — the whole
server dies, not a node. Read into fresh buffers, the loaded model no longer depends on the file at all, tensors sit at
64-byte alignment (the same weights give the same bits whatever file they came from), and peak memory is one
copy of what was asked for: pages are read through the page cache, never mapped into the process.

Format: 8-byte little-endian header length, a JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {…}}``, then the data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import struct
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelFormatError

HEADER_LIMIT = 100 * 2**20
"""Largest header accepted (real ones are well under 1 MB; the format's own limit is 100 MB)."""

MAX_DIMS = 64
"""Most dimensions a tensor may declare (weights have at most 5; torch's own kernels stop at 25–64)."""

CHUNK_BYTES = 2**20
"""Largest piece one worker reads at a time: small enough that the scratch buffer a cast goes through stays in a
core's L2 cache (1 MB pieces read a 3 GB file in 0.82–1.14 s on 2 cores, 32 MB ones 1.06–1.43 s; measurements in
``bench/reports/cpu-2core-2026-11-27-cpu_kernel_choices.md``).
"""

MAX_WORKERS = 8
"""Most reader threads: past a few, the page cache's memory bandwidth, not page faults, is the limit."""

ALIGNMENT = 64
"""Byte alignment of each tensor in the buffer ``read_tensors`` fills (a cache line; any dtype's element size)."""


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


def _short(value: object, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters: a hostile header's names and entries can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors a ``.safetensors`` file declares, validated against the file's size (nothing else is read).

    Raises:
        ModelFormatError: a header that is too long, not JSON (or nested too deep to parse), or declares tensors with
            an unknown dtype, a shape that is not a list of whole numbers up to the file's size, data beyond the file,
            of a size that does not match their shape, or overlapping another tensor's — naming the file.
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
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, an over-long number; nesting
        raise _bad(path, f"header is not JSON: {_short(str(err), 200)}") from err
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    data_start = 8 + length
    entries = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(path, name, spec, data_start, size)
    _check_overlaps(path, entries)
    return entries


def _entry(path: Path, name: str, spec: object, data_start: int, size: int) -> TensorEntry:
    """One header entry checked field by field: JSON gives any type anywhere (floats, bools, strings, nesting)."""
    fields = spec if isinstance(spec, dict) else {}
    dtype_name, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
    if not isinstance(shape, list) or not isinstance(offsets, list) or not isinstance(dtype_name, str):
        raise _bad(path, f"tensor {_short(name)} has an invalid header entry {_short(spec)}")
    if dtype_name not in DTYPES:
        raise _bad(
            path,
            f"tensor {_short(name)} has an invalid header entry: unknown dtype {_short(dtype_name)}, known: {', '.join(DTYPES)}",
        )
    if len(shape) > MAX_DIMS or not all(_whole(d) for d in shape):
        raise _bad(path, f"tensor {_short(name)} has the shape {_short(shape)}, not a list of whole numbers")
    if any(d < 0 for d in shape):
        raise _bad(path, f"tensor {_short(name)} has a negative dimension {_short(shape)}")
    if len(offsets) != 2 or not all(_whole(o) for o in offsets):
        raise _bad(path, f"tensor {_short(name)} has the data_offsets {_short(offsets)}, not two whole numbers")
    dtype, shape, (begin, end) = DTYPES[dtype_name], tuple(shape), offsets
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if begin < 0 or end - begin != nbytes:
        raise _bad(path, f"tensor {_short(name)} of shape {_short(shape)} needs {nbytes} bytes, its offsets give {end - begin}")
    if data_start + end > size:
        raise _bad(path, f"tensor {_short(name)} ends at byte {data_start + end}, the file has {size}")
    if any(d > size for d in shape):  # an empty tensor (a 0 in its shape) that torch could not even describe
        raise _bad(path, f"tensor {_short(name)} has a dimension in {_short(shape)} larger than the file")
    return TensorEntry(dtype, shape, data_start + begin, data_start + end)


def _check_overlaps(path: Path, entries: dict[str, TensorEntry]) -> None:
    """No two tensors may share bytes (the format forbids it). Each tensor is read into its own buffer, so without
    this a small file declaring many tensors over the same bytes would make the reader allocate many times its size."""
    previous_name, previous_end = None, 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin < previous_end and entry.end > entry.begin:
            raise _bad(path, f"tensors {_short(previous_name)} and {_short(name)} overlap in the file")
        if entry.end > previous_end:
            previous_name, previous_end = name, entry.end


def read_tensors(
    path: Path,
    prefixes: tuple[str, ...] = ("",),
    cast: torch.dtype | None = None,
    *,
    workers: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, torch.Tensor]:
    """The tensors whose names start with one of ``prefixes``, in memory the process owns (see the module docstring).

    Tensors kept as stored are read, in file order, into one fresh CPU buffer that they share and keep alive (one
    allocation, each tensor 64-byte aligned). With ``cast``, floating-point tensors stored in another dtype are read
    through a small per-worker scratch buffer straight into a new tensor of ``cast``: no stored-dtype copy of the whole
    file is ever held (an fp16 file loaded as fp32 never holds the fp16 copy beside the fp32 one).

    The reading is split into pieces of at most ``chunk_bytes`` that ``workers`` threads (default: one per CPU this
    process may use, at most ``MAX_WORKERS``) read in parallel, each first faulting in its piece's pages: most of a
    load's time is the kernel handing out and zeroing fresh pages, which scales with cores (see ``CHUNK_BYTES``).

    Raises:
        ModelFormatError: as ``read_header``, or the file ended early while reading (it changed under us).
    """
    path = Path(path)
    entries = {k: e for k, e in read_header(path).items() if k.startswith(prefixes)}
    ordered = sorted(entries.items(), key=lambda item: item[1].begin)

    def converted(entry: TensorEntry) -> bool:
        return cast is not None and entry.dtype.is_floating_point and entry.dtype != cast

    places, total = {}, 0
    for name, entry in ordered:  # packed into one buffer, each tensor at a multiple of ALIGNMENT
        if not converted(entry):
            places[name] = total
            total += -(-(entry.end - entry.begin) // ALIGNMENT) * ALIGNMENT
    # Plain allocations. Transparent huge pages (anonymous mmap + MADV_HUGEPAGE) were tried and dropped: 0.84 s for the
    # 3 GB m9 where an earlier load's freed huge pages were reused, but 7.4–8.5 s in a fresh process on the 2-core VM
    # (the kernel compacts memory to find 2 MB pages) against 2.0 s this way.
    arena = torch.empty(total, dtype=torch.uint8)
    tensors, pieces = {}, []
    for name, entry in ordered:
        if converted(entry):
            tensors[name] = torch.empty(entry.shape, dtype=cast)
            pieces += _pieces(name, entry, tensors[name].view(-1), chunk_bytes)
        else:
            flat = arena[places[name] : places[name] + entry.end - entry.begin]
            tensors[name] = flat.view(entry.dtype).reshape(entry.shape)
            pieces += _pieces(name, entry, flat.view(entry.dtype), chunk_bytes)
    count = max(1, min(workers or default_workers(), len(pieces)))
    shares = [pieces[k::count] for k in range(count)]  # interleaved: every worker walks the file front to back
    # Inference mode is per thread: under ComfyUI's executor (which runs nodes in it) the tensors above are inference
    # tensors, and a worker thread outside the mode may not write into them.
    inference = torch.is_inference_mode_enabled()
    if count == 1:
        _read_pieces(path, shares[0], inference)
    else:
        with ThreadPoolExecutor(count, thread_name_prefix="read_tensors") as pool:
            for done in [pool.submit(_read_pieces, path, share, inference) for share in shares]:
                done.result()
    return tensors


@dataclass(frozen=True)
class _Piece:
    """Part of one tensor: ``target.numel()`` elements stored at ``begin`` in the file, to land in ``target`` (a flat
    view of the tensor's memory, in the stored dtype or in the dtype being cast to)."""

    name: str
    begin: int
    stored: torch.dtype
    target: torch.Tensor


def _pieces(name: str, entry: TensorEntry, target: torch.Tensor, chunk_bytes: int) -> list[_Piece]:
    """``entry`` cut into pieces of at most ``chunk_bytes`` (at least one element each) writing into ``target``."""
    size = entry.dtype.itemsize
    step = max(1, chunk_bytes // size)
    numel = (entry.end - entry.begin) // size
    return [
        _Piece(name, entry.begin + first * size, entry.dtype, target[first : first + step])
        for first in range(0, numel, step)
    ]


def _read_pieces(path: Path, pieces: list[_Piece], inference: bool) -> None:
    """Read ``pieces`` with this thread's own file handle (and scratch buffer, for pieces cast to another dtype), in
    inference mode where the caller was in it."""
    scratch = torch.empty(0, dtype=torch.uint8)
    try:
        with path.open("rb", buffering=0) as f, torch.inference_mode(inference):
            for piece in pieces:
                nbytes = piece.target.numel() * piece.stored.itemsize
                cast = piece.target.dtype != piece.stored
                if cast and scratch.numel() < nbytes:
                    scratch = torch.empty(nbytes, dtype=torch.uint8)
                landing = scratch[:nbytes] if cast else piece.target.view(torch.uint8)
                _prefault(piece.target)
                f.seek(piece.begin)
                got = _read_fully(f, memoryview(landing.numpy()))
                if got != nbytes:
                    raise _bad(path, f"tensor {piece.name!r}: {got} of {nbytes} bytes at byte {piece.begin}")
                if cast:  # pieces kept as stored were read in place
                    piece.target.copy_(landing.view(piece.stored))
    except OSError as err:
        raise ModelFormatError(f"cannot read weight file {path} ({err}).") from err


def default_workers() -> int:
    """Reader threads by default: the CPUs this process may run on, at most ``MAX_WORKERS``."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, usable))


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise`` on Linux (where ``MADV_POPULATE_WRITE`` exists, kernel 5.14+), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_MADV_POPULATE_WRITE = 23
_PAGE = 4096


def _prefault(target: torch.Tensor) -> None:
    """Fault in ``target``'s pages in one call before reading into them, instead of one fault per page inside
    ``read``. An optimisation only: where the call is missing or refused (older kernels: EINVAL) nothing changes."""
    madvise = _madvise()  # looked up on first use, not at import
    if madvise is None or not target.numel():
        return
    start = target.data_ptr() & ~(_PAGE - 1)
    madvise(start, target.data_ptr() + target.nbytes - start, _MADV_POPULATE_WRITE)


def _read_fully(f, view: memoryview) -> int:
    """Bytes read into ``view`` (fewer only at the end of the file): one ``read`` stops at 2 GiB on Linux."""
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            break
        done += got
    return done


def meta_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every declared tensor as a ``meta`` tensor (shape and dtype, no data): for inspecting a checkpoint's layout."""
    return {name: torch.empty(e.shape, dtype=e.dtype, device="meta") for name, e in read_header(path).items()}
