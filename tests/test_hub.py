"""Hub ids in the loader: offered always, downloaded once (only what the pack loads), resumable, clear when offline.

No real network: ``FakeHub`` serves a folder over HTTP on 127.0.0.1 the way the Hugging Face Hub answers the requests
huggingface_hub 2.4 makes for ``list_repo_files``, ``get_paths_info`` and ``hf_hub_download``:

- ``GET  /api/models/<repo>/tree/<revision>?recursive=True`` — the file listing (JSON; one page, no ``Link`` header);
- ``POST /api/models/<repo>/paths-info/<revision>`` (form ``paths=…``) — the sizes of the files to fetch;
- ``HEAD /<repo>/resolve/<revision>/<file>`` — needs ``X-Repo-Commit``, ``ETag`` and ``Content-Length``;
- ``GET  /<repo>/resolve/<revision>/<file>`` — the bytes, with ``Range: bytes=N-`` (206) to resume a broken file.

The client reads its endpoint at import (``constants.ENDPOINT``, the URL template, and the module-level ``HfApi`` behind
``list_repo_files``), so ``hub_endpoint`` patches those rather than setting ``HF_ENDPOINT``; the one test of
``HF_ENDPOINT`` itself (a mirror) sets it for a fresh process.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
M9 = "BAAI/AltDiffusion-m9"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
VAE_WEIGHTS = "vae/diffusion_pytorch_model.safetensors"
EXPECTED_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/pytorch_model.bin",  # the repo has no safetensors for the text encoder: .bin, per component
    "tokenizer/sentencepiece.bpe.model",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    UNET_WEIGHTS,  # .safetensors preferred over the .bin beside it
    "vae/config.json",
    VAE_WEIGHTS,
}


class FakeHub(ThreadingHTTPServer):
    """Serves ``repos`` ({repo id: folder}) as Hub repositories; ``log`` lists (method, path) of every request.

    A file in ``broken`` or ``flaky`` is cut off halfway through its first GET (the connection closes). After that a
    ``broken`` file is answered 500, as by a server that went away mid-download (remove it from ``broken`` to let it
    through again); a ``flaky`` one is served again, so the client's retry gets it.
    """

    daemon_threads = True

    def __init__(self, repos: dict[str, Path]):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos = repos
        self.log: list[tuple[str, str]] = []
        self.broken: set[str] = set()
        self.flaky: set[str] = set()
        self.cut: set[str] = set()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self) -> list[str]:
        """The files fetched (GET …/resolve/…), in order."""
        return [path.split(f"/resolve/{COMMIT}/", 1)[-1].split("/resolve/main/", 1)[-1] for m, path in self.log
                if m == "GET" and "/resolve/" in path]  # fmt: skip


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHub

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        self.server.log.append((method, path))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(tree|paths-info)/([^/]+)", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo_id = (api or resolve).group(1) if (api or resolve) else None
        folder = self.server.repos.get(repo_id)
        if folder is None:
            return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        if api and api.group(2) == "tree" and method == "GET":
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            dirs = sorted({p.parent for p in files} - {folder})
            entries = [self._entry(folder, d) for d in dirs] + [self._entry(folder, f) for f in files]
            return self._json(entries)
        if api and api.group(2) == "paths-info" and method == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            paths = urllib.parse.parse_qs(body).get("paths", [])
            return self._json([self._entry(folder, folder / p) for p in paths if (folder / p).exists()])
        if resolve and method in ("GET", "HEAD"):
            return self._file(method, folder, resolve.group(3))
        return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})

    @staticmethod
    def _entry(folder: Path, path: Path) -> dict:
        name = path.relative_to(folder).as_posix()
        oid = hashlib.sha1(name.encode()).hexdigest()
        if path.is_dir():
            return {"type": "directory", "oid": oid, "size": 0, "path": name}
        return {"type": "file", "oid": oid, "size": path.stat().st_size, "path": name}

    def _file(self, method: str, folder: Path, name: str) -> None:
        path = folder / name
        if not path.is_file():
            return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        data = path.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        if method == "HEAD":
            return self._send(200, b"", {**headers, "Content-Length": str(len(data))}, body=False)
        if name in self.server.broken | self.server.flaky and not (name in self.server.cut and name in self.server.flaky):
            if name in self.server.cut:
                return self._send(500, b"{}", {})
            self.server.cut.add(name)
            self.send_response(200)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(206 if match else 200, data[start:], headers)

    def _json(self, value) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _send(self, status: int, data: bytes, headers: dict, body: bool = True) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


# ------------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def hub_repo(m9_folder, m9_bin_folder, tmp_path_factory) -> Path:
    """The tiny m9 laid out as a BAAI repository with mixed weight formats: the text encoder only as .bin, the UNet as
    both .safetensors and .bin, plus what the pack must not fetch (safety_checker/, feature_extractor/, README.md, a
    single-file checkpoint at the top)."""
    repo = tmp_path_factory.mktemp("hub") / "AltDiffusion-m9"
    shutil.copytree(m9_folder, repo)
    (repo / "text_encoder" / "model.safetensors").unlink()
    shutil.copy(m9_bin_folder / "text_encoder" / "pytorch_model.bin", repo / "text_encoder")
    shutil.copy(m9_bin_folder / "unet" / "diffusion_pytorch_model.bin", repo / "unet")
    (repo / "README.md").write_text("# AltDiffusion-m9\n", encoding="utf-8")
    (repo / ".gitattributes").write_text("*.bin filter=lfs\n", encoding="utf-8")
    shutil.copy(repo / UNET_WEIGHTS, repo / "AltDiffusion-m9.safetensors")
    assert (repo / "safety_checker" / "pytorch_model.bin").is_file() and (repo / "feature_extractor").is_dir()
    return repo


@pytest.fixture
def fake_hub(hub_repo):
    server = FakeHub({M9: hub_repo})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def roots(pack, tmp_path, monkeypatch) -> types.SimpleNamespace:
    """Empty model folders as in ComfyUI (models/altdiffusion, models/diffusers — the download folder —,
    models/checkpoints) and an empty huggingface_hub cache, so nothing of this machine's is found."""
    seam = pack.nodes.comfy_seam
    folders = types.SimpleNamespace(**{n: tmp_path / n for n in ("altdiffusion", "diffusers", "checkpoints")})
    for folder in vars(folders).values():
        folder.mkdir()
    monkeypatch.setattr(seam, "model_roots", lambda: [folders.altdiffusion, folders.diffusers])
    monkeypatch.setattr(seam, "checkpoint_roots", lambda: [folders.checkpoints, folders.altdiffusion])
    monkeypatch.setattr(seam, "hub_download_dir", lambda: folders.diffusers)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    return folders


def point_hub_at(monkeypatch, url: str, offline: bool = False) -> None:
    """Send huggingface_hub's requests to ``url`` (it read HF_ENDPOINT at import, hence patching its constants)."""
    import huggingface_hub.constants
    import huggingface_hub.hf_api

    constants = huggingface_hub.constants
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", url)  # the HfApi behind huggingface_hub.list_repo_files
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hub_endpoint(fake_hub, roots, monkeypatch) -> FakeHub:
    point_hub_at(monkeypatch, fake_hub.url)
    return fake_hub


def cli():
    return importlib.import_module("comfyui_altdiffusion.nodes.cli")


@pytest.fixture(scope="module")
def hub(pack):
    return importlib.import_module("comfyui_altdiffusion.altdiff_core.hub")


def folder_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def generate(core, model, text_encoder, vae) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cond, _ = core.encode_prompt(text_encoder, "一只猫, watercolor")
    neg, _ = core.encode_prompt(text_encoder, "")
    latent = core.sample_latent(model, cond, neg, torch.zeros(1, 4, 8, 8), seed=7, steps=2, cfg=7.5,
                                sampler_name="euler", scheduler="normal")  # fmt: skip
    return cond, latent, core.decode_latent(vae, latent)


# --------------------------------------------------------------------------------------------------------------- tests


def test_files_to_download_choose_per_component_and_skip_the_safety_checker(hub):
    real_m9 = [  # BAAI/AltDiffusion-m9 main: pickles only
        ".gitattributes", "README.md", "feature_extractor/preprocessor_config.json", "model_index.json",
        "safety_checker/config.json", "safety_checker/pytorch_model.bin", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/pytorch_model.bin", "tokenizer/sentencepiece.bpe.model",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.bin", "vae/config.json", "vae/diffusion_pytorch_model.bin",
    ]  # fmt: skip
    chosen = hub.files_to_download(M9, real_m9)
    assert chosen[-1] == "model_index.json"  # last: only a complete folder has one
    assert {"text_encoder/pytorch_model.bin", "unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.bin"} < set(chosen)
    unwanted = ("safety_checker/", "feature_extractor/", ".gitattributes", "README.md")
    assert not any(f.startswith(unwanted) for f in chosen)
    mixed = [*real_m9, "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
             "text_encoder/model.safetensors", "AltDiffusion-m9.ckpt"]  # fmt: skip
    chosen = hub.files_to_download(M9, mixed)
    weights = [f for f in chosen if f.split("/")[0] in hub.WEIGHT_STEMS and not f.endswith(".json")]
    assert weights == ["text_encoder/model.safetensors", UNET_WEIGHTS, "vae/diffusion_pytorch_model.bin"]


def test_files_to_download_names_what_the_repo_lacks(pack, hub):
    with pytest.raises(pack.altdiff_core.ModelFormatError) as err:
        hub.files_to_download(M9, ["model_index.json", "unet/config.json", "vae/config.json", "unet/model.safetensors"])
    message = str(err.value)
    assert message.startswith(f"the Hub repository {M9} lacks ")
    for name in ("tokenizer/sentencepiece.bpe.model", "unet/diffusion_pytorch_model.safetensors (or .bin)"):
        assert name in message
    assert "unet/config.json" not in message and f"https://huggingface.co/{M9}/tree/main" in message


def test_loader_offers_the_hub_ids_after_the_local_models(pack, hub, roots, m9_folder):
    shutil.copytree(m9_folder, roots.altdiffusion / "my-m9")
    names = pack.nodes.loader.list_models()
    hub_models = list(hub.hub_models())
    assert names == ["my-m9", *hub_models]
    assert hub_models == ["BAAI/AltDiffusion", "BAAI/AltDiffusion-m9", "BAAI/AltDiffusion-m18"]
    assert "BAAI/AltDiffusion-m9" in pack.nodes.loader.AltDiffusionLoader.INPUT_TYPES()["required"]["model_name"][0]


def test_hub_id_downloads_only_what_is_needed_once_and_loads_like_the_repo(pack, hub_endpoint, roots, hub_repo, caplog):
    loader = pack.nodes.loader
    with caplog.at_level("INFO", logger="comfyui_altdiffusion.altdiff_core.hub"):
        model, text_encoder, vae, info = loader.AltDiffusionLoader().load(M9, "fp32")
    target = roots.diffusers / "AltDiffusion-m9"
    assert folder_files(target) == EXPECTED_FILES  # no .cache/, no safety checker, one weight file per component
    assert not any(p.name.startswith(".") for p in roots.diffusers.iterdir())  # no .partial left behind
    fetched = hub_endpoint.gets()
    assert sorted(fetched) == sorted(EXPECTED_FILES) and fetched[-1] == "model_index.json"
    assert not any("safety_checker" in path or "feature_extractor" in path for _, path in hub_endpoint.log)
    assert f"downloading {M9} into {target}: 11 files" in caplog.text and "no safety checker" in caplog.text
    assert "AltDiffusion-m9" in info

    # Same weights, same outputs as the repository's own folder loaded directly.
    core = pack.altdiff_core
    direct = loader.AltDiffusionLoader.load_path(hub_repo, "fp32")
    for got, want in zip(generate(core, model, text_encoder, vae), generate(core, *direct[:3]), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    # Downloaded once: resolving again, and listing, never touch the network.
    requests = len(hub_endpoint.log)
    assert loader.resolve_model(M9) == target.resolve()
    assert loader.resolve_model(M9, download=False) == target.resolve()
    assert "AltDiffusion-m9" in loader.list_models()
    assert len(hub_endpoint.log) == requests


def test_a_folder_already_in_any_model_folder_is_used_without_the_network(pack, hub_endpoint, roots, m9_folder):
    shutil.copytree(m9_folder, roots.altdiffusion / "AltDiffusion-m9")  # put there by hand, in models/altdiffusion
    assert pack.nodes.loader.resolve_model(M9) == (roots.altdiffusion / "AltDiffusion-m9").resolve()
    assert hub_endpoint.log == []
    with pytest.raises(pack.altdiff_core.ModelNotFoundError, match="not downloaded yet"):
        pack.nodes.loader.resolve_model("BAAI/AltDiffusion-m18", download=False)
    assert hub_endpoint.log == []


def test_interrupted_download_leaves_no_model_folder_and_resumes(pack, hub_endpoint, roots):
    loader = pack.nodes.loader
    hub_endpoint.broken.add(UNET_WEIGHTS)
    with pytest.raises(pack.altdiff_core.ModelNotFoundError) as err:
        loader.resolve_model(M9)
    message = str(err.value)
    target = roots.diffusers / "AltDiffusion-m9"
    partial = roots.diffusers / ".AltDiffusion-m9.partial"
    assert f"cannot download {M9} (the download stopped at {UNET_WEIGHTS}" in message
    assert str(target) in message and f"it goes on from the files already in {partial}" in message
    assert not target.exists()
    assert not (partial / "model_index.json").exists() and not (partial / UNET_WEIGHTS).exists()
    assert "AltDiffusion-m9" not in loader.list_models() and not any(".partial" in n for n in loader.list_models())
    assert "model_index.json" not in hub_endpoint.gets()  # fetched last, so never reached

    # The server is back: the next try fetches only the files not complete yet (huggingface_hub 2.x restarts a broken
    # file: it keeps no partial file across calls).
    hub_endpoint.broken.clear()
    before = len(hub_endpoint.log)
    assert loader.resolve_model(M9) == target.resolve()
    again = [path for method, path in hub_endpoint.log[before:] if method == "GET" and "/resolve/" in path]
    assert [p.rsplit("/resolve/main/", 1)[-1] for p in again] == [UNET_WEIGHTS, VAE_WEIGHTS, "model_index.json"]
    assert folder_files(target) == EXPECTED_FILES and not partial.exists()


def test_a_dropped_connection_is_retried_within_the_download(pack, hub_endpoint, roots, hub_repo):
    hub_endpoint.flaky.add(UNET_WEIGHTS)
    target = pack.nodes.loader.resolve_model(M9)
    assert hub_endpoint.gets().count(UNET_WEIGHTS) == 2
    assert (target / UNET_WEIGHTS).read_bytes() == (hub_repo / UNET_WEIGHTS).read_bytes()


def test_unknown_hub_id_names_it_and_the_ids_the_pack_knows(pack, hub, hub_endpoint, roots):
    core = pack.altdiff_core
    for call in (
        lambda: pack.nodes.loader.resolve_model("someone/AltDiffusion-x"),
        lambda: hub.resolve("someone/AltDiffusion-x", [roots.altdiffusion], roots.diffusers),
        lambda: hub.download("someone/AltDiffusion-x", roots.diffusers),
        lambda: cli().resolve_model_argument("someone/AltDiffusion-x"),
    ):
        with pytest.raises(core.ModelNotFoundError) as err:
            call()
        message = str(err.value)
        assert "'someone/AltDiffusion-x'" in message
        assert "BAAI/AltDiffusion, BAAI/AltDiffusion-m9, BAAI/AltDiffusion-m18" in message
        assert "model_index.json" in message
    assert hub_endpoint.log == [] and not any(roots.diffusers.iterdir())


def test_offline_says_which_folder_to_fill(pack, fake_hub, roots, monkeypatch):
    point_hub_at(monkeypatch, fake_hub.url, offline=True)
    with pytest.raises(pack.altdiff_core.ModelNotFoundError) as err:
        pack.nodes.loader.resolve_model(M9)
    message = str(err.value)
    target = roots.diffusers / "AltDiffusion-m9"
    assert f"cannot download {M9} (offline: HF_HUB_OFFLINE is set)" in message and f"files in {target} by hand" in message
    assert "safety_checker/" in message and f"https://huggingface.co/{M9}/tree/main" in message
    assert fake_hub.log == [] and not any(roots.diffusers.iterdir())


@pytest.fixture
def attempts(monkeypatch) -> types.SimpleNamespace:
    """Counts connection attempts: ``hosts`` gets the host of each (every connection starts with ``socket.getaddrinfo``),
    ``sleeps`` each wait between retries, which is skipped (huggingface_hub backs off 1+2+4+8+8 s). A name under
    ``.invalid`` fails as every resolver answers it (RFC 6761), with no lookup sent."""
    record = types.SimpleNamespace(hosts=[], sleeps=[])
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        record.hosts.append(name)
        if name.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(time, "sleep", record.sleeps.append)
    return record


def refused_url() -> str:
    """An http URL on 127.0.0.1 whose port nothing listens on (the connection is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("url", "host", "why"),
    [
        ("http://hub.altdiffusion.invalid", "hub.altdiffusion.invalid", "cannot be resolved"),  # no network: DNS fails
        (None, "127.0.0.1", "refused the connection"),  # nothing listens there (refused_url)
    ],
    ids=["unresolvable-host", "refused"],
)
def test_no_connection_says_which_folder_to_fill_after_one_attempt(pack, roots, monkeypatch, attempts, url, host, why):
    """The command line's path (``python . --model BAAI/AltDiffusion-m9``) with no network: one attempt, then the folder
    to fill — not huggingface_hub's 5 retries (23 s of backoff, plus each lookup's own wait: 40-50 s as users saw it)."""
    point_hub_at(monkeypatch, url or refused_url())
    from huggingface_hub.utils import build_hf_headers

    build_hf_headers()  # once per process huggingface_hub 2.x asks the endpoint for its agent registry: not a retry
    attempts.hosts.clear()
    with pytest.raises(pack.altdiff_core.ModelNotFoundError) as err:
        cli().resolve_model_argument(M9)
    message = str(err.value)
    assert attempts.hosts == [host] and attempts.sleeps == []
    assert message.startswith(f"cannot download {M9} (") and why in message and "ConnectError" in message
    assert f"files in {roots.diffusers / 'AltDiffusion-m9'} by hand" in message and "safety_checker/" in message
    assert "Traceback" not in message and not any(roots.diffusers.iterdir())


def test_hf_endpoint_sends_the_download_to_a_mirror(fake_hub, tmp_path):
    """``HF_ENDPOINT`` (how many AltDiffusion users reach the Hub: a mirror) is read by huggingface_hub at import, so a
    fresh process with it set, and nothing patched but the model folders, downloads from the fake hub."""
    models = tmp_path / "models"
    script = textwrap.dedent(
        f"""
        import runpy
        from pathlib import Path
        runpy.run_path("__main__.py", run_name="bootstrap")["load_pack"]()
        from comfyui_altdiffusion.nodes import cli, comfy_seam
        comfy_seam.model_roots = lambda: [Path({str(models)!r})]
        comfy_seam.hub_download_dir = lambda: Path({str(models)!r})
        print(cli.resolve_model_argument({M9!r}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_ENDPOINT": fake_hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    target = models / "AltDiffusion-m9"
    assert result.stdout.strip().splitlines()[-1] == str(target)
    assert folder_files(target) == EXPECTED_FILES and sorted(fake_hub.gets()) == sorted(EXPECTED_FILES)


def test_a_half_filled_folder_is_not_overwritten(pack, hub_endpoint, roots):
    target = roots.diffusers / "AltDiffusion-m9"
    (target / "unet").mkdir(parents=True)
    with pytest.raises(pack.altdiff_core.ModelNotFoundError, match="exists but has no model_index.json") as err:
        pack.nodes.loader.resolve_model(M9)
    assert str(target) in str(err.value) and hub_endpoint.log == []


def test_download_progress_counts_bytes_on_comfyui_progress_bar(pack, hub, hub_endpoint, roots, hub_repo, monkeypatch):
    """Inside ComfyUI the bytes go to ComfyUI's ProgressBar (here a stand-in recording what the node would show)."""
    seam = pack.nodes.comfy_seam
    shown: list[tuple[int, int]] = []

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            shown.append((min(value, self.total), self.total))

    monkeypatch.setattr(seam, "IN_COMFYUI", True)
    monkeypatch.setattr(seam, "comfy", types.SimpleNamespace(utils=types.SimpleNamespace(ProgressBar=ProgressBar)), raising=False)
    hub.download(M9, roots.diffusers, progress=seam.download_progress)
    total = sum((hub_repo / name).stat().st_size for name in EXPECTED_FILES)
    assert shown and all(t == total for _, t in shown)
    values = [v for v, _ in shown]
    assert values == sorted(values) and values[-1] == total
    assert len(set(values)) > len(EXPECTED_FILES)  # moves within files too, not only per file


def test_download_progress_outside_comfyui_is_a_terminal_bar(pack, hub_endpoint, roots, capsys):
    cli().resolve_model_argument(M9)
    assert f"Downloading {M9}" in capsys.readouterr().err
