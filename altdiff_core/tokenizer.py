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

logger = logging.getLogger(__name__)

BOS_ID = 0
PAD_ID = 1
EOS_ID = 2
UNK_ID = 3
FAIRSEQ_OFFSET = 1
WINDOW = 77
"""Tokens per window, BOS and EOS included."""
WINDOW_BODY = WINDOW - 2
"""Prompt tokens per window."""

SENTENCEPIECE_FILE = "sentencepiece.bpe.model"


@dataclass(frozen=True)
class TokenWindows:
    """A prompt cut into windows.

    Attributes:
        input_ids: int64 ``[k, 77]``, fairseq ids, each row ``<s> … </s> <pad>…``.
        attention_mask: int64 ``[k, 77]``, 1 for ``<s>``, prompt tokens and ``</s>``, 0 for padding.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


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

    def encode(self, text: str) -> list[int]:
        """Fairseq ids of ``text`` without ``<s>``/``</s>``; any length."""
        return [piece + FAIRSEQ_OFFSET if piece != self._sp.unk_id() else UNK_ID for piece in self._sp.EncodeAsIds(text)]

    def windows(self, text: str) -> TokenWindows:
        """Cut ``text`` into 75-token windows, each wrapped as ``<s> … </s>`` and padded to 77.

        An empty prompt gives one window ``<s> </s> <pad>…`` (what the reference encodes for "").
        """
        ids = self.encode(text)
        chunks = [ids[i : i + WINDOW_BODY] for i in range(0, len(ids), WINDOW_BODY)] or [[]]
        rows, masks = [], []
        for chunk in chunks:
            row = [BOS_ID, *chunk, EOS_ID]
            masks.append([1] * len(row) + [0] * (WINDOW - len(row)))
            rows.append(row + [PAD_ID] * (WINDOW - len(row)))
        return TokenWindows(torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.long))
