"""What a Hugging Face directory adds to a SentencePiece vocabulary: tokenizer_config.json and added_tokens.json.

docs/format.md §19.6. Both files are optional and size-capped; what they say is applied as llama.cpp's
converter applies it: tokens they list become user-defined or control pieces (score -1000), and
`add_bos_token`, `add_eos_token`, `add_prefix_space` and `chat_template` become tokenizer.ggml.* keys.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ggmlfmt.constants import GGUFValueType, TokenType
from ggmlfmt.errors import BadValue
from ggmlfmt.llama.model import SPACE_MARKER, GGUFVocab, MetaKV

log = logging.getLogger(__name__)

TOKENIZER_CONFIG = "tokenizer_config.json"
ADDED_TOKENS = "added_tokens.json"
MAX_TOKENIZER_CONFIG_BYTES = 16 << 20  # real ones are < 1 MB (a few hundred added tokens and a chat template)
ADDED_SCORE = np.float32(-1000.0)  # llama.cpp's converter gives every listed token this score
# added tokens llama.cpp's converter treats as control even when not marked special (does_token_look_special)
LOOKS_SPECIAL = ("<pad>", "<mask>", "<2mass>", "[@BOS@]")


def is_utf8(text: str) -> bool:
    """Whether a str from JSON can be written as UTF-8 (a lone surrogate escape cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def looks_special(text: str) -> bool:
    return text in LOOKS_SPECIAL or (text.startswith("<|") and text.endswith("|>")) or (
        text.startswith("<\uff5c") and text.endswith("\uff5c>"))


def apply_tokenizer_files(model_dir: Path, vocab: GGUFVocab) -> tuple[GGUFVocab, list[MetaKV]]:
    """The vocabulary with added_tokens.json and tokenizer_config.json applied, and the keys they add.

    Raises:
        FormatError: a file too large or not a JSON object, an id outside the vocabulary, a token entry
            without content, a setting of the wrong kind. OSError: unreadable.
    """
    pieces, scores, types = list(vocab.pieces), vocab.scores.copy(), vocab.types.copy()
    added = model_dir / ADDED_TOKENS
    if added.is_file():
        for text, token_id in read_json(added, MAX_TOKENIZER_CONFIG_BYTES).items():
            i = _token_id(token_id, len(pieces), added, text)
            if not is_utf8(text):
                raise BadValue("a token that is not UTF-8", path=str(added), field=f"token {i}")
            pieces[i], scores[i], types[i] = text, ADDED_SCORE, TokenType.USER_DEFINED
    path = model_dir / TOKENIZER_CONFIG
    if not path.is_file():
        return replace(vocab, pieces=tuple(pieces), scores=scores, types=types), []
    config = read_json(path, MAX_TOKENIZER_CONFIG_BYTES)
    decoder = config.get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise BadValue("expected an object of id -> token", path=str(path), field="added_tokens_decoder")
    for key, entry in decoder.items():
        i = _token_id(int(key) if key.isascii() and key.isdigit() and len(key) < 10 else key, len(pieces), path, key)
        text = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not is_utf8(text):
            raise BadValue("expected an object with a string content", path=str(path),
                           field=f"added_tokens_decoder[{key[:20]!r}]")
        special = bool(entry.get("special")) or looks_special(text)
        pieces[i] = text if special else text.replace(SPACE_MARKER, " ")
        scores[i], types[i] = ADDED_SCORE, TokenType.CONTROL if special else TokenType.USER_DEFINED
    return replace(vocab, pieces=tuple(pieces), scores=scores, types=types), settings(config, path)


def read_json(path: Path, cap: int) -> dict[str, Any]:
    """A JSON object from a file of at most `cap` bytes.

    Raises:
        FormatError: larger, not JSON, not an object. OSError: unreadable.
    """
    return parse_json(read_json_text(path, cap), path)


def read_json_text(path: Path, cap: int) -> str:
    """The text of a JSON file of at most `cap` bytes, decoded as json.loads decodes bytes.

    Raises:
        FormatError: larger, or not in a JSON encoding. OSError: unreadable.
    """
    with open(path, "rb") as f:
        raw = f.read(cap + 1)
    if len(raw) > cap:
        raise BadValue(f"expected a JSON file of at most {cap:,} bytes, found more", path=str(path))
    return decode_json(raw, path)  # and the bytes go before the parse


def decode_json(raw: bytes, path: Path) -> str:
    """JSON bytes as text, decoded as json.loads decodes them. Raises: FormatError: not in a JSON encoding."""
    try:
        return raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError as e:
        raise BadValue(f"not valid JSON: {' '.join(str(e).split())[:120]}", path=str(path)) from None


def parse_json(raw: bytes | str, path: Path) -> dict[str, Any]:
    """Raises: FormatError unless raw is a JSON object."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise BadValue(f"not valid JSON: {' '.join(str(e).split())[:120]}", path=str(path)) from None
    if not isinstance(obj, dict):
        raise BadValue(f"expected a JSON object, found {type(obj).__name__}", path=str(path))
    return obj


def _token_id(value: Any, n: int, path: Path, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise BadValue(f"id {json.dumps(value)[:20]} is not one of the {n:,} tokens", path=str(path),
                       field=f"token {what[:40]!r}")
    return value


def settings(config: dict[str, Any], path: Path) -> list[MetaKV]:
    """tokenizer.ggml.add_bos_token, add_eos_token, add_space_prefix, chat_template from tokenizer_config.json.

    Raises:
        FormatError: a flag that is not true/false/null.
    """
    out = []
    for key, gguf_key in (("add_bos_token", "add_bos_token"), ("add_eos_token", "add_eos_token"),
                          ("add_prefix_space", "add_space_prefix")):
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise BadValue(f"expected true or false, found {json.dumps(value)[:20]}", path=str(path), field=key)
        out.append(MetaKV(f"tokenizer.ggml.{gguf_key}", GGUFValueType.BOOL, value))
    template = config.get("chat_template")
    if isinstance(template, str) and is_utf8(template):
        out.append(MetaKV("tokenizer.chat_template", GGUFValueType.STRING, template))
    elif template is not None:
        log.warning("%s: chat_template is not a UTF-8 string (found %s); not converted (only a single template "
                    "is)", path, type(template).__name__)
    return out
