"""XLM-RoBERTa tokenization with fairseq ids, cut into CLIP-style 77-token windows.

The BAAI folders ship ``sentencepiece.bpe.model`` and no ``tokenizer.json``. We read it with
sentencepiece directly (no transformers tokenizer class, which changes between versions) and map
sentencepiece ids to the fairseq ids XLM-R was trained with:

    <s> = 0, <pad> = 1, </s> = 2, <unk> = 3, every other piece = sentencepiece id + 1, <mask> = last.

Sentencepiece's own unknown piece (its id 0) becomes ``<unk>`` = 3, exactly as transformers' slow
``XLMRobertaTokenizer`` does. Normalisation (nmt_nfkc) is the model's own, applied by sentencepiece.

Every model, whatever its ``model_max_length`` says (77 for m2/m18, 512 for m9), is encoded in
windows of 77 = ``<s>`` + 75 tokens + ``</s>``, padded with ``<pad>``: the length FlagAI, A1111 and
the m9 model card use, and the one ComfyUI uses for CLIP.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import sentencepiece
import torch

from .errors import ModelFormatError
from .prompt_syntax import weighted_segments

logger = logging.getLogger(__name__)

BOS_ID = 0
PAD_ID = 1
EOS_ID = 2
UNK_ID = 3
FAIRSEQ_OFFSET = 1
WINDOW_LENGTH = 77
"""Tokens per window, BOS and EOS included."""
WINDOW_BODY = WINDOW_LENGTH - 2
"""Prompt tokens per window."""

SENTENCEPIECE_FILE = "sentencepiece.bpe.model"


BREAK_PUNCTUATION = frozenset({",", "、", "،", ";", "；", "。", "."})
"""Pieces after which a window may end (after nmt_nfkc, a full-width ``，`` is already ``,``)."""
COMMA_BACKTRACK = 20
"""How far back from a full window a comma break is taken (A1111's ``comma_padding_backtrack``)."""
WORD_BACKTRACK = 8
"""How far back a word boundary is taken (ComfyUI keeps words shorter than 8 tokens whole)."""
WORD_START = "\u2581"
"""Sentencepiece's word-start marker ``▁``."""


@dataclass(frozen=True)
class TokenWindows:
    """A prompt cut into windows.

    Attributes:
        input_ids: int64 ``[k, 77]``, fairseq ids, each row ``<s> … </s> <pad>…``.
        attention_mask: int64 ``[k, 77]``, 1 for ``<s>``, prompt tokens and ``</s>``, 0 for padding.
        weights: float32 ``[k, 77]``, each token's prompt weight (1.0 for specials and padding).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    weights: torch.Tensor

    @property
    def weighted(self) -> bool:
        return bool((self.weights != 1.0).any())


@dataclass(frozen=True)
class _Token:
    id: int
    weight: float
    piece: str


def _is_break_after(token: _Token) -> bool:
    return token.piece.strip(WORD_START) in BREAK_PUNCTUATION


def _window_end(tokens: list[_Token], start: int) -> int:
    """Where the window starting at ``start`` ends (exclusive): a full window of 75 tokens, pulled back to a comma
    within 20 tokens or else a word boundary within 8, unless the cut already falls between words."""
    end = start + WINDOW_BODY
    if end >= len(tokens):
        return len(tokens)
    if tokens[end].piece.startswith(WORD_START) or _is_break_after(tokens[end - 1]):
        return end
    for cut in range(end - 1, max(start, end - COMMA_BACKTRACK), -1):
        if _is_break_after(tokens[cut - 1]):
            return cut
    for cut in range(end - 1, max(start, end - WORD_BACKTRACK), -1):
        if tokens[cut].piece.startswith(WORD_START):
            return cut
    return end


class XLMRTokenizer:
    """Sentencepiece XLM-R tokenizer producing fairseq ids.

    Args:
        model_file: path of ``sentencepiece.bpe.model``.
        model_max_length: the value declared in ``tokenizer_config.json`` (reported, not used for
            windows; see the module docstring).
    """

    def __init__(self, model_file: Path, model_max_length: int | None = None):
        self.model_file = Path(model_file)
        self.model_max_length = model_max_length
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.model_file))
        except (OSError, RuntimeError) as err:
            raise ModelFormatError(
                f"cannot read the sentencepiece model {self.model_file}: {err}. Download the tokenizer folder of the model again."
            ) from err
        self.vocab_size = self._sp.GetPieceSize() + FAIRSEQ_OFFSET + 1  # + <mask>

    @classmethod
    def from_folder(cls, folder: Path) -> XLMRTokenizer:
        """Load ``folder/sentencepiece.bpe.model`` and read ``model_max_length`` from its config."""
        folder = Path(folder)
        model_file = folder / SENTENCEPIECE_FILE
        if not model_file.is_file():
            raise ModelFormatError(
                f"tokenizer file {model_file} is missing. An AltDiffusion tokenizer folder holds "
                f"{SENTENCEPIECE_FILE}; copy it from the model's Hub repository (folder 'tokenizer')."
            )
        max_length = None
        config_file = folder / "tokenizer_config.json"
        if config_file.is_file():
            try:
                max_length = json.loads(config_file.read_text(encoding="utf-8")).get("model_max_length")
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ModelFormatError(f"{config_file} is not valid JSON ({err}); download it again.") from err
        return cls(model_file, max_length)

    def _fairseq_id(self, sp_id: int) -> int:
        return UNK_ID if sp_id == self._sp.unk_id() else sp_id + FAIRSEQ_OFFSET

    def encode(self, text: str) -> list[int]:
        """Fairseq ids of ``text`` without ``<s>``/``</s>``; any length, no weight syntax."""
        return [self._fairseq_id(i) for i in self._sp.EncodeAsIds(text)]

    def vocab(self) -> dict[str, int]:
        """Every piece → its fairseq id (the specials included)."""
        pieces = {self._sp.IdToPiece(i): self._fairseq_id(i) for i in range(self._sp.GetPieceSize())}
        return {**pieces, "<s>": BOS_ID, "<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID, "<mask>": self.vocab_size - 1}

    def _tokens(self, segments: list[tuple[str, float]]) -> list[_Token]:
        tokens = []
        for text, weight in segments:
            for piece in self._sp.EncodeAsPieces(text):
                tokens.append(_Token(self._fairseq_id(self._sp.PieceToId(piece)), weight, piece))
        return tokens

    def windows(self, text: str, *, parse_weights: bool = True) -> TokenWindows:
        """Cut a prompt into windows of at most 75 tokens, each wrapped as ``<s> … </s>`` and padded to 77.

        With ``parse_weights`` the prompt may use ComfyUI's ``(text:1.2)`` syntax (see ``prompt_syntax``); every token
        of a weighted span carries its weight. A window ends at a comma within 20 tokens of its end, else at a word
        boundary within 8, else after 75 tokens. An empty prompt gives one window ``<s> </s> <pad>…`` (what the
        reference encodes for "").
        """
        segments = weighted_segments(text) if parse_weights else [(text, 1.0)]
        tokens = self._tokens(segments)
        rows, masks, weights = [], [], []
        start = 0
        while True:
            end = _window_end(tokens, start)
            chunk = tokens[start:end]
            pad = WINDOW_LENGTH - len(chunk) - 2
            rows.append([BOS_ID, *(t.id for t in chunk), EOS_ID] + [PAD_ID] * pad)
            masks.append([1] * (len(chunk) + 2) + [0] * pad)
            weights.append([1.0, *(t.weight for t in chunk), 1.0] + [1.0] * pad)
            start = end
            if start >= len(tokens):
                break
        return TokenWindows(
            torch.tensor(rows, dtype=torch.long),
            torch.tensor(masks, dtype=torch.long),
            torch.tensor(weights, dtype=torch.float32),
        )
