"""Reading weight files safely and putting them into modules, with errors that name the file.

``.safetensors`` files are read with safetensors. Pickled ``.bin``/``.ckpt`` files are read only with
``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or a plain
container: a model file never runs code here.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .errors import ModelFormatError

logger = logging.getLogger(__name__)

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFormatError(f"weight file {path} is damaged or truncated ({err}). Download it again.") from err


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFormatError(
            f"weight file {path} contains Python objects besides tensors; it is not unpickled, for safety "
            f"({str(err).splitlines()[0]}). Use a .safetensors copy of the model instead."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ModelFormatError(f"weight file {path} is damaged or truncated ({err}). Download it again.") from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelFormatError(f"weight file {path} does not hold a flat dict of tensors; it is not a model checkpoint.")
    return data


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` or pickled weight file, on the CPU, in their stored dtypes."""
    path = Path(path)
    if path.suffix in SAFE_SUFFIXES:
        return _read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
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


def load_into(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: Path,
    ignored_prefixes: tuple[str, ...] = (),
) -> None:
    """Copy ``state_dict`` into ``module``; every key must match in name and shape.

    Raises:
        ModelFormatError: keys missing, unexpected (beyond ``ignored_prefixes``) or of the wrong shape,
            naming ``source`` and a few of the keys.
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(ignored_prefixes)}
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
    if problems:
        raise ModelFormatError(
            f"weights in {source} do not fit the model its config describes: {'; '.join(problems)}. "
            "The file belongs to another model or the config was edited; download both again."
        )
    module.load_state_dict(state_dict, strict=True)
