"""Read PyTorch zip checkpoints (what torch.save writes since 1.6) with numpy alone: no torch, no code run.

The standard library's zipfile lists the records (after a cap on the directory it reads); each
record's local header, size and place are then checked against the file: inside it, before the
directory, not overlapping, STORED. data.pkl is read by a restricted unpickler that knows an explicit
list of globals and builds only inert records; each tensor becomes a read-only view of one memory map
of the whole file (docs/format.md §10).
"""

from __future__ import annotations

import errno
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ggmlfmt.constants import INT64_MAX, MAX_NAME_LEN
from ggmlfmt.errors import BadLayout, BadMagic, BadValue, FormatError, Truncated, UnsupportedVersion, shown
from ggmlfmt.layout import product_overflow

# ---------------------------------------------------------------- constants (docs/format.md §10)

# dtype name -> (torch storage class, numpy dtype of the stored bytes); bf16 as its raw bits
DTYPES: dict[str, tuple[str, np.dtype]] = {
    "float16": ("HalfStorage", np.dtype("<f2")),
    "float32": ("FloatStorage", np.dtype("<f4")),
    "bfloat16": ("BFloat16Storage", np.dtype("<u2")),
}
STORAGE_DTYPE = {storage: name for name, (storage, _) in DTYPES.items()}

LOCAL = struct.Struct("<4sHHHHHIIIHH")  # sig, needed, flags, method, time, date, crc, csize, usize, name len,
#                                         extra len
EXTRA_HEADER = struct.Struct("<HH")  # extra field id, its data length
DESCRIPTORS = (struct.Struct("<III"), struct.Struct("<IQQ"))  # crc, csize, usize: 32-bit sizes, or zip64's
LOCAL_SIG, DESCRIPTOR_SIG = b"PK\x03\x04", b"PK\x07\x08"
MIN_ZIP = 22  # an empty zip is its end-of-central-directory record
ZIP64_EXTRA_ID, ZIP64_MARK32 = 0x0001, 0xFFFFFFFF  # the mark: "the real value is in the zip64 extra field"
FLAG_ENCRYPTED, FLAG_DESCRIPTOR, FLAG_STRONG_ENCRYPTION, FLAG_UTF8 = 0x0001, 0x0008, 0x0040, 0x0800
METHOD_STORED = 0
MAX_MEMBERS = 1 << 16  # a 65B LLaMA shard has ~730 records; more is not a checkpoint
# zipfile reads the whole central directory, sized by a field of the file, in one read() and keeps an object
# per entry (~10 bytes of memory per directory byte): so that read is refused above this before a byte is
# copied. A 65B shard's directory is ~70 KB; 4 MiB holds 40,000 entries of 100 bytes.
MAX_DIRECTORY_BYTES = 4 << 20
MAX_PICKLE_BYTES = 64 << 20  # Meta's data.pkl is tens of KB
MAX_NDIM = 16
PICKLE_NAME = "data.pkl"
# torch.save before 1.6 pickled this number first, in a bare (non-zip) file
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PREFIX = pickle.dumps(LEGACY_MAGIC, protocol=2)[:-1]  # PROTO 2, LONG1 <10 bytes>

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
        return view_dtype(self.dtype)


def view_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a checkpoint dtype's bytes are viewed as (bfloat16 as its raw 16 bits)."""
    return DTYPES[dtype][1]


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
    if os.path.getsize(path) == 0:  # (numpy cannot map an empty file)
        raise _not_a_zip(b"", 0).with_path(path)
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
    pickles = [n for n in members if n == PICKLE_NAME or n.endswith("/" + PICKLE_NAME)]
    if len(pickles) != 1:
        raise BadLayout(f"expected one {PICKLE_NAME} record, found {len(pickles)} "
                        f"{', '.join(map(shown, pickles[:3]))}".rstrip(), field="central directory")
    prefix, field = pickles[0][: -len(PICKLE_NAME)], f"record {shown(pickles[0])}"
    if (order := members.get(prefix + "byteorder")) and (found := bytes(_data(buf, order)[:16])) != b"little":
        raise UnsupportedVersion(f"expected b'little', found {found!r}; we read little-endian data only",
                                 field=f"record {shown(prefix + 'byteorder')}")
    info = members[pickles[0]][1]
    if info.file_size > MAX_PICKLE_BYTES:
        raise BadValue(f"{info.file_size:,} bytes, more than {MAX_PICKLE_BYTES:,}", field=field)
    pickled = bytes(_data(buf, members[pickles[0]]))
    if zlib.crc32(pickled) != info.CRC:
        raise BadValue(f"CRC-32 {zlib.crc32(pickled):#010x} differs from {info.CRC:#010x} in the central directory",
                       field=field)
    return {name: _tensor(name, ref, members, prefix) for name, ref in unpickle_state_dict(pickled, field).items()}


# ---------------------------------------------------------------- zip records


class _Window:
    """The seek/tell/read zipfile needs, over a buffer: nothing copied but what is read, no read above the cap.

    zipfile reads the end records (at most 64 KiB + 22 bytes from the end), then the central directory.
    """

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos, self.read_at = buf, 0, 0  # read_at: where the last read began, for messages

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = offset + (0, self.pos, len(self.buf))[whence]
        if pos < 0:  # zipfile's cue that the file is too short for the record it looks for
            raise OSError(errno.EINVAL, "seek before the start of the file")
        self.pos = pos
        return pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        """Raises: BadValue for a read of more than MAX_DIRECTORY_BYTES (within the file)."""
        self.read_at = self.pos
        end = len(self.buf) if n < 0 else min(self.pos + n, len(self.buf))
        if end - self.pos > MAX_DIRECTORY_BYTES:
            raise BadValue(f"{n:,} bytes from its end record, more than {MAX_DIRECTORY_BYTES:,}", offset=self.pos,
                           field="central directory")
        out = bytes(self.buf[self.pos : end])
        self.pos += len(out)
        return out


def read_members(buf: memoryview) -> dict[str, tuple[int, zipfile.ZipInfo]]:
    """Every record of the zip in `buf` in header order: name -> (offset of its data, its directory entry), each
    checked against the file (_check_record).

    Raises:
        FormatError: no end record, a malformed or oversized directory, or a record _check_record refuses.
    """
    window = _Window(buf)
    try:
        with zipfile.ZipFile(window) as z:  # type: ignore[arg-type]  # reads the end records and the directory
            infos, directory = z.infolist(), z.start_dir
    except FormatError:
        raise
    except zipfile.BadZipFile as e:
        if str(e) == "File is not a zip file":  # no end record
            raise _not_a_zip(bytes(buf[: len(LEGACY_PREFIX)]), len(buf)) from None
        raise BadValue(str(e)[:160], offset=window.read_at, field="central directory") from None
    except Exception as e:  # NotImplementedError (version), UnicodeDecodeError (a UTF-8 name), ...
        raise BadValue(f"{type(e).__name__}: {str(e)[:160]}", offset=window.read_at,
                       field="central directory") from None
    if len(infos) > MAX_MEMBERS:
        raise BadValue(f"{len(infos)} records, more than {MAX_MEMBERS}", offset=directory, field="central directory")
    members: dict[str, tuple[int, zipfile.ZipInfo]] = {}
    end = 0  # of the previous record
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.orig_filename in members:
            raise BadLayout(f"record name {shown(info.orig_filename)} appears twice", offset=info.header_offset,
                            field="central directory")
        data, end = _check_record(buf, info, directory, end)
        members[info.orig_filename] = (data, info)
    return members


def _not_a_zip(head: bytes, size: int) -> FormatError:
    """The error for a file without a zip end record, naming the legacy torch format when it is that."""
    if head == LEGACY_PREFIX:
        return UnsupportedVersion("legacy (pre-1.6) torch.save format, not a zip archive; re-save it with torch "
                                  ">= 1.6: torch.save(torch.load(path), path, _use_new_zipfile_serialization=True)",
                                  offset=0, field="magic")
    if head[:1] == b"\x80":
        return BadMagic("a bare pickle, not a zip-format PyTorch checkpoint (torch.save >= 1.6 writes a zip)",
                        offset=0, field="magic")
    return BadMagic(f"no zip end-of-central-directory record in the last {min(size, MIN_ZIP + 0xFFFF)} bytes: "
                    "truncated, or not a zip-format PyTorch checkpoint", offset=size, field="end of central directory")


def _check_record(buf: memoryview, info: zipfile.ZipInfo, directory: int, previous_end: int) -> tuple[int, int]:
    """Check one record, in header order, against its directory entry and the file; return where its data
    begins and where the record ends.

    zipfile checks none of this when listing: its entry must be neither encrypted nor compressed; its local
    header (which zipfile reads only to extract) must lie after the previous record, repeat the entry's
    name, flags and method, and carry its CRC and sizes (or, with flag bit 3, zeros and a data
    descriptor after the data that carries them); header, data and descriptor end before the directory.

    Raises:
        FormatError: names the record and the offset of its local header (or descriptor).
    """
    pos, size, name = info.header_offset, info.file_size, info.orig_filename
    where = {"offset": pos, "field": f"record {shown(name)}"}
    if info.flag_bits & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION):
        raise BadValue("record is encrypted", **where)
    if info.compress_type != METHOD_STORED or info.compress_size != size:
        raise BadValue(f"record is compressed (method {info.compress_type}, {info.compress_size} bytes for "
                       f"{size}); torch.save stores records uncompressed, so they can be memory-mapped", **where)
    if pos < previous_end:
        raise BadLayout(f"record {shown(name)} starts inside the previous record (which ends at {previous_end:#x})",
                        offset=pos, field="local header")
    where["field"] = f"local header of {shown(name)}"
    if not 0 <= pos <= directory - LOCAL.size:
        raise Truncated(f"need {LOCAL.size} bytes before the central directory at {directory:#x}", **where)
    sig, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = LOCAL.unpack_from(buf, pos)
    data = pos + LOCAL.size + name_len + extra_len
    if sig != LOCAL_SIG or data > directory:
        raise BadValue(f"expected signature {LOCAL_SIG!r} and data before the directory at {directory:#x}, found "
                       f"{sig!r} and {data:#x}", **where)
    raw_name = bytes(buf[pos + LOCAL.size : pos + LOCAL.size + name_len])
    if (raw_name, flags, method) != (name.encode("utf-8" if info.flag_bits & FLAG_UTF8 else "cp437"), info.flag_bits,
                                     METHOD_STORED):  # (the encoding zipfile decoded the name with)
        raise BadValue(f"name {raw_name[:60]!r}, flags {flags:#x}, method {method} differ from the central directory's "
                       f"{shown(name)}, {info.flag_bits:#x}, {METHOD_STORED}", **where)
    if ZIP64_MARK32 in (csize, usize):
        usize, csize = _zip64_sizes(bytes(buf[pos + LOCAL.size + name_len : data]), where)
    want = (info.CRC, size, size)
    if (crc, csize, usize) not in (want, (0, 0, 0) if flags & FLAG_DESCRIPTOR else want):
        raise _sizes_differ((crc, csize, usize), want, where)
    end = _descriptor_end(buf, data + size, want, directory, name) if flags & FLAG_DESCRIPTOR else data + size
    if end > directory:
        raise Truncated(f"{size} bytes of data at {data:#x} run into the central directory at {directory:#x}", **where)
    return data, end


def _sizes_differ(found: tuple[int, ...], want: tuple[int, ...], where: dict[str, Any]) -> BadValue:
    return BadValue("CRC {:#x}, sizes {}/{} differ from the central directory's CRC {:#x}, size {}".format(
        *found, *want[:2]), **where)


def _zip64_sizes(extra: bytes, where: dict[str, Any]) -> tuple[int, int]:
    """(usize, csize) from a local header's zip64 extra field, which holds both (APPNOTE 4.5.3).

    Raises:
        BadValue: no such field, or one too short.
    """
    pos = 0
    while pos + EXTRA_HEADER.size <= len(extra):
        field_id, n = EXTRA_HEADER.unpack_from(extra, pos)
        if field_id == ZIP64_EXTRA_ID and n >= 16 and pos + EXTRA_HEADER.size + 16 <= len(extra):
            return struct.unpack_from("<QQ", extra, pos + EXTRA_HEADER.size)
        pos += EXTRA_HEADER.size + n
    raise BadValue("a 32-bit size is 0xffffffff but no zip64 extra field holds it", **where)


def _descriptor_end(buf: memoryview, pos: int, want: tuple[int, int, int], directory: int, name: str) -> int:
    """Where the data descriptor at `pos` ends, after checking it carries `want` (the CRC and both sizes).

    It is an optional signature, the CRC, then both sizes: 4 bytes each, or 8 (zip64; either is accepted).

    Raises:
        FormatError: missing, or its CRC or sizes differ from the central directory's.
    """
    where = {"offset": pos, "field": f"data descriptor of {shown(name)}"}
    start = pos + 4 * (bytes(buf[pos : pos + 4]) == DESCRIPTOR_SIG)
    found = []
    for layout in DESCRIPTORS:  # writers differ on when they use 8-byte sizes
        if start + layout.size <= directory:
            if (values := layout.unpack_from(buf, start)) == want:
                return start + layout.size
            found.append(values)  # the message shows the 4-byte reading when it fits
    if not found:
        raise Truncated(f"need {start + DESCRIPTORS[0].size - pos} bytes or more before the central directory at "
                        f"{directory:#x}", **where)
    raise _sizes_differ(found[0], want, where)


def _data(buf: memoryview, member: tuple[int, zipfile.ZipInfo]) -> memoryview:
    return buf[member[0] : member[0] + member[1].file_size]


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


def _stand_in(module: str, name: str) -> Any:
    """The inert stand-in for an allowed global; None for any other."""
    if module == "torch" and name in STORAGE_DTYPE:
        return _StorageType(STORAGE_DTYPE[name])
    return {REBUILD_TENSOR: _Global(_rebuild_tensor_v2), ORDERED_DICT: _Global(_new_state_dict)}.get((module, name))


def _global_refused(module: str, name: str, field: str) -> FormatError:
    named = f"{module}.{name}"
    named = named if len(named) <= 80 and named.isprintable() else shown(named)  # a GLOBAL line may be any length
    return BadValue(f"global {named} is not allowed: a checkpoint may name only "
                    f"{'.'.join(REBUILD_TENSOR)}, {'/'.join(f'torch.{s}' for s in STORAGE_DTYPE)} and "
                    f"{'.'.join(ORDERED_DICT)}", field=field)


class _Unpickler(pickle.Unpickler):
    """Knows the globals of a state dict only, each as an inert local stand-in; imports nothing."""

    def __init__(self, data: bytes, field: str) -> None:
        super().__init__(io.BytesIO(data))
        self.field = field
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (found := _stand_in(module, name)) is None:
            raise _global_refused(module, name, self.field)
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise BadValue(f"expected a ('storage', type, key, location, numel) persistent id, found "
                           f"{brief(pid)}", field=self.field)
        _, stype, key, location, numel = pid
        if not (isinstance(stype, _StorageType) and isinstance(key, str) and isinstance(location, str)
                and _is_int(numel) and numel >= 0):
            raise BadValue(f"malformed storage id {brief(pid)}", field=self.field)
        storage = _Storage(stype.dtype, key, numel)
        if self.storages.setdefault(key, storage) != storage:
            raise BadValue(f"storage {shown(key)} is referred to as {self.storages[key].dtype} x "
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
                if op.name not in ALLOWED_OPCODES:
                    raise BadValue(f"pickle opcode {op.name} at byte {pos} is not one torch.save writes for a state "
                                   "dict", field=field)
                if op.name == "GLOBAL":
                    module, _, attr = str(arg).partition(" ")
                    if _stand_in(module, attr) is None:
                        raise _global_refused(module, attr, field)
                if op.name.endswith("PUT") and not 0 <= arg <= n_ops:
                    raise BadValue(f"memo index {arg} at byte {pos} is larger than the {n_ops} opcodes before it",
                                   field=field)
                if keys.step(op.name, arg):
                    raise BadValue(f"{op.name} at byte {pos} uses a tuple as a dict key; a state dict's keys "
                                   "are names", field=field)
    except FormatError:
        raise
    except Exception as e:  # genops: ValueError for unknown opcodes or truncated arguments
        raise BadValue(f"malformed pickle: {type(e).__name__}: {str(e)[:160]}", field=field) from None


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
        raise BadValue(f"malformed pickle: {type(e).__name__}: {str(e)[:160]}", field=field) from None
    if not isinstance(obj, dict):
        raise BadValue(f"expected a state dict (name -> tensor), found {type(obj).__name__}", field=field)
    for name, value in obj.items():
        if not isinstance(name, str):
            raise BadValue(f"expected tensor names, found key {brief(name)}", field=field)  # (brief: no str()
            #                                              of a deeply nested or shared tuple: it would recurse)
        if len(name) > MAX_NAME_LEN:  # no output format stores it, and every later message would quote it
            raise BadValue(f"expected a name of at most {MAX_NAME_LEN} characters, found {len(name)}",
                           field=f"tensor {shown(name)}")
        if not isinstance(value, _TensorRef):
            raise BadValue(f"expected a tensor, found {type(value).__name__}", field=f"tensor {shown(name)}")
    return dict(obj)


# ---------------------------------------------------------------- tensors


def _tensor(name: str, ref: _TensorRef, members: dict[str, tuple[int, zipfile.ZipInfo]], prefix: str) -> PthTensor:
    """Where tensor `name` lies in the file, after checking its storage's record holds it and it is contiguous.

    Raises:
        FormatError: a storage without a record or larger than it; a negative size or stride, more
            dimensions than strides, elements past the storage, or a non-contiguous layout.
    """
    where = {"field": f"tensor {shown(name)}"}
    s, size, stride, start = ref.storage, ref.size, ref.stride, ref.storage_offset
    record = f"{prefix}data/{s.key}"
    if record not in members:
        raise BadLayout(f"storage {shown(s.key)} has no record {shown(record)}", **where)
    offset, info = members[record]
    itemsize = view_dtype(s.dtype).itemsize
    if s.numel * itemsize > info.file_size:
        raise Truncated(f"storage {shown(s.key)} claims {s.numel:,} x {itemsize} bytes, its record {shown(record)} "
                        f"holds {info.file_size:,}", **where)
    if len(size) != len(stride) or any(not 0 <= n <= INT64_MAX for n in (*size, *stride, start)):
        raise BadValue(f"size {brief(size)}, stride {brief(stride)}, offset {brief(start)}: expected values "
                       "0..2**63-1, one stride per dimension", **where)
    if start > s.numel:
        raise BadLayout(f"storage offset {start:,} is past the {s.numel:,} elements of storage {shown(s.key)}", **where)
    if (hit := product_overflow(size, itemsize)) is not None:  # before a zero size skips the checks below
        raise BadValue(f"size {brief(size)}: the sizes up to size[{hit[0]}] (zeros skipped) make {hit[1]} bytes, "
                       "above 2**63-1", **where)
    if 0 not in size:
        last = start + sum((n - 1) * k for n, k in zip(size, stride, strict=True))
        if last >= s.numel:
            raise BadLayout(f"size {list(size)}, stride {list(stride)} from offset {start:,} reach element {last:,} "
                            f"of a {s.numel:,}-element storage {shown(s.key)}", **where)
        if not _contiguous(size, stride):
            raise BadLayout(f"stride {list(stride)} for size {list(size)} is not contiguous; re-save the "
                            "checkpoint with .contiguous() tensors", **where)
    return PthTensor(name, s.dtype, size, offset + start * itemsize, math.prod(size) * itemsize)


def _contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """C order, as torch's is_contiguous sees it: the stride of a dimension of size 1 does not matter."""
    expected = 1
    for n, s in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True
