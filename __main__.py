"""Headless generation without ComfyUI: ``python . --prompt "一只戴着帽子的猫"`` from the pack's folder.

The folder is imported as a package (as ComfyUI imports it) so the same node classes run here.
"""

import importlib.util
import sys
from pathlib import Path

PACKAGE = "comfyui_altdiffusion"


def load_pack(root: Path | None = None):
    """Import the pack folder ``root`` as the package ``comfyui_altdiffusion`` (its folder name may hold a '-')."""
    root = root or Path(__file__).resolve().parent
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    load_pack()
    from comfyui_altdiffusion.nodes.cli import main

    sys.exit(main())
