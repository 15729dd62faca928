"""safetensors files (Hugging Face) read natively: the header bounded and checked, tensors as views of one map.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the data
section; each tensor names its dtype, shape and [begin, end) byte range in the data section
(docs/format.md §18). Every bound is checked before anything is read or allocated: N against the
file size and MAX_HEADER_BYTES, each shape's element count (every partial product) against the
data section, each byte range against its shape, and the ranges against each other (they tile the
data section exactly, as the reference reader requires: no overlap, no hole).
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from ggmlfmt.constants import BLOCK_LAYOUTS, GGUF_BLOCK_GENERATION, GGMLType
from ggmlfmt.errors import BadLayout, BadValue, Truncated
from ggmlfmt.layout import Index, TensorInfo

HEADER_LEN_BYTES = 8  # u64, little-endian
MAX_HEADER_BYTES = 100_000_000  # the reference reader's cap (safetensors MAX_HEADER_SIZE); real headers are < 1 MB
MAX_TENSORS = 1 << 20  # a 405B model has ~1,100 tensors per shard
MAX_DIMS = 8
MAX_EMPTY_ELEMENTS = 1 << 40  # the product of the other dims of a tensor with a zero dim
METADATA_KEY = "__metadata__"
VIEW_ALIGNMENT = 8  # the reference writer pads the header so data starts 8-aligned; inspect shows who is

# safetensors dtype -> the GGML type its elements are (same bytes; BF16 viewed as its raw 16 bits, as in GGUF)
DTYPES: dict[str, GGMLType] = {
    "F32": GGMLType.F32,
    "F16": GGMLType.F16,
    "BF16": GGMLType.BF16,
    "F64": GGMLType.F64,
    "I8": GGMLType.I8,
    "I16": GGMLType.I16,
    "I32": GGMLType.I32,
    "I64": GGMLType.I64,
}
DTYPE_OF = {t: name for name, t in DTYPES.items()}  # and back: each GGML type here has one safetensors dtype
# the convert layer's dtype names (convert.pth's), for the float types a checkpoint holds
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class SafetensorsVersion(Enum):
    """The one safetensors layout; Index.version as FileVersion/GGUFVersion are (magic_name, number, block_generation)."""

    V1 = "safetensors"

    @property
    def magic_name(self) -> str:
        return "safetensors"

    @property
    def number(self) -> None:
        return None

    @property
    def block_generation(self) -> int:
        return GGUF_BLOCK_GENERATION  # the element types are GGUF's (BF16, I8..I64, F64)

    @property
    def aligned(self) -> bool:
        return False  # offsets are whatever the writer chose; numpy views may be unaligned

    def __str__(self) -> str:
        return "safetensors"




def looks_like_safetensors(buf: memoryview, path: str | None = None) -> bool:
    """True for a name ending in .safetensors, or a '{' right after the 8-byte length (every writer's JSON)."""
    return (path is not None and path.endswith(".safetensors")) or buf[HEADER_LEN_BYTES : HEADER_LEN_BYTES + 1] == b"{"


def decode_safetensors(buf: memoryview, path: str | None = None) -> Index:
    """Parse and check a safetensors file held in `buf` (usually a map of the whole file).

    Raises:
        Truncated: the file is shorter than its header says.
        BadValue: the header is not a JSON object of tensor entries, or an entry's dtype, shape or
            offsets are invalid (unknown dtype, a range that disagrees with the shape, ...).
        BadLayout: two tensors overlap, or bytes of the data section belong to no tensor.
    """
    try:
        return _decode(buf)
    except (Truncated, BadValue, BadLayout) as e:
        raise e.with_path(path) if path is not None else e


def _decode(buf: memoryview) -> Index:
    size = len(buf)
    if size < HEADER_LEN_BYTES:
        raise Truncated(f"need {HEADER_LEN_BYTES} bytes for the header length, file has {size}", offset=0,
                        field="header length")
    n = int.from_bytes(buf[:HEADER_LEN_BYTES], "little")
    if n > MAX_HEADER_BYTES:
        raise BadValue(f"header of {n:,} bytes; expected at most {MAX_HEADER_BYTES:,}", offset=0,
                       field="header length")
    if n > size - HEADER_LEN_BYTES:
        raise Truncated(f"header of {n:,} bytes, {size - HEADER_LEN_BYTES:,} left in the file", offset=0,
                        field="header length")
    header = _parse_json(bytes(buf[HEADER_LEN_BYTES : HEADER_LEN_BYTES + n]))
    data_start = HEADER_LEN_BYTES + n
    data_size = size - data_start
    metadata: dict[str, str] = {}
    entries = []
    if len(header) > MAX_TENSORS + 1:
        raise BadValue(f"{len(header):,} entries; expected at most {MAX_TENSORS:,}", offset=HEADER_LEN_BYTES,
                       field="header")
    for name, entry in header.items():
        if name == METADATA_KEY:
            metadata = _metadata(entry)
            continue
        entries.append((name, *_entry(name, entry, data_size)))
    entries.sort(key=lambda e: (e[3], e[4]))  # by [begin, end): the data order
    pos, prev = 0, None
    tensors = []
    for name, dtype, ne, begin, end in entries:
        if begin < pos:
            raise BadLayout(f"bytes [{begin}, {end}) overlap tensor {prev!r}, which ends at {pos}",
                            offset=data_start + begin, field=f"tensor {name!r}")
        if begin > pos:
            raise BadLayout(f"bytes [{pos}, {begin}) of the data section belong to no tensor",
                            offset=data_start + pos, field=f"tensor {name!r}")
        ggml = DTYPES[dtype]
        tensors.append(TensorInfo(name, ggml, ne, data_start + begin, end - begin, data_start + begin,
                                  BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION][ggml]))
        pos, prev = end, name
    if pos != data_size:
        raise BadLayout(f"the data section has {data_size:,} bytes, the tensors cover {pos:,}",
                        offset=data_start + pos, field="data section")
    return Index(SafetensorsVersion.V1, tuple(tensors), size, data_start, data_start, data_start, data_start,
                 VIEW_ALIGNMENT, metadata=metadata)


def _parse_json(raw: bytes) -> dict[str, Any]:
    """Raises: BadValue unless `raw` is a UTF-8 JSON object (duplicate keys refused)."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadValue(f"not a UTF-8 JSON header: {' '.join(str(e).split())[:120]}", offset=HEADER_LEN_BYTES,
                       field="header") from None
    if not isinstance(obj, dict):
        raise BadValue(f"expected a JSON object, found {type(obj).__name__}", offset=HEADER_LEN_BYTES, field="header")
    return obj


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k[:60]!r} repeats")
        out[k] = v
    return out


def _metadata(entry: Any) -> dict[str, str]:
    """Raises: BadValue unless __metadata__ is an object of strings."""
    if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
        raise BadValue("expected an object of string values", offset=HEADER_LEN_BYTES, field=METADATA_KEY)
    return entry


def _entry(name: str, entry: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    """One tensor entry checked: (dtype, ne in ggml order, begin, end).

    Raises:
        BadValue: not an object of exactly dtype, shape, data_offsets; an unknown dtype; a bad shape;
            a range outside the data section or not shape x itemsize bytes.
    """
    where = {"offset": HEADER_LEN_BYTES, "field": f"tensor {name[:80]!r}"}
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        found = sorted(entry)[:5] if isinstance(entry, dict) else type(entry).__name__
        raise BadValue(f"expected an object with dtype, shape, data_offsets; found {found}", **where)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise BadValue(f"dtype {str(dtype)[:20]!r} is not one we read ({', '.join(DTYPES)})", **where)
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_count(d) for d in shape):
        raise BadValue(f"shape {str(shape)[:60]} is not a list of at most {MAX_DIMS} non-negative integers", **where)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise BadValue(f"data_offsets {str(offsets)[:60]} is not [begin, end]", **where)
    begin, end = offsets
    if not begin <= end <= data_size:
        raise BadValue(f"bytes [{begin}, {end}) are not inside the {data_size:,}-byte data section", **where)
    itemsize = BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION][DTYPES[dtype]].nbytes
    # every partial product of the non-zero dims bounded (never a huge int from a hostile shape): by the data
    # section, or for an empty tensor by MAX_EMPTY_ELEMENTS (numpy refuses views whose non-zero dims overflow)
    limit = data_size if 0 not in shape else MAX_EMPTY_ELEMENTS * itemsize
    count = 1
    for d in shape:
        count *= d or 1
        if count * itemsize > limit:
            raise BadValue(f"shape {shape[:MAX_DIMS]} needs more bytes than the data section holds "
                           f"({data_size:,})", **where)
    count = 0 if 0 in shape else count
    if count * itemsize != end - begin:
        raise BadValue(f"shape {shape} of {dtype} is {count * itemsize:,} bytes, data_offsets span "
                       f"{end - begin:,}", **where)
    return dtype, tuple(reversed(shape)), begin, end


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def dtype_name(index: Index | None, name: str | TensorInfo) -> str:
    """The convert layer's name of a tensor's dtype ("bfloat16", ...); the safetensors name for the others.
    `name` may be the tensor's TensorInfo (then `index` is not needed)."""
    info = name if isinstance(name, TensorInfo) else index.by_name()[name]
    return DTYPE_NAMES.get(DTYPE_OF[info.type], DTYPE_OF[info.type])
