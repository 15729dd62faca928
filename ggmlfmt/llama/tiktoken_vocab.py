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
from collections.abc import Iterator

import numpy as np

from ggmlfmt.constants import TokenType
from ggmlfmt.errors import BadOption, BadValue, FormatError, Truncated
from ggmlfmt.gguf import GGUFStrings, byte_runs, cost_chunks
from ggmlfmt.llama.model import BPE_MODEL, GGUFVocab

MAX_FILE_BYTES = 64 << 20  # Meta's is 2.2 MB for 128,000 tokens; o200k-sized files stay far below
MAX_LINE_BYTES = 1024  # base64 of a 765-byte token; Meta's longest line is under 200 bytes
MAX_TOKENS = 1 << 20
N_SPECIAL = 256  # Meta reserves 256 ids after the base tokens in every Llama 3 release
PRE_TOKENIZER = "llama-bpe"  # llama.cpp's name for Meta's Llama 3 split pattern
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
    A file like Meta's (every line `base64 rank\\n`, ranks 0..n-1 in order) is read in a few numpy
    passes; any other file, and every file with an error, goes through the line-by-line reader,
    which alone decides what is refused and how.

    Raises:
        FormatError: as read_ranks.
    """
    tokens = _parse_in_order(data)
    return _parse_lines(data) if tokens is None else tokens


def _parse_lines(data: bytes) -> list[bytes]:
    """parse_ranks, one line at a time: every check, and the error of the first bad line.

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


_RANK_DIGITS = 7  # as _LINE: ranks up to 9,999,999


def _parse_in_order(data: bytes) -> list[bytes] | None:
    """The tokens of a file whose lines are all `base64 rank\\n` with ranks 0, 1, 2, ... in file order, found
    with one split and a few numpy passes; None for any other file (blank lines, \\r, ranks out of
    order, any error), which _parse_lines then reads.

    It accepts only what _parse_lines accepts, with the same tokens: every line is text, one space,
    1..7 digits without a leading zero, at most MAX_LINE_BYTES in all; each text is decoded by the
    same strict a2b_base64; the ranks are 0..n-1 in order, no token repeats, every byte is a token.
    """
    size = len(data)
    parts = data.split()  # text, rank, text, rank, ... when the file is well formed
    n = len(parts) // 2
    if not n or len(parts) != 2 * n or n > MAX_TOKENS or data[-1] != 0x0A:
        return None
    lengths = np.fromiter(map(len, parts), np.int64, 2 * n).reshape(n, 2)
    rank_len = lengths[:, 1]
    line_ends = np.cumsum(lengths[:, 0] + rank_len + 2)  # one past each newline, if one space separates the two
    if line_ends[-1] != size:
        return None  # whitespace other than one byte between the parts and one after the last
    raw = np.frombuffer(data, np.uint8)
    spaces = line_ends - 2 - rank_len
    if not (np.all(raw[line_ends - 1] == 0x0A) and np.all(raw[spaces] == 0x20)
            and int((lengths[:, 0] + rank_len).max()) + 1 <= MAX_LINE_BYTES and int(rank_len.max()) <= _RANK_DIGITS):
        return None
    ranks = np.zeros(n, np.int64)
    for k in range(_RANK_DIGITS):  # digit k of each rank that has one, most significant first
        has = rank_len > k
        digit = raw[spaces[has] + 1 + k] - np.uint8(0x30)  # a non-digit wraps to 10 or more
        if np.any(digit > 9):
            return None
        ranks[has] = ranks[has] * 10 + digit
    if np.any((raw[spaces + 1] == 0x30) & (rank_len > 1)) or not np.array_equal(ranks, np.arange(n)):
        return None
    a2b = binascii.a2b_base64
    try:
        tokens = [a2b(text, strict_mode=True) for text in parts[0::2]]
    except binascii.Error:
        return None
    token_len = np.fromiter(map(len, tokens), np.int64, n)
    singles = {tokens[i] for i in np.flatnonzero(token_len == 1).tolist()}
    if not token_len.all() or len(singles) != 256 or len(set(tokens)) != n:
        return None
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


# GPT-2's byte alphabet as an array: each byte's character as a UTF-16 code unit
_CODE_UNITS = np.array([ord(c) for _, c in sorted(bytes_to_unicode().items())], "<u2")


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


_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_STEP = 1 << 17  # bytes or elements handled by one numpy step (index arrays of 1 MiB)
_HASH_MIX = 0xD6E8FEB86659FD93  # odd: multiplying by it permutes the hashes and spreads small ones
_INDEX_BITS = 18  # 262,144 buckets: about one token's hash in two for Meta's 128,000 tokens
_INDEX_WIDEST = 64  # more tokens in one bucket (hashes made to share their top bits): binary search


def _merge_pairs(raw: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """bpe_merges as an (m, 2) array of (left id, right id), found with hashes and checked byte by byte.

    raw: the tokens' bytes one after the other; lengths: each token's length.
    A token's hash is the sum of (byte + 1) * B**i modulo 2**64, so that of every prefix is a
    difference of running sums and that of the rest follows by B's inverse; each split whose two
    hashes are tokens' hashes, and whose lengths and bytes are theirs, is a merge. Hashes cannot
    miss a merge (equal bytes, equal hash) and a colliding pair is refused by the byte check; two
    tokens with the same hash return None, and bpe_merges decides. Bytes and tokens are taken a few
    at a time, so that no temporary array holds more than about _STEP elements.
    """
    n = len(lengths)
    if not n:
        return np.zeros((0, 2), np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    longest = int(lengths.max())
    powers = np.ones(longest + 1, np.uint64)
    powers[1:] = np.cumprod(np.full(longest, _HASH_BASE, np.uint64))
    inverses = np.ones(longest + 1, np.uint64)
    inverses[1:] = np.cumprod(np.full(longest, pow(_HASH_BASE, -1, 1 << 64), np.uint64))
    hashes = np.empty(n, np.uint64)
    for first, last in cost_chunks(lengths, _STEP):
        running = _running_sums(raw, starts, lengths, powers, first, last)
        hashes[first:last] = running[ends[first:last] - starts[first]] - running[starts[first:last] - starts[first]]
    index = _HashIndex(hashes)
    if not index.unique:
        return None
    cuts = np.maximum(lengths - 1, 0)
    found = []
    for first, last in cost_chunks(cuts * lengths, _STEP):  # the bytes that checking every split of a token compares
        running = _running_sums(raw, starts, lengths, powers, first, last)
        token = np.repeat(np.arange(first, last), cuts[first:last])
        cut = np.arange(len(token)) - np.repeat(np.cumsum(cuts[first:last]) - cuts[first:last], cuts[first:last]) + 1
        start = starts[token]
        local = start - starts[first]
        left_hash = running[local + cut] - running[local]
        del running, local
        left = index.find(left_hash)  # -1: no token has that hash (lengths[-1] is read, then masked)
        keep = np.flatnonzero((left >= 0) & (lengths[left] == cut))
        token, cut, start, left, left_hash = token[keep], cut[keep], start[keep], left[keep], left_hash[keep]
        right = index.find((hashes[token] - left_hash) * inverses[cut])
        size = lengths[token]
        keep = np.flatnonzero((right >= 0) & (lengths[right] == size - cut))
        token, cut, start, left, right, size = token[keep], cut[keep], start[keep], left[keep], right[keep], size[keep]
        whole = byte_runs(raw, start, size)
        halves = byte_runs(raw, np.stack([starts[left], starts[right]], 1).reshape(-1),
                         np.stack([cut, size - cut], 1).reshape(-1))
        same = np.logical_and.reduceat(whole == halves, np.cumsum(size) - size) if len(size) else np.ones(0, bool)
        token, left, right = token[same], left[same], right[same]
        key = token * n + left  # found by token, then cut: a token's merges are put in the order of their left ids
        if np.any(key[1:] < key[:-1]):
            by = np.argsort(key, kind="stable")  # runs already sorted: timsort's merging is short
            left, right = left[by], right[by]
        found.append(np.stack([left, right], 1).astype(np.int32))
    return np.concatenate(found)


def _running_sums(raw: np.ndarray, starts: np.ndarray, lengths: np.ndarray, powers: np.ndarray, first: int,
                  last: int) -> np.ndarray:
    """Running sums of the weighted bytes of tokens first..last-1 (element i: the weights of their first i bytes),
    each byte weighing (byte + 1) * B ** (its place in its token), modulo 2**64."""
    lo = int(starts[first])
    weights = raw[lo : int(starts[last - 1] + lengths[last - 1])].astype(np.uint64)
    weights += np.uint64(1)
    weights *= powers[np.arange(len(weights)) - np.repeat(starts[first:last] - lo, lengths[first:last])]
    running = np.zeros(len(weights) + 1, np.uint64)
    np.cumsum(weights, out=running[1:])
    return running


class _HashIndex:
    """Token hashes -> token ids. The hashes are multiplied by an odd constant (a one-to-one map that
    spreads short tokens' small hashes over the top bits), sorted, and bucketed by their top
    _INDEX_BITS bits."""

    def __init__(self, hashes: np.ndarray) -> None:
        keys = hashes * np.uint64(_HASH_MIX)
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]
        self.unique = not np.any(self.sorted[1:] == self.sorted[:-1])
        self.starts = np.zeros((1 << _INDEX_BITS) + 1, np.int32)  # tokens number at most MAX_TOKENS
        np.cumsum(np.bincount((self.sorted >> np.uint64(64 - _INDEX_BITS)).astype(np.int64),
                              minlength=1 << _INDEX_BITS), out=self.starts[1:])
        self.widest = int(np.diff(self.starts).max())

    def find(self, wanted: np.ndarray) -> np.ndarray:
        """The id of the token with each wanted hash, or -1: one look per token sharing its top bits
        (binary search when some top bits are shared by more than _INDEX_WIDEST tokens)."""
        wanted = wanted * np.uint64(_HASH_MIX)
        if self.widest > _INDEX_WIDEST:
            at = np.minimum(np.searchsorted(self.sorted, wanted), len(self.sorted) - 1)
            return np.where(self.sorted[at] == wanted, self.order[at], -1)
        bucket = (wanted >> np.uint64(64 - _INDEX_BITS)).astype(np.intp)
        first, end = self.starts[bucket], self.starts[bucket + 1]
        at = np.minimum(first, len(self.sorted) - 1)
        hit = (self.sorted[at] == wanted) & (end > first)
        out = np.where(hit, self.order[at], -1)
        look = np.flatnonzero(~hit & (end > first + 1))
        for k in range(1, self.widest):  # the k-th token of each bucket not yet found, if it has one
            at = first[look] + k
            hit = self.sorted[at] == wanted[look]
            out[look[hit]] = self.order[at[hit]]
            look = look[~hit]
            look = look[end[look] > first[look] + k + 1]
        return out


def special_tokens(release: str) -> tuple[str, ...]:
    """The 256 special tokens of a Llama 3 release (a key of RELEASES: "3", "3.1", "3.2", "3.3"), in id order.

    Raises:
        BadOption: an unknown release.
    """
    if release not in RELEASES:
        raise BadOption(f"Llama release must be one of {', '.join(RELEASES)}, not {release!r}")
    return SPECIAL_TOKENS[RELEASES[release]]


def bpe_vocab(tokens: list[bytes], specials: tuple[str, ...]) -> GGUFVocab:
    """The GGUF vocabulary: base tokens in GPT-2's alphabet (NORMAL), then the specials (CONTROL), the merges,
    pre-tokenizer llama-bpe, bos/eos and, where the specials have them, eot and eom ids.

    The merges are kept as GGUF encodes them (a GGUFStrings: one bytes object, 6 MB for Meta's 280,147),
    which the GGUF writer copies as they are.
    """
    n = len(tokens)
    lengths = np.fromiter(map(len, tokens), np.int64, n)
    # the pieces: every token's bytes as characters, a newline (no character of the alphabet) between
    # two tokens; one decode, one split
    spelled = _CODE_UNITS[np.frombuffer(b"\n".join(tokens), np.uint8)]
    spelled[np.cumsum(lengths[:-1]) + np.arange(n - 1)] = ord("\n")
    text = spelled.tobytes().decode("utf-16-le")
    del spelled
    pieces = text.split("\n") if n else []
    utf8 = text.encode("utf-8") + b" "  # + the space that joins a merge's two pieces
    del text
    newlines = np.flatnonzero(np.frombuffer(utf8, np.uint8) == ord("\n"))  # only between pieces in UTF-8 too
    piece_start = np.concatenate([[0], newlines + 1])
    piece_len = np.append(newlines, len(utf8) - 1) - piece_start
    del newlines
    pairs = _merge_pairs(np.frombuffer(b"".join(tokens), np.uint8), lengths)
    if pairs is None:  # two tokens hash alike, or a token repeats: the plain search decides
        pairs = np.array([ids for ids in bpe_merges(tokens)], np.int64).reshape(-1, 2)
    left, right, m = pairs[:, 0], pairs[:, 1], len(pairs)  # each merge: left piece, the space, right piece
    merges = GGUFStrings.from_runs(np.frombuffer(utf8, np.uint8),
                                   np.stack([piece_start[left], np.full(m, len(utf8) - 1), piece_start[right]], 1),
                                   np.stack([piece_len[left], np.ones(m, np.int64), piece_len[right]], 1))
    types = np.full(n + len(specials), TokenType.NORMAL, np.int32)
    types[n:] = TokenType.CONTROL
    ids = {name: n + i for i, name in enumerate(specials)}
    bos, eos = (ids.get(name) for _, name in _SPECIAL_IDS)
    extra = tuple((key, ids[name]) for key, name in _EXTRA_IDS if name in ids)
    return GGUFVocab(GGUFStrings.of(pieces + list(specials), "tokenizer.ggml.tokens"), None, types, None, bos, eos, model=BPE_MODEL,
                     pre=PRE_TOKENIZER, merges=merges, extra_ids=extra)


def load_tiktoken_vocab(path: str | os.PathLike[str], release: str) -> GGUFVocab:
    """Meta's Llama 3 tokenizer.model with the special tokens of `release`, as GGUF stores it.

    Raises:
        FormatError: as read_ranks. OSError: the file cannot be read.
    """
    return bpe_vocab(read_ranks(path), special_tokens(release))
