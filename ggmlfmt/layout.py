"""Byte layout of ggml/ggmf/ggjt files: decode an index from a buffer, plan a file to write.

Pure functions over bytes and records; no file I/O here (reader.py and writer.py do that).
Every count, length and size read from a buffer is checked against the bytes that remain
before anything is allocated or looped over. Every bare § cites docs/format.md.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import FrozenInstanceError, dataclass
from itertools import accumulate
from operator import itemgetter
from typing import Any

import numpy as np

from ggmlfmt.constants import (
    BLOCK_LAYOUTS,
    DEFAULT_ALIGNMENT,
    HPARAMS,
    INT64_MAX,
    MAGIC_OF,
    MAGICS,
    MAX_DIMS,
    MAX_NAME_LEN,
    MAX_TOKEN_LEN,
    NOT_A_MODEL,
    RECORD,
    TOKEN_LEN,
    TOKEN_SCORE,
    U32,
    VERSIONS,
    VOCAB_CHUNK,
    VOCAB_MIN_PER_CHUNK,
    VOCAB_STRIDE_LOG,
    VOCAB_VECTOR_MIN,
    BlockLayout,
    FileVersion,
    FType,
    GGMLType,
    GGUFVersion,
)
from ggmlfmt.errors import (
    BadLayout,
    BadMagic,
    BadValue,
    CannotWrite,
    FormatError,
    Truncated,
    UnsupportedVersion,
    excerpt,
    shown,
)


def align_up(pos: int, align: int = DEFAULT_ALIGNMENT) -> int:
    """Smallest multiple of `align` that is >= pos."""
    return (pos + align - 1) // align * align


def ff_width(n_embd: int, multiple_of: int, multiplier: float | None = None) -> int:
    """LLaMA's feed-forward width (docs/format.md §2, §16): int(8*n_embd/3), times `multiplier` if given
    (the float product truncated, as Meta's int() does), rounded up to `multiple_of` (positive)."""
    hidden = 2 * (4 * n_embd) // 3
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return (hidden + multiple_of - 1) // multiple_of * multiple_of


@dataclass(frozen=True, slots=True)
class HParams:
    """The seven LLaMA header fields, in file order."""

    n_vocab: int
    n_embd: int
    n_mult: int
    n_head: int
    n_layer: int
    n_rot: int
    ftype: int

    @property
    def n_ff(self) -> int:
        """Feed-forward width the 2023 loader derived: 8*n_embd/3 rounded up to n_mult."""
        if self.n_mult <= 0:
            raise BadValue(f"n_mult must be positive to derive n_ff, found {self.n_mult}", field="n_mult")
        return ff_width(self.n_embd, self.n_mult)

    def astuple(self) -> tuple[int, ...]:
        return (self.n_vocab, self.n_embd, self.n_mult, self.n_head, self.n_layer, self.n_rot, self.ftype)


class Vocab:
    """Token texts (raw bytes, token id = index) and their scores (None in unversioned 'ggml').

    Immutable. A vocabulary read from a file keeps one copy of its section and cuts `tokens` and
    `scores` out of it on first use: opening a file then costs one walk of the length fields, not
    32,000 bytes objects (docs/format.md §3).
    """

    __slots__ = ("_tokens", "_scores", "_section")

    _tokens: tuple[bytes, ...] | None
    _scores: np.ndarray | None
    _section: _Section | None

    def __init__(self, tokens: tuple[bytes, ...], scores: np.ndarray | None = None) -> None:
        """Raises: CannotWrite: tokens and scores differ in number."""
        if scores is not None and len(scores) != len(tokens):
            raise CannotWrite(f"{len(tokens)} tokens but {len(scores)} scores")
        _set(self, "_tokens", tokens)
        _set(self, "_scores", scores)
        _set(self, "_section", None)

    @classmethod
    def _of_section(cls, section: bytes, n: int, lens: list[int] | None, score_size: int) -> Vocab:
        """A vocabulary cut lazily from an encoded, already validated section of n entries (lens if known)."""
        self = object.__new__(cls)
        _set(self, "_tokens", None)
        _set(self, "_scores", None)
        _set(self, "_section", _Section(section, n, lens, score_size))
        return self

    @property
    def tokens(self) -> tuple[bytes, ...]:
        if self._tokens is None:
            _set(self, "_tokens", self._section.tokens())
        return self._tokens

    @property
    def scores(self) -> np.ndarray | None:
        """float32, one per token (None without scores)."""
        sec = self._section
        if self._scores is None and sec is not None and sec.score_size:
            _set(self, "_scores", sec.scores())
        return self._scores

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple:
        return (Vocab, (self.tokens, self.scores))

    def __repr__(self) -> str:
        return f"Vocab(tokens={self.tokens!r}, scores={self.scores!r})"

    def __len__(self) -> int:
        sec = self._section
        return len(self._tokens) if sec is None else len(sec)

    def __eq__(self, other: object) -> bool:
        """Same tokens and the same score bits (a generated __eq__ would raise: an array has no single truth)."""
        if not isinstance(other, Vocab):
            return NotImplemented
        if self.tokens != other.tokens or (self.scores is None) != (other.scores is None):
            return False
        return self.scores is None or _f32_bytes(self.scores) == _f32_bytes(other.scores)

    def __hash__(self) -> int:
        """Hash of (tokens, scores), as the frozen dataclass this was: a TypeError when there are scores."""
        return hash((self.tokens, self.scores))

    def nbytes(self, with_scores: bool) -> int:
        """Encoded size of the vocabulary section."""
        return vocab_bytes(self.tokens, with_scores)


def vocab_bytes(tokens: Sequence[bytes], with_scores: bool) -> int:
    """Encoded size of these vocabulary entries: each a u32 length, the text, an f32 score if the version has one."""
    return len(tokens) * (TOKEN_LEN.size + (TOKEN_SCORE.size if with_scores else 0)) + sum(len(t) for t in tokens)


def record_head_size(n_dims: int, name_len: int) -> int:
    """Bytes of a tensor record before its data padding: n_dims, name_len, type, the dims, the name (§4)."""
    return RECORD.size + 4 * n_dims + name_len


_set = object.__setattr__


class _Section:
    """The bytes of a validated vocabulary section; cuts tokens and scores from them."""

    __slots__ = ("data", "n", "_lens", "score_size")

    def __init__(self, data: bytes, n: int, lens: list[int] | None, score_size: int) -> None:
        self.data, self.n, self._lens, self.score_size = data, n, lens, score_size

    def __len__(self) -> int:
        return self.n

    def lens(self) -> list[int]:
        """Every text length (walked on first use if the open did not need them: the section is checked)."""
        if self._lens is None:
            self._lens = _walk_lengths(memoryview(self.data), self.n, TOKEN_LEN.size + self.score_size)[0]
        return self._lens

    def tokens(self) -> tuple[bytes, ...]:
        data, fixed, lens = self.data, TOKEN_LEN.size + self.score_size, self.lens()
        starts = accumulate([n + fixed for n in lens], initial=TOKEN_LEN.size)  # where each text begins
        # bytes slices of one bytes object: much cheaper than a memoryview slice per token
        return tuple([data[a : a + n] for a, n in zip(starts, lens)])

    def scores(self) -> np.ndarray:
        lens = np.array(self.lens(), dtype=np.int64)
        at = np.cumsum(lens + TOKEN_LEN.size + self.score_size) - self.score_size  # a score ends each entry
        raw = np.frombuffer(self.data, dtype=np.uint8)
        return raw[at[:, None] + np.arange(self.score_size)].reshape(-1).view("<f4").astype(np.float32)


def _f32_bytes(scores: np.ndarray) -> bytes:
    return np.asarray(scores, dtype="<f4").tobytes()


class TensorInfo(tuple):
    """One tensor record: where its data lives and how to view it.

    Immutable, compared and hashed like the frozen dataclass it was (every field but `block`); a
    tuple underneath so that opening a file builds each record in one C call (issue 12).
    """

    __slots__ = ()
    __match_args__ = ("name", "type", "ne", "offset", "nbytes", "record_offset", "block")

    name: str
    type: GGMLType
    ne: tuple[int, ...]  # ggml order: ne[0] is the innermost (contiguous) dimension
    offset: int  # absolute file offset of the data
    nbytes: int
    record_offset: int  # absolute file offset of the record header
    block: BlockLayout  # not compared, not shown

    def __new__(cls, name: str, type: GGMLType, ne: tuple[int, ...], offset: int, nbytes: int,  # noqa: A002
                record_offset: int, block: BlockLayout) -> TensorInfo:
        return tuple.__new__(cls, (name, type, ne, offset, nbytes, record_offset, block))

    def __getnewargs__(self) -> tuple:
        return tuple(self)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            # a plain tuple would otherwise compare equal through tuple.__eq__; the dataclass never did
            return False if isinstance(other, tuple) else NotImplemented
        return self[:6] == other[:6]

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self[:6])

    def __repr__(self) -> str:
        return (f"TensorInfo(name={self[0]!r}, type={self[1]!r}, ne={self[2]!r}, offset={self[3]!r}, "
                f"nbytes={self[4]!r}, record_offset={self[5]!r})")

    # tuple's own comparisons would order and compare `block` too; a record has no order
    __lt__ = __le__ = __gt__ = __ge__ = None  # type: ignore[assignment]

    @property
    def shape(self) -> tuple[int, ...]:
        """PyTorch/numpy order of the dimensions (ne reversed)."""
        return tuple(reversed(self.ne))

    @property
    def view_shape(self) -> tuple[int, ...]:
        """Shape of the numpy view: `shape`, with the last axis counted in blocks for quantized types."""
        return (*self.shape[:-1], self.ne[0] // self.block.elements)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (ne[0] elements)."""
        return self.ne[0] // self.block.elements * self.block.nbytes

    @property
    def n_rows(self) -> int:
        return math.prod(self.ne[1:])

    @property
    def quantized(self) -> bool:
        return self.block.elements > 1


for _i, _f in enumerate(TensorInfo.__match_args__):
    setattr(TensorInfo, _f, property(itemgetter(_i), doc=f"field {_i} of the record"))
del _i, _f


@dataclass(frozen=True, slots=True)
class Index:
    """Everything a file says about itself, with absolute offsets; no tensor data."""

    version: FileVersion
    hparams: HParams
    vocab: Vocab
    tensors: tuple[TensorInfo, ...]
    header_size: int  # bytes before the vocabulary
    vocab_end: int  # offset of the first tensor record
    file_size: int

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


def block_layout(ggml_type: int, generation: int) -> BlockLayout:
    """Block layout of a type code in a block-layout generation (1, 2 or 3).

    Raises:
        BadValue: the code is unknown, or the type does not exist in that generation.
    """
    try:
        t = GGMLType(ggml_type)
    except ValueError:
        raise BadValue(f"unknown tensor type code {ggml_type}; expected one of {_codes(generation)}") from None
    layouts = BLOCK_LAYOUTS[generation]
    if t not in layouts:
        raise BadValue(f"tensor type code {int(t)}: {t.name} does not exist in block layout generation {generation}; "
                       f"expected one of {_codes(generation)}")
    return layouts[t]


def record_problem(n_dims: int, name_len: int) -> tuple[str, str] | None:
    """A ggjt record's dim count or name length out of range (docs/format.md §4), read or written: (field, why).

    The reader (decode_record) and the planner (_check_spec) both ask this, so they accept the same records.
    """
    if not 1 <= n_dims <= MAX_DIMS:
        return "n_dims", f"expected 1..{MAX_DIMS} dims, found {n_dims}"
    if not 0 < name_len <= MAX_NAME_LEN:
        return "name_len", f"expected a name of 1..{MAX_NAME_LEN} UTF-8 bytes, got {name_len}"
    return None


def block_problem(ne0: int, ggml_type: GGMLType, block: BlockLayout) -> str | None:
    """Why ne[0] cannot hold whole blocks of this type (None: it can); every reader and planner, ggjt and GGUF."""
    if ne0 % block.elements:
        return f"ne[0] = {ne0} is not a multiple of the {GGMLType(ggml_type).name} block size {block.elements}"
    return None


def product_overflow(dims: Iterable[int], unit: int = 1, *, skip_zeros: bool = True) -> tuple[int, int] | None:
    """(d, product) at the first dim where `unit` x dims[0] x ... x dims[d] passes INT64_MAX; else None.

    skip_zeros: a zero dim counts as 1, as numpy counts a shape (an empty view still multiplies the
    other dims into its strides); without it a zero ends the product, as llama.cpp's element count
    does (docs/format.md §11.5). Python ints: nothing wraps here.
    """
    p = unit
    for d, n in enumerate(dims):
        if n == 0 and not skip_zeros:
            return None
        if n > 1:
            p *= n
            if p > INT64_MAX:
                return d, p
    return None


def dims_problem(ne: Sequence[int], block: BlockLayout) -> tuple[int, str] | None:
    """(d, why) when the dims `ne` (ggml order, each >= 0) overflow int64 (docs/format.md §11.5), else None.

    Elements as llama.cpp counts them (a zero ends the product), bytes as numpy counts a view of the
    tensor (block bytes x ne[0] / block elements x ne[1] x ..., zeros skipped). Every reader and
    planner asks this before it computes a size or makes a view.
    """
    if (hit := product_overflow(ne, skip_zeros=False)) is not None:
        return hit[0], f"ne = {list(ne)}: the dims up to ne[{hit[0]}] make {hit[1]} elements, above 2**63-1"
    if (hit := product_overflow((ne[0] // block.elements, *ne[1:]), block.nbytes)) is not None:
        return hit[0], (f"ne = {list(ne)}: the dims up to ne[{hit[0]}] (zeros skipped) make {hit[1]} bytes, "
                        "above 2**63-1")
    return None


def _codes(generation: int) -> str:
    return ", ".join(f"{int(t)} ({t.name})" for t in BLOCK_LAYOUTS[generation])


def tensor_nbytes(ne: Sequence[int], block: BlockLayout) -> int:
    """Data size of a tensor with ggml dims `ne` (Python ints, so no overflow)."""
    return math.prod(ne[1:]) * (ne[0] // block.elements) * block.nbytes


class _Cursor:
    """Sequential little-endian reads over a buffer; every read is bounds-checked."""

    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf: memoryview, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.size = len(buf)

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise Truncated(f"need {n} bytes, {max(self.size - self.pos, 0)} left", offset=self.pos, field=what)

    def unpack(self, st, what: str) -> tuple:
        self.need(st.size, what)
        values = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return values

    def take(self, n: int, what: str) -> memoryview:
        self.need(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def decode_version(buf: memoryview) -> tuple[FileVersion, int]:
    """Classify a file by magic and version; return it and the header size before the hparams.

    Raises:
        Truncated, BadMagic, UnsupportedVersion.
    """
    cur = _Cursor(buf)
    (magic,) = cur.unpack(U32, "magic")
    name = MAGICS.get(magic)
    if name is None:
        known = NOT_A_MODEL.get(magic)
        found = f"{known} file" if known else f"{magic:#010x} ({bytes(buf[:4])!r})"
        raise BadMagic(f"expected a model magic 'ggml', 'ggmf' or 'ggjt' (bytes b'lmgg', b'fmgg', b'tjgg'), "
                       f"found {found}", offset=0, field="magic")
    if name == "ggml":
        return FileVersion.GGML, cur.pos
    (number,) = cur.unpack(U32, "version")
    version = VERSIONS.get((name, number))
    if version is None:
        allowed = sorted(v.number for v in FileVersion if v.magic_name == name)
        raise UnsupportedVersion(f"'{name}' version {number} is not one we read; expected one of {allowed}",
                                 offset=4, field="version")
    return version, cur.pos


def decode_hparams(cur: _Cursor) -> HParams:
    """Read and range-check the seven header fields.

    Raises:
        Truncated, BadValue.
    """
    start = cur.pos
    hp = HParams(*cur.unpack(HPARAMS, "hparams"))
    for i, (name, value) in enumerate(zip(HParams.__slots__, hp.astuple())):
        if value < 0:
            raise BadValue(f"expected a non-negative value, found {value}", offset=start + 4 * i, field=name)
    if hp.ftype not in FType._value2member_map_:
        raise BadValue(f"unknown file type {hp.ftype}; expected 0..{max(FType)} ({', '.join(f.name for f in FType)})",
                       offset=start + 24, field="ftype")
    return hp


def decode_vocab(cur: _Cursor, n_vocab: int, with_scores: bool) -> Vocab:
    """Read `n_vocab` entries (len, bytes[, f32 score]) after checking the count against the file.

    Raises:
        Truncated, BadValue.
    """
    score_size = TOKEN_SCORE.size if with_scores else 0
    min_entry = TOKEN_LEN.size + score_size
    buf, start = cur.buf, cur.pos
    # Bytes left for token texts once every entry's fixed fields are counted; each text spends from
    # it, so `room >= 0` keeps every later length field inside the buffer (docs/format.md §3).
    room = cur.left() - n_vocab * min_entry
    if room < 0:
        raise Truncated(f"n_vocab {n_vocab} needs at least {n_vocab * min_entry} bytes, {cur.left()} left",
                        offset=start, field="vocab")
    body = buf[start:]
    lens: list[int] | None = None
    end = _vocab_end(body, n_vocab, min_entry) if n_vocab >= VOCAB_VECTOR_MIN else None
    if end is None:  # not decided by the vectorised walk (or too few entries for it): one entry at a time
        lens, end = _walk_lengths(body, n_vocab, min_entry)
    # Every length 0..MAX_TOKEN_LEN and the texts within `room` <=> the section ends inside the buffer,
    # checked once for the whole vocabulary; any doubt goes to the checked walk, which names the entry.
    if end is None or end > len(body) or (lens and max(lens) > MAX_TOKEN_LEN):
        _walk_checked(body, start, n_vocab, min_entry, room)  # raises
        raise AssertionError("unreachable: the fast walk and the checked walk disagree")  # pragma: no cover
    cur.pos = start + end
    # One copy of the section; tokens and scores are cut from it on first use (Vocab._of_section).
    return Vocab._of_section(bytes(body[:end]), n_vocab, lens, score_size)


_ULEN = {4: struct.Struct("<I"), 8: struct.Struct("<Q")}  # length fields read unsigned, by width in bytes


def _walk_lengths(body: memoryview, n_vocab: int, min_entry: int, width: int = 4) -> tuple[list[int], int | None]:
    """The n_vocab text lengths and the section's end, unchecked beyond being unsigned; (lens, None) if it ran off.

    Entries are a `width`-byte length field, that many bytes, then min_entry - width fixed bytes
    (ggjt: 4 and a 4-byte score; GGUF strings: 8 and nothing). The one per-entry loop (entries have
    variable length, so each length gives the next one's offset), kept to one unpack, one add and
    one append: the checks come after, once.
    """
    unpack_len = _ULEN[width].unpack_from  # unsigned: a negative i32 length reads as > MAX_TOKEN_LEN
    lens: list[int] = []
    append = lens.append
    pos = 0
    try:
        for _ in range(n_vocab):
            (n,) = unpack_len(body, pos)
            pos += n + min_entry
            append(n)
    except (struct.error, OverflowError):  # a length ran past the buffer (or any offset); the checked walk says which
        return lens, None
    return lens, pos


def _vocab_end(body: memoryview, n_vocab: int, min_entry: int, chunk: int = VOCAB_CHUNK,
               min_per_chunk: int = VOCAB_MIN_PER_CHUNK) -> int | None:
    """Where the n_vocab ggjt entries at body[0:] end, every length 0..MAX_TOKEN_LEN; None if not decided here."""
    got = walk_entries(body, n_vocab, TOKEN_LEN.size, min_entry - TOKEN_LEN.size, MAX_TOKEN_LEN,
                       chunk=chunk, min_per_chunk=min_per_chunk)
    return None if got is None else got[0]


def walk_entries(body: memoryview, n: int, width: int, trailer: int, max_len: int | None, *,
                 with_ends: bool = False, chunk: int = VOCAB_CHUNK,
                 min_per_chunk: int = VOCAB_MIN_PER_CHUNK) -> tuple[int, np.ndarray | None] | None:
    """Where n entries (`width`-byte unsigned length, that many bytes, `trailer` bytes) at body[0:] end.

    Returns (end, ends): ends[i] is where entry i ends (int64, only if with_ends), every length
    <= max_len (None: no bound but the buffer) and end <= len(body); None if not decided here.

    Vectorised walk (the chain of lengths is sequential, so this speculates): in each chunk, every
    offset whose `width` bytes read as a valid length is a candidate entry start, and its successor
    is the candidate where that entry would end. Doubling the successor table lets Python follow
    the chain 32 entries per step from the chunk's first entry, whose offset is known; the 31
    entries between two steps are filled in afterwards with one vectorised take per doubling level.
    Every entry on the chain is a candidate, so its length is valid. None when a chunk's first
    offset is not a candidate (a bad length, or with max_len None one longer than the chunk), or
    chunks hold too few entries: the caller then walks (and checks) entry by entry
    (docs/format.md §3, §11.4). Used by ggjt vocabularies and GGUF string arrays alike.
    """
    size, pos, left = len(body), 0, n
    scratch = np.empty(chunk // 4 + 1, np.uint32)  # reused by every chunk: no fresh pages per chunk
    parts: list[np.ndarray] | None = [] if with_ends else None
    while left:
        got = _chunk_chain(body, pos, min(chunk, size - pos), left, width, width + trailer, max_len, scratch, parts)
        if got is None:
            return None
        count, pos = got
        left -= count
        if left and count < min_per_chunk:
            return None  # long texts: chunks would cost more than the plain loop
    if pos > size:
        return None  # the last text or trailer runs past the buffer: the checked walk says so
    if parts is None:
        return pos, None
    return pos, (np.concatenate(parts) if parts else np.empty(0, np.int64))


def _chunk_chain(body: memoryview, at: int, w: int, left: int, width: int, fixed: int, max_len: int | None,
                 scratch: np.ndarray, parts: list[np.ndarray] | None) -> tuple[int, int] | None:
    """Follow the chain from the entry at `at` while it starts inside body[at:at+w]; (entries, end of the last).

    With `parts`, appends the absolute end of each entry followed.
    """
    if w < width:
        return None
    # max_len None: a length past the window cannot end in it anyway, and the bound keeps int64 exact
    limit = w if max_len is None else max_len
    offsets, lens = [], []
    for k in range(4):  # one aligned u32 array per phase k = offset % 4 (unaligned arrays take slow paths)
        view = scratch[: (w - k) // 4]
        np.copyto(view, np.frombuffer(body, "<u4", count=len(view), offset=at + k))
        if width == 4:
            where = np.flatnonzero(view <= limit)  # unsigned: a negative i32 length is out of range too
        else:  # a u64 length: its low u32 in range and its high u32 zero (the next element of this phase)
            ok = view[:-1] <= limit
            ok &= view[1:] == 0
            where = np.flatnonzero(ok)
        lens.append(view.take(where))
        where *= 4
        where += k
        offsets.append(where)
    starts = np.concatenate(offsets)
    ends = np.empty(len(starts) + 1, np.int64)  # one more: the dead end's, never used
    np.add(np.concatenate(lens), starts, out=ends[:-1], dtype=np.int64, casting="unsafe")
    ends[:-1] += fixed
    m = len(starts)  # candidate number m = "not a candidate here", and its own successor
    # chunk offset -> candidate number; m < w < 2**16 fits 2 bytes, which keeps the map small
    number = np.full(w + 1, m, np.uint16 if w < 0xFFFF else np.int64)
    number[starts] = np.arange(m, dtype=number.dtype)
    succ = np.empty(m + 1, np.intp)  # intp: take() would convert any other index type on every call
    succ[:m] = number.take(ends[:-1], mode="clip")  # an end at or past w: not in this chunk
    succ[m] = m
    j = int(number[0])
    if j == m:
        return None  # the chunk's first entry has no valid length: let the checked walk say so
    levels = [succ]
    for _ in range(VOCAB_STRIDE_LOG):
        levels.append(levels[-1].take(levels[-1]))  # levels[k][j] = the candidate 2**k entries on; dead stays dead
    path: list[int] | None = None if parts is None else []
    steps, last = _follow(levels, j, left - 1, path)
    if parts is not None:
        parts.append(ends.take(_fill(levels, path, steps + 1)) + at)
    return steps + 1, at + int(ends[last])


def _follow(levels: list[np.ndarray], j: int, most: int, path: list[int] | None = None) -> tuple[int, int]:
    """(steps, candidate) after following successors from j up to `most` times or to the dead end (succ[-1]).

    With `path`, appends the candidate at every 32nd step (0, 32, 64, ...) for _fill.
    """
    succ = levels[0]
    dead = len(succ) - 1
    far_v, one_v, stride = memoryview(levels[-1]), memoryview(succ), 1 << VOCAB_STRIDE_LOG
    steps = 0
    if path is None:
        while most - steps >= stride and far_v[j] != dead:
            j = far_v[j]
            steps += stride
    else:
        append = path.append
        while most - steps >= stride and far_v[j] != dead:
            append(j)
            j = far_v[j]
            steps += stride
        append(j)
    while steps < most and one_v[j] != dead:
        j = one_v[j]
        steps += 1
    return steps, j


def _fill(levels: list[np.ndarray], path: list[int], count: int) -> np.ndarray:
    """The candidates at steps 0..count-1 from those at every 32nd step: halve the gaps once per doubling level."""
    stride = 1 << VOCAB_STRIDE_LOG
    rows = np.empty((len(path), stride), np.intp)  # row r, column c: the candidate at step 32 r + c
    rows[:, 0] = path
    gap = stride
    for far in reversed(levels[:-1]):  # succ**16, ..., succ: fill the columns midway between known ones
        half = gap // 2
        rows[:, half::gap] = far.take(rows[:, 0::gap])
        gap = half
    return rows.reshape(-1)[:count]


def _walk_checked(body: memoryview, start: int, n_vocab: int, min_entry: int, room: int) -> None:
    """Walk the entries checking each length before using it; raise on the first bad one.

    Raises:
        Truncated, BadValue.
    """
    unpack_len = TOKEN_LEN.unpack_from
    pos = 0
    for i in range(n_vocab):
        (n,) = unpack_len(body, pos)
        if not 0 <= n <= room or n > MAX_TOKEN_LEN:
            raise _token_len_error(n, room, i, start + pos, n_vocab - i - 1, (n_vocab - i) * min_entry)
        room -= n
        pos += min_entry + n


def _token_len_error(n: int, room: int, i: int, pos: int, n_left: int, fixed_left: int) -> FormatError:
    """The error for a vocabulary length field that is out of range or runs past the end."""
    if n < 0 or n > MAX_TOKEN_LEN:
        return BadValue(f"expected a token length 0..{MAX_TOKEN_LEN}, found {n}", offset=pos, field=f"vocab[{i}].len")
    # room + fixed_left is what remains from `pos`; the text starts after the 4-byte length
    return Truncated(f"a {n}-byte token and the {n_left} entries after it need {n + fixed_left - 4} bytes, "
                     f"{room + fixed_left - 4} left", offset=pos + 4, field=f"vocab[{i}].text")


def decode_record(cur: _Cursor, i: int, version: FileVersion) -> TensorInfo:
    """Read one tensor record header, skip its padding and data; check bounds and padding.

    Raises:
        Truncated, BadValue, BadLayout.
    """
    record_offset = cur.pos
    what = f"tensor[{i}]"
    n_dims, name_len, type_code = cur.unpack(RECORD, f"{what} record header")
    if (problem := record_problem(n_dims, name_len)) is not None:
        key, why = problem
        raise BadValue(why, offset=record_offset + (0 if key == "n_dims" else 4), field=f"{what}.{key}")
    try:
        block = block_layout(type_code, version.block_generation)
    except BadValue as e:
        raise BadValue(f"{e.msg} in a {version} file", offset=record_offset + 8, field=f"{what}.type") from None
    ggml_type = GGMLType(type_code)
    dims_at = cur.pos
    ne = cur.unpack(_dims_struct(n_dims), f"{what}.ne")
    for d, n in enumerate(ne):
        if n < 0:
            raise BadValue(f"expected a non-negative size, found {n}", offset=dims_at + 4 * d, field=f"{what}.ne[{d}]")
    raw_name = cur.take(name_len, f"{what}.name")
    try:
        name = bytes(raw_name).decode("utf-8")
    except UnicodeDecodeError:
        raise BadValue(f"expected a UTF-8 tensor name, found bytes {excerpt(raw_name)}", offset=cur.pos - name_len,
                       field=f"{what}.name") from None
    what = f"tensor {shown(name)}"
    if (why := block_problem(ne[0], ggml_type, block)) is not None:
        raise BadValue(why, offset=dims_at, field=f"{what}.ne[0]")
    if (problem := dims_problem(ne, block)) is not None:
        d, why = problem
        raise BadValue(why, offset=dims_at + 4 * d, field=f"{what}.ne[{d}]")
    if version.aligned:
        data_offset = align_up(cur.pos)
        pad = cur.take(data_offset - cur.pos, f"{what} padding")
        if any(pad):
            raise BadLayout(f"expected {len(pad)} zero bytes of alignment padding, found {excerpt(pad)}",
                            offset=data_offset - len(pad), field=f"{what} padding")
    data_offset = cur.pos
    nbytes = tensor_nbytes(ne, block)
    if nbytes > cur.left():  # not cur.need(): its field text would be formatted for every record
        cur.need(nbytes, f"{what} data ({ggml_type.name} {list(ne)})")
    cur.pos += nbytes
    return TensorInfo(name, ggml_type, tuple(ne), data_offset, nbytes, record_offset, block)


_DIMS = {n: struct.Struct(f"<{n}i") for n in range(1, MAX_DIMS + 1)}  # ne[0..n_dims-1]


def _dims_struct(n_dims: int) -> struct.Struct:
    return _DIMS[n_dims]


# Per block-layout generation: type code -> (type, layout, elements per block, bytes per block), so a
# record costs one dict look-up instead of an enum call and two table look-ups.
_TYPE_ROWS = {gen: {int(t): (t, b, b.elements, b.nbytes) for t, b in layouts.items()}
              for gen, layouts in BLOCK_LAYOUTS.items()}
_DIMS_UNPACK = (None, *(_DIMS[n].unpack_from for n in range(1, MAX_DIMS + 1)))  # by n_dims
_ZEROS = tuple(bytes(k) for k in range(DEFAULT_ALIGNMENT))  # padding of k bytes, as it must read
_NEW_TUPLE = tuple.__new__  # TensorInfo(...) minus one Python call: _NEW_TUPLE(TensorInfo, (fields...))
_NAME_PAD: dict[tuple[int, int], Callable[..., tuple[bytes, bytes]]] = {}  # (name_len, pad) -> unpack_from
STRUCT_CACHE_MAX = 4096  # entries per cache; real files have a few dozen (name length, padding) pairs


def cached_unpack(cache: dict[Any, Callable[..., tuple]], key: Any, fmt: str) -> Callable[..., tuple]:
    """unpack_from of struct `fmt`, kept in `cache` under `key` (one C call per record on the hot paths).

    Bounded: past STRUCT_CACHE_MAX entries nothing more is kept, so a hostile file cannot grow it.
    """
    unpack = cache.get(key)
    if unpack is None:
        unpack = struct.Struct(fmt).unpack_from
        if len(cache) < STRUCT_CACHE_MAX:
            cache[key] = unpack
    return unpack


def _decode_records(cur: _Cursor, version: FileVersion) -> list[TensorInfo]:
    """Every tensor record from cur.pos to the end of the buffer, each checked as decode_record does.

    The loop checks each record with plain comparisons; a record that fails any of them is decoded
    again by decode_record, which raises the error naming the field (or, if this loop was stricter
    than it, returns the record).

    Raises:
        Truncated, BadValue, BadLayout (docs/format.md §4).
    """
    buf, pos, size = cur.buf, cur.pos, cur.size
    rows, aligned = _TYPE_ROWS[version.block_generation], version.aligned
    unpack_head, dims, zeros, prod = RECORD.unpack_from, _DIMS_UNPACK, _ZEROS, math.prod  # locals: the loop is hot
    new, name_pad, head = _NEW_TUPLE, _NAME_PAD, RECORD.size
    tensors: list[TensorInfo] = []
    seen: dict[str, int] = {}
    while pos < size:  # no tensor count in these formats: records run to EOF
        info = None
        if size - pos >= head:
            n_dims, name_len, code = unpack_head(buf, pos)
            row = rows.get(code)
            name_at = pos + head + 4 * n_dims  # record_head_size, inlined: the loop is hot
            name_end = name_at + name_len
            if 0 < n_dims <= MAX_DIMS and 0 < name_len <= MAX_NAME_LEN and row is not None and name_end <= size:
                ne = dims[n_dims](buf, pos + head)
                ggml_type, block, elements, block_bytes = row
                data_at = (name_end + DEFAULT_ALIGNMENT - 1) // DEFAULT_ALIGNMENT * DEFAULT_ALIGNMENT \
                    if aligned else name_end
                pad = data_at - name_end
                # dims > 0: a zero-size tensor takes the checked path (dims_problem); with every dim >= 1,
                # nbytes <= size bounds every product of them (< 2 elements per byte in these formats)
                if min(ne) > 0 and ne[0] % elements == 0 and data_at <= size:
                    raw_name, raw_pad = (name_pad.get((name_len, pad)) or cached_unpack(name_pad, (name_len, pad), f"{name_len}s{pad}s"))(buf, name_at)
                    nbytes = prod(ne[1:]) * (ne[0] // elements) * block_bytes
                    try:
                        name = raw_name.decode("utf-8")
                    except UnicodeDecodeError:
                        name = None
                    if name is not None and raw_pad == zeros[pad] and nbytes <= size - data_at:
                        info = new(TensorInfo, (name, ggml_type, ne, data_at, nbytes, pos, block))
        if info is None:
            cur.pos = pos
            info = decode_record(cur, len(tensors), version)
            name, data_at, nbytes = info.name, info.offset, info.nbytes
        if name in seen:
            raise BadLayout(f"duplicate tensor name {shown(name)} (first at offset {seen[name]:#x})",
                            offset=pos, field=f"tensor[{len(tensors)}].name")
        seen[name] = pos
        tensors.append(info)
        pos = data_at + nbytes
    cur.pos = pos
    return tensors


def decode_index(buf: memoryview | bytes, *, path: str | None = None) -> Index:
    """Parse a whole model file (header, vocabulary, every tensor record) from a buffer.

    Raises:
        FormatError (BadMagic, UnsupportedVersion, Truncated, BadValue, BadLayout), with `path` filled in.
    """
    buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
    try:
        version, header_size = decode_version(buf)
        cur = _Cursor(buf, header_size)
        hparams = decode_hparams(cur)
        vocab_start = cur.pos
        vocab = decode_vocab(cur, hparams.n_vocab, version.has_scores)
        vocab_end = cur.pos
        tensors = _decode_records(cur, version)
    except FormatError as e:
        raise e.with_path(path) if path else e
    return Index(version, hparams, vocab, tuple(tensors), vocab_start, vocab_end, len(buf))


# ---------------------------------------------------------------- planning a file to write


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a writer needs to know of a tensor before any data: name, type and ggml dims."""

    name: str
    type: GGMLType
    ne: tuple[int, ...]

    @classmethod
    def from_shape(cls, name: str, ggml_type: GGMLType, shape: Sequence[int]) -> TensorSpec:
        """Spec from a PyTorch/numpy shape (reversed into ggml order)."""
        return cls(name, GGMLType(ggml_type), tuple(int(n) for n in reversed(shape)))


@dataclass(frozen=True, slots=True)
class Plan:
    """A complete file layout: the bytes before the tensor data, and where every tensor goes.

    Also GGUF's (gguf.plan_gguf): version a GGUFVersion, hparams None, prefix = header + metadata +
    tensor infos + padding, no record headers (GGUF keeps them all in the prefix).
    """

    version: FileVersion | GGUFVersion
    hparams: HParams | None
    prefix: bytes  # header + vocabulary (GGUF: everything before the data section)
    tensors: tuple[TensorInfo, ...]
    record_headers: tuple[bytes, ...]  # per tensor: record header + name + padding (GGUF: empty)
    size: int

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def encode_prefix(version: FileVersion, hparams: HParams, vocab: Vocab) -> bytes:
    """Header and vocabulary bytes.

    Raises:
        CannotWrite: n_vocab disagrees with the vocabulary, or scores are missing where needed.
    """
    if hparams.n_vocab != len(vocab):
        raise CannotWrite(f"hparams.n_vocab is {hparams.n_vocab} but the vocabulary has {len(vocab)} entries")
    parts = [U32.pack(MAGIC_OF[version.magic_name])]
    if version.has_version_field:
        parts.append(U32.pack(version.number))
    parts.append(HPARAMS.pack(*hparams.astuple()))
    if version.has_scores:
        if vocab.scores is None:
            raise CannotWrite(f"a {version} file needs a score for every token; the vocabulary has none")
        scores = np.asarray(vocab.scores, dtype="<f4")
        for text, score in zip(vocab.tokens, scores):
            parts += [TOKEN_LEN.pack(len(text)), text, score.tobytes()]
    else:
        for text in vocab.tokens:
            parts += [TOKEN_LEN.pack(len(text)), text]
    return b"".join(parts)


def plan(version: FileVersion, hparams: HParams, vocab: Vocab, specs: Iterable[TensorSpec]) -> Plan:
    """Lay out a whole file: every record and data offset, before the first byte is written.

    Raises:
        CannotWrite: a spec cannot be stored (dims, name, block size, duplicate).
    """
    prefix = encode_prefix(version, hparams, vocab)
    pos = len(prefix)
    infos: list[TensorInfo] = []
    headers: list[bytes] = []
    seen: set[str] = set()
    for spec in specs:
        block, name = _check_spec(spec, version, seen)
        head = RECORD.pack(len(spec.ne), len(name), int(spec.type)) + _dims_struct(len(spec.ne)).pack(*spec.ne) + name
        data_offset = pos + len(head)
        if version.aligned:
            data_offset = align_up(data_offset)
        head += bytes(data_offset - pos - len(head))  # zero padding up to the aligned data offset
        nbytes = tensor_nbytes(spec.ne, block)
        infos.append(TensorInfo(spec.name, GGMLType(spec.type), spec.ne, data_offset, nbytes, pos, block))
        headers.append(head)
        pos = data_offset + nbytes
    return Plan(version, hparams, prefix, tuple(infos), tuple(headers), pos)


def _check_spec(spec: TensorSpec, version: FileVersion, seen: set[str]) -> tuple[BlockLayout, bytes]:
    """Validate one spec for writing; return its block layout and encoded name.

    Raises:
        CannotWrite.
    """
    name = spec.name.encode("utf-8")
    if (problem := record_problem(len(spec.ne), len(name))) is not None:
        key, why = problem
        hint = " (reshape a scalar to (1,))" if key == "n_dims" else ""
        raise CannotWrite(f"tensor {spec.name[:60]!r}: {why}{hint}")
    if any(n < 0 or n > 0x7FFFFFFF for n in spec.ne):
        raise CannotWrite(f"tensor {spec.name!r}: every dim must fit a signed 32-bit field, got {list(spec.ne)}")
    if spec.name in seen:
        raise CannotWrite(f"duplicate tensor name {spec.name!r}")
    seen.add(spec.name)
    try:
        block = block_layout(spec.type, version.block_generation)
    except BadValue as e:
        raise CannotWrite(f"tensor {spec.name!r}: {e.msg}") from None
    if (why := block_problem(spec.ne[0], spec.type, block)) is not None:
        raise CannotWrite(f"tensor {spec.name!r}: {why}")
    if (problem := dims_problem(spec.ne, block)) is not None:
        raise CannotWrite(f"tensor {spec.name!r}: {problem[1]}")
    return block, name
