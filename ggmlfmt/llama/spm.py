"""The vocabulary from a SentencePiece tokenizer.model: as the 2023 converter wrote it (docs/format.md §3), and as
GGUF stores it (docs/format.md §15).

The only module that imports sentencepiece (lazily, so `convert-model --help` stays fast).
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from ggmlfmt.constants import TokenType
from ggmlfmt.errors import BadValue
from ggmlfmt.layout import Vocab
from ggmlfmt.llama.model import (
    SPACE_MARKER,
    UNKNOWN_TEXT,
    GGUFVocab,
    check_vocab_matches,
)

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
MAX_VOCAB = 1 << 24  # LLaMA has 32,000; a larger count is a broken or hostile model
MAX_MODEL_BYTES = 1 << 26  # LLaMA's tokenizer.model is 500 KB, the largest SentencePiece models a few MB


def _processor(path: str) -> Any:
    """A loaded SentencePieceProcessor.

    Raises:
        BadValue: the file is empty, larger than MAX_MODEL_BYTES (a device such as /dev/zero never ends), or
            not a SentencePiece model. OSError: it cannot be read.
    """
    import sentencepiece

    with open(path, "rb") as f:  # read ourselves: OSErrors keep their errno and file name
        proto = f.read(MAX_MODEL_BYTES + 1)
    if not 0 < len(proto) <= MAX_MODEL_BYTES:
        found = "an empty file" if not proto else "more"
        raise BadValue(f"expected a SentencePiece model of 1..{MAX_MODEL_BYTES:,} bytes, found {found}", path=path,
                       field="size")
    try:
        return sentencepiece.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, ValueError, TypeError) as e:
        raise BadValue(f"not a SentencePiece model: {' '.join(str(e).split())[:200]}", path=path) from None


def piece_text(piece: str, *, unknown: bool, control: bool, byte: bool, path: str, token_id: int) -> bytes:
    """The bytes the 2023 converter stored for one piece: rules checked in the order unknown, control, byte, normal.

    Raises:
        FormatError: a byte piece that is not exactly '<0xHH>'.
    """
    if unknown:
        return UNKNOWN_TEXT
    if control:
        return b""
    if byte:
        m = _BYTE_PIECE.fullmatch(piece)
        if m is None:
            raise BadValue(f"byte piece {piece!r} is not of the form '<0xHH>'", path=path,
                           field=f"token {token_id}")
        return bytes([int(m[1], 16)])
    return piece.replace(SPACE_MARKER, " ").encode("utf-8")


def load_vocab(path: str | os.PathLike[str]) -> Vocab:
    """Every token's text and score, in id order.

    Raises:
        FormatError: not a SentencePiece model, an empty or absurd vocabulary, a malformed byte piece.
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    sp = _processor(path)
    ids = list(range(_size(sp, path)))  # the batched calls are ~30x faster than one call per id
    kinds = zip(sp.id_to_piece(ids), sp.is_unknown(ids), sp.is_control(ids), sp.is_byte(ids), strict=True)
    tokens = [piece_text(piece, unknown=u, control=c, byte=b, path=path, token_id=i)
              for i, (piece, u, c, b) in enumerate(kinds)]
    scores = np.array(sp.get_score(ids), dtype=np.float32)
    return Vocab(tuple(tokens), scores)


def _size(sp: Any, path: str) -> int:
    """Raises: FormatError for an empty or absurd vocabulary."""
    n = sp.vocab_size()
    if not 0 < n <= MAX_VOCAB:
        raise BadValue(f"expected 1..{MAX_VOCAB:,} pieces, found {n:,}", path=path, field="vocab size")
    return n


def load_gguf_vocab(path: str | os.PathLike[str]) -> GGUFVocab:
    """Every piece unmodified, its score and token type, and the special ids, as GGUF stores them.

    Types are checked in the order unknown, control, unused, byte, else normal (user-defined pieces are
    normal, as in today's converters).

    Raises:
        FormatError: not a SentencePiece model, an empty or absurd vocabulary. OSError: unreadable.
    """
    path = os.fspath(path)
    sp = _processor(path)
    ids = list(range(_size(sp, path)))
    kinds = zip(sp.is_unknown(ids), sp.is_control(ids), sp.is_unused(ids), sp.is_byte(ids), strict=True)
    types = [_token_type(*k) for k in kinds]
    special = [None if i < 0 else i for i in (sp.unk_id(), sp.bos_id(), sp.eos_id())]
    return GGUFVocab(tuple(sp.id_to_piece(ids)), np.array(sp.get_score(ids), dtype=np.float32),
                     np.array(types, dtype=np.int32), *special)


def _token_type(unknown: bool, control: bool, unused: bool, byte: bool) -> TokenType:
    for flag, kind in ((unknown, TokenType.UNKNOWN), (control, TokenType.CONTROL), (unused, TokenType.UNUSED),
                       (byte, TokenType.BYTE)):
        if flag:
            return kind
    return TokenType.NORMAL


def vocab_for_old_file(path: str | os.PathLike[str], file_vocab: Vocab) -> GGUFVocab:
    """The GGUF vocabulary of a tokenizer.model given for an old file, after checking it is that file's.

    Raises:
        FormatError: the tokenizer's old-style texts or scores differ from the file's (names the first id),
            or it is not a SentencePiece model. OSError: unreadable.
    """
    check_vocab_matches(file_vocab, load_vocab(path), model_path=os.fspath(path))
    return load_gguf_vocab(path)
