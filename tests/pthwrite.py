"""Write PyTorch zip checkpoints without torch: what torch.save(dict of tensors) writes (docs/format.md §10.6).

A test fixture (for the tests, the benchmarks, and the demo's example files in convert/example/, written
once): `torch.load(weights_only=True)` reads these files back exactly, and so does convert.pth. Records are STORED with their data 64-byte aligned by an 'FB'
padding extra field, as torch does; sizes and CRCs sit in the local headers (torch puts them in data
descriptors instead; both are valid zip).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt


# The zip records (APPNOTE 4.3.7, 4.3.12, 4.3.14-16), restated here: tests/test_pth.py reads what this writes
# with convert.pth, torch and zipfile, so it shares no table with the reader.
LOCAL = struct.Struct("<4sHHHHHIIIHH")  # sig, needed, flags, method, time, date, crc, csize, usize, name/extra len
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # sig, made by, needed, flags, method, time, date, crc, csize,
#                                                 usize, name/extra/comment len, disk, int/ext attr, offset
EOCD = struct.Struct("<4sHHHHIIH")  # sig, disk, cd disk, entries here, entries, cd size, cd offset, comment len
EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # sig, size of the rest, made by, needed, disks, entries, cd size/offset
EOCD64_LOCATOR = struct.Struct("<4sIQI")  # sig, disk of the zip64 EOCD, its offset, number of disks
EXTRA_HEADER = struct.Struct("<HH")  # extra field id, its data length
LOCAL_SIG, CENTRAL_SIG, EOCD_SIG = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
EOCD64_SIG, LOCATOR_SIG = b"PK\x06\x06", b"PK\x06\x07"
ZIP64_EXTRA_ID, ZIP64_MARK16, ZIP64_MARK32 = 0x0001, 0xFFFF, 0xFFFFFFFF
DATA_ALIGNMENT = 64  # torch pads each record's data to this
# dtype -> (torch storage class, numpy dtype of the stored bytes)
DTYPES = {"float16": ("HalfStorage", "<f2"), "float32": ("FloatStorage", "<f4"), "bfloat16": ("BFloat16Storage", "<u2")}
REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
ORDERED_DICT = ("collections", "OrderedDict")

PADDING_EXTRA_ID = 0x4246  # b"FB": torch's alignment padding, filled with b"Z"
ZIP_VERSION, ZIP64_VERSION = 20, 45  # "version needed to extract": plain, zip64
CRC_CHUNK = 64 << 20
# records torch.save writes besides the pickle and the storages, in its order
FORMAT_RECORDS_BEFORE = ((".format_version", b"1"), (".storage_alignment", str(DATA_ALIGNMENT).encode()),
                         ("byteorder", b"little"))
VERSION_RECORD = ("version", b"3\n")


@dataclass(frozen=True, slots=True)
class BF16:
    """A bfloat16 tensor for save_checkpoint, as its uint16 bit patterns (numpy has no bfloat16)."""

    bits: npt.NDArray[np.uint16]


def f32_to_bf16(a: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """float32 -> bfloat16 bit patterns, round to nearest even, as torch; NaN -> 0x7fc0.

    (torch's scalar cast gives 0x7fc0 for NaN, its vectorised one 0xffff; the fixtures' writers use this.)
    """
    bits = np.ascontiguousarray(a, dtype="<f4").view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    rounded[np.isnan(a)] = 0x7FC0
    return rounded


def save_checkpoint(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray | BF16], *,
                    zip64_threshold: int = ZIP64_MARK32) -> None:
    """Write `tensors` (f16, f32 arrays or BF16) as torch.save of an ordered dict would.

    zip64_threshold: records whose size or offset reach it get zip64 extra fields (tests lower it).

    Raises:
        ValueError: an array of another dtype (checked before the file is created). OSError: the file cannot be written.
    """
    target = Path(path)
    prefix = target.stem  # torch names the archive's top directory after the file, less its extension
    arrays = {name: _as_stored(name, a) for name, a in tensors.items()}
    with open(target, "wb") as f:
        _write_archive(f, prefix or "archive", arrays, zip64_threshold)


def _as_stored(name: str, a: np.ndarray | BF16) -> tuple[str, np.ndarray]:
    """(dtype name, C-contiguous little-endian array). Raises: ValueError for another dtype."""
    if isinstance(a, BF16):
        return "bfloat16", np.asarray(a.bits).astype("<u2", order="C", copy=False)
    for dtype, (_, np_dtype) in DTYPES.items():
        if dtype != "bfloat16" and a.dtype.kind == "f" and a.dtype.itemsize == np.dtype(np_dtype).itemsize:
            # either byte order in, little-endian out; astype, not ascontiguousarray, which makes 0-d 1-d
            return dtype, a.astype(np_dtype, order="C", copy=False)
    raise ValueError(f"tensor {name!r}: expected float16 or float32 (or BF16 bits), found {a.dtype}")


def _write_archive(f: BinaryIO, prefix: str, arrays: dict[str, tuple[str, np.ndarray]], zip64_at: int) -> None:
    pickled = state_dict_pickle({name: (dtype, a.shape) for name, (dtype, a) in arrays.items()})
    records: list[tuple[str, bytes | np.ndarray]] = [("data.pkl", pickled), *FORMAT_RECORDS_BEFORE]
    records += [(f"data/{k}", a) for k, (_, a) in enumerate(arrays.values())]
    serial = str(int.from_bytes(hashlib.sha256(pickled).digest()[:16], "little")).zfill(40)[:40]
    records += [VERSION_RECORD, (".data/serialization_id", serial.encode())]
    central = [_write_record(f, f"{prefix}/{name}", data, zip64_at) for name, data in records]
    cd_offset = f.tell()
    for entry in central:
        f.write(entry)
    _write_end_records(f, len(central), f.tell() - cd_offset, cd_offset)


def _write_record(f: BinaryIO, name: str, data: bytes | np.ndarray, zip64_at: int) -> bytes:
    """Write one STORED record (local header, padding, data); return its central directory entry."""
    view = memoryview(data.reshape(-1).view(np.uint8)) if isinstance(data, np.ndarray) else memoryview(data)
    size, offset, raw_name = len(view), f.tell(), name.encode()
    crc = 0
    for start in range(0, size, CRC_CHUNK):
        crc = zlib.crc32(view[start : start + CRC_CHUNK], crc)
    zip64 = size >= zip64_at or offset >= zip64_at
    local_extra = struct.pack("<HHQQ", ZIP64_EXTRA_ID, 16, size, size) if zip64 else b""
    unpadded = offset + LOCAL.size + len(raw_name) + len(local_extra) + EXTRA_HEADER.size
    pad = -unpadded % DATA_ALIGNMENT
    local_extra += EXTRA_HEADER.pack(PADDING_EXTRA_ID, pad) + b"Z" * pad
    small = ZIP64_MARK32 if zip64 else size
    version = ZIP64_VERSION if zip64 else ZIP_VERSION
    f.write(LOCAL.pack(LOCAL_SIG, version, 0, 0, 0, 0, crc, small, small, len(raw_name), len(local_extra)))
    f.write(raw_name + local_extra)
    f.write(view)
    central_extra = struct.pack("<HHQQQ", ZIP64_EXTRA_ID, 24, size, size, offset) if zip64 else b""
    return CENTRAL.pack(CENTRAL_SIG, version, version, 0, 0, 0, 0, crc, small, small, len(raw_name),
                        len(central_extra), 0, 0, 0, 0, ZIP64_MARK32 if zip64 else offset) + raw_name + central_extra


def _write_end_records(f: BinaryIO, n: int, cd_size: int, cd_offset: int) -> None:
    """zip64 end record and locator (torch writes them always), then the classic end record."""
    eocd64_offset = f.tell()
    f.write(EOCD64.pack(EOCD64_SIG, EOCD64.size - 12, ZIP64_VERSION, ZIP64_VERSION, 0, 0, n, n, cd_size, cd_offset))
    f.write(EOCD64_LOCATOR.pack(LOCATOR_SIG, 0, eocd64_offset, 1))
    n16 = n if n < ZIP64_MARK16 else ZIP64_MARK16
    f.write(EOCD.pack(EOCD_SIG, 0, 0, n16, n16, min(cd_size, ZIP64_MARK32), min(cd_offset, ZIP64_MARK32), 0))


# ---------------------------------------------------------------- the pickle, opcode by opcode (protocol 2)


def state_dict_pickle(tensors: Mapping[str, tuple[str, tuple[int, ...]]]) -> bytes:
    """data.pkl for an ordered dict of contiguous tensors, tensor k in storage str(k), as torch.save writes it."""
    out = [b"\x80\x02", _global(*ORDERED_DICT), b")R"]  # PROTO 2; OrderedDict(); EMPTY_TUPLE REDUCE
    if tensors:
        out.append(b"(")  # MARK: the items SETITEMS adds
    for k, (name, (dtype, shape)) in enumerate(tensors.items()):
        numel = int(np.prod(shape, dtype=object)) if shape else 1
        stride = tuple(int(np.prod(shape[i + 1 :], dtype=object)) if shape[i + 1 :] else 1 for i in range(len(shape)))
        storage_id = b"(" + _str("storage") + _global("torch", DTYPES[dtype][0]) + _str(str(k)) + _str("cpu") \
            + _int(numel) + b"tQ"  # MARK ... TUPLE, BINPERSID
        args = storage_id + _int(0) + _tuple(shape) + _tuple(stride) + b"\x89" \
            + _global(*ORDERED_DICT) + b")R"  # storage, offset 0, size, stride, False, OrderedDict()
        out += [_str(name), _global(*REBUILD_TENSOR), b"(", args, b"tR"]  # _rebuild_tensor_v2(*args)
    if tensors:
        out.append(b"u")  # SETITEMS
    out.append(b".")  # STOP
    return b"".join(out)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _int(n: int) -> bytes:
    if 0 <= n < 1 << 8:
        return b"K" + bytes([n])  # BININT1
    if 0 <= n < 1 << 16:
        return b"M" + struct.pack("<H", n)  # BININT2
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)  # BININT
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _tuple(items: tuple[int, ...]) -> bytes:
    body = b"".join(_int(int(n)) for n in items)
    return {0: b")", 1: body + b"\x85", 2: body + b"\x86", 3: body + b"\x87"}.get(len(items), b"(" + body + b"t")
