"""Checks on tensors arriving at a stage from a socket, shared by every stage that takes them."""

from __future__ import annotations

import torch

from .errors import InvalidInputError


def check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    """Refuse NaN/inf values: they would spread through every layer and come out as a black or garbage image."""
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise InvalidInputError(f"{what} holds {bad} NaN/inf values out of {tensor.numel()}; {fix}")


def check_batch(tensor: torch.Tensor, what: str) -> None:
    """Refuse an empty batch (a LATENT or IMAGE of 0 items) before any model runs on it."""
    if tensor.shape[0] == 0:
        raise InvalidInputError(f"{what} batch is empty (0 images); give the node that made it a batch size of at least 1.")
