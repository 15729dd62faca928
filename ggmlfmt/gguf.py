"""The GGUF v2/v3 codec: decode an index from a buffer, plan a file to write (docs/format.md §11).

Pure functions over bytes and records, like layout.py; no file I/O here (reader.py and writer.py
do that). Every count and length read from a buffer is checked against the bytes that remain
before anything is allocated or looped over; the tensor-info table (GGUF_N_DIMS, GGUF_DIM,
GGUF_INFO_TAIL in constants.py) drives decoding, checking and packing. A bare § is a section of
docs/format.md.
"""

from __future__ import annotations

import codecs
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain, islice
from typing import Any, NoReturn, Union

import numpy as np

from ggmlfmt.constants import (
    BLOCK_LAYOUTS,
    DEFAULT_ALIGNMENT,
    GGUF_ALIGNMENT_KEY,
    GGUF_BLOCK_GENERATION,
    GGUF_DIM,
    GGUF_HEADER,
    GGUF_INFO_TAIL,
    GGUF_MAX_ALIGNMENT,
    GGUF_MAX_ARRAY_DEPTH,
    GGUF_MAX_NAME_LEN,
    GGUF_N_DIMS,
    GGUF_NAME_LEN,
    GGUF_SCALAR_DTYPES,
    GGUF_SCALAR_STRUCTS,
    GGUF_VERSIONS,
    GGUF_WRITE_VERSION,
    INT64_MAX,
    MAGIC_GGUF,
    MAX_DIMS,
    U32,
    U64,
    VOCAB_VECTOR_MIN,
    BlockLayout,
    Field,
    GGMLType,
    GGUFValueType,
    GGUFVersion,
)
from ggmlfmt.errors import BadLayout, BadMagic, BadValue, CannotWrite, FormatError, Truncated, UnsupportedVersion, excerpt, shown
from ggmlfmt.layout import (
    Index,
    Plan,
    TensorInfo,
    align_up,
    block_problem,
    check_spec_type,
    dims_problem,
    entry_ends,
    need,
    tensor_nbytes,
    type_problem,
    walk_entries,
)

GGUF_LAYOUTS: dict[GGMLType, BlockLayout] = BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION]
TypePath = tuple[GGUFValueType, ...]  # (UINT32,), (ARRAY, STRING), (ARRAY, ARRAY, INT32), ...
_MIN_KV = 8 + 4 + 1  # key length, value type, the smallest value (one byte)
_ARRAY_HEAD = struct.Struct("<IQ")  # element type, count
_INFO_REST = {n: struct.Struct(f"<{n}{GGUF_DIM.code}{GGUF_INFO_TAIL.format[1:]}") for n in range(1, MAX_DIMS + 1)}
_MIN_INFO = U64.size + U32.size + _INFO_REST[1].size  # name length, n_dims, one dim, type, offset (0 dims are refused)
_unpack_u64 = U64.unpack_from
_new = tuple.__new__  # TensorInfo(...) without the Python-level __new__ of a NamedTuple
_SHORT = 0x7F  # the longest string of the vectorised walk's first try (docs/format.md §11.4)
_PAD_STEP = 1 << 16  # bytes of padding checked per numpy call: no copy, no allocation past this
_STRINGS_PER_STEP = 1 << 12  # strings of an array encoded per pass
RUNS_STEP = 1 << 17  # bytes spelled per numpy pass of GGUFStrings.from_runs (index arrays of 1 MiB)
# A tensor whose dims are all >= 1 and multiply to at most this many elements has every product of its dims,
# in elements and in bytes (at most 8 per element), <= INT64_MAX: dims_problem need not be asked.
_SAFE_ELEMENTS = INT64_MAX // max(-(-b.nbytes // b.elements) for b in GGUF_LAYOUTS.values())


class GGUFStrings(Sequence[str]):
    """A GGUF array of strings, validated whole on open and decoded one item at a time when asked.

    A 32,000-token vocabulary is one bytes object (and, once an item is asked for, one int64 array of end
    offsets), not 32,000 str: when every string was found shorter than 128 bytes on open, the open did not
    need the end offsets and left them to first use (docs/format.md §11.4).
    """

    __slots__ = ("_data", "_known_ends", "_n")

    def __init__(self, data: bytes, ends: np.ndarray | None, n: int | None = None) -> None:
        self._data = data  # the array's encoded elements: (u64 length, bytes) each, already validated
        self._known_ends = ends  # ends[i]: where element i's bytes end in `data`; None: not found yet
        self._n = len(ends) if ends is not None else n

    @classmethod
    def of(cls, strings: Sequence[str], key: str = "strings") -> GGUFStrings:
        """`strings` encoded as a GGUF array holds them: a vocabulary kept so takes one bytes object, not a str
        object per token (Llama 3's 128,256 tokens and 280,147 merges: 8 MB, not 40).

        Raises:
            CannotWrite: an element is not a str or cannot be written as UTF-8 (named with `key`).
        """
        return strings if isinstance(strings, GGUFStrings) else cls(_encode_strings(strings, key), None, len(strings))

    @classmethod
    def from_runs(cls, source: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> GGUFStrings:
        """Strings spelled from byte runs of `source` (u8): string i is source[starts[i, j] : starts[i, j] +
        lengths[i, j]] for j = 0, 1, ..., one after the other; the caller vouches that each is valid UTF-8.
        About RUNS_STEP bytes are spelled per numpy pass: one gather of runs, each string's u64 length one of them."""
        n, size = len(starts), lengths.sum(axis=1)
        ends = np.cumsum(size + 8)
        out = np.empty(int(ends[-1]) if n else 0, np.uint8)
        for lo, hi in cost_chunks(size + 8, RUNS_STEP):
            m = hi - lo
            both = np.concatenate([source, size[lo:hi].astype("<u8").view(np.uint8)])  # the lengths after the source
            run_starts = np.concatenate([len(source) + 8 * np.arange(m)[:, None], starts[lo:hi]], axis=1)
            run_lengths = np.concatenate([np.full((m, 1), 8), lengths[lo:hi]], axis=1)
            out[ends[lo] - size[lo] - 8 : ends[hi - 1]] = byte_runs(both, run_starts.reshape(-1), run_lengths.reshape(-1))
        return cls(out.tobytes(), ends)

    @property
    def _ends(self) -> np.ndarray:
        if self._known_ends is None:
            self._known_ends = entry_ends(memoryview(self._data), self._n, 8, 0, None, with_ends=True)[1]
        return self._known_ends

    def raw(self, i: int) -> bytes:
        """The UTF-8 bytes of element i.

        Raises:
            IndexError.
        """
        n = self._n
        if not -n <= i < n:
            raise IndexError(f"string index {i} out of range for {n} strings")
        i %= n
        return self._data[int(self._ends[i - 1]) + 8 if i else 8 : int(self._ends[i])]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.raw(i).decode("utf-8")

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[str]:
        data, start = self._data, 8
        for end in self._ends.tolist():
            yield data[start:end].decode("utf-8")
            start = end + 8

    def tolist(self) -> list[str]:
        return list(self)

    @property
    def encoded(self) -> bytes:
        """The elements as a GGUF array holds them: each one's u64 length, then its UTF-8 bytes."""
        return self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GGUFStrings):
            return self._data == other._data
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence semantics, like list

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"GGUFStrings([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"


def byte_runs(source: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The runs source[starts[i] : starts[i] + lengths[i]], one after the other, in one gather (index arrays as long
    as the result: callers bound it, as cost_chunks does)."""
    ends = np.cumsum(lengths)
    return source[np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - lengths - starts, lengths)]


def cost_chunks(cost: np.ndarray, step: int) -> Iterator[tuple[int, int]]:
    """Consecutive ranges [first, last) of items whose costs add up to at most `step` (at least one item each)."""
    total = np.cumsum(cost)
    first = 0
    while first < len(cost):
        done = int(total[first - 1]) if first else 0
        last = max(first + 1, int(np.searchsorted(total, done + step, side="right")))
        yield first, last
        first = last


# ---------------------------------------------------------------- decoding


def _value_type(code: int, at: int, field: str) -> GGUFValueType:
    if code not in GGUFValueType._value2member_map_:
        raise BadValue(f"expected a value type code 0..{max(GGUFValueType)}, found {code}", offset=at, field=field)
    return GGUFValueType(code)


def _string(buf: memoryview, pos: int, field: str, length: Field | None = None) -> tuple[str, int]:
    """One string (u64 length within `length`'s bounds if given, UTF-8 bytes) at pos; return it and the position after it.

    Raises:
        Truncated, BadValue.
    """
    if len(buf) - pos < 8:
        need(buf, pos, 8, f"{field} length")
    (n,) = _unpack_u64(buf, pos)
    if length is not None and not length.lo <= n <= length.hi:
        raise BadValue(length.problem(n), offset=pos, field=f"{field} length")
    pos += 8
    if n > len(buf) - pos:
        raise Truncated(f"a {n}-byte string needs {n} bytes, {len(buf) - pos} left", offset=pos, field=field)
    try:
        return str(buf[pos : pos + n], "utf-8"), pos + n
    except UnicodeDecodeError as e:
        raise BadValue(f"expected UTF-8, found byte {buf[pos + e.start]:#04x} at byte {e.start}",
                       offset=pos + e.start, field=field) from None


def _scalar(buf: memoryview, pos: int, vtype: GGUFValueType, field: str) -> tuple[Any, int]:
    st = GGUF_SCALAR_STRUCTS[vtype]
    need(buf, pos, st.size, field)
    (value,) = st.unpack_from(buf, pos)
    if vtype is GGUFValueType.BOOL:
        if value > 1:
            raise BadValue(f"expected a bool 0 or 1, found {value}", offset=pos, field=field)
        value = bool(value)
    return value, pos + st.size


def _value(buf: memoryview, pos: int, vtype: GGUFValueType, field: str, depth: int) -> tuple[Any, TypePath, int]:
    """One value of a known type; return it, its type path and the position after it.

    Raises:
        Truncated, BadValue.
    """
    if vtype is GGUFValueType.STRING:
        value, pos = _string(buf, pos, field)
        return value, (vtype,), pos
    if vtype is GGUFValueType.ARRAY:
        return _array(buf, pos, field, depth)
    value, pos = _scalar(buf, pos, vtype, field)
    return value, (vtype,), pos


def _array(buf: memoryview, pos: int, field: str, depth: int) -> tuple[Any, TypePath, int]:
    """An array (u32 element type, u64 count, elements); count is bounded by the bytes left first.

    Raises:
        Truncated, BadValue.
    """
    if depth >= GGUF_MAX_ARRAY_DEPTH:
        raise BadValue(f"arrays nested deeper than {GGUF_MAX_ARRAY_DEPTH}", offset=pos, field=field)
    need(buf, pos, _ARRAY_HEAD.size, f"{field} array header")
    code, count = _ARRAY_HEAD.unpack_from(buf, pos)
    etype = _value_type(code, pos, f"{field} element type")
    pos += _ARRAY_HEAD.size
    left = len(buf) - pos
    if etype in GGUF_SCALAR_DTYPES:
        dtype = GGUF_SCALAR_DTYPES[etype]
        if count * dtype.itemsize > left:
            raise Truncated(f"{count} x {etype.name} need {count * dtype.itemsize} bytes, {left} left",
                            offset=pos, field=field)
        arr = np.frombuffer(buf, dtype, count, pos).copy()  # a copy: metadata must not pin the map
        if etype is GGUFValueType.BOOL and len(bad := np.flatnonzero(arr > 1)):
            raise BadValue(f"expected a bool 0 or 1, found {arr[bad[0]]}", offset=pos + int(bad[0]),
                           field=f"{field}[{bad[0]}]")
        return (arr.astype(bool) if etype is GGUFValueType.BOOL else arr), (GGUFValueType.ARRAY, etype), \
            pos + count * dtype.itemsize
    min_item = 8 if etype is GGUFValueType.STRING else _ARRAY_HEAD.size
    if count * min_item > left:
        raise Truncated(f"{count} x {etype.name} need at least {count * min_item} bytes, {left} left",
                        offset=pos, field=field)
    if etype is GGUFValueType.STRING:
        strings, pos = _strings(buf, pos, count, field)
        return strings, (GGUFValueType.ARRAY, etype), pos
    items, inner = [], (GGUFValueType.ARRAY,)
    for i in range(count):  # bounded: each item takes >= 12 of the bytes left
        item, path, pos = _array(buf, pos, f"{field}[{i}]", depth + 1)
        inner = path if i == 0 else inner
        items.append(item)
    return items, (GGUFValueType.ARRAY, *inner), pos


def _strings(buf: memoryview, pos: int, count: int, field: str) -> tuple[GGUFStrings, int]:
    """`count` strings from pos (count * 8 already fits): one walk of the lengths, one UTF-8 check (§11.4).

    Raises:
        Truncated, BadValue: as the string-by-string decoder `_string` would, naming the element.
    """
    body = buf[pos:]
    # Vocabularies hold short pieces: walking for lengths < 128 first halves the vectorised walk's false
    # candidates, and then every length byte is ASCII, which UTF-8 never takes into a longer character:
    # the whole encoding decodes exactly when each element does, and the end offsets can wait.
    if count >= VOCAB_VECTOR_MIN and (short := walk_entries(body, count, 8, 0, _SHORT)) is not None:
        data, ends, end = bytes(body[: short[0]]), None, short[0]
        text, starts = data, None
    elif (got := entry_ends(body, count, 8, 0, None, with_ends=True)) is not None:
        end, ends = got
        data, lengths = bytes(body[:end]), np.diff(ends, prepend=0) - 8
        raw = np.frombuffer(data, np.uint8)
        keep = np.ones(len(raw), bool)  # the texts joined without their length fields
        keep[((ends - lengths - 8)[:, None] + np.arange(8)).reshape(-1)] = False
        text, starts = raw[keep].tobytes(), np.cumsum(lengths)[:-1]
    else:
        raise _first_string_error(buf, pos, count, field)
    try:
        _decode_checked(memoryview(text))
        # and no element starts inside a character
        if starts is not None and np.any((np.frombuffer(text, np.uint8)[starts[starts < len(text)]] & 0xC0) == 0x80):
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "an element starts inside a character")
    except UnicodeDecodeError:
        raise _first_string_error(buf, pos, count, field) from None
    return GGUFStrings(data, ends, count), pos + end


def _decode_checked(raw: memoryview, step: int = 1 << 15) -> None:
    """Decode raw as UTF-8 and drop the text, 32 KiB at a time: the verdict of one decode, without the fresh
    pages of a megabyte-sized str on every open (measured: 3x the decoding time). A character cut by a step
    boundary is left unconsumed by the non-final decode and starts the next step.

    Raises:
        UnicodeDecodeError.
    """
    pos = 0
    while pos < len(raw):
        pos += codecs.utf_8_decode(raw[pos : pos + step], "strict", len(raw) - pos <= step)[1]


def _first_string_error(buf: memoryview, pos: int, count: int, field: str) -> FormatError:
    """The error of the first string of an array that does not decode (errors only)."""
    for i in range(count):
        try:
            _, pos = _string(buf, pos, f"{field}[{i}]")
        except FormatError as e:
            return e
    raise AssertionError("unreachable: every string decoded")  # pragma: no cover


def _version(buf: memoryview) -> GGUFVersion:
    """Check magic and version; say so clearly for v1 and for big-endian files.

    Raises:
        Truncated, BadMagic, UnsupportedVersion.
    """
    need(buf, 0, 4, "magic")
    (magic,) = U32.unpack_from(buf, 0)
    if magic != MAGIC_GGUF:
        raise BadMagic(f"expected b'GGUF', found {bytes(buf[:4])!r}", offset=0, field="magic")
    need(buf, 4, 4, "version")
    (number,) = U32.unpack_from(buf, 4)
    if number in GGUF_VERSIONS:
        return GGUFVersion(number)
    swapped = int.from_bytes(number.to_bytes(4, "little"), "big")
    if number == 1:
        msg = "GGUF v1 (32-bit counts, August 2023 only) is not read; expected version 2 or 3"
    elif swapped in (1, *GGUF_VERSIONS):
        msg = (f"a big-endian GGUF v{swapped} file (version field {number:#010x} read little-endian); "
               "we read little-endian GGUF only")
    else:
        msg = f"GGUF version {number} is not one we read; expected one of {list(GGUF_VERSIONS)}"
    raise UnsupportedVersion(msg, offset=4, field="version")


def _key_field(key: str) -> str:
    """A key as an error's field: as is when plain printable ASCII, else quoted and escaped (one line)."""
    if key.isascii() and key.isprintable() and " " not in key and len(key) <= 100:
        return key
    return repr(key[:100])


def _metadata(buf: memoryview, pos: int, n_kv: int) -> tuple[dict[str, Any], dict[str, TypePath], int, int]:
    """Read n_kv key/value pairs; return values, types, the position after them and general.alignment's offset.

    Raises:
        Truncated, BadValue, BadLayout.
    """
    values: dict[str, Any] = {}
    types: dict[str, TypePath] = {}
    align_at = -1
    for i in range(n_kv):  # bounded by the caller: n_kv * 13 bytes fit
        at = pos
        key, pos = _string(buf, pos, f"metadata[{i}].key")
        if key in values:
            raise BadLayout(f"duplicate metadata key {key[:100]!r}", offset=at, field=f"metadata[{i}].key")
        if not key:
            raise BadValue("expected a non-empty key", offset=at, field=f"metadata[{i}].key")
        name = _key_field(key)
        need(buf, pos, 4, f"{name} value type")
        vtype = _value_type(U32.unpack_from(buf, pos)[0], pos, f"{name} value type")
        pos += 4
        if key == GGUF_ALIGNMENT_KEY:
            align_at = pos
        values[key], types[key], pos = _value(buf, pos, vtype, name, 0)
    return values, types, pos, align_at


def _alignment(values: dict[str, Any], types: dict[str, TypePath], at: int) -> int:
    """general.alignment if present (a u32, a power of two up to GGUF_MAX_ALIGNMENT), else 32 (§11.5).

    Raises:
        BadValue.
    """
    if GGUF_ALIGNMENT_KEY not in values:
        return DEFAULT_ALIGNMENT
    if types[GGUF_ALIGNMENT_KEY] != (GGUFValueType.UINT32,):
        found = "/".join(t.name for t in types[GGUF_ALIGNMENT_KEY])
        raise BadValue(f"expected a UINT32, found a {found}", offset=at, field=GGUF_ALIGNMENT_KEY)
    align = values[GGUF_ALIGNMENT_KEY]
    if align <= 0 or align & (align - 1) or align > GGUF_MAX_ALIGNMENT:
        raise BadValue(f"expected a power of two 1..{GGUF_MAX_ALIGNMENT} (2**{GGUF_MAX_ALIGNMENT.bit_length() - 1}), "
                       f"found {align}", offset=at, field=GGUF_ALIGNMENT_KEY)
    return align


_TYPES = {int(t): (t, b, b.elements, b.nbytes) for t, b in GGUF_LAYOUTS.items()}  # code -> one look-up per info


def _tensor_type(code: int, at: int, field: str) -> NoReturn:
    """Raises: BadValue for a type code GGUF does not have."""
    raise BadValue(type_problem(code, GGUF_BLOCK_GENERATION), offset=at, field=field)


def _tensor_info(buf: memoryview, pos: int, i: int, alignment: int) -> tuple[tuple, int]:
    """One tensor info; return (name, type, ne, relative offset, nbytes, record offset, block) and the next position.

    Raises:
        Truncated, BadValue, BadLayout.
    """
    record = pos
    name, pos = _string(buf, pos, f"tensor[{i}].name", GGUF_NAME_LEN)
    if len(buf) - pos < 4:
        need(buf, pos, 4, f"tensor {shown(name)}.n_dims")
    (n_dims,) = U32.unpack_from(buf, pos)
    if not GGUF_N_DIMS.lo <= n_dims <= GGUF_N_DIMS.hi:
        raise BadValue(GGUF_N_DIMS.problem(n_dims), offset=pos, field=f"tensor {shown(name)}.n_dims")
    dims_at = pos + 4
    rest = _INFO_REST[n_dims]
    end = dims_at + rest.size
    if end > len(buf):
        need(buf, dims_at, end - dims_at, f"tensor {shown(name)}.ne")
    values = rest.unpack_from(buf, dims_at)
    ne, code, offset = values[:n_dims], values[n_dims], values[n_dims + 1]
    if max(ne) > GGUF_DIM.hi:
        d = next(d for d, n in enumerate(ne) if n > GGUF_DIM.hi)
        raise BadValue(GGUF_DIM.problem(ne[d]), offset=dims_at + 8 * d, field=f"tensor {shown(name)}.ne[{d}]")
    ggml_type, block, elements, block_bytes = _TYPES.get(code) or _tensor_type(code, end - GGUF_INFO_TAIL.size,
                                                                              f"tensor {shown(name)}.type")
    if ne[0] % elements:
        raise BadValue(block_problem(ne[0], ggml_type, block), offset=dims_at, field=f"tensor {shown(name)}.ne[0]")
    if not 0 < (n := math.prod(ne)) <= _SAFE_ELEMENTS and (problem := dims_problem(ne, block)) is not None:
        raise BadValue(problem[1], offset=dims_at + 8 * problem[0], field=f"tensor {shown(name)}.ne[{problem[0]}]")
    if offset % alignment:
        raise BadLayout(f"expected an offset that is a multiple of the alignment {alignment}, found {offset}",
                        offset=end - 8, field=f"tensor {shown(name)}.offset")
    # n // elements x block bytes: tensor_nbytes, as ne[0] holds whole blocks
    return (name, ggml_type, ne, offset, n // elements * block_bytes, record, block), end


def _tensor_infos(buf: memoryview, pos: int, n_tensors: int, alignment: int) -> tuple[list[tuple], int]:
    """Every tensor info from pos (as _tensor_info returns them, names unique) and the position after them.

    Raises:
        Truncated, BadValue, BadLayout.
    """
    raw: list[tuple] = []
    seen: set[str] = set()
    for i in range(n_tensors):  # bounded by the caller: n_tensors * 32 bytes fit
        info, pos = _tensor_info(buf, pos, i, alignment)
        if info[0] in seen:
            raise BadLayout(f"duplicate tensor name {shown(info[0])}", offset=info[5], field=f"tensor[{i}].name")
        seen.add(info[0])
        raw.append(info)
    return raw, pos


def _place(raw: list[tuple], data_start: int, size: int) -> tuple[TensorInfo, ...]:
    """TensorInfos with absolute offsets, after checking each lies in the file and none overlap.

    Raises:
        Truncated, BadLayout.
    """
    infos = []
    for name, ggml_type, ne, rel, nbytes, record, block in raw:
        if data_start + rel + nbytes > size:
            raise Truncated(f"{ggml_type.name} {list(ne)} data at data_start {data_start:#x} + {rel:#x} needs "
                            f"{nbytes} bytes, {max(size - data_start - rel, 0)} left", offset=record,
                            field=f"tensor {shown(name)} data")
        infos.append(_new(TensorInfo, (name, ggml_type, ne, data_start + rel, nbytes, record, block)))
    if len(infos) > 1:
        starts = np.array([t[3] for t in infos], np.int64)  # all < size now: no overflow
        ends = starts + np.array([t[4] for t in infos], np.int64)
        order = np.argsort(starts, kind="stable")
        clash = np.flatnonzero(starts[order][1:] < ends[order][:-1])
        if len(clash):
            a, b = infos[order[clash[0]]], infos[order[clash[0] + 1]]
            raise BadLayout(f"data overlaps tensor {shown(a.name)}'s ({a.offset:#x}..{a.offset + a.nbytes:#x})",
                            offset=b.record_offset, field=f"tensor {shown(b.name)} offset")
    return tuple(infos)


def decode_gguf(buf: memoryview | bytes, *, path: str | None = None) -> Index:
    """Parse a GGUF v2/v3 file's header, metadata and tensor infos from a buffer (docs/format.md §11).

    Raises:
        FormatError (BadMagic, UnsupportedVersion, Truncated, BadValue, BadLayout), with `path` filled in.
    """
    buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
    try:
        version = _version(buf)
        need(buf, 8, 16, "tensor_count, metadata_kv_count")
        _, _, n_tensors, n_kv = GGUF_HEADER.unpack_from(buf, 0)
        left = len(buf) - GGUF_HEADER.size
        if n_kv * _MIN_KV + n_tensors * _MIN_INFO > left:
            raise Truncated(f"{n_kv} metadata pairs and {n_tensors} tensor infos need at least "
                            f"{n_kv * _MIN_KV + n_tensors * _MIN_INFO} bytes, {left} left", offset=8,
                            field="tensor_count, metadata_kv_count")
        values, types, pos, align_at = _metadata(buf, GGUF_HEADER.size, n_kv)
        alignment = _alignment(values, types, align_at)
        infos_start = pos
        raw, pos = _tensor_infos(buf, pos, n_tensors, alignment)  # bounded above: n_tensors * 32 bytes fit
        data_start = align_up(pos, alignment)
        _check_padding(buf, pos, data_start)
        tensors = _place(raw, data_start, len(buf))
    except FormatError as e:
        raise e.with_path(path) if path else e
    return Index(version, tensors, len(buf), GGUF_HEADER.size, infos_start, pos, data_start, alignment,
                 metadata=values, types=types)


def _check_padding(buf: memoryview, pos: int, data_start: int) -> None:
    """The padding after the tensor infos is zero (as far as the file goes: a file without tensors may end early).

    At most GGUF_MAX_ALIGNMENT - 1 bytes, read in place _PAD_STEP at a time (nothing copied but the
    excerpt a message shows).

    Raises:
        BadLayout.
    """
    end = min(data_start, len(buf))
    for at in range(pos, end, _PAD_STEP):
        step = np.frombuffer(buf, np.uint8, min(_PAD_STEP, end - at), at)
        if step.any():
            bad = at + int((step != 0).argmax())  # the first non-zero byte
            raise BadLayout(f"expected {end - pos} zero bytes of alignment padding, found byte {buf[bad]:#04x} at "
                            f"padding byte {bad - pos}: {excerpt(buf[bad:end])}", offset=bad,
                            field="padding after tensor infos")


# ---------------------------------------------------------------- planning a file to write

Metadata = Union[Sequence[tuple[str, Any, Any]], Mapping[str, tuple[Any, Any]]]
_NUMPY_VALUE_TYPES = {d: t for t, d in GGUF_SCALAR_DTYPES.items() if t is not GGUFValueType.BOOL}


def _type_path(vtype: Any, value: Any, key: str) -> TypePath:
    """The full type path of a value: arrays need their element type, given or inferred from numpy/str items.

    Raises:
        CannotWrite.
    """
    path = tuple(GGUFValueType(t) for t in (vtype if isinstance(vtype, tuple) else (vtype,)))
    if path[-1] is not GGUFValueType.ARRAY:
        if any(t is not GGUFValueType.ARRAY for t in path[:-1]):
            raise CannotWrite(f"metadata {key!r}: only ARRAY may be followed by an element type, got {path}")
        return path
    if len(path) > 1:
        raise CannotWrite(f"metadata {key!r}: give the element type of the innermost array, e.g. (ARRAY, INT32)")
    if isinstance(value, np.ndarray) and value.dtype.kind == "b":
        return (GGUFValueType.ARRAY, GGUFValueType.BOOL)
    if isinstance(value, np.ndarray) and value.dtype.newbyteorder("<") in _NUMPY_VALUE_TYPES:
        return (GGUFValueType.ARRAY, _NUMPY_VALUE_TYPES[value.dtype.newbyteorder("<")])
    if isinstance(value, GGUFStrings) or (isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value)):
        return (GGUFValueType.ARRAY, GGUFValueType.STRING)
    raise CannotWrite(f"metadata {key!r}: cannot tell the element type of this array; give it, e.g. (ARRAY, INT32)")


def _encode_scalar(vtype: GGUFValueType, value: Any, key: str) -> bytes:
    """One fixed-size or string value.

    Raises:
        CannotWrite.
    """
    if vtype is GGUFValueType.STRING:
        if not isinstance(value, str):
            raise CannotWrite(f"metadata {key!r}: a STRING must be str, got {type(value).__name__}")
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise CannotWrite(f"metadata {key!r}: not encodable as UTF-8: {value[:40]!r}") from None
        return U64.pack(len(raw)) + raw
    if vtype is GGUFValueType.BOOL:
        if value not in (0, 1) or isinstance(value, float):
            raise CannotWrite(f"metadata {key!r}: a BOOL must be True/False, got {value!r}")
        return bytes([int(value)])
    dtype = GGUF_SCALAR_DTYPES[vtype]
    if dtype.kind in "iu":
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise CannotWrite(f"metadata {key!r}: a {vtype.name} must be an integer, got {value!r}")
        info = np.iinfo(dtype)
        if not info.min <= value <= info.max:
            raise CannotWrite(f"metadata {key!r}: {value} does not fit a {vtype.name} ({info.min}..{info.max})")
    elif not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise CannotWrite(f"metadata {key!r}: a {vtype.name} must be a number, got {value!r}")
    try:
        return GGUF_SCALAR_STRUCTS[vtype].pack(value)
    except (OverflowError, struct.error):
        raise CannotWrite(f"metadata {key!r}: {value} does not fit a {vtype.name}") from None


def _encode_items(path: TypePath, value: Any, key: str) -> tuple[int, bytes]:
    """The count and the encoded elements of an array whose element type path is `path`.

    Raises:
        CannotWrite.
    """
    etype = path[0]
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
        raise CannotWrite(f"metadata {key!r}: an ARRAY must be a sequence or a 1-D numpy array, "
                         f"got {type(value).__name__}")
    if etype is GGUFValueType.STRING:
        return len(value), _encode_strings(value, key)
    if etype is GGUFValueType.ARRAY:
        parts = []
        for v in value:
            count, items = _encode_items(path[1:], v, key)
            parts.append(_ARRAY_HEAD.pack(int(path[1]), count) + items)
        return len(value), b"".join(parts)
    return len(value), _encode_numbers(etype, value, key)


def _encode_strings(value: Sequence[str] | np.ndarray, key: str) -> bytes:
    """The elements of a string array: each one's u64 length and UTF-8 bytes.

    A GGUFStrings is already encoded (read from a file, or made so: tiktoken_vocab's merges) and is
    returned as it is. Other sequences are encoded _STRINGS_PER_STEP elements per pass (Llama 3's
    128,256 pieces: 25 ms, and no list of them all as bytes); an element that is not a str or not
    encodable goes to the loop that names it.

    Raises:
        CannotWrite.
    """
    if isinstance(value, GGUFStrings):
        return value.encoded
    out, items, pack = bytearray(), iter(value), U64.pack
    while step := list(islice(items, _STRINGS_PER_STEP)):
        try:
            raw = list(map(str.encode, step))  # TypeError for what is not a str, UnicodeEncodeError for a surrogate
        except (TypeError, UnicodeEncodeError):
            return b"".join([_encode_scalar(GGUFValueType.STRING, v, key) for v in value])  # raises, naming it
        out += b"".join(chain.from_iterable(zip(map(pack, map(len, raw)), raw)))
    return bytes(out)


def _encode_numbers(etype: GGUFValueType, value: Any, key: str) -> bytes:
    """A numeric or bool array as little-endian bytes in one numpy call, after a range check.

    Raises:
        CannotWrite.
    """
    dtype = GGUF_SCALAR_DTYPES[etype]
    if not isinstance(value, np.ndarray) and dtype.kind in "iu" and etype is not GGUFValueType.BOOL:
        # Python ints: numpy would guess float64 for a list mixing 0 and 2**63, so check them exactly
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            raise CannotWrite(f"metadata {key!r}: an array of {etype.name} must hold integers")
        info = np.iinfo(dtype)
        if value and not info.min <= min(value) <= max(value) <= info.max:
            raise CannotWrite(f"metadata {key!r}: values {min(value)}..{max(value)} do not fit an array of "
                             f"{etype.name} ({info.min}..{info.max})")
        return np.array(value, dtype).tobytes()
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise CannotWrite(f"metadata {key!r}: an ARRAY must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return b""
    if etype is GGUFValueType.BOOL:
        ok = arr.dtype.kind == "b" or (arr.dtype.kind in "iu" and bool(np.all((arr == 0) | (arr == 1))))
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        ok = arr.dtype.kind in "iu" and info.min <= int(arr.min()) and int(arr.max()) <= info.max
    else:
        ok = arr.dtype.kind in "iuf"
        if ok and etype is GGUFValueType.FLOAT32:
            finite = arr[np.isfinite(arr)].astype(np.float64)
            ok = not finite.size or float(np.abs(finite).max()) <= float(np.finfo(np.float32).max)
    if not ok:
        raise CannotWrite(f"metadata {key!r}: values of dtype {arr.dtype} (range {arr.min()}..{arr.max()}) "
                         f"do not fit an array of {etype.name}")
    return arr.astype(dtype).tobytes()


def encode_value(vtype: GGUFValueType | TypePath, value: Any, key: str = "value") -> bytes:
    """The bytes of one metadata value (without its type tag); arrays take (ARRAY, element type, ...).

    Raises:
        CannotWrite: the value does not fit the type, naming `key`.
    """
    return b"".join(_value_parts(_type_path(vtype, value, key), value, key))


def _value_parts(path: TypePath, value: Any, key: str) -> list[bytes]:
    """encode_value's bytes in pieces: an array's header apart from its items (a 6 MB merges array is not copied)."""
    if path[0] is not GGUFValueType.ARRAY:
        return [_encode_scalar(path[0], value, key)]
    count, items = _encode_items(path[1:], value, key)
    return [_ARRAY_HEAD.pack(int(path[1]), count), items]


def _metadata_parts(metadata: Metadata, alignment: int) -> tuple[int, list[bytes]]:
    """The number of pairs and the encoded pairs, `general.alignment` (u32) included, in pieces joined once,
    with the rest of the header, by plan_gguf.

    Raises:
        CannotWrite: a bad key, a duplicate, or a value that does not fit its type.
    """
    items = list(metadata.items()) if isinstance(metadata, Mapping) else list(metadata)
    entries = [(k, *tv) for k, tv in items] if isinstance(metadata, Mapping) else items
    parts, seen = [], set()
    for entry in entries:
        if len(entry) != 3:
            raise CannotWrite(f"metadata entries are (key, type, value), got {entry!r:.80}")
        key, vtype, value = entry
        if not isinstance(key, str) or not key or len(key.encode("utf-8", "replace")) >= 1 << 16:
            raise CannotWrite(f"metadata key must be a non-empty str under 65536 UTF-8 bytes, got {key!r:.80}")
        if key in seen:
            raise CannotWrite(f"duplicate metadata key {key!r}")
        seen.add(key)
        path = _type_path(vtype, value, key)
        if key == GGUF_ALIGNMENT_KEY and (path != (GGUFValueType.UINT32,) or value != alignment):
            raise CannotWrite(f"metadata {key!r}: must be UINT32 {alignment} (the plan's alignment), got {vtype!r} {value!r}")
        parts += [_encode_scalar(GGUFValueType.STRING, key, key), U32.pack(int(path[0])), *_value_parts(path, value, key)]
    if GGUF_ALIGNMENT_KEY not in seen:
        parts += [_encode_scalar(GGUFValueType.STRING, GGUF_ALIGNMENT_KEY, GGUF_ALIGNMENT_KEY),
                  U32.pack(int(GGUFValueType.UINT32)), U32.pack(alignment)]
        seen.add(GGUF_ALIGNMENT_KEY)
    return len(seen), parts


def _check_gguf_spec(spec: TensorInfo, seen: set[str]) -> tuple[BlockLayout, bytes]:
    """Validate one spec for a GGUF file; return its block layout and encoded name.

    Raises:
        CannotWrite.
    """
    if GGUF_N_DIMS.problem(len(spec.ne)) is not None:
        raise CannotWrite(f"tensor {spec.name!r}: GGUF stores 1..{MAX_DIMS} dims here, not {len(spec.ne)}")
    if any(not isinstance(n, (int, np.integer)) or GGUF_DIM.problem(n) for n in spec.ne):
        raise CannotWrite(f"tensor {spec.name!r}: every dim must be an integer 0..2**63-1, got {list(spec.ne)}")
    spec_ne = tuple(int(n) for n in spec.ne)
    name = spec.name.encode("utf-8") if isinstance(spec.name, str) else b""
    if not 0 < len(name) <= GGUF_MAX_NAME_LEN:
        raise CannotWrite(f"tensor name must be 1..{GGUF_MAX_NAME_LEN} UTF-8 bytes (llama.cpp's limit), "
                         f"got {len(name)}: {spec.name!r:.70}")
    return check_spec_type(spec, spec_ne, GGUF_BLOCK_GENERATION, seen), name


def plan_gguf(metadata: Metadata, specs: Sequence[TensorInfo], *, alignment: int = DEFAULT_ALIGNMENT) -> Plan:
    """Lay out a whole GGUF v3 file: header, metadata, tensor infos, padding and every data offset.

    `metadata` is (key, type, value) triples, or a mapping key -> (type, value); an array's type is
    (ARRAY, element type) (ARRAY alone for numpy arrays and lists of str). Tensors follow each
    other in `specs` order from data_start, each padded to `alignment`, as llama.cpp requires.
    FileWriter(path, plan) writes it: the prefix, then each tensor's data; holes read as zero.

    Raises:
        CannotWrite: a key, value, name, dims or type that cannot be stored, naming it.
    """
    if not isinstance(alignment, int) or alignment < 8 or alignment & (alignment - 1) or alignment > GGUF_MAX_ALIGNMENT:
        raise CannotWrite(f"alignment must be a power of two, 8 or more and at most {GGUF_MAX_ALIGNMENT} (what "
                          f"readers accept, docs/format.md §11.5), got {alignment!r}")
    n_kv, kv = _metadata_parts(metadata, alignment)
    head, seen, placed = [b"", *kv], set(), []  # head[0]: the header, packed once the tensors are counted
    pos, rel = sum(map(len, head)) + GGUF_HEADER.size, 0
    for spec in specs:
        block, name = _check_gguf_spec(spec, seen)
        ne, nbytes = tuple(int(n) for n in spec.ne), tensor_nbytes(spec.ne, block)
        head.append(U64.pack(len(name)) + name + U32.pack(len(ne)) + _INFO_REST[len(ne)].pack(*ne, int(spec.type), rel))
        placed.append((spec.name, GGMLType(spec.type), ne, rel, nbytes, pos, block))
        pos, rel = pos + len(head[-1]), align_up(rel + nbytes, alignment)
    head[0] = GGUF_HEADER.pack(MAGIC_GGUF, GGUF_WRITE_VERSION, len(placed), n_kv)
    data_start = align_up(pos, alignment)
    prefix = b"".join(chain(head, [bytes(data_start - pos)]))
    tensors = tuple(TensorInfo(n, t, ne, data_start + off, nbytes, at, b) for n, t, ne, off, nbytes, at, b in placed)
    return Plan(GGUFVersion(GGUF_WRITE_VERSION), None, prefix, tensors, (), data_start + rel)
