"""Hub ids → local folders: download only what the pack loads, into a folder the user can see.

Nothing here runs unless the user asks for a Hub id (``BAAI/AltDiffusion-m9``); local folders never touch
the network. A Hub id is first looked up as ``<models folder>/<name>`` (``models/diffusers/AltDiffusion-m9``), so a
model downloaded once, or put there by hand, is used offline from then on.

A download goes into a hidden sibling folder (``.AltDiffusion-m9.partial``) that is renamed to its real name only once
every file is in it, and ``model_index.json`` is fetched last: an interrupted download never leaves a folder that looks
like a model (the loader lists folders by their ``model_index.json``), and the next try fetches only the files not
complete yet (huggingface_hub keeps what it fetched, and from where, in ``.partial/.cache/huggingface``).

The Hub is reached as huggingface_hub reaches it: ``HF_ENDPOINT`` (read when huggingface_hub is imported) sends every
request to a mirror, ``HF_HUB_OFFLINE`` stops them all.
"""

from __future__ import annotations

import logging
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from .compat import hub_network_errors
from .errors import ModelFormatError, ModelNotFoundError
from .variants import VARIANTS
from .weights import PICKLE_SUFFIXES, SAFE_SUFFIXES

logger = logging.getLogger(__name__)

REQUIRED_FILES = (
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/sentencepiece.bpe.model",
    "unet/config.json",
    "vae/config.json",
    "model_index.json",
)
"""Files without which the folder does not load (``model_index.json`` last: it is what marks a folder as a model)."""

WEIGHT_STEMS = {
    "text_encoder": ("model", "pytorch_model"),
    "unet": ("diffusion_pytorch_model",),
    "vae": ("diffusion_pytorch_model",),
}
"""Component → the weight file names ``loading.py`` reads (``read_component``); one file per component is fetched."""

HUB_PAGE = "https://huggingface.co/{repo_id}/tree/main"


class DownloadProgress(Protocol):
    """What a ``progress(total_bytes, description)`` context manager yields (``nodes.comfy_seam.download_progress``)."""

    tqdm_class: type | None
    """Given to huggingface_hub as ``tqdm_class`` (one bar per file, whose bytes go to the overall bar); None = its own bars."""

    def advance_to(self, done_bytes: int) -> None:
        """The files finished so far hold ``done_bytes`` (also those that were already there and so made no bar)."""


ProgressFactory = Callable[[int, str], AbstractContextManager[DownloadProgress]]


class _NoProgress:
    tqdm_class = None

    def advance_to(self, done_bytes: int) -> None:
        pass


@contextmanager
def _no_progress(total_bytes: int, description: str) -> Iterator[DownloadProgress]:
    yield _NoProgress()


def hub_models() -> tuple[str, ...]:
    """The Hub repositories the pack downloads (diffusers folders; see docs/altdiffusion.md): each variant's
    ``hub_repo``, in ``VARIANTS``' order (``BAAI/AltDiffusion``, ``BAAI/AltDiffusion-m9``, ``BAAI/AltDiffusion-m18``)."""
    return tuple(variant.hub_repo for variant in VARIANTS.values())


def local_folder_for(repo_id: str, models_dir: Path) -> Path:
    """Where a Hub model lives locally: ``models_dir/<name>`` (e.g. ``models/diffusers/AltDiffusion-m9``)."""
    return Path(models_dir) / repo_id.split("/")[-1]


def unknown_id_message(name: str, where: str) -> str:
    """The error for a name that is neither a local model nor a Hub id in ``hub_models()``; ``where``: the model folders."""
    return (
        f"model {name!r} is not an AltDiffusion folder under the model folders ({where}) nor one of the Hub ids this "
        f"pack downloads ({', '.join(hub_models())}). Pick one of those ids, or put the model's diffusers folder (with "
        "model_index.json) in one of the model folders and pick it by its folder name."
    )


def resolve(repo_id: str, roots: Iterable[Path], download_dir: Path, progress: ProgressFactory | None = None) -> Path:
    """The local folder of a Hub id in ``hub_models()``: ``<root>/<name>`` with a model_index.json under any of ``roots``
    (no network), else downloaded into ``download_dir/<name>`` (``download``).

    Raises:
        ModelNotFoundError: an id not in ``hub_models()``; offline; the download failed (naming the folder to fill).
        ModelFormatError: the repository does not hold an AltDiffusion diffusers folder.
    """
    roots = list(dict.fromkeys([*map(Path, roots), Path(download_dir)]))
    if repo_id not in hub_models():
        raise ModelNotFoundError(unknown_id_message(repo_id, ", ".join(str(r) for r in roots)))
    return find_local(repo_id, roots) or download(repo_id, download_dir, progress)


def find_local(repo_id: str, roots: Iterable[Path]) -> Path | None:
    """The first ``<root>/<name>`` of a Hub id that has a model_index.json (a finished download), else None; no network."""
    for root in roots:
        folder = local_folder_for(repo_id, root)
        if (folder / "model_index.json").is_file():
            return folder
    return None


def files_to_download(repo_id: str, repo_files: Iterable[str]) -> list[str]:
    """The files of the repository that the pack loads, ``model_index.json`` last.

    The configs, the tokenizer, the scheduler config and, per component (``WEIGHT_STEMS``), the one weight file the
    loader would pick: ``.safetensors`` when the repository has it, else the pickled ``.bin`` (the order of
    ``weights.find_weight_file``; the m9 main branch, for one, holds only ``.bin``). Never ``safety_checker/`` or
    ``feature_extractor/``, fp16 variants, READMEs or single-file checkpoints kept beside the folders.

    Raises:
        ModelFormatError: a required file or a component's weights are missing from the repository.
    """
    available = set(repo_files)
    missing = [name for name in REQUIRED_FILES if name not in available]
    wanted = {name for name in available if name.startswith("tokenizer/")}
    wanted |= {name for name in REQUIRED_FILES if name in available}
    weights = []
    for component, stems in WEIGHT_STEMS.items():
        candidates = [f"{component}/{stem}{suffix}" for suffix in SAFE_SUFFIXES + PICKLE_SUFFIXES for stem in stems]
        found = next((c for c in candidates if c in available), None)
        if found is None:
            missing.append(f"{component}/{stems[0]}.safetensors (or .bin)")
        else:
            weights.append(found)
    if missing:
        raise ModelFormatError(
            f"the Hub repository {repo_id} lacks {', '.join(missing)}, so it is not an AltDiffusion diffusers folder "
            f"this pack can load ({HUB_PAGE.format(repo_id=repo_id)})."
        )
    wanted.discard("model_index.json")
    return sorted(wanted) + weights + ["model_index.json"]


def download(repo_id: str, models_dir: Path, progress: ProgressFactory | None = None) -> Path:
    """Download ``repo_id``'s configs, tokenizer and weights (``files_to_download``) into
    ``local_folder_for(repo_id, models_dir)`` and return that folder; an existing complete folder is returned as it is.

    ``progress(total_bytes, description)`` is a context manager yielding a ``DownloadProgress`` (default: huggingface_hub's
    own bars). Cancelling (an exception from the progress bar, Ctrl+C) propagates as it is; the partial folder is kept
    and the next call fetches only the files not complete yet.

    Raises:
        ModelNotFoundError: an id not in ``hub_models()``; offline; the download failed — naming the folder to fill by hand.
        ModelFormatError: the repository does not hold an AltDiffusion diffusers folder.
    """
    target = local_folder_for(repo_id, models_dir)
    if repo_id not in hub_models():
        raise ModelNotFoundError(unknown_id_message(repo_id, str(models_dir)))
    if (target / "model_index.json").is_file():
        return target
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise ModelNotFoundError(
            f"{target} exists but has no model_index.json, so it is not a complete model folder and the download of "
            f"{repo_id} would overwrite it. Finish filling it by hand ({_what_to_fill(repo_id)}) or delete it, then try again."
        )
    try:
        from huggingface_hub import HfApi, constants, hf_hub_download, list_repo_files

        network_errors = hub_network_errors()  # which HTTP library's errors depends on huggingface_hub's version
    except ImportError as err:
        raise ModelNotFoundError(_offline_message(repo_id, target, "huggingface_hub is not installed")) from err
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(_offline_message(repo_id, target, "offline: HF_HUB_OFFLINE is set"))

    _check_reachable(repo_id, target, network_errors)  # no network at all: say so now, not after 40-50 s of retries
    try:
        repo_files = list_repo_files(repo_id)
    except network_errors as err:
        raise ModelNotFoundError(_offline_message(repo_id, target, _reason(err))) from err
    files = files_to_download(repo_id, repo_files)
    try:
        sizes = {info.path: info.size or 0 for info in HfApi().get_paths_info(repo_id, files)}
    except network_errors as err:
        raise ModelNotFoundError(_offline_message(repo_id, target, _reason(err))) from err

    partial = target.parent / f".{target.name}.partial"
    total = sum(sizes.values())
    weights = [name for name in files if name.endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES)]
    logger.info(
        "downloading %s into %s: %d files, %.2f GB (weights %s; no safety checker)",
        repo_id, target, len(files), total / 1e9, ", ".join(weights),
    )  # fmt: skip
    partial.mkdir(parents=True, exist_ok=True)
    done = 0
    with (progress or _no_progress)(total, f"Downloading {repo_id}") as bar:
        for name in files:
            try:
                hf_hub_download(repo_id, name, local_dir=partial, tqdm_class=bar.tqdm_class)
            except network_errors as err:
                why = f"the download stopped at {name}: {_reason(err)}"
                raise ModelNotFoundError(
                    _offline_message(repo_id, target, why) + f" Or try again: it goes on from the files already in {partial}."
                ) from err
            done += sizes.get(name, 0)
            bar.advance_to(done)

    absent = [name for name in files if not (partial / name).is_file()]
    if absent:  # huggingface_hub returned without error; should not happen
        raise ModelNotFoundError(_offline_message(repo_id, target, f"{', '.join(absent)} did not arrive in {partial}"))
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's resume state, not part of the model
    if (target / "model_index.json").is_file():  # another process finished the same download meanwhile
        shutil.rmtree(partial, ignore_errors=True)
        return target
    if target.is_dir():
        target.rmdir()  # empty (checked above)
    partial.rename(target)
    logger.info("downloaded %s into %s", repo_id, target)
    return target


def _check_reachable(repo_id: str, target: Path, network_errors: tuple[type[BaseException], ...]) -> None:
    """One request to the Hub, not retried: raise at once when the Hub cannot be reached at all (``_unreachable``).

    ``list_repo_files`` goes through huggingface_hub's ``http_backoff``, which retries a connection error 5 times,
    waiting 1+2+4+8+8 s, and cannot be told not to: with no network that was 40-50 s (each name lookup waits too) before
    the message naming the folder to fill. ``get_hf_file_metadata`` (the HEAD ``hf_hub_download`` starts with) makes a
    single attempt. Any other failure here (a timeout, an HTTP error) is left to the calls that follow, which retry it
    as before, and so is a connection dropped during the download (``http_get`` resumes it).

    Raises:
        ModelNotFoundError: the Hub's host does not resolve or refuses the connection — naming the folder to fill.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "model_index.json"))
    except network_errors as err:
        why = _unreachable(err, constants.ENDPOINT)
        if why is not None:
            raise ModelNotFoundError(_offline_message(repo_id, target, why)) from err


def _unreachable(err: BaseException, endpoint: str) -> str | None:
    """Why ``err`` shows that ``endpoint`` cannot be reached at all (its host name does not resolve: no network or a
    wrong ``HF_ENDPOINT``; or it refuses the connection), else None.

    The HTTP library wraps the socket's error (httpx's ConnectError raised from httpcore's, requests' ConnectionError
    in huggingface_hub < 1.0 from urllib3's NewConnectionError), so the chain of causes is searched for it.
    """
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            host = urlsplit(endpoint).hostname or endpoint
            return f"the host {host} cannot be resolved: no network, or HF_ENDPOINT names a wrong host; {_reason(err)}"
        if isinstance(cause, ConnectionRefusedError):
            return f"{endpoint} refused the connection; {_reason(err)}"
        cause = cause.__cause__ or cause.__context__
    return None


def _reason(err: BaseException) -> str:
    """The first line of an error, with its type (huggingface_hub's HTTP errors span several lines)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _what_to_fill(repo_id: str) -> str:
    return (
        f"model_index.json and the folders scheduler/, text_encoder/, tokenizer/, unet/ and vae/ from "
        f"{HUB_PAGE.format(repo_id=repo_id)}, not safety_checker/ or feature_extractor/"
    )


def _offline_message(repo_id: str, target: Path, why: str) -> str:
    return (
        f"cannot download {repo_id} ({why}). Put the model's files in {target} by hand: {_what_to_fill(repo_id)}; "
        f"{repo_id} then finds that folder without the network."
    )
