"""Version quirks live in ``altdiff_core/compat.py``: no other engine module probes a private API of torch (or of the
libraries' classes), or imports a package by name at run time; and each quirk there names the version that needs it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TORCH_NAMES = {"torch", "F", "nn"}
"""How the engine's modules name torch (``import torch``, ``torch.nn.functional as F``, ``from torch import nn``)."""
PRIVATE_ATTRIBUTES = {"_non_persistent_buffers_set", "_buffers", "__bases__"}
"""Private attributes of other libraries' objects that a quirk reads (torch modules' buffers, an exception's bases)."""


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def quirks_outside_compat(root: Path) -> list[str]:
    """Places in ``root/altdiff_core`` (``compat.py`` aside) that touch a private torch name (``torch._x``,
    ``torch.ops.mkldnn._op``), probe torch with ``getattr``/``hasattr``, read ``PRIVATE_ATTRIBUTES``, or import by name
    (``importlib``), as ``file:line what``."""
    places = []
    for path in sorted((root / "altdiff_core").glob("*.py")):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            what = None
            if isinstance(node, ast.Attribute):
                private_torch = node.attr.startswith("_") and not node.attr.startswith("__") and _root(node) in TORCH_NAMES
                if private_torch or node.attr in PRIVATE_ATTRIBUTES:
                    what = f".{node.attr}"
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
                if node.args and _root(node.args[0]) in TORCH_NAMES:
                    what = f"{node.func.id}(torch…)"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                what = "importlib" if "importlib" in names else None
            if what:
                places.append(f"{path.relative_to(root).as_posix()}:{node.lineno} {what}")
    return places


def test_version_quirks_live_in_compat():
    assert quirks_outside_compat(ROOT) == []


def test_each_quirk_names_the_version_that_needs_it(core):
    """The module's table lists everything ``compat`` holds; each of its own functions but ``optional_import`` (optional
    packages, not versions) names a library and a version in its docstring ("torch ≥ 2.0", "huggingface_hub … 1.0")."""
    compat = core.compat
    for name in compat.__all__:
        assert f"``{name}``" in compat.__doc__, name
        obj = getattr(compat, name)
        if callable(obj) and obj.__module__ == compat.__name__ and name != "optional_import":
            assert re.search(r"\b(torch|transformers|huggingface_hub|diffusers)\b[^.]*?\d+\.\d+", obj.__doc__ or ""), name


def test_the_probes_answer_on_this_machine(core):
    compat = core.compat
    assert isinstance(compat.cpu_has_bf16_instructions(), bool)
    assert compat.attention_is_fused(torch.device("cpu"), torch.float32, 40)
    assert compat.attention_is_fused(torch.device("meta"), torch.float32, 40)  # no probe there: counts as fused
    assert OSError in compat.hub_network_errors() and len(compat.hub_network_errors()) >= 3
    assert compat.optional_import("math", "a test").sqrt(4.0) == 2.0
