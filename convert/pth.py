"""Read PyTorch zip checkpoints (what torch.save writes since 1.6) with numpy alone: no torch, no code run.

The zip records are parsed with struct, every offset and size bounded by the file size; data.pkl is
read by a restricted unpickler that knows an explicit list of globals and builds only inert records;
each tensor becomes a read-only view of one memory map of the whole file (docs/format.md §10).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import reprlib
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ggmlfmt.constants import INT64_MAX, MAX_NAME_LEN
from ggmlfmt.errors import FormatError, shown
from ggmlfmt.layout import product_overflow

# ---------------------------------------------------------------- constants (docs/format.md §10)

# dtype name -> (torch storage class, numpy dtype of the stored bytes, bytes per element); bf16 as raw bits
DTYPES: dict[str, tuple[str, str, int]] = {
    "float16": ("HalfStorage", "<f2", 2),
    "float32": ("FloatStorage", "<f4", 4),
    "bfloat16": ("BFloat16Storage", "<u2", 2),
}
STORAGE_DTYPE = {storage: name for name, (storage, _, _) in DTYPES.items()}

EOCD = struct.Struct("<4sHHHHIIH")  # sig, disk, cd disk, entries here, entries, cd size, cd offset, comment len
EOCD64_LOCATOR = struct.Struct("<4sIQI")  # sig, disk of the zip64 EOCD, its offset, number of disks
EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # sig, size of the rest, made by, needed, disk, cd disk, entries here,
#                                         entries, cd size, cd offset
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # sig, made by, needed, flags, method, time, date, crc, csize,
#                                                 usize, name len, extra len, comment len, disk, int attr,
#                                                 ext attr, local header offset
LOCAL = struct.Struct("<4sHHHHHIIIHH")  # sig, needed, flags, method, time, date, crc, csize, usize, name len,
#                                         extra len
EXTRA_HEADER = struct.Struct("<HH")  # extra field id, its data length
EOCD_SIG, EOCD64_SIG, LOCATOR_SIG = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
CENTRAL_SIG, LOCAL_SIG, DESCRIPTOR_SIG = b"PK\x01\x02", b"PK\x03\x04", b"PK\x07\x08"
ZIP64_EXTRA_ID = 0x0001
ZIP64_MARK32, ZIP64_MARK16 = 0xFFFFFFFF, 0xFFFF  # "the real value is in the zip64 record"
MAX_COMMENT = 0xFFFF  # the EOCD lies within the last EOCD.size + this many bytes
FLAG_ENCRYPTED, FLAG_DESCRIPTOR, FLAG_STRONG_ENCRYPTION = 0x0001, 0x0008, 0x0040
METHOD_STORED = 0
MAX_MEMBERS = 1 << 16  # a 65B LLaMA shard has ~730 records; more is not a checkpoint
MAX_PICKLE_BYTES = 64 << 20  # Meta's data.pkl is tens of KB
MAX_NDIM = 16
PICKLE_NAME = "data.pkl"
# torch.save before 1.6 pickled this number first, in a bare (non-zip) file
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PREFIX = pickle.dumps(LEGACY_MAGIC, protocol=2)[:-1]  # PROTO 2, LONG1 <10 bytes>
DATA_ALIGNMENT = 64  # torch pads each record's data to this (the 'FB' extra field); we write it, never require it

# The opcodes of a protocol-2 pickle of a dict of tensors (what torch.save writes); anything else is refused
# before the unpickler runs. No opcode here builds an object other than through find_class's stand-ins.
ALLOWED_OPCODES = frozenset({
    "PROTO", "STOP", "MARK", "GLOBAL", "REDUCE", "BINPERSID", "BUILD",
    "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_DICT", "SETITEM", "SETITEMS",
    "BININT", "BININT1", "BININT2", "LONG1", "NONE", "NEWTRUE", "NEWFALSE", "BINUNICODE",
})
REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
ORDERED_DICT = ("collections", "OrderedDict")


@dataclass(frozen=True, slots=True)
class PthTensor:
    """One tensor of a checkpoint: where its bytes are in the file, and how to read them."""

    name: str
    dtype: str  # "float16" | "float32" | "bfloat16"
    shape: tuple[int, ...]
    offset: int  # absolute offset in the .pth file of element 0
    nbytes: int

    @property
    def np_dtype(self) -> np.dtype:
        """The numpy dtype of the stored bytes (bf16 as '<u2' bit patterns)."""
        return np.dtype(DTYPES[self.dtype][1])


@dataclass(frozen=True, slots=True)
class _Member:
    """One zip record, from the central directory."""

    name: str
    header_offset: int
    size: int
    crc: int
    flags: int
    zip64: bool
    entry_offset: int  # of its central directory entry, for messages


class Checkpoint:
    """An opened checkpoint: tensor records and one read-only map of the file. A context manager."""

    def __init__(self, path: str, data: np.memmap, tensors: dict[str, PthTensor]) -> None:
        self.path = path
        self.data: np.ndarray = data
        self.tensors = tensors

    def array(self, name: str) -> np.ndarray:
        """Tensor `name` as a read-only zero-copy view, dtype <f2/<f4/<u2 (bf16), PyTorch shape.

        Raises:
            KeyError: no such tensor.
        """
        t = self.tensors[name]
        return self.data[t.offset : t.offset + t.nbytes].view(t.np_dtype).reshape(t.shape)

    def close(self) -> None:
        """Drop this object's reference to the map (views handed out keep it alive until they go)."""
        self.data = np.empty(0, np.uint8)
        self.tensors = {}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a torch.save zip checkpoint: every record, the pickle and every tensor's bounds checked.

    Raises:
        FormatError: not a zip-format checkpoint, or anything in it out of bounds or not allowed
            (names the file, and the offset, record or tensor). OSError: the file cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(len(LEGACY_PREFIX))
    if size < EOCD.size:
        raise _not_a_zip(head, size).with_path(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        tensors = parse_checkpoint(memoryview(data))
    except FormatError as e:
        raise e.with_path(path) from None
    return Checkpoint(path, data, tensors)


def parse_checkpoint(buf: memoryview) -> dict[str, PthTensor]:
    """The tensors of a checkpoint held in `buf`, in state dict order.

    Raises:
        FormatError: as open_checkpoint (without the file name).
    """
    members = read_members(buf)
    pkl = _pickle_member(members)
    prefix = pkl.name[: -len(PICKLE_NAME)]
    _check_byteorder(buf, members, prefix)
    pickled = bytes(_member_bytes(buf, pkl))
    if zlib.crc32(pickled) != pkl.crc:
        raise FormatError(f"CRC-32 {zlib.crc32(pickled):#010x} differs from {pkl.crc:#010x} in the central "
                          "directory", field=f"record {shown(pkl.name)}")
    refs = unpickle_state_dict(pickled, field=f"record {shown(pkl.name)}")
    return _tensors(buf, refs, members, prefix)


# ---------------------------------------------------------------- zip records


def read_members(buf: memoryview) -> dict[str, _Member]:
    """Every record of the zip in `buf`, by name, after checking each against its local header.

    Raises:
        FormatError: no end record, a lying or overlapping directory, compressed or encrypted
            records, duplicate names, a record past the directory.
    """
    eocd_pos = _find_eocd(buf)
    n, cd_size, cd_offset = _directory_bounds(buf, eocd_pos)
    members = _central_entries(buf, cd_offset, cd_size, n)
    end_of_previous = 0
    for m in sorted(members.values(), key=lambda m: m.header_offset):
        if m.header_offset < end_of_previous:
            raise FormatError(f"record {shown(m.name)} starts inside the previous record (which ends at "
                              f"{end_of_previous:#x})", offset=m.header_offset, field="local header")
        end_of_previous = _check_local(buf, m, cd_offset)
    return members


def _find_eocd(buf: memoryview) -> int:
    """Offset of the end-of-central-directory record: the last signature whose comment ends the file.

    Raises:
        FormatError: none (names the legacy torch format or a bare pickle when that is what it is).
    """
    tail_start = max(0, len(buf) - EOCD.size - MAX_COMMENT)
    tail = bytes(buf[tail_start:])
    pos = tail.rfind(EOCD_SIG)
    while pos >= 0:
        if pos + EOCD.size <= len(tail):
            comment_len = struct.unpack_from("<H", tail, pos + 20)[0]
            if pos + EOCD.size + comment_len == len(tail):
                return tail_start + pos
        pos = tail.rfind(EOCD_SIG, 0, pos)
    raise _not_a_zip(bytes(buf[: len(LEGACY_PREFIX)]), len(buf))


def _not_a_zip(head: bytes, size: int) -> FormatError:
    """The error for a file without a zip end record, naming the legacy torch format when it is that."""
    if head == LEGACY_PREFIX:
        return FormatError("legacy (pre-1.6) torch.save format, not a zip archive; re-save it with torch >= 1.6: "
                           "torch.save(torch.load(path), path, _use_new_zipfile_serialization=True)", offset=0,
                           field="magic")
    if head[:1] == b"\x80":
        return FormatError("a bare pickle, not a zip-format PyTorch checkpoint (torch.save >= 1.6 writes a zip)",
                           offset=0, field="magic")
    return FormatError(f"no zip end-of-central-directory record in the last {min(size, EOCD.size + MAX_COMMENT)} "
                       "bytes: truncated, or not a zip-format PyTorch checkpoint", offset=size,
                       field="end of central directory")


def _directory_bounds(buf: memoryview, eocd_pos: int) -> tuple[int, int, int]:
    """(entries, cd size, cd offset) from the EOCD, or the zip64 EOCD when a locator precedes it.

    Raises:
        FormatError: multi-disk, zip64 records out of place, or a directory that does not end where
            the end records begin.
    """
    _, disk, cd_disk, n_here, n, cd_size, cd_offset, _ = EOCD.unpack_from(buf, eocd_pos)
    where = {"offset": eocd_pos, "field": "end of central directory"}
    if disk != 0 or cd_disk != 0 or n_here != n:
        raise FormatError(f"multi-disk archives are not checkpoints (disk {disk}, directory disk {cd_disk})", **where)
    cd_end = eocd_pos
    loc = eocd_pos - EOCD64_LOCATOR.size
    if loc >= 0 and bytes(buf[loc : loc + 4]) == LOCATOR_SIG:
        n, cd_size, cd_offset, cd_end = _zip64_bounds(buf, loc, (n, cd_size, cd_offset))
    if cd_offset + cd_size != cd_end:
        raise FormatError(f"central directory at {cd_offset:#x} of {cd_size} bytes should end at {cd_end:#x}, "
                          "where the end records begin", **where)
    if n > MAX_MEMBERS or n * CENTRAL.size > cd_size:
        raise FormatError(f"{n} records cannot fit in a {cd_size}-byte central directory (at most "
                          f"{min(MAX_MEMBERS, cd_size // CENTRAL.size)})", **where)
    return n, cd_size, cd_offset


def _zip64_bounds(buf: memoryview, loc: int, small: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Raises: FormatError for a zip64 EOCD that is not right before its locator or disagrees with the EOCD."""
    _, disk, eocd64_pos, n_disks = EOCD64_LOCATOR.unpack_from(buf, loc)
    where = {"offset": loc, "field": "zip64 end of central directory locator"}
    if disk != 0 or n_disks != 1:
        raise FormatError(f"multi-disk archives are not checkpoints ({n_disks} disks)", **where)
    if eocd64_pos + EOCD64.size > loc or bytes(buf[eocd64_pos : eocd64_pos + 4]) != EOCD64_SIG:
        raise FormatError(f"expected a zip64 end record at {eocd64_pos:#x}, before the locator", **where)
    sig, rest, _, _, d, cd_d, n_here, n, cd_size, cd_offset = EOCD64.unpack_from(buf, eocd64_pos)
    where = {"offset": eocd64_pos, "field": "zip64 end of central directory"}
    if eocd64_pos + 12 + rest != loc or d != 0 or cd_d != 0 or n_here != n:
        raise FormatError(f"record size {rest} or disks ({d}, {cd_d}) do not fit a one-disk archive whose "
                          f"locator is at {loc:#x}", **where)
    for value, small_value, mark in zip((n, cd_size, cd_offset), small, (ZIP64_MARK16, ZIP64_MARK32, ZIP64_MARK32),
                                        strict=True):
        if small_value not in (value, mark):
            raise FormatError(f"{value} disagrees with {small_value} in the 32-bit end record", **where)
    return n, cd_size, cd_offset, eocd64_pos


def _central_entries(buf: memoryview, cd_offset: int, cd_size: int, n: int) -> dict[str, _Member]:
    """Raises: FormatError for a malformed entry, an unsupported record or a duplicate name."""
    members: dict[str, _Member] = {}
    pos, end = cd_offset, cd_offset + cd_size
    for _ in range(n):
        m, pos = _central_entry(buf, pos, end)
        if m.name in members:
            raise FormatError(f"record name {shown(m.name)} appears twice", offset=m.entry_offset, field="central directory")
        members[m.name] = m
    if pos != end:
        raise FormatError(f"{n} entries end at {pos:#x}, the directory at {end:#x}", offset=pos,
                          field="central directory")
    return members


def _central_entry(buf: memoryview, pos: int, end: int) -> tuple[_Member, int]:
    """One central directory entry at `pos` and the offset after it.

    Raises:
        FormatError: truncated, bad signature, encrypted, compressed, or a bad zip64 extra field.
    """
    where = {"offset": pos, "field": "central directory entry"}
    if pos + CENTRAL.size > end:
        raise FormatError(f"need {CENTRAL.size} bytes, {end - pos} left in the directory", **where)
    (sig, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len, disk, _, _,
     header_offset) = CENTRAL.unpack_from(buf, pos)
    after = pos + CENTRAL.size + name_len + extra_len + comment_len
    if sig != CENTRAL_SIG or after > end:
        raise FormatError(f"expected signature {CENTRAL_SIG!r} and an entry inside the directory, found {sig!r} "
                          f"ending at {after:#x}", **where)
    name = _decode_name(buf, pos + CENTRAL.size, name_len, where)
    extra = bytes(buf[pos + CENTRAL.size + name_len : pos + CENTRAL.size + name_len + extra_len])
    wanted = [v == ZIP64_MARK32 for v in (usize, csize, header_offset)] + [disk == ZIP64_MARK16]
    values = _zip64_extra(extra, wanted, where)
    usize, csize, header_offset, disk = (d if v is None else v for v, d in zip(values, (usize, csize, header_offset,
                                                                                     disk), strict=True))
    where["field"] = f"record {shown(name)}"
    if flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION):
        raise FormatError("record is encrypted", **where)
    if method != METHOD_STORED or csize != usize:
        raise FormatError(f"record is compressed (method {method}, {csize} bytes for {usize}); torch.save stores "
                          "records uncompressed, so they can be memory-mapped", **where)
    if disk != 0:
        raise FormatError(f"record on disk {disk}", **where)
    return _Member(name, header_offset, usize, crc, flags, any(wanted), pos), after


def _decode_name(buf: memoryview, pos: int, n: int, where: dict[str, Any]) -> str:
    """Raises: FormatError for a name that is not UTF-8."""
    try:
        return bytes(buf[pos : pos + n]).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"record name {bytes(buf[pos : pos + min(n, 40)])!r} is not UTF-8", **where) from None


def _zip64_extra(extra: bytes, wanted: list[bool], where: dict[str, Any]) -> list[int | None]:
    """The 64-bit values a zip64 extra field holds for the wanted fields (usize, csize, offset, disk).

    Raises:
        FormatError: a wanted value is missing, or the extra fields run past their length.
    """
    out: list[int | None] = [None] * len(wanted)
    if not any(wanted):
        return out
    for field_id, data in _extra_fields(extra, where):
        if field_id != ZIP64_EXTRA_ID:
            continue
        pos = 0
        for k, want in enumerate(wanted):
            width = 4 if k == 3 else 8
            if want:
                if pos + width > len(data):
                    break
                out[k] = int.from_bytes(data[pos : pos + width], "little")
                pos += width
        break
    if any(w and v is None for w, v in zip(wanted, out, strict=True)):
        raise FormatError("a 32-bit size or offset is 0xffffffff but the zip64 extra field does not hold it", **where)
    return out


def _extra_fields(extra: bytes, where: dict[str, Any]) -> Iterator[tuple[int, bytes]]:
    """(id, data) of each extra field. Raises: FormatError when one runs past the extra area."""
    pos = 0
    while pos < len(extra):
        if pos + EXTRA_HEADER.size > len(extra):
            raise FormatError(f"extra field header at +{pos} runs past the {len(extra)}-byte extra area", **where)
        field_id, n = EXTRA_HEADER.unpack_from(extra, pos)
        pos += EXTRA_HEADER.size
        if pos + n > len(extra):
            raise FormatError(f"extra field {field_id:#06x} of {n} bytes runs past the extra area", **where)
        yield field_id, extra[pos : pos + n]
        pos += n


def _check_local(buf: memoryview, m: _Member, cd_offset: int) -> int:
    """Check record `m`'s local header against its directory entry; return where the record ends.

    Raises:
        FormatError: another name, method or flags, sizes that disagree, or data running into the directory.
    """
    pos = m.header_offset
    where = {"offset": pos, "field": f"local header of {shown(m.name)}"}
    if pos + LOCAL.size > cd_offset:
        raise FormatError(f"need {LOCAL.size} bytes before the central directory at {cd_offset:#x}", **where)
    sig, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = LOCAL.unpack_from(buf, pos)
    data_offset = pos + LOCAL.size + name_len + extra_len
    if sig != LOCAL_SIG or data_offset > cd_offset:
        raise FormatError(f"expected signature {LOCAL_SIG!r} and a header before the directory, found {sig!r}",
                          **where)
    name = bytes(buf[pos + LOCAL.size : pos + LOCAL.size + name_len])
    if name != m.name.encode() or flags != m.flags or method != METHOD_STORED:
        raise FormatError(f"name {name[:60]!r}, flags {flags:#x}, method {method} differ from the central "
                          f"directory's {shown(m.name)}, {m.flags:#x}, {METHOD_STORED}", **where)
    extra = bytes(buf[pos + LOCAL.size + name_len : data_offset])
    local = _local_sizes(extra, crc, csize, usize, where)
    expected = (0, 0, 0) if flags & FLAG_DESCRIPTOR else (m.crc, m.size, m.size)
    if local not in (expected, (m.crc, m.size, m.size)):
        raise FormatError(f"CRC {local[0]:#x}, sizes {local[1]}/{local[2]} differ from the central directory's "
                          f"CRC {m.crc:#x}, size {m.size}", **where)
    end = data_offset + m.size
    if flags & FLAG_DESCRIPTOR:
        end = _check_descriptor(buf, m, end, cd_offset)
    if end > cd_offset:
        raise FormatError(f"{m.size} bytes of data at {data_offset:#x} run into the central directory at "
                          f"{cd_offset:#x}", **where)
    return end


def _local_sizes(extra: bytes, crc: int, csize: int, usize: int, where: dict[str, Any]) -> tuple[int, int, int]:
    """(crc, csize, usize) of a local header, the sizes from its zip64 extra field when marked.

    Raises:
        FormatError: a malformed extra area.
    """
    wanted = [usize == ZIP64_MARK32, csize == ZIP64_MARK32]
    if not any(wanted):
        list(_extra_fields(extra, where))  # still well-formed
        return crc, csize, usize
    # a local zip64 field holds both sizes whenever it is present (APPNOTE 4.5.3)
    values = _zip64_extra(extra, [True, True, False, False], where)
    return crc, int(values[1] or 0), int(values[0] or 0)


def _check_descriptor(buf: memoryview, m: _Member, pos: int, cd_offset: int) -> int:
    """Check the data descriptor after record `m`'s data; return where it ends.

    It is an optional signature, the CRC, then both sizes: 4 bytes each, or 8 (zip64; either is accepted).

    Raises:
        FormatError: missing, or its CRC or sizes differ from the central directory's.
    """
    start = pos + (4 if bytes(buf[pos : pos + 4]) == DESCRIPTOR_SIG else 0)
    where = {"offset": pos, "field": f"data descriptor of {shown(m.name)}"}
    found = None
    for width in (8, 4) if m.zip64 else (4, 8):  # writers differ on when they use 8-byte sizes; both must agree
        end = start + 4 + 2 * width
        if end > cd_offset:
            continue
        values = tuple(int.from_bytes(buf[a : a + n], "little")
                       for a, n in ((start, 4), (start + 4, width), (start + 4 + width, width)))
        if values == (m.crc, m.size, m.size):
            return end
        found = found or values  # the message shows the layout this record should have used
    if found is None:
        raise FormatError(f"need {start + 12 - pos} bytes or more before the central directory at "
                          f"{cd_offset:#x}", **where)
    crc, csize, usize = found
    raise FormatError(f"CRC {crc:#x}, sizes {csize}/{usize} differ from the central directory's CRC "
                      f"{m.crc:#x}, size {m.size}", **where)


def _data_offset(buf: memoryview, m: _Member) -> int:
    """Where record `m`'s data begins (its local header was checked by read_members)."""
    name_len, extra_len = struct.unpack_from("<HH", buf, m.header_offset + LOCAL.size - 4)
    return m.header_offset + LOCAL.size + name_len + extra_len


def _member_bytes(buf: memoryview, m: _Member) -> memoryview:
    start = _data_offset(buf, m)
    return buf[start : start + m.size]


def _pickle_member(members: dict[str, _Member]) -> _Member:
    """Raises: FormatError unless exactly one record is data.pkl or */data.pkl, of bounded size."""
    found = [m for m in members.values() if m.name == PICKLE_NAME or m.name.endswith("/" + PICKLE_NAME)]
    if len(found) != 1:
        names = ", ".join(repr(m.name) for m in found[:3])
        raise FormatError(f"expected one {PICKLE_NAME} record, found {len(found)} {names}".rstrip(),
                          field="central directory")
    if found[0].size > MAX_PICKLE_BYTES:
        raise FormatError(f"{found[0].size:,} bytes, more than {MAX_PICKLE_BYTES:,}", field=f"record {shown(found[0].name)}")
    return found[0]


def _check_byteorder(buf: memoryview, members: dict[str, _Member], prefix: str) -> None:
    """Raises: FormatError when the byteorder record says anything but little-endian."""
    m = members.get(prefix + "byteorder")
    if m is not None and bytes(_member_bytes(buf, m)[:16]) != b"little":
        raise FormatError(f"expected b'little', found {bytes(_member_bytes(buf, m)[:16])!r}; we read "
                          "little-endian data only", field=f"record {shown(m.name)}")


# ---------------------------------------------------------------- the pickle


def _refuse_build(self: object, state: object) -> None:
    """BUILD (set state) on a stand-in: refused, so no record changes after its arguments were checked."""
    raise pickle.UnpicklingError(f"BUILD on {type(self).__name__.lstrip('_')}")


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: str

    __setstate__ = _refuse_build  # frozen slots dataclasses would otherwise get a field-setting one


@dataclass(frozen=True, slots=True)
class _Storage:
    """A ('storage', type, key, location, numel) persistent id, resolved to its record."""

    dtype: str
    key: str
    numel: int

    __setstate__ = _refuse_build


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """What _rebuild_tensor_v2 was asked to build, not yet checked against its storage."""

    storage: _Storage
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    __setstate__ = _refuse_build


class _StateDict(dict):  # type: ignore[type-arg]
    """Stand-in for collections.OrderedDict: a dict that accepts (and drops) the state BUILD gives it.

    model.state_dict() carries a `_metadata` attribute, which pickles as BUILD with a dict.
    """

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"OrderedDict state must be a dict, found {type(state).__name__}")


class _Global:
    """A callable stand-in for an allowed global; BUILD on it is refused (it would set attributes)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    __setstate__ = _refuse_build


def _new_state_dict(*args: object) -> _StateDict:
    if args:
        raise pickle.UnpicklingError("OrderedDict with arguments; torch.save pickles it empty, then SETITEMS")
    return _StateDict()


def _rebuild_tensor_v2(storage: object, storage_offset: object, size: object, stride: object, requires_grad: object,
                       backward_hooks: object, metadata: object = None) -> _TensorRef:
    """Inert stand-in for torch._utils._rebuild_tensor_v2: checks the argument types, builds a record."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor storage must be a persistent storage id, found {type(storage).__name__}")
    if not (_is_int(storage_offset) and _is_int_tuple(size) and _is_int_tuple(stride)):
        raise pickle.UnpicklingError(f"tensor offset, size and stride must be integers and tuples of them, found "
                                     f"{brief(storage_offset)}, {brief(size)}, {brief(stride)}")
    if not isinstance(requires_grad, bool) or backward_hooks != {} or metadata not in (None, {}):
        raise pickle.UnpicklingError("tensor with requires_grad, backward hooks or metadata of another kind")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))  # type: ignore[arg-type]


class _Brief(reprlib.Repr):
    """repr() cut at every level, for values a pickle built: bounded work and length whatever they hold.

    str() would walk all of a value, and a pickle can share: a tuple of two references to the one
    before it, 30 times over, is 150 bytes of pickle and 2**30 leaves. Objects other than the plain
    types and our stand-in dict show as their type name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxtuple, self.maxdict, self.maxstring, self.maxlong, self.maxother = 3, 6, 4, 40, 40, 40

    def repr_instance(self, x: object, level: int) -> str:
        return f"<{type(x).__name__.lstrip('_')}>"

    def repr__StateDict(self, x: dict, level: int) -> str:  # noqa: N802 - reprlib dispatches on the type name
        return self.repr_dict(x, level)


brief = _Brief().repr


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_int_tuple(v: object) -> bool:
    return isinstance(v, tuple) and len(v) <= MAX_NDIM and all(_is_int(x) for x in v)


def _allowed_global(module: str, name: str) -> bool:
    return (module == "torch" and name in STORAGE_DTYPE) or (module, name) in (REBUILD_TENSOR, ORDERED_DICT)


def _global_refused(module: str, name: str, field: str) -> FormatError:
    named = f"{module}.{name}"
    named = named if len(named) <= 80 and named.isprintable() else shown(named)  # a GLOBAL line may be any length
    return FormatError(f"global {named} is not allowed: a checkpoint may name only "
                       f"{'.'.join(REBUILD_TENSOR)}, {'/'.join(f'torch.{s}' for s in STORAGE_DTYPE)} and "
                       f"{'.'.join(ORDERED_DICT)}", field=field)


class _Unpickler(pickle.Unpickler):
    """Knows the globals of a state dict only, each as an inert local stand-in; imports nothing."""

    def __init__(self, data: bytes, field: str) -> None:
        super().__init__(io.BytesIO(data))
        self.field = field
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPE:
            return _StorageType(STORAGE_DTYPE[name])
        if (module, name) == REBUILD_TENSOR:
            return _Global(_rebuild_tensor_v2)
        if (module, name) == ORDERED_DICT:
            return _Global(_new_state_dict)
        raise _global_refused(module, name, self.field)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise FormatError(f"expected a ('storage', type, key, location, numel) persistent id, found "
                              f"{brief(pid)}", field=self.field)
        _, stype, key, location, numel = pid
        if not (isinstance(stype, _StorageType) and isinstance(key, str) and isinstance(location, str)
                and _is_int(numel) and numel >= 0):
            raise FormatError(f"malformed storage id {brief(pid)}", field=self.field)
        storage = _Storage(stype.dtype, key, numel)
        if self.storages.setdefault(key, storage) != storage:
            raise FormatError(f"storage {shown(key)} is referred to as {self.storages[key].dtype} x "
                              f"{self.storages[key].numel} and as {stype.dtype} x {numel}", field=self.field)
        return storage


def check_opcodes(data: bytes, field: str) -> None:
    """Refuse any opcode outside ALLOWED_OPCODES, any global but ours, and memo indices that would make the
    unpickler allocate. The first refused thing in stream order is the one named.

    The C unpickler sizes its memo table by the largest index a PUT names, so a PUT of 2**31 would
    allocate and clear 16 GiB; indices are bounded by the number of opcodes instead.

    Raises:
        FormatError: names the opcode and its position.
    """
    keys = _KeyScan()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # genops decodes a text STRING argument before we can refuse it
            for n_ops, (op, arg, pos) in enumerate(pickletools.genops(data)):
                _check_opcode(op.name, arg, pos, n_ops, field)
                if keys.step(op.name, arg):
                    raise FormatError(f"{op.name} at byte {pos} uses a tuple as a dict key; a state dict's keys "
                                      "are names", field=field)
    except FormatError:
        raise
    except Exception as e:  # genops: ValueError for unknown opcodes or truncated arguments
        raise FormatError(f"malformed pickle: {type(e).__name__}: {str(e)[:160]}", field=field) from None


def _check_opcode(name: str, arg: Any, pos: int, n_ops: int, field: str) -> None:
    """Raises: FormatError for an opcode, a global or a memo index check_opcodes refuses."""
    if name not in ALLOWED_OPCODES:
        raise FormatError(f"pickle opcode {name} at byte {pos} is not one torch.save writes for a state dict",
                          field=field)
    if name == "GLOBAL":
        module, _, attr = str(arg).partition(" ")
        if not _allowed_global(module, attr):
            raise _global_refused(module, attr, field)
    if name.endswith("PUT") and not 0 <= arg <= n_ops:
        raise FormatError(f"memo index {arg} at byte {pos} is larger than the {n_ops} opcodes before it", field=field)


_PUSH_ONE = frozenset({"GLOBAL", "EMPTY_TUPLE", "EMPTY_DICT", "BININT", "BININT1", "BININT2", "LONG1", "NONE",
                       "NEWTRUE", "NEWFALSE", "BINUNICODE"})
_POP = {"REDUCE": 2, "BINPERSID": 1, "BUILD": 2, "STOP": 1, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}  # then push one


class _KeyScan:
    """Follows which stack values of an allowed-opcode pickle are tuples, to refuse a tuple as a dict key.

    SETITEM hashes its key, and hashing a tuple walks all of it: a tuple of two references to the one
    before it, 40 times over, is a 130-byte pickle whose key takes hours to hash (its 2**40 leaves).
    A state dict's keys (and its _metadata's) are names. Only ALLOWED_OPCODES reach here; a
    malformed stack is left to the unpickler to refuse.
    """

    __slots__ = ("stack", "marks", "memo")

    def __init__(self) -> None:
        self.stack: list[bool] = []  # True: a non-empty tuple
        self.marks: list[int] = []
        self.memo: dict[int, bool] = {}

    def step(self, name: str, arg: Any) -> bool:
        """Apply one opcode; True when it is a SETITEM(S) whose key is a tuple."""
        st = self.stack
        if name in _PUSH_ONE:
            st.append(False)
        elif name in _POP:
            del st[max(len(st) - _POP[name], 0) :]
            if name != "STOP":
                st.append(name.startswith("TUPLE"))
        elif name == "MARK":
            self.marks.append(len(st))
        elif name in ("TUPLE", "SETITEMS"):
            start = self.marks.pop() if self.marks else 0
            items = st[start:]
            del st[start:]
            if name == "TUPLE":
                st.append(bool(items))
            return name == "SETITEMS" and any(items[0::2])
        elif name == "SETITEM":
            key = len(st) >= 2 and st[-2]
            del st[-2:]
            return key
        elif name.endswith("PUT"):
            self.memo[arg] = bool(st) and st[-1]
        elif name.endswith("GET"):
            st.append(self.memo.get(arg, False))
        return False


def unpickle_state_dict(data: bytes, field: str = PICKLE_NAME) -> dict[str, _TensorRef]:
    """The name -> tensor reference mapping a checkpoint's pickle holds; nothing outside the stand-ins runs.

    Raises:
        FormatError: a forbidden opcode or global, a malformed pickle, or not a dict of str -> tensor.
    """
    check_opcodes(data, field)
    try:
        obj = _Unpickler(data, field).load()
    except FormatError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, TypeError from a stand-in's signature, ...
        raise FormatError(f"malformed pickle: {type(e).__name__}: {str(e)[:160]}", field=field) from None
    if not isinstance(obj, dict):
        raise FormatError(f"expected a state dict (name -> tensor), found {type(obj).__name__}", field=field)
    for name, value in obj.items():
        if not isinstance(name, str):
            raise FormatError(f"expected tensor names, found key {brief(name)}", field=field)  # (brief: no str()
            #                                              of a deeply nested or shared tuple: it would recurse)
        if len(name) > MAX_NAME_LEN:  # no output format stores it, and every later message would quote it
            raise FormatError(f"expected a name of at most {MAX_NAME_LEN} characters, found {len(name)}",
                              field=f"tensor {shown(name)}")
        if not isinstance(value, _TensorRef):
            raise FormatError(f"expected a tensor, found {type(value).__name__}", field=f"tensor {shown(name)}")
    return dict(obj)


# ---------------------------------------------------------------- tensors


def _tensors(buf: memoryview, refs: dict[str, _TensorRef], members: dict[str, _Member],
             prefix: str) -> dict[str, PthTensor]:
    """Raises: FormatError for a storage without a record or too large for it, or a tensor outside its storage."""
    out = {}
    for name, ref in refs.items():
        s = ref.storage
        m = members.get(f"{prefix}data/{s.key}")
        where = {"field": f"tensor {shown(name)}"}
        if m is None:
            raise FormatError(f"storage {shown(s.key)} has no record {shown(prefix + 'data/' + s.key)}", **where)
        itemsize = DTYPES[s.dtype][2]
        if s.numel * itemsize > m.size:
            raise FormatError(f"storage {shown(s.key)} claims {s.numel:,} x {itemsize} bytes, its record "
                              f"{shown(m.name)} holds {m.size:,}", **where)
        start = tensor_extent(ref, name)
        numel = _numel(ref.size)
        out[name] = PthTensor(name, s.dtype, ref.size, _data_offset(buf, m) + start * itemsize, numel * itemsize)
    return out


def tensor_extent(ref: _TensorRef, name: str) -> int:
    """The element offset of a contiguous tensor inside its storage, after checking it fits.

    Raises:
        FormatError: a negative size or stride, more dimensions than sizes, elements past the
            storage, or a non-contiguous layout.
    """
    where = {"field": f"tensor {shown(name)}"}
    size, stride, numel = ref.size, ref.stride, ref.storage.numel
    if (len(size) != len(stride) or any(not 0 <= n <= INT64_MAX for n in (*size, *stride, ref.storage_offset))):
        raise FormatError(f"size {brief(size)}, stride {brief(stride)}, offset {brief(ref.storage_offset)}: expected "
                          "values 0..2**63-1, one stride per dimension", **where)
    if ref.storage_offset > numel:
        raise FormatError(f"storage offset {ref.storage_offset:,} is past the {numel:,} elements of storage "
                          f"{shown(ref.storage.key)}", **where)
    if (hit := product_overflow(size, DTYPES[ref.storage.dtype][2])) is not None:  # before a zero size returns
        raise FormatError(f"size {brief(size)}: the sizes up to size[{hit[0]}] (zeros skipped) make {hit[1]} bytes, "
                          "above 2**63-1", **where)
    if 0 in size:
        return ref.storage_offset
    last = ref.storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= numel:
        raise FormatError(f"size {list(size)}, stride {list(stride)} from offset {ref.storage_offset:,} reach "
                          f"element {last:,} of a {numel:,}-element storage {shown(ref.storage.key)}", **where)
    if not _contiguous(size, stride):
        raise FormatError(f"stride {list(stride)} for size {list(size)} is not contiguous; re-save the "
                          "checkpoint with .contiguous() tensors", **where)
    return ref.storage_offset


def _contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """C order, as torch's is_contiguous sees it: the stride of a dimension of size 1 does not matter."""
    expected = 1
    for n, s in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _numel(size: tuple[int, ...]) -> int:
    out = 1
    for n in size:
        out *= n
    return out
