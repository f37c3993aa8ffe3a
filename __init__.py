"""ComfyUI-AltDiffusion: BAAI's multilingual AltDiffusion (m2, m9, m18) as ComfyUI nodes.

ComfyUI imports this folder from ``custom_nodes/``. The pack's own packages are imported relatively:
ComfyUI has a top-level module named ``nodes`` of its own.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
