"""The KSampler parity bound, shared by ``test_ksampler_parity`` and ``bench/ksampler_parity_inprocess.py`` (which must
not import the server tests' modules: they need the pack loaded as ComfyUI loads it)."""

from __future__ import annotations

import torch

ORDER_SPREAD = 3.0
TOL_FLOOR_ULPS = 8
"""Server tier: max abs diff ≤ max(ORDER_SPREAD × KSampler's distance to itself in another fp32 order, TOL_FLOOR_ULPS
fp32 ulps of max |x|) — see ``test_ksampler_parity``'s docstring."""


def allowed(yardstick: float, scale: float) -> float:
    """The server tier's bound, given KSampler's distance to itself in another order and its latent's max |x|."""
    return max(ORDER_SPREAD * yardstick, TOL_FLOOR_ULPS * torch.finfo(torch.float32).eps * scale)
