"""Bounds of the storages in a zip-format .pth against their records: a check torch.load(mmap=True) skips.

With mmap=True, torch maps the whole file and takes each storage as the `numel * itemsize` bytes
starting at its record, without comparing that with the record's size (mmap=False does compare).
A hostile shard whose pickle claims more bytes than its record holds would then read other records
as tensor data, or fault (SIGBUS) past the end of the file. So before torch.load sees a shard, this
module reads the pickle with an unpickler that builds nothing (stdlib only, an allow-list of the
globals a state dict uses), collects every storage's claimed size, and checks it against the
zip directory and the file size.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

from ggmlfmt.errors import FormatError

MAX_PICKLE_BYTES = 256 << 20  # Meta's data.pkl is tens of KB; torch itself reads it into memory whole

# torch.<Name>Storage -> bytes per element (the pickle counts storage sizes in elements)
STORAGE_ITEMSIZE = {
    "HalfStorage": 2, "BFloat16Storage": 2, "FloatStorage": 4, "DoubleStorage": 8, "ByteStorage": 1,
    "CharStorage": 1, "ShortStorage": 2, "IntStorage": 4, "LongStorage": 8, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1,
}
# Globals of a state dict saved by torch.save; each comes back as an inert stand-in.
ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"), ("collections", "OrderedDict"),
}
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (version .. sizes), name length, extra length
_LOCAL_SIG = b"PK\x03\x04"


class _StorageType:
    __slots__ = ("itemsize",)

    def __init__(self, itemsize: int) -> None:
        self.itemsize = itemsize


def _inert(*args: Any, **kwargs: Any) -> None:
    return None


class _StorageScan(pickle.Unpickler):
    """Unpickles nothing real: records (key -> bytes claimed) for every storage a pickle refers to."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__(f)
        self.claims: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_ITEMSIZE:
            return _StorageType(STORAGE_ITEMSIZE[name])
        if module == "torch" and name in ("float16", "bfloat16", "float32", "float64"):
            return name  # dtypes appear as globals in _rebuild_tensor_v3
        if (module, name) in ALLOWED:
            return dict if name == "OrderedDict" else _inert
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not part of a state dict")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int) \
                or isinstance(numel, bool) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage reference {str(pid)[:80]}")
        self.claims[key] = max(self.claims.get(key, 0), numel * stype.itemsize)
        return None


def check_storage_bounds(path: str | os.PathLike[str]) -> None:
    """Check every storage the shard's pickle claims fits inside its own uncompressed record.

    Raises:
        FormatError: not a zip checkpoint, a storage without a record, larger than its record, a
            compressed record, or a record past the end of the file. OSError: the file cannot be read.
    """
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as z, open(path, "rb") as raw:
            pkl = _pickle_entry(z, path)
            claims = _scan(z, pkl, path)
            prefix = pkl.filename[: -len("data.pkl")]
            size = os.fstat(raw.fileno()).st_size
            for key, nbytes in claims.items():
                _check_record(z, raw, f"{prefix}data/{key}", nbytes, size, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error) as e:
        raise FormatError(f"refused to load: not a zip-format PyTorch checkpoint ({e})", path=path) from None


def _pickle_entry(z: zipfile.ZipFile, path: str) -> zipfile.ZipInfo:
    """Raises: FormatError unless there is exactly one data.pkl of bounded size."""
    found = [i for i in z.infolist() if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
    if len(found) != 1:
        raise FormatError(f"refused to load: expected one data.pkl record, found {len(found)}", path=path)
    if found[0].file_size > MAX_PICKLE_BYTES:
        raise FormatError(f"refused to load: data.pkl is {found[0].file_size:,} bytes, more than "
                          f"{MAX_PICKLE_BYTES:,}", path=path)
    return found[0]


def _scan(z: zipfile.ZipFile, pkl: zipfile.ZipInfo, path: str) -> dict[str, int]:
    """Raises: FormatError when the pickle uses anything but a state dict's globals, or is malformed."""
    with z.open(pkl) as f:
        scan = _StorageScan(f)
        try:
            scan.load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError, KeyError,
                RecursionError, MemoryError) as e:
            raise FormatError(f"refused to load: {type(e).__name__}: {str(e)[:200]}", path=path) from None
    return scan.claims


def _check_record(z: zipfile.ZipFile, raw: BinaryIO, name: str, nbytes: int, file_size: int, path: str) -> None:
    """Raises: FormatError when storage record `name` cannot hold `nbytes` inside the file."""
    where = {"path": path, "field": f"record {name!r}"}
    try:
        info = z.getinfo(name)
    except KeyError:
        raise FormatError("refused to load: a storage the pickle refers to has no record", **where) from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise FormatError("refused to load: a storage record is compressed; it cannot be memory-mapped", **where)
    if nbytes > info.file_size:
        raise FormatError(f"refused to load: the pickle claims {nbytes:,} bytes, the record holds "
                          f"{info.file_size:,}", **where)
    raw.seek(info.header_offset)
    sig, name_len, extra_len = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
    if sig != _LOCAL_SIG:
        raise FormatError(f"refused to load: no local zip header at offset {info.header_offset:#x}", **where)
    end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.file_size
    if end > file_size:
        raise FormatError(f"refused to load: the record ends at byte {end:,}, past the end of the file "
                          f"({file_size:,} bytes)", **where)
