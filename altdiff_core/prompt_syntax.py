"""ComfyUI's prompt weighting syntax: ``(word)``, ``(word:1.3)``, nesting, and ``\\(`` / ``\\)`` escapes.

Adapted from ComfyUI 0.3.75 ``comfy/sd1_clip.py`` (``parse_parentheses``, ``token_weights``, ``escape_important``,
``unescape_important``; GPL-3.0) so that a prompt copied from a CLIPTextEncode node means the same here:

- ``(text)`` multiplies the weight by 1.1, nesting multiplies again: ``((text))`` → 1.21;
- ``(text:w)`` sets the weight to ``w`` (the last ``:`` inside the parentheses); when ``w`` is not a number the whole
  ``text:w`` stays text with the plain ``(…)`` emphasis of ×1.1, as in ComfyUI;
  unlike ComfyUI, ``nan``, ``inf`` and weights beyond ±1000 are not numbers here either — they would turn the
  conditioning into inf/NaN (or values no UNet survives) and the whole image black;
- ``\\(`` and ``\\)`` are literal parentheses; unbalanced parentheses are kept as text, as ComfyUI does;
- ``[text]`` is plain text: ComfyUI gives square brackets no meaning, so neither do we.
"""

from __future__ import annotations

import math

MAX_WEIGHT = 1000.0
"""Largest usable ``|w|`` in ``(text:w)``; beyond it the syntax is read as plain text."""
_ESCAPES = {"\\)": "\0\1", "\\(": "\0\2"}


def escape_important(text: str) -> str:
    for literal, placeholder in _ESCAPES.items():
        text = text.replace(literal, placeholder)
    return text


def unescape_important(text: str) -> str:
    for literal, placeholder in _ESCAPES.items():
        text = text.replace(placeholder, literal[-1])
    return text


def parse_parentheses(string: str) -> list[str]:
    """Split into top-level pieces: plain runs and balanced ``( … )`` groups (an unclosed group runs to the end)."""
    result: list[str] = []
    current = ""
    depth = 0
    for char in string:
        if char == "(":
            if depth == 0:
                if current:
                    result.append(current)
                current = "("
            else:
                current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                result.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        result.append(current)
    return result


def _explicit_weight(text: str) -> tuple[str, float] | None:
    colon = text.rfind(":")
    if colon <= 0:
        return None
    try:
        weight = float(text[colon + 1 :])
    except ValueError:
        return None
    return (text[:colon], weight) if math.isfinite(weight) and abs(weight) <= MAX_WEIGHT else None


def token_weights(string: str, current_weight: float = 1.0) -> list[tuple[str, float]]:
    """``[(text, weight), …]`` for an escaped prompt, in order (ComfyUI's ``token_weights``)."""
    out: list[tuple[str, float]] = []
    for piece in parse_parentheses(string):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            explicit = _explicit_weight(inner)
            inner, weight = explicit if explicit else (inner, current_weight * 1.1)
            out += token_weights(inner, weight)
        else:
            out.append((piece, current_weight))
    return out


def weighted_segments(prompt: str) -> list[tuple[str, float]]:
    """The prompt as ``[(text, weight), …]``, escapes resolved, empty texts dropped and neighbours of equal weight
    merged (so ``(cat:1.0) on a mat`` is tokenized exactly like ``cat on a mat``)."""
    segments: list[tuple[str, float]] = []
    for text, weight in token_weights(escape_important(prompt), 1.0):
        text = unescape_important(text)
        if not text:
            continue
        if segments and segments[-1][1] == weight:
            segments[-1] = (segments[-1][0] + text, weight)
        else:
            segments.append((text, weight))
    return segments
