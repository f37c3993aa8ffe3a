"""Reading weight files safely and putting them into modules, with errors that name the file.

``.safetensors`` files are read by ``safetensors_io`` into memory the process owns, header checked first (never
memory-mapped: see that module for why). Pickled ``.bin``/``.ckpt`` files are read only with
``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or a plain container (a model
file never runs code here), also into owned memory.

Modules are built on the ``meta`` device (no memory, no random initialisation, see ``build_empty``) and filled by
``load_into``, which casts each tensor on its own to the wanted dtype and device and *assigns* it: no full fp32 copy of
the model ever exists, and a file already in the wanted dtype is not copied again after it is read. Once loaded, a
model does not depend on its file: deleting, truncating or replacing it cannot disturb a running server.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from .compat import restore_non_persistent_buffers
from .errors import ModelFormatError
from .safetensors_io import meta_tensors, read_tensors

logger = logging.getLogger(__name__)

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _unpickler_reason(err: Exception) -> str:
    """The one informative line of a weights-only unpickling error (torch wraps it in advice to load unsafely)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = found.group(1) if found else (text.strip().splitlines() or [type(err).__name__])[0]
    return reason.strip().split(". ", 1)[0][:200]


def _read_pickle(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if not reason.startswith("Unsupported global"):
            raise ModelFormatError(f"weight file {path} is damaged or truncated ({reason}). Download it again.") from err
        raise ModelFormatError(
            f"weight file {path} contains Python objects besides tensors; it is not unpickled, for safety "
            f"({reason}). Use a .safetensors copy of the model instead."
        ) from err
    except MemoryError as err:
        raise ModelFormatError(
            f"weight file {path} declares more data than this machine's memory holds; it is damaged (download it "
            "again) or too large to load here."
        ) from err
    except Exception as err:  # torch.load's parsers raise a dozen exception types on damaged bytes
        # (IndexError, KeyError, struct.error, AssertionError, zipfile.BadZipFile, …: tests/test_hostile_inputs.py);
        # to the user they all mean the same.
        detail = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        raise ModelFormatError(f"weight file {path} is damaged or truncated ({detail}). Download it again.") from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise ModelFormatError(f"weight file {path} does not hold a flat dict of tensors; it is not a model checkpoint.")
    return {key: tensor for key, tensor in data.items() if key.startswith(prefixes)}


def reads_parts(path: Path) -> bool:
    """Whether ``read_state_dict(path, prefixes)`` reads only the asked parts (safetensors); pickles are read whole."""
    return Path(path).suffix in SAFE_SUFFIXES


def read_layout(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file with its shape and dtype: ``meta`` tensors for safetensors (only the header is read),
    the real tensors for pickles (which can only be read whole)."""
    path = Path(path)
    return meta_tensors(path) if reads_parts(path) else read_state_dict(path)


def read_state_dict(path: Path, prefixes: tuple[str, ...] = ("",), cast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or pickled weight file whose keys start with one of ``prefixes`` (all by
    default), on the CPU, in memory the process owns: in their stored dtypes, or, with ``cast``, floating-point ones
    already in ``cast`` where the format allows converting while reading (safetensors). Read a big file part by part
    (``prefixes``) so that only one part is held before it is placed.
    """
    path = Path(path)
    if path.suffix in SAFE_SUFFIXES:
        return read_tensors(path, prefixes, cast)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path, prefixes)
    raise ModelFormatError(
        f"weight file {path} has an unknown extension {path.suffix!r}; expected one of "
        f"{', '.join(SAFE_SUFFIXES + PICKLE_SUFFIXES)}."
    )


def find_weight_file(folder: Path, stems: Iterable[str]) -> Path:
    """The first existing ``<stem><suffix>`` in ``folder``, safetensors preferred over pickles."""
    candidates = [folder / f"{stem}{suffix}" for suffix in SAFE_SUFFIXES + PICKLE_SUFFIXES for stem in stems]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(c.name for c in candidates[:4])
    raise ModelFormatError(f"no weight file in {folder} (looked for {names}, …). Download the folder's weights again.")


def build_empty(factory: Callable[[], ModuleT]) -> ModuleT:
    """``factory()`` run on the meta device: the module's structure, shapes and dtypes, no memory, no random init.

    Fill it with ``load_into``; until then its parameters have no values.
    """
    with torch.device("meta"):
        return factory()


def check_keys(module: nn.Module, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Every key of ``module`` must be in ``state_dict`` with the same shape, and no other key; a floating-point
    parameter must be stored as floating point (any precision: it is cast), not as integers or booleans.

    Raises:
        ModelFormatError: keys missing, unexpected, of the wrong shape or of a non-float dtype, naming ``source`` and
            a few of the keys.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        k = wrong_shape[0]
        problems.append(
            f"{len(wrong_shape)} of the wrong shape (e.g. {k}: {tuple(state_dict[k].shape)} in the file, "
            f"{tuple(expected[k].shape)} in the config)"
        )
    wrong_dtype = [
        k for k in expected if k in state_dict and expected[k].is_floating_point() and not state_dict[k].is_floating_point()
    ]
    if wrong_dtype:
        k = wrong_dtype[0]
        problems.append(
            f"{len(wrong_dtype)} stored as integers or booleans instead of floats (e.g. {k}: "
            f"{str(state_dict[k].dtype).removeprefix('torch.')})"
        )
    if problems:
        raise ModelFormatError(
            f"weights in {source} do not fit the model its config describes: {'; '.join(problems)}. "
            "The file belongs to another model or the config was edited; download both again."
        )


def load_into(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: Path,
    ignored_prefixes: tuple[str, ...] = (),
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """Put ``state_dict`` into ``module`` (built by ``build_empty`` or a real one): every key must match in name and
    shape. Floating tensors are cast to ``dtype`` (None: kept as stored), all moved to ``device``, one at a time, and
    assigned, not copied; then the module is set to eval mode without gradients.

    Raises:
        ModelFormatError: keys missing, unexpected (beyond ``ignored_prefixes``) or of the wrong shape, naming
            ``source`` and a few of the keys.
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(ignored_prefixes)}
    check_keys(module, state_dict, source)
    placed = {key: _place(tensor, dtype, torch.device(device)) for key, tensor in state_dict.items()}
    module.load_state_dict(placed, strict=True, assign=True)
    restore_non_persistent_buffers(module, torch.device(device))  # transformers keeps some buffers out of every file
    module.eval().requires_grad_(False)


def _place(tensor: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """``tensor`` in ``dtype`` (floating tensors only) on ``device``; itself, not a copy, when it already is."""
    return tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)
