"""The records every format shares (TensorInfo, Index, Plan) and the ggml/ggmf/ggjt codec: decode an index
from a buffer, plan a file to write.

Pure functions over bytes and records; no file I/O here (reader.py and writer.py do that). Every
count, length and size read from a buffer is checked against the bytes that remain before anything
is allocated or looped over; the field tables of constants.py (RECORD_FIELDS, HPARAM_FIELDS, DIM)
drive decoding, checking and packing. Every bare § cites docs/format.md.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ggmlfmt.constants import (
    BLOCK_LAYOUTS,
    DEFAULT_ALIGNMENT,
    DIM,
    GGUF_BLOCK_GENERATION,
    HPARAM_FIELDS,
    HPARAMS,
    INT64_MAX,
    MAGIC_OF,
    MAGICS,
    MAX_DIMS,
    MAX_TOKEN_LEN,
    NOT_A_MODEL,
    RECORD,
    RECORD_FIELDS,
    TOKEN_LEN,
    TOKEN_SCORE,
    U32,
    U64,
    VERSIONS,
    VOCAB_CHUNK,
    VOCAB_MIN_PER_CHUNK,
    VOCAB_STRIDE_LOG,
    VOCAB_VECTOR_MIN,
    BlockLayout,
    FileVersion,
    GGMLType,
    GGUFVersion,
    first_problem,
)
from ggmlfmt.errors import BadLayout, BadMagic, BadValue, CannotWrite, FormatError, Truncated, UnsupportedVersion, excerpt, shown


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
    """The seven LLaMA header fields, in file order (HPARAM_FIELDS)."""

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


_set = object.__setattr__


class Vocab:
    """Token texts (raw bytes, token id = index) and their scores (None in unversioned 'ggml'). Immutable.

    A vocabulary read from a file keeps its checked section and cuts `tokens` and `scores` out of it on
    first use: opening a file costs one walk of the length fields, not 32,000 bytes objects (§3).
    """

    __slots__ = ("_tokens", "_scores", "_section")

    def __init__(self, tokens: tuple[bytes, ...], scores: np.ndarray | None = None) -> None:
        """Raises: CannotWrite: tokens and scores differ in number."""
        if scores is not None and len(scores) != len(tokens):
            raise CannotWrite(f"{len(tokens)} tokens but {len(scores)} scores")
        for name, value in (("_tokens", tokens), ("_scores", scores), ("_section", None)):
            _set(self, name, value)

    @classmethod
    def _read(cls, section: bytes, n: int, with_scores: bool) -> Vocab:
        """The vocabulary of n entries in an encoded section that decode_vocab checked."""
        self = object.__new__(cls)
        for name, value in (("_tokens", None), ("_scores", None), ("_section", (section, n, with_scores))):
            _set(self, name, value)
        return self

    def _cut(self) -> None:
        data, n, with_scores = self._section
        trailer = TOKEN_SCORE.size if with_scores else 0
        ends = entry_ends(memoryview(data), n, TOKEN_LEN.size, trailer, None, with_ends=True)[1]  # checked on open
        starts = [0, *ends[:-1].tolist()]
        _set(self, "_tokens", tuple([data[a + 4 : b - trailer] for a, b in zip(starts, ends.tolist())]))
        if with_scores:  # gathered bytes, viewed: the file's bits, NaN payloads included
            at = (ends - trailer)[:, None] + np.arange(trailer)
            _set(self, "_scores", np.frombuffer(data, np.uint8)[at].reshape(-1).view("<f4").astype(np.float32))

    @property
    def tokens(self) -> tuple[bytes, ...]:
        if self._tokens is None:
            self._cut()
        return self._tokens

    @property
    def scores(self) -> np.ndarray | None:
        """float32, one per token (None without scores)."""
        if self._tokens is None:
            self._cut()
        return self._scores

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    __delattr__ = __setattr__

    def __reduce__(self) -> tuple:
        return (Vocab, (self.tokens, self.scores))

    def __repr__(self) -> str:
        return f"Vocab(tokens={self.tokens!r}, scores={self.scores!r})"

    def __len__(self) -> int:
        return len(self._tokens) if self._section is None else self._section[1]

    def __eq__(self, other: object) -> bool:
        """Same tokens and the same score bits (an array has no single truth value)."""
        if not isinstance(other, Vocab):
            return NotImplemented
        if self.tokens != other.tokens or (self.scores is None) != (other.scores is None):
            return False
        return self.scores is None or _f32_bytes(self.scores) == _f32_bytes(other.scores)

    def __hash__(self) -> int:
        """Hash of (tokens, scores), as a frozen dataclass: a TypeError when there are scores."""
        return hash((self.tokens, self.scores))

    def nbytes(self, with_scores: bool) -> int:
        """Encoded size of the vocabulary section."""
        return vocab_bytes(self.tokens, with_scores)


def _f32_bytes(scores: np.ndarray) -> bytes:
    return np.asarray(scores, dtype="<f4").tobytes()


def vocab_bytes(tokens: Sequence[bytes], with_scores: bool) -> int:
    """Encoded size of these vocabulary entries: each a u32 length, the text, an f32 score if the version has one."""
    return len(tokens) * (TOKEN_LEN.size + (TOKEN_SCORE.size if with_scores else 0)) + sum(len(t) for t in tokens)


def record_head_size(n_dims: int, name_len: int) -> int:
    """Bytes of a ggjt tensor record before its data padding: the head, the dims, the name (§4)."""
    return RECORD.size + 4 * n_dims + name_len


class TensorInfo(NamedTuple):
    """One tensor of any format (ggjt, GGUF, safetensors), from planning to writing: where its data lives, how to
    view it. A planner takes it with name, type and ne only (TensorInfo) and returns it placed.

    Immutable; compared and hashed on every field but `block`, and only with another TensorInfo; no order.
    """

    name: str
    type: GGMLType
    ne: tuple[int, ...]  # ggml order: ne[0] is the innermost (contiguous) dimension
    offset: int = 0  # absolute file offset of the data
    nbytes: int = 0
    record_offset: int = 0  # absolute file offset of the record (GGUF: its tensor info; safetensors: the data)
    block: BlockLayout | None = None  # not compared, not shown; None (and the three above 0) until planned

    @classmethod
    def from_shape(cls, name: str, ggml_type: GGMLType, shape: Sequence[int]) -> TensorInfo:
        """A tensor to plan, from a PyTorch/numpy shape (reversed into ggml order)."""
        return cls(name, GGMLType(ggml_type), tuple(int(n) for n in reversed(shape)))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return False if isinstance(other, tuple) else NotImplemented
        return self[:6] == other[:6]

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self[:6])

    __lt__ = __le__ = __gt__ = __ge__ = None  # type: ignore[assignment]  # tuple's order would compare `block`

    def __repr__(self) -> str:
        return (f"TensorInfo(name={self[0]!r}, type={self[1]!r}, ne={self[2]!r}, offset={self[3]!r}, "
                f"nbytes={self[4]!r}, record_offset={self[5]!r})")

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


@dataclass(frozen=True, slots=True)
class Index:
    """Everything a file of any format says about itself, with absolute offsets; no tensor data.

    Regions in file order: [0, header_size) the fixed header (ggjt: with the hyper-parameters),
    [header_size, metadata_end) the vocabulary (ggjt), the metadata (GGUF) or nothing (safetensors'
    JSON is its header), then the tensor records (ggjt: each before its data; GGUF: tensor infos up to
    infos_end), the data from data_start. `hparams` and `vocab` are the 2023 header's (None elsewhere);
    `metadata` is GGUF's key -> value (`types` their type paths) or safetensors' __metadata__.
    """

    version: FileVersion | GGUFVersion | Any  # Any: safetensors.SafetensorsVersion
    tensors: tuple[TensorInfo, ...]
    file_size: int
    header_size: int
    metadata_end: int
    infos_end: int
    data_start: int
    alignment: int  # of every tensor's data offset (ggjt v1-v3: 32; ggml, ggmf: 1; GGUF's own; safetensors: 8)
    hparams: HParams | None = None
    vocab: Vocab | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    types: dict[str, tuple] = field(default_factory=dict)

    @property
    def vocab_end(self) -> int:
        """ggjt: the offset of the first tensor record."""
        return self.metadata_end

    @property
    def infos_start(self) -> int:
        """GGUF: the offset of the first tensor info."""
        return self.metadata_end

    @property
    def data_end(self) -> int:
        """End of the last tensor's data (data_start when there are none)."""
        return max((t.offset + t.nbytes for t in self.tensors), default=self.data_start)

    @property
    def sequential(self) -> bool:
        """Whether tensor i starts at the padded end of tensor i-1, as llama.cpp requires of GGUF (§11.5)."""
        pos = self.data_start
        for t in self.tensors:
            if t.offset != pos:
                return False
            pos = self.data_start + align_up(pos - self.data_start + t.nbytes, self.alignment)
        return True

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


def block_layout(ggml_type: int, generation: int, blocks: np.ndarray | None = None) -> BlockLayout:
    """Block layout of a type code in a block-layout generation (1..3 the 2023 files, 4 GGUF), checked against the
    dtype of `blocks` when given: the one lookup of every reader, planner and block conversion.

    Raises:
        BadValue: the generation or the code is unknown, or the type does not exist in that generation.
        ValueError: `blocks` has another dtype (a caller's bug: the reader's views always have it).
    """
    layouts = BLOCK_LAYOUTS.get(generation) if isinstance(generation, int) else None
    if layouts is None:
        raise BadValue(f"block layout generation {generation!r} does not exist; expected one of {sorted(BLOCK_LAYOUTS)}")
    t = GGMLType._value2member_map_.get(ggml_type)
    if t not in layouts:
        raise BadValue(type_problem(ggml_type, generation))
    if blocks is not None and blocks.dtype != layouts[t].dtype:
        raise ValueError(f"{t.name} v{generation} blocks have dtype {layouts[t].dtype}, got {blocks.dtype}")
    return layouts[t]


def type_problem(code: int, generation: int) -> str:
    """Why a type code has no block layout in an existing generation: block_layout's message."""
    t, layouts = GGMLType._value2member_map_.get(code), BLOCK_LAYOUTS[generation]
    if generation == GGUF_BLOCK_GENERATION:  # too many types to list: their range, and what a known code was
        known = f" ({t.name}, a 2023 type GGUF does not have)" if t is not None else ""
        return (f"unknown tensor type code {code}{known}; expected a code of today's ggml_type enum "
                f"({min(layouts)}..{max(layouts)}, docs/format.md §11.6)")
    codes = ", ".join(f"{int(k)} ({k.name})" for k in layouts)
    if t is None:
        return f"unknown tensor type code {code}; expected one of {codes}"
    return f"tensor type code {int(t)}: {t.name} does not exist in block layout generation {generation}; expected one of {codes}"


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


def tensor_nbytes(ne: Sequence[int], block: BlockLayout) -> int:
    """Data size of a tensor with ggml dims `ne` (Python ints, so no overflow)."""
    return math.prod(ne[1:]) * (ne[0] // block.elements) * block.nbytes


def need(buf: memoryview, pos: int, n: int, field: str) -> None:
    """Raises: Truncated unless n bytes remain at pos."""
    if n > len(buf) - pos:
        raise Truncated(f"need {n} bytes, {max(len(buf) - pos, 0)} left", offset=pos, field=field)


def decode_version(buf: memoryview) -> tuple[FileVersion, int]:
    """Classify a file by magic and version; return it and the header size before the hparams.

    Raises:
        Truncated, BadMagic, UnsupportedVersion.
    """
    need(buf, 0, 4, "magic")
    (magic,) = U32.unpack_from(buf, 0)
    name = MAGICS.get(magic)
    if name is None:
        known = NOT_A_MODEL.get(magic)
        found = f"{known} file" if known else f"{magic:#010x} ({bytes(buf[:4])!r})"
        raise BadMagic(f"expected a model magic 'ggml', 'ggmf' or 'ggjt' (bytes b'lmgg', b'fmgg', b'tjgg'), "
                       f"found {found}", offset=0, field="magic")
    if name == "ggml":
        return FileVersion.GGML, 4
    need(buf, 4, 4, "version")
    (number,) = U32.unpack_from(buf, 4)
    version = VERSIONS.get((name, number))
    if version is None:
        allowed = sorted(v.number for v in FileVersion if v.magic_name == name)
        raise UnsupportedVersion(f"'{name}' version {number} is not one we read; expected one of {allowed}",
                                 offset=4, field="version")
    return version, 8


def decode_hparams(buf: memoryview, pos: int) -> HParams:
    """Read and range-check the seven header fields at pos (HPARAM_FIELDS).

    Raises:
        Truncated, BadValue.
    """
    need(buf, pos, HPARAMS.size, "hparams")
    values = HPARAMS.unpack_from(buf, pos)
    if (bad := first_problem(HPARAM_FIELDS, values)) is not None:
        raise BadValue(bad[1], offset=pos + 4 * bad[0], field=HPARAM_FIELDS[bad[0]].name)
    return HParams(*values)


def decode_vocab(buf: memoryview, pos: int, n_vocab: int, with_scores: bool) -> tuple[Vocab, int]:
    """The `n_vocab` entries (i32 length, text[, f32 score]) at pos, and where they end (§3).

    The count is checked against the file first, then one walk finds the end (entry_ends); only when
    that one refuses does the checked walk run, to name the entry.

    Raises:
        Truncated, BadValue.
    """
    fixed = TOKEN_LEN.size + (TOKEN_SCORE.size if with_scores else 0)
    room = len(buf) - pos - n_vocab * fixed  # bytes left for the texts once every fixed field is counted
    if room < 0:
        raise Truncated(f"n_vocab {n_vocab} needs at least {n_vocab * fixed} bytes, {len(buf) - pos} left",
                        offset=pos, field="vocab")
    got = entry_ends(buf[pos:], n_vocab, TOKEN_LEN.size, fixed - TOKEN_LEN.size, MAX_TOKEN_LEN)
    if got is None:
        raise _vocab_error(buf, pos, n_vocab, fixed, room)
    return Vocab._read(bytes(buf[pos : pos + got[0]]), n_vocab, with_scores), pos + got[0]


def _vocab_error(buf: memoryview, pos: int, n_vocab: int, fixed: int, room: int) -> FormatError:
    """The checked walk: every length against the bytes the entries after it leave; the first bad entry's error."""
    for i in range(n_vocab):
        (n,) = TOKEN_LEN.unpack_from(buf, pos)
        if not 0 <= n <= room or n > MAX_TOKEN_LEN:
            return _token_len_error(n, room, i, pos, n_vocab - i - 1, (n_vocab - i) * fixed)
        room -= n
        pos += fixed + n
    raise AssertionError("unreachable: every entry fits")  # pragma: no cover


def _token_len_error(n: int, room: int, i: int, pos: int, n_left: int, fixed_left: int) -> FormatError:
    """The error for a vocabulary length field that is out of range or runs past the end."""
    if n < 0 or n > MAX_TOKEN_LEN:
        return BadValue(f"expected a token length 0..{MAX_TOKEN_LEN}, found {n}", offset=pos, field=f"vocab[{i}].len")
    # room + fixed_left is what remains from `pos`; the text starts after the 4-byte length
    return Truncated(f"a {n}-byte token and the {n_left} entries after it need {n + fixed_left - 4} bytes, "
                     f"{room + fixed_left - 4} left", offset=pos + 4, field=f"vocab[{i}].text")


_DIMS = {n: struct.Struct(f"<{n}{DIM.code}") for n in range(1, MAX_DIMS + 1)}  # ne[0..n_dims-1]
_ZEROS = bytes(DEFAULT_ALIGNMENT)
# per version: (type code -> (type, block layout), aligned); one look-up per record instead of enum calls
_RECORD_TYPES = {v: ({int(t): (t, b, b.elements, b.nbytes) for t, b in BLOCK_LAYOUTS[v.block_generation].items()},
                     v.aligned) for v in FileVersion}
(_DIMS_LO, _DIMS_HI), (_NAME_LO, _NAME_HI) = ((f.lo, f.hi) for f in RECORD_FIELDS[:2])
_new = tuple.__new__  # TensorInfo(...) without the Python-level __new__ of a NamedTuple


def decode_record(buf: memoryview, pos: int, i: int, version: FileVersion) -> TensorInfo:
    """The tensor record at pos (RECORD_FIELDS, then ne, name, padding, data), every field checked (§4).

    Raises:
        Truncated, BadValue, BadLayout.
    """
    size = len(buf)
    if size - pos < RECORD.size:
        need(buf, pos, RECORD.size, f"tensor[{i}] record header")
    n_dims, name_len, code = head = RECORD.unpack_from(buf, pos)
    if not (_DIMS_LO <= n_dims <= _DIMS_HI and _NAME_LO <= name_len <= _NAME_HI):
        bad = first_problem(RECORD_FIELDS, head)
        raise BadValue(bad[1], offset=pos + 4 * bad[0], field=f"tensor[{i}].{RECORD_FIELDS[bad[0]].name}")
    types, aligned = _RECORD_TYPES[version]
    if code not in types:
        try:
            block_layout(code, version.block_generation)  # raises, saying why
        except BadValue as e:
            raise BadValue(f"{e.msg} in a {version} file", offset=pos + 8, field=f"tensor[{i}].type") from None
    ggml_type, block, elements, block_bytes = types[code]
    dims_at = pos + RECORD.size
    name_at = dims_at + 4 * n_dims
    if name_at > size:
        need(buf, dims_at, 4 * n_dims, f"tensor[{i}].ne")
    ne = _DIMS[n_dims].unpack_from(buf, dims_at)
    if min(ne) < 0:
        d = next(d for d, n in enumerate(ne) if n < 0)
        raise BadValue(DIM.problem(ne[d]), offset=dims_at + 4 * d, field=f"tensor[{i}].ne[{d}]")
    name_end = name_at + name_len
    if name_end > size:
        need(buf, name_at, name_len, f"tensor[{i}].name")
    raw_name = buf[name_at:name_end]
    try:
        name = str(raw_name, "utf-8")
    except UnicodeDecodeError:
        raise BadValue(f"expected a UTF-8 tensor name, found bytes {excerpt(raw_name)}", offset=name_at,
                       field=f"tensor[{i}].name") from None
    if ne[0] % elements:
        raise BadValue(block_problem(ne[0], ggml_type, block), offset=dims_at, field=f"tensor {shown(name)}.ne[0]")
    data_at = (name_end + DEFAULT_ALIGNMENT - 1) // DEFAULT_ALIGNMENT * DEFAULT_ALIGNMENT if aligned else name_end
    nbytes = math.prod(ne[1:]) * (ne[0] // elements) * block_bytes  # tensor_nbytes, inlined: the loop is hot
    # with every dim >= 1 and the data inside the buffer, no product of the dims can pass INT64_MAX
    if (nbytes > size - data_at or 0 in ne) and (problem := dims_problem(ne, block)) is not None:
        raise BadValue(problem[1], offset=dims_at + 4 * problem[0], field=f"tensor {shown(name)}.ne[{problem[0]}]")
    if data_at > name_end and (data_at > size or buf[name_end:data_at] != _ZEROS[: data_at - name_end]):
        need(buf, name_end, data_at - name_end, f"tensor {shown(name)} padding")
        raise BadLayout(f"expected {data_at - name_end} zero bytes of alignment padding, found "
                        f"{excerpt(buf[name_end:data_at])}", offset=name_end, field=f"tensor {shown(name)} padding")
    if nbytes > size - data_at:
        need(buf, data_at, nbytes, f"tensor {shown(name)} data ({ggml_type.name} {list(ne)})")
    return _new(TensorInfo, (name, ggml_type, ne, data_at, nbytes, pos, block))


def decode_index(buf: memoryview | bytes, *, path: str | None = None) -> Index:
    """Parse a whole ggml/ggmf/ggjt file (header, vocabulary, every tensor record) from a buffer.

    Raises:
        FormatError (BadMagic, UnsupportedVersion, Truncated, BadValue, BadLayout), with `path` filled in.
    """
    buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
    try:
        version, pos = decode_version(buf)
        hparams = decode_hparams(buf, pos)
        header_size = pos + HPARAMS.size
        vocab, vocab_end = decode_vocab(buf, header_size, hparams.n_vocab, version.has_scores)
        tensors: list[TensorInfo] = []
        seen: dict[str, int] = {}
        pos = vocab_end
        while pos < len(buf):  # no tensor count in these formats: records run to the end of the file
            info = decode_record(buf, pos, len(tensors), version)
            if info.name in seen:
                raise BadLayout(f"duplicate tensor name {shown(info.name)} (first at offset {seen[info.name]:#x})",
                                offset=pos, field=f"tensor[{len(tensors)}].name")
            seen[info.name] = pos
            tensors.append(info)
            pos = info.offset + info.nbytes
    except FormatError as e:
        raise e.with_path(path) if path else e
    return Index(version, tuple(tensors), len(buf), header_size, vocab_end, vocab_end, vocab_end,
                 DEFAULT_ALIGNMENT if version.aligned else 1, hparams, vocab)


# ---------------------------------------------------------------- the vectorised length walk


_LENGTH = {4: U32, 8: U64}  # length fields by width, read unsigned


def entry_ends(body: memoryview, n: int, width: int, trailer: int, max_len: int | None, *,
               with_ends: bool = False) -> tuple[int, np.ndarray | None] | None:
    """(end, ends) of the n entries (`width`-byte unsigned length, that many bytes, `trailer` bytes) at body[0:]:
    every length <= max_len (None: no bound but the buffer) and end <= len(body), ends[i] where entry i
    ends (int64, only with_ends); None when an entry breaks that (the caller's checked walk names it).
    The vectorised walk for 1,024 entries or more (docs/format.md §3), else, or when it does not decide,
    one entry at a time (each length read unsigned: a negative i32 is above any max_len)."""
    if n >= VOCAB_VECTOR_MIN and (got := walk_entries(body, n, width, trailer, max_len, with_ends=with_ends)):
        return got
    unpack, pos, ends, fixed = _LENGTH[width].unpack_from, 0, [], width + trailer
    append = ends.append if with_ends else None
    try:
        for _ in range(n):
            (k,) = unpack(body, pos)
            if max_len is not None and k > max_len:
                return None
            pos += fixed + k
            if append:
                append(pos)
    except (struct.error, OverflowError):  # a length field past the end, or an offset past any buffer
        return None
    return (pos, np.array(ends, np.int64) if with_ends else None) if pos <= len(body) else None


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
    # A chunk's temporaries (int64 per candidate, up to 8 x chunk bytes) are above glibc's first mmap threshold:
    # each would be fresh pages, faulted in and unmapped again, per chunk (measured: 2-6 ms per open). Freeing one
    # larger mapped block first raises the threshold past them (glibc's dynamic M_MMAP_THRESHOLD), so they are
    # reused heap memory instead; the block itself is never touched.
    np.empty(16 * chunk, np.uint8)  # made and freed at once
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
    steps, last, path = _follow(levels, j, left - 1)
    if parts is not None:
        parts.append(ends.take(_fill(levels, path, steps + 1)) + at)
    return steps + 1, at + int(ends[last])


def _follow(levels: list[np.ndarray], j: int, most: int) -> tuple[int, int, list[int]]:
    """(steps, candidate, path) after following successors from j up to `most` times or to the dead end
    (succ[-1]); path: the candidate at every 32nd step (0, 32, 64, ...), for _fill."""
    succ = levels[0]
    dead = len(succ) - 1
    far_v, one_v, stride = memoryview(levels[-1]), memoryview(succ), 1 << VOCAB_STRIDE_LOG
    steps, path = 0, []
    while most - steps >= stride and far_v[j] != dead:
        path.append(j)
        j = far_v[j]
        steps += stride
    path.append(j)
    while steps < most and one_v[j] != dead:
        j = one_v[j]
        steps += 1
    return steps, j, path


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


# ---------------------------------------------------------------- planning a file to write




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


def plan(version: FileVersion, hparams: HParams, vocab: Vocab, specs: Iterable[TensorInfo]) -> Plan:
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
        head = RECORD.pack(len(spec.ne), len(name), int(spec.type)) + _DIMS[len(spec.ne)].pack(*spec.ne) + name
        data_offset = align_up(pos + len(head)) if version.aligned else pos + len(head)
        head += bytes(data_offset - pos - len(head))  # zero padding up to the aligned data offset
        nbytes = tensor_nbytes(spec.ne, block)
        infos.append(TensorInfo(spec.name, GGMLType(spec.type), spec.ne, data_offset, nbytes, pos, block))
        headers.append(head)
        pos = data_offset + nbytes
    return Plan(version, hparams, prefix, tuple(infos), tuple(headers), pos)


def _check_spec(spec: TensorInfo, version: FileVersion, seen: set[str]) -> tuple[BlockLayout, bytes]:
    """Validate one spec for writing against the record table; return its block layout and encoded name.

    Raises:
        CannotWrite.
    """
    name = spec.name.encode("utf-8")
    if (bad := first_problem(RECORD_FIELDS[:2], (len(spec.ne), len(name)))) is not None:
        hint = " (reshape a scalar to (1,))" if bad[0] == 0 else ""
        raise CannotWrite(f"tensor {spec.name[:60]!r}: {bad[1]}{hint}")
    if any(DIM.problem(n) for n in spec.ne):
        raise CannotWrite(f"tensor {spec.name!r}: every dim must fit a signed 32-bit field, got {list(spec.ne)}")
    return check_spec_type(spec, spec.ne, version.block_generation, seen), name


def check_spec_type(spec: TensorInfo, ne: tuple[int, ...], generation: int, seen: set[str]) -> BlockLayout:
    """What every writer checks of a spec after its format's own fields: its name is new (then added to `seen`), its
    type is one of `generation`, ne[0] is whole blocks, and the dims' products fit; return its block layout.

    Raises:
        CannotWrite.
    """
    if spec.name in seen:
        raise CannotWrite(f"duplicate tensor name {spec.name!r}")
    seen.add(spec.name)
    try:
        block = block_layout(spec.type, generation)
    except BadValue as e:
        raise CannotWrite(f"tensor {spec.name!r}: {e.msg}") from None
    why = block_problem(ne[0], spec.type, block) or (dims_problem(ne, block) or (0, None))[1]
    if why is not None:
        raise CannotWrite(f"tensor {spec.name!r}: {why}")
    return block
