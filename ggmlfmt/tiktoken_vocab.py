"""Meta's Llama 3 tokenizer.model (a tiktoken BPE file) -> the byte-level BPE vocabulary GGUF stores (§15.1).

The file is one line per token: the token's bytes in base64, a space, its rank (= its id). The 256
special tokens are not in it: Meta's tokenizer code appends them after the last rank, in an order
that depends on the release (SPECIAL_TOKENS). GGUF wants the tokens spelled in GPT-2's byte alphabet
and the merges that BPE applies, which the file does not list: every pair of tokens whose
concatenation is a token is a merge, ranked by that token (as Hugging Face's TikTokenConverter
builds Llama 3's tokenizer.json). llama.cpp then merges, among adjacent pieces, the pair whose
result has the lowest rank: tiktoken's own rule.

Stdlib and numpy only; no tiktoken import.
"""

from __future__ import annotations

import binascii
import os
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

from .constants import TokenType
from .errors import BadValue, CannotWrite, FormatError, Truncated
from .llama import GGUFVocab

MAX_FILE_BYTES = 64 << 20  # Meta's is 2.2 MB for 128,000 tokens; o200k-sized files stay far below
MAX_LINE_BYTES = 1024  # base64 of a 765-byte token; Meta's longest line is under 200 bytes
MAX_TOKENS = 1 << 20
N_SPECIAL = 256  # Meta reserves 256 ids after the base tokens in every Llama 3 release
PRE_TOKENIZER = "llama-bpe"  # llama.cpp's name for Meta's Llama 3 split pattern
BPE_MODEL = "gpt2"  # tokenizer.ggml.model of every byte-level BPE
_LINE = re.compile(rb"([^ ]+) (0|[1-9][0-9]{0,6})")
_SNIFF = re.compile(rb"[A-Za-z0-9+/]+={0,2} [0-9]{1,7}\r?\n")


def _reserved(numbers: range) -> list[str]:
    return [f"<|reserved_special_token_{i}|>" for i in numbers]


# The 256 special tokens appended after the base tokens, per release of Meta's tokenizer code (§15.1):
# meta-llama/llama3 (Llama 3, April 2024), meta-llama/llama-models at its first commit (Llama 3.1,
# July 2024) and after "Support for Llama3.2" (Llama 3.2 and 3.3, September 2024 on).
SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "3": tuple(["<|begin_of_text|>", "<|end_of_text|>", *_reserved(range(4)), "<|start_header_id|>",
                "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>", *_reserved(range(5, 251))]),
    "3.1": tuple(["<|begin_of_text|>", "<|end_of_text|>", *_reserved(range(2)), "<|finetune_right_pad_id|>",
                  "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                  "<|python_tag|>", *_reserved(range(2, 247))]),
    "3.2": tuple(["<|begin_of_text|>", "<|end_of_text|>", *_reserved(range(2)), "<|finetune_right_pad_id|>",
                  "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                  "<|python_tag|>", "<|image|>", *_reserved(range(2, 246))]),
}
RELEASES = {"3": "3", "3.1": "3.1", "3.2": "3.2", "3.3": "3.2"}  # a release -> its table
# tokenizer.ggml.<key> -> the special token it names, where the release has it
_SPECIAL_IDS = (("bos", "<|begin_of_text|>"), ("eos", "<|end_of_text|>"))
_EXTRA_IDS = (("eot_token_id", "<|eot_id|>"), ("eom_token_id", "<|eom_id|>"))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 map to U+0100.. in order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = (b for b in range(256) if b not in set(keep))
    table = {b: chr(b) for b in keep}
    table.update((b, chr(0x100 + n)) for n, b in enumerate(extra))
    return table


def looks_like_tiktoken(head: bytes) -> bool:
    """True when the first bytes of a tokenizer.model are a tiktoken line (a SentencePiece model is protobuf)."""
    return _SNIFF.match(head) is not None


def read_ranks(path: str | os.PathLike[str]) -> list[bytes]:
    """The base tokens of a tiktoken file, indexed by rank.

    Raises:
        FormatError: the file is too large, a line is too long, not `base64 rank`, or not strict base64;
            a token or rank repeats; the ranks are not 0..n-1; a single byte has no token.
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise BadValue(f"expected at most {MAX_FILE_BYTES:,} bytes, found {size:,}", path=path, field="size")
        data = f.read(size + 1)  # read() allocates what it is asked for: the file's size, not the cap
    if len(data) > size:  # grew since fstat
        raise BadValue(f"grew while being read (from {size:,} bytes)", path=path, field="size")
    try:
        return parse_ranks(data)
    except FormatError as e:
        raise e.with_path(path) from None


def parse_ranks(data: bytes) -> list[bytes]:
    """read_ranks on the bytes of a file (an error names the offset of the bad line).

    Empty lines are skipped, as tiktoken's and Meta's readers do; a last line without newline is read.

    Raises:
        FormatError: as read_ranks.
    """
    by_rank: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos, pos + MAX_LINE_BYTES + 2)
        if end < 0:
            end = len(data)
            if end - pos > MAX_LINE_BYTES + 1:
                raise BadValue(f"a line longer than {MAX_LINE_BYTES} bytes", offset=pos, field="line")
        line = data[pos:end].removesuffix(b"\r")
        if len(line) > MAX_LINE_BYTES:
            raise BadValue(f"a line longer than {MAX_LINE_BYTES} bytes", offset=pos, field="line")
        if line:
            token, rank = _parse_line(line, pos)
            if token in seen:
                raise BadValue(f"token {token[:16]!r} has ranks {seen[token]} and {rank}", offset=pos, field="token")
            if rank in by_rank:
                raise BadValue(f"rank {rank} is given twice", offset=pos, field="rank")
            if len(by_rank) >= MAX_TOKENS:
                raise BadValue(f"more than {MAX_TOKENS:,} tokens", offset=pos, field="line")
            seen[token] = rank
            by_rank[rank] = token
        pos = end + 1
    n = len(by_rank)
    if not n:
        raise Truncated("no token line; expected `base64 rank` lines", offset=0, field="line")
    if max(by_rank) != n - 1:
        gap = next(r for r in range(n) if r not in by_rank)
        raise BadValue(f"ranks must be 0..{n - 1} without gaps; rank {gap} is missing", field="rank")
    tokens = [by_rank[r] for r in range(n)]
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        raise BadValue(f"byte 0x{missing[0]:02x} has no token ({len(missing)} bytes missing); a byte-level BPE "
                       "needs all 256", field="token")
    return tokens


def _parse_line(line: bytes, pos: int) -> tuple[bytes, int]:
    """Raises: FormatError for a line that is not `base64 rank` with strict base64 of a non-empty token."""
    m = _LINE.fullmatch(line)
    if m is None:
        raise BadValue(f"expected `base64 rank`, found {line[:40]!r}", offset=pos, field="line")
    try:
        token = binascii.a2b_base64(m[1], strict_mode=True)
    except binascii.Error as e:
        raise BadValue(f"bad base64 {m[1][:40]!r}: {e}", offset=pos, field="token") from None
    if not token:
        raise BadValue("empty token", offset=pos, field="token")
    return token, int(m[2])


def bpe_merges(tokens: list[bytes]) -> Iterator[tuple[int, int]]:
    """Every merge of a rank-ordered BPE vocabulary as (left id, right id), in merge order (§15.1).

    A merge is any split of a token into two tokens; merges are ordered by the token they make, then
    by the left id, then the right id. A generator: the caller keeps only what it makes of them.
    """
    get = {t: i for i, t in enumerate(tokens)}.get
    for token in tokens:
        local = []
        for cut in range(1, len(token)):
            left = get(token[:cut])
            if left is not None and (right := get(token[cut:])) is not None:
                local.append((left, right))
        if len(local) > 1:
            local.sort()
        yield from local


_ITER_ROWS = 4096  # merges spelled per step


class Merges(Sequence[str]):
    """tokenizer.ggml.merges as `"LEFT RIGHT"` strings made on demand from two id arrays.

    Meta's file has 280,147 merges: as Python strings they would hold ~20 MB for the whole
    conversion; as two int32 arrays they hold 2.2 MB, and each string lives only while it is encoded.
    """

    def __init__(self, pieces: Sequence[str], pairs: Iterable[tuple[int, int]]) -> None:
        ids = array("i")
        for left, right in pairs:
            ids.append(left)
            ids.append(right)
        self._pieces = pieces
        self._ids = np.frombuffer(ids, dtype=np.int32).reshape(-1, 2) if ids else np.zeros((0, 2), np.int32)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self._text(left, right) for left, right in self._ids[i].tolist()]
        left, right = self._ids[i].tolist()
        return self._text(left, right)

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._ids), _ITER_ROWS):  # tolist() of all 280k pairs would cost ~30 MB
            for left, right in self._ids[start : start + _ITER_ROWS].tolist():
                yield self._text(left, right)

    def _text(self, left: int, right: int) -> str:
        return f"{self._pieces[left]} {self._pieces[right]}"


def special_tokens(release: str) -> tuple[str, ...]:
    """The 256 special tokens of a Llama 3 release (a key of RELEASES: "3", "3.1", "3.2", "3.3"), in id order.

    Raises:
        CannotWrite: an unknown release.
    """
    if release not in RELEASES:
        raise CannotWrite(f"Llama release must be one of {', '.join(RELEASES)}, not {release!r}")
    return SPECIAL_TOKENS[RELEASES[release]]


def bpe_vocab(tokens: list[bytes], specials: tuple[str, ...]) -> GGUFVocab:
    """The GGUF vocabulary: base tokens in GPT-2's alphabet (NORMAL), then the specials (CONTROL), the merges,
    pre-tokenizer llama-bpe, bos/eos and, where the specials have them, eot and eom ids."""
    alphabet = bytes_to_unicode()
    table = [alphabet[b] for b in range(256)]
    pieces = ["".join([table[b] for b in t]) for t in tokens]
    merges = Merges(pieces, bpe_merges(tokens))
    n = len(tokens)
    types = np.full(n + len(specials), TokenType.NORMAL, np.int32)
    types[n:] = TokenType.CONTROL
    ids = {name: n + i for i, name in enumerate(specials)}
    bos, eos = (ids.get(name) for _, name in _SPECIAL_IDS)
    extra = tuple((key, ids[name]) for key, name in _EXTRA_IDS if name in ids)
    return GGUFVocab(tuple(pieces) + tuple(specials), None, types, None, bos, eos, model=BPE_MODEL,
                     pre=PRE_TOKENIZER, merges=merges, extra_ids=extra)


def load_tiktoken_vocab(path: str | os.PathLike[str], release: str) -> GGUFVocab:
    """Meta's Llama 3 tokenizer.model with the special tokens of `release`, as GGUF stores it.

    Raises:
        FormatError: as read_ranks. OSError: the file cannot be read.
    """
    return bpe_vocab(read_ranks(path), special_tokens(release))
