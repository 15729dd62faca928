"""Independent test-side encoders/decoders for the 2023 llama.cpp model files (docs/format.md §1-§6; bare § = its sections).

This module is the "second implementation" the tests compare the library against, so it must never import
ggmlfmt, convert or migrate: only stdlib `struct` and numpy. Everything here is written straight from the spec,
favouring obviously-correct over fast.

Vocabulary of the API:
    fmt            "ggml" (unversioned), "ggmf" or "ggjt"
    version        None for ggml, 1 for ggmf, 1/2/3 for ggjt
    layout         quantized block layout generation: 1 (ggml, ggmf, ggjt v1), 2 (ggjt v2) or 3 (ggjt v3)
    ne             dims in ggml order (ne[0] = PyTorch last axis); PyTorch shape = tuple(reversed(ne))
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# ---------------------------------------------------------------------------------------------------------------
# Constants (written independently of ggmlfmt/constants.py on purpose)

# §1.1: the u32 magic spells the name when read big-endian; stored little-endian, so the bytes are reversed
MAGICS: dict[str, int] = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}
MAGIC_NAMES: dict[int, str] = {value: name for name, value in MAGICS.items()}
# §1.2: the only (magic, version) pairs that ever existed
VERSIONS: dict[str, tuple[int | None, ...]] = {"ggml": (None,), "ggmf": (1,), "ggjt": (1, 2, 3)}
# §2.1: the seven i32 hyper-parameters, in file order
HPARAM_NAMES = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
ALIGN = 32  # §4.3: ggjt tensor data starts at an absolute file offset that is a multiple of this
MAX_DIMS = 4  # the record format is general; LLaMA uses 1-2, ggml of the era supported up to 4

# §5.1: per-tensor type codes written in files (code 9 = Q8_1 never appears in model files)
TYPE_CODES: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q4_2": 4,
    "Q4_3": 5,
    "Q5_0": 6,
    "Q5_1": 7,
    "Q8_0": 8,
}
TYPE_NAMES: dict[int, str] = {code: name for name, code in TYPE_CODES.items()}

# §5.1/§5.2: (elements per block, bytes per block) per layout generation; the sums spell the block fields
_V1_BLOCKS: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "Q4_0": (32, 4 + 16),  # f32 d, 16 nibble bytes
    "Q4_1": (32, 4 + 4 + 16),  # f32 d, f32 m, 16 nibble bytes
    "Q4_2": (16, 2 + 8),  # f16 d, 8 nibble bytes
    "Q4_3": (16, 2 + 2 + 8),  # f16 d, f16 m, 8 nibble bytes
    "Q5_0": (32, 2 + 4 + 16),  # f16 d, u32 qh, 16 nibble bytes
    "Q5_1": (32, 2 + 2 + 4 + 16),  # f16 d, f16 m, u32 qh, 16 nibble bytes
    "Q8_0": (32, 4 + 32),  # f32 d, 32 int8
}
_V2_BLOCKS = {name: size for name, size in _V1_BLOCKS.items() if name not in ("Q4_2", "Q4_3")}  # same sizes
_V3_BLOCKS = {
    **_V2_BLOCKS,
    "Q4_0": (32, 2 + 16),  # f16 d
    "Q4_1": (32, 2 + 2 + 16),  # f16 d, f16 m
    "Q8_0": (32, 2 + 32),  # f16 d
}
BLOCKS: dict[int, dict[str, tuple[int, int]]] = {1: _V1_BLOCKS, 2: _V2_BLOCKS, 3: _V3_BLOCKS}


def layout_of(fmt: str, version: int | None) -> int:
    """Quantized block layout generation used by a (magic, version) pair (§1.3, §5.1)."""
    if fmt == "ggjt" and version in (2, 3):
        return version
    return 1


def nbytes(type_name: str, ne: Sequence[int], layout: int) -> int:
    """Byte size of a tensor's data (§4.2); Raises: ValueError for an unknown type or a partial block."""
    if type_name not in BLOCKS[layout]:
        raise ValueError(f"type {type_name} does not exist in layout v{layout}")
    elems, size = BLOCKS[layout][type_name]
    if not ne or ne[0] % elems:
        raise ValueError(f"ne[0] of {tuple(ne)} is not a multiple of the {type_name} block size {elems}")
    return math.prod(ne) // elems * size


# ---------------------------------------------------------------------------------------------------------------
# Writers with a field map


@dataclass(frozen=True, slots=True)
class Field:
    """One encoded field: where it is, how big, and its struct format (None for raw bytes)."""

    name: str
    offset: int
    size: int
    fmt: str | None


class _Emitter:
    """Appends packed values and remembers where each one went."""

    def __init__(self, base: int = 0) -> None:
        self.pos = base
        self.chunks: list[bytes] = []
        self.fields: list[Field] = []

    def pack(self, name: str, fmt: str, value: int | float) -> None:
        self._add(name, struct.pack(fmt, value), fmt)

    def raw(self, name: str, data: bytes) -> None:
        self._add(name, bytes(data), None)

    def _add(self, name: str, data: bytes, fmt: str | None) -> None:
        self.fields.append(Field(name, self.pos, len(data), fmt))
        self.chunks.append(data)
        self.pos += len(data)

    def result(self) -> tuple[bytes, list[Field]]:
        return b"".join(self.chunks), self.fields


def header_with_fields(
    fmt: str, version: int | None, hp: Mapping[str, int], *, magic: int | None = None
) -> tuple[bytes, list[Field]]:
    """Magic, version (not for ggml) and the seven hparams (§1, §2.1); Raises: KeyError for a missing hparam."""
    e = _Emitter()
    e.pack("magic", "<I", MAGICS[fmt] if magic is None else magic)  # u32 LE, so b"lmgg"/b"fmgg"/b"tjgg" on disk
    if fmt != "ggml":
        e.pack("version", "<I", version)  # ggmf: 1; ggjt: 1, 2, 3. ggml has no version field at all
    e.pack("n_vocab", "<i", hp["n_vocab"])  # number of vocab entries that follow the header
    e.pack("n_embd", "<i", hp["n_embd"])  # params.json dim
    e.pack("n_mult", "<i", hp["n_mult"])  # params.json multiple_of; n_ff is derived from it (§2.3)
    e.pack("n_head", "<i", hp["n_head"])  # params.json n_heads
    e.pack("n_layer", "<i", hp["n_layer"])  # params.json n_layers
    e.pack("n_rot", "<i", hp["n_rot"])  # dim // n_heads, the RoPE dimension count
    e.pack("ftype", "<i", hp["ftype"])  # file type (§2.2), e.g. 1 = mostly f16
    return e.result()


def header(fmt: str, version: int | None, hp: Mapping[str, int], *, magic: int | None = None) -> bytes:
    """Header bytes (36 for ggmf/ggjt, 32 for ggml)."""
    return header_with_fields(fmt, version, hp, magic=magic)[0]


def vocab_with_fields(
    fmt: str, vocab: Sequence[tuple[bytes, float | None]], *, base: int = 0
) -> tuple[bytes, list[Field]]:
    """The vocabulary section (§3): per entry i32 len, bytes, and an f32 score except in ggml.

    Raises: ValueError if a ggmf/ggjt entry has no score.
    """
    e = _Emitter(base)
    for i, (text, score) in enumerate(vocab):
        e.pack(f"vocab[{i}].len", "<i", len(text))  # byte length; 0 is legal (control tokens)
        e.raw(f"vocab[{i}].text", text)  # raw bytes, no NUL, not necessarily UTF-8
        if fmt != "ggml":
            if score is None:
                raise ValueError(f"vocab[{i}] needs a score in {fmt}")
            e.pack(f"vocab[{i}].score", "<f", score)  # SentencePiece score; absent in unversioned ggml
    return e.result()


def vocab_section(fmt: str, vocab: Sequence[tuple[bytes, float | None]]) -> bytes:
    """The vocabulary section bytes (§3)."""
    return vocab_with_fields(fmt, vocab)[0]


def tensor_record_with_fields(
    fmt: str,
    name: str | bytes,
    type_code: int,
    ne: Sequence[int],
    data: bytes,
    *,
    offset: int,
    index: int = 0,
    pad: bool | None = None,
    align: int = ALIGN,
) -> tuple[bytes, list[Field]]:
    """One tensor record (§4.1) starting at absolute file `offset`; fields are named "tensor[index]...".

    pad=None pads exactly when fmt is ggjt (§4.3); pad=True/False and `align` exist to build broken files.
    """
    name_bytes = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    t = f"tensor[{index}]"
    e = _Emitter(offset)
    e.pack(f"{t}.n_dims", "<i", len(ne))  # 1 or 2 for every LLaMA tensor
    e.pack(f"{t}.name_len", "<i", len(name_bytes))  # byte length of the name, no NUL
    e.pack(f"{t}.type", "<i", type_code)  # per-tensor type code (§5.1), not the header ftype
    for j, n in enumerate(ne):
        e.pack(f"{t}.ne[{j}]", "<i", n)  # ggml order: ne[0] is the PyTorch last (contiguous) axis
    e.raw(f"{t}.name", name_bytes)  # e.g. b"layers.0.attention.wq.weight"
    if (fmt == "ggjt") if pad is None else pad:
        e.raw(f"{t}.pad", bytes(-e.pos % align))  # zeros up to a multiple of `align` of the ABSOLUTE offset
    e.raw(f"{t}.data", data)  # raw tensor bytes, rows of ne[0] elements, C order
    return e.result()


TensorInfo = tuple[str | bytes, int, tuple[int, ...], bytes]  # (name, type code, ne in ggml order, data)


def build_file_with_fields(
    fmt: str,
    version: int | None,
    hparams: Mapping[str, int],
    vocab: Sequence[tuple[bytes, float | None]],
    tensors: Sequence[TensorInfo],
    *,
    pad: bool | None = None,
    align: int = ALIGN,
    magic: int | None = None,
    validate: bool = True,
) -> tuple[bytes, list[Field]]:
    """A whole model file (header, vocab, records back to back) plus every field's offset, size and format.

    hparams["n_vocab"] defaults to len(vocab). With validate=True (the default) the inputs must describe a
    well-formed file; pass validate=False together with pad/align/magic or odd values to build hostile input.
    Raises: ValueError when validating and the inputs are inconsistent.
    """
    hp = {"n_vocab": len(vocab), **hparams}
    if validate:
        _validate(fmt, version, hp, vocab, tensors)
    head, fields = header_with_fields(fmt, version, hp, magic=magic)
    chunks = [head]
    voc, voc_fields = vocab_with_fields(fmt, vocab, base=len(head))
    chunks.append(voc)
    fields += voc_fields
    pos = len(head) + len(voc)
    for i, (name, type_code, ne, data) in enumerate(tensors):
        rec, rec_fields = tensor_record_with_fields(
            fmt, name, type_code, ne, data, offset=pos, index=i, pad=pad, align=align
        )
        chunks.append(rec)
        fields += rec_fields
        pos += len(rec)
    return b"".join(chunks), fields


def build_file(*args: Any, **kwargs: Any) -> bytes:
    """A whole model file: the arguments of build_file_with_fields. Raises: ValueError on inconsistent inputs."""
    return build_file_with_fields(*args, **kwargs)[0]


def _validate(
    fmt: str,
    version: int | None,
    hp: Mapping[str, int],
    vocab: Sequence[tuple[bytes, float | None]],
    tensors: Sequence[TensorInfo],
) -> None:
    """Check that the builder inputs describe a well-formed file; Raises: ValueError."""
    if fmt not in VERSIONS or version not in VERSIONS[fmt]:
        raise ValueError(f"({fmt!r}, {version!r}) is not a format that existed (validate=False to build it)")
    if hp["n_vocab"] != len(vocab):
        raise ValueError(f"n_vocab {hp['n_vocab']} != {len(vocab)} vocab entries")
    layout = layout_of(fmt, version)
    for name, type_code, ne, data in tensors:
        if not 1 <= len(ne) <= MAX_DIMS or min(ne) < 1:
            raise ValueError(f"{name!r}: bad dims {ne}")
        want = nbytes(TYPE_NAMES.get(type_code, f"code {type_code}"), ne, layout)
        if len(data) != want:
            raise ValueError(f"{name!r}: {len(data)} data bytes, {TYPE_NAMES[type_code]} {ne} needs {want}")


# ---------------------------------------------------------------------------------------------------------------
# Independent parser


class _Cursor:
    """Sequential reader over bytes that raises ValueError (never struct.error) on truncation."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"offset {self.pos:#x}: {what}: need {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]


def parse_file(data: bytes, *, check_padding: bool = True) -> dict[str, Any]:
    """Parse any of ggml / ggmf v1 / ggjt v1-v3 into plain Python values.

    Returns {"magic": name, "version": int|None, "layout": 1|2|3, "hparams": {...}, "vocab": [(bytes, score|None)],
    "tensors": [{"name", "type", "ne", "record_offset", "data_offset", "nbytes"}]}.
    Raises: ValueError on anything malformed (also non-zero ggjt padding unless check_padding=False).
    """
    cur = _Cursor(bytes(data))
    magic = cur.unpack("<I", "magic")
    if magic not in MAGIC_NAMES:
        raise ValueError(f"offset 0x0: magic: unknown value {magic:#010x}")
    fmt = MAGIC_NAMES[magic]
    version = None if fmt == "ggml" else cur.unpack("<I", "version")
    if version not in VERSIONS[fmt]:
        raise ValueError(f"offset 0x4: version: {fmt} has no version {version}")
    hparams = {name: cur.unpack("<i", name) for name in HPARAM_NAMES}
    vocab = _parse_vocab(cur, fmt, hparams["n_vocab"])
    layout = layout_of(fmt, version)
    tensors = []
    while cur.pos < len(cur.data):  # no tensor count: records run to EOF (§4)
        tensors.append(_parse_record(cur, fmt, layout, len(tensors), check_padding))
    return {"magic": fmt, "version": version, "layout": layout, "hparams": hparams, "vocab": vocab, "tensors": tensors}


def _parse_vocab(cur: _Cursor, fmt: str, n_vocab: int) -> list[tuple[bytes, float | None]]:
    """Read n_vocab entries (§3); Raises: ValueError."""
    min_entry = 4 if fmt == "ggml" else 8
    if n_vocab < 0 or n_vocab * min_entry > len(cur.data) - cur.pos:  # bound the loop before running it
        raise ValueError(f"offset {cur.pos:#x}: n_vocab {n_vocab} entries cannot fit in the file")
    vocab: list[tuple[bytes, float | None]] = []
    for i in range(n_vocab):
        length = cur.unpack("<i", f"vocab[{i}].len")
        if length < 0:
            raise ValueError(f"offset {cur.pos - 4:#x}: vocab[{i}].len: negative length {length}")
        text = cur.take(length, f"vocab[{i}].text")
        score = None if fmt == "ggml" else cur.unpack("<f", f"vocab[{i}].score")
        vocab.append((text, score))
    return vocab


def _parse_record(cur: _Cursor, fmt: str, layout: int, i: int, check_padding: bool) -> dict[str, Any]:
    """Read one tensor record (§4.1) and skip its data; Raises: ValueError."""
    t = f"tensor[{i}]"
    record_offset = cur.pos
    n_dims = cur.unpack("<i", f"{t}.n_dims")
    name_len = cur.unpack("<i", f"{t}.name_len")
    type_code = cur.unpack("<i", f"{t}.type")
    if not 1 <= n_dims <= MAX_DIMS:
        raise ValueError(f"offset {record_offset:#x}: {t}.n_dims: {n_dims} is not in 1..{MAX_DIMS}")
    ne = tuple(cur.unpack("<i", f"{t}.ne[{j}]") for j in range(n_dims))
    if min(ne) < 1:
        raise ValueError(f"offset {record_offset:#x}: {t}.ne: {ne} has a dimension < 1")
    if name_len < 0:
        raise ValueError(f"offset {record_offset + 4:#x}: {t}.name_len: negative {name_len}")
    try:
        name = cur.take(name_len, f"{t}.name").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{t}.name: not UTF-8: {exc}") from None
    if fmt == "ggjt":
        padding = cur.take(-cur.pos % ALIGN, f"{t}.pad")  # §4.3: up to a multiple of 32, absolute offset
        if check_padding and any(padding):
            raise ValueError(f"offset {cur.pos - len(padding):#x}: {t}.pad: non-zero padding byte")
    type_name = TYPE_NAMES.get(type_code)
    if type_name is None or type_name not in BLOCKS[layout]:
        raise ValueError(f"offset {record_offset + 8:#x}: {t}.type: code {type_code} is invalid in layout v{layout}")
    size = nbytes(type_name, ne, layout)
    data_offset = cur.pos
    cur.take(size, f"{t}.data")
    return {
        "name": name,
        "type": type_code,
        "ne": ne,
        "record_offset": record_offset,
        "data_offset": data_offset,
        "nbytes": size,
    }


def tensor_array(data: bytes, info: Mapping[str, Any], layout: int) -> npt.NDArray[np.float32]:
    """A parsed tensor's values as float32 in PyTorch shape, via the slow reference dequantizer."""
    raw = bytes(data[info["data_offset"] : info["data_offset"] + info["nbytes"]])
    return dequantize(raw, TYPE_NAMES[info["type"]], layout, tuple(reversed(info["ne"])))


# ---------------------------------------------------------------------------------------------------------------
# Reference quantizers (§5.5), vectorised over blocks but with C's float32 arithmetic step by step

_F32 = np.float32


def _blocks(x: npt.ArrayLike, qk: int) -> npt.NDArray[np.float32]:
    """Rows of `x` cut into blocks of qk elements, one block per row of the result; Raises: ValueError."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 0 or a.shape[-1] % qk:
        raise ValueError(f"last dimension of shape {a.shape} is not a multiple of the block size {qk}")
    return a.reshape(-1, qk)  # blocks never span rows because rows are whole blocks


def _inverse(d: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """C `d ? 1.0f/d : 0.0f` from the f32 d (even when d is then stored as f16)."""
    with np.errstate(divide="ignore"):
        inv = _F32(1.0) / d
    return np.where(d != 0, inv, _F32(0.0)).astype(np.float32)


def _roundf(v: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """C roundf (halves away from zero); float64 makes `|v| + 0.5` exact for any float32 v."""
    v64 = v.astype(np.float64)
    return (np.sign(v64) * np.floor(np.abs(v64) + 0.5)).astype(np.int64)


def _trunc_plus(v: npt.NDArray[np.float32], c: float) -> npt.NDArray[np.int64]:
    """C `(int)(v + c)` with the addition done in float32, as the source does."""
    return np.trunc(v + _F32(c)).astype(np.int64)


def _first_of(b: npt.NDArray[np.float32], idx: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
    return b[np.arange(len(b)), idx]


def _signed_absmax(b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Per block the element with the largest |x|, sign kept; C's strict `<` keeps the first; 0.0 if all zero."""
    a = np.abs(b)
    m = _first_of(b, np.argmax(a, axis=1))
    return np.where(a.max(axis=1) > 0, m, _F32(0.0)).astype(np.float32)  # C starts from +0.0 (so d = -0.0)


def _min_max(b: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per block min and max, the first occurrence as C's `if (v < min)` loop picks it."""
    return _first_of(b, np.argmin(b, axis=1)), _first_of(b, np.argmax(b, axis=1))


def _pack_nibbles(q: npt.NDArray[np.int64], layout: int) -> npt.NDArray[np.uint8]:
    """4-bit values to bytes: v1 byte j = elements 2j|2j+1, v2/v3 byte j = elements j|j+half (§5.4)."""
    q4 = (q & 0xF).astype(np.uint8)
    if layout == 1:
        lo, hi = q4[:, 0::2], q4[:, 1::2]
    else:
        half = q.shape[1] // 2
        lo, hi = q4[:, :half], q4[:, half:]
    return (lo | (hi << 4)).astype(np.uint8)


def _qh(q: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """Bit 4 of element k's 5-bit value goes to bit k of a little-endian u32, in every layout (§5.3)."""
    bits = ((q >> 4) & 1).astype(np.uint64) << np.arange(q.shape[1], dtype=np.uint64)
    return bits.sum(axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)


def _scale_bytes(v: npt.NDArray[np.float32], dtype: str) -> npt.NDArray[np.uint8]:
    """f32 scales as '<f4' or '<f2' bytes (astype(float16) is IEEE round-to-nearest-even, as ggml's)."""
    return v.astype(dtype).view(np.uint8).reshape(len(v), -1)


def _check_range(q: npt.NDArray[np.int64], hi: int, type_name: str) -> None:
    if q.size and (q.min() < 0 or q.max() > hi):  # the C code asserts this; keep the reference honest
        raise AssertionError(f"{type_name}: quant out of 0..{hi}")


def _quant_q4_0(b: npt.NDArray[np.float32], layout: int, full_range: bool) -> list[npt.NDArray[np.uint8]]:
    if layout == 1 and not full_range:  # March 2023: d = amax / 7, q = round(x/d) + 8
        d = (np.abs(b).max(axis=1) / _F32(7)).astype(np.float32)
        q = _roundf(b * _inverse(d)[:, None]) + 8
    elif layout == 1:  # #729 (04-25): d = M / -8, q = min(15, round(x/d) + 8)
        d = (_signed_absmax(b) / _F32(-8)).astype(np.float32)
        q = np.minimum(15, _roundf(b * _inverse(d)[:, None]) + 8)
    else:  # v2/v3: same d, q = min(15, trunc(x/d + 8.5))
        d = (_signed_absmax(b) / _F32(-8)).astype(np.float32)
        q = np.minimum(15, _trunc_plus(b * _inverse(d)[:, None], 8.5))
    _check_range(q, 15, "Q4_0")
    return [_scale_bytes(d, "<f2" if layout == 3 else "<f4"), _pack_nibbles(q, layout)]


def _quant_q4_1(b: npt.NDArray[np.float32], layout: int) -> list[npt.NDArray[np.uint8]]:
    mn, mx = _min_max(b)
    d = ((mx - mn) / _F32(15)).astype(np.float32)
    v = (b - mn[:, None]) * _inverse(d)[:, None]
    q = _roundf(v) if layout == 1 else np.minimum(15, _trunc_plus(v, 0.5))
    _check_range(q, 15, "Q4_1")
    scale = "<f2" if layout == 3 else "<f4"
    return [_scale_bytes(d, scale), _scale_bytes(mn, scale), _pack_nibbles(q, layout)]


def _quant_q4_2(b: npt.NDArray[np.float32]) -> list[npt.NDArray[np.uint8]]:
    # §5.5, Q4_2 (the late, pre-#1405 ggml.c reference): d = M / -8 as f16, q = min(15, trunc(x/d + 8.5))
    d = (_signed_absmax(b) / _F32(-8)).astype(np.float32)
    q = np.minimum(15, _trunc_plus(b * _inverse(d)[:, None], 8.5))
    _check_range(q, 15, "Q4_2")
    return [_scale_bytes(d, "<f2"), _pack_nibbles(q, 1)]


def _quant_q4_3(b: npt.NDArray[np.float32]) -> list[npt.NDArray[np.uint8]]:
    # §5.5, Q4_3 (the ggml.c reference): d = (max - min) / 15, m = min, both f16, q = trunc((x - min)/d + 0.5)
    mn, mx = _min_max(b)
    d = ((mx - mn) / _F32(15)).astype(np.float32)
    q = _trunc_plus((b - mn[:, None]) * _inverse(d)[:, None], 0.5)
    _check_range(q, 15, "Q4_3")
    return [_scale_bytes(d, "<f2"), _scale_bytes(mn, "<f2"), _pack_nibbles(q, 1)]


def _quant_q5_0(b: npt.NDArray[np.float32], layout: int) -> list[npt.NDArray[np.uint8]]:
    d = (_signed_absmax(b) / _F32(-16)).astype(np.float32)
    q = np.minimum(31, _trunc_plus(b * _inverse(d)[:, None], 16.5))
    _check_range(q, 31, "Q5_0")
    return [_scale_bytes(d, "<f2"), _qh(q), _pack_nibbles(q, layout)]


def _quant_q5_1(b: npt.NDArray[np.float32], layout: int) -> list[npt.NDArray[np.uint8]]:
    mn, mx = _min_max(b)
    d = ((mx - mn) / _F32(31)).astype(np.float32)
    q = _trunc_plus((b - mn[:, None]) * _inverse(d)[:, None], 0.5)  # no clamp in the source
    _check_range(q, 31, "Q5_1")
    return [_scale_bytes(d, "<f2"), _scale_bytes(mn, "<f2"), _qh(q), _pack_nibbles(q, layout)]


def _quant_q8_0(b: npt.NDArray[np.float32], layout: int) -> list[npt.NDArray[np.uint8]]:
    d = (np.abs(b).max(axis=1) / _F32(127)).astype(np.float32)
    q = _roundf(b * _inverse(d)[:, None])
    if q.size and np.abs(q).max() > 127:
        raise AssertionError("Q8_0: quant out of int8 range")
    return [_scale_bytes(d, "<f2" if layout == 3 else "<f4"), q.astype(np.int8).view(np.uint8)]


def quantize(x: npt.ArrayLike, type_name: str, layout: int, *, full_range: bool = False) -> bytes:
    """Encode float32 data (any shape, C order, last axis = ne[0]) as `type_name` in block layout `layout`.

    F32/F16 are plain casts. full_range=True selects the 04-25 (#729) Q4_0 quantizer for layout 1 instead of
    the March-2023 one; layouts 2/3 always use full range.
    Raises: ValueError for a type not in that layout or a last axis that is not whole blocks.
    """
    if type_name not in BLOCKS[layout]:
        raise ValueError(f"type {type_name} does not exist in layout v{layout}")
    if type_name in ("F32", "F16"):
        return np.asarray(x, dtype=np.float32).astype("<f4" if type_name == "F32" else "<f2").tobytes()
    b = _blocks(x, BLOCKS[layout][type_name][0])
    columns = {
        "Q4_0": lambda: _quant_q4_0(b, layout, full_range),
        "Q4_1": lambda: _quant_q4_1(b, layout),
        "Q4_2": lambda: _quant_q4_2(b),
        "Q4_3": lambda: _quant_q4_3(b),
        "Q5_0": lambda: _quant_q5_0(b, layout),
        "Q5_1": lambda: _quant_q5_1(b, layout),
        "Q8_0": lambda: _quant_q8_0(b, layout),
    }[type_name]()
    return np.hstack(columns).astype(np.uint8).tobytes()  # fields side by side = packed block structs


# ---------------------------------------------------------------------------------------------------------------
# Reference dequantizer (§5.2-§5.4): deliberately element by element, with struct, no vectorisation


def _nibble(qs: bytes, k: int, layout: int) -> int:
    """The 4-bit value of element k (§5.4)."""
    if layout == 1:
        byte, high = qs[k // 2], k % 2 == 1  # v1: byte j holds elements 2j (low) and 2j+1 (high)
    else:
        half = len(qs)
        byte, high = qs[k % half], k >= half  # v2/v3: byte j holds elements j (low) and j+16 (high)
    return byte >> 4 if high else byte & 0x0F


def _dequant_block(block: bytes, type_name: str, layout: int) -> list[np.float32]:
    """Values of one block, computed one element at a time in float32 (§5.3)."""
    s = "e" if layout == 3 else "f"  # Q4_0/Q4_1/Q8_0 scales: f32 before v3, f16 from v3
    if type_name == "Q4_0":
        d, qs = struct.unpack(f"<{s}16s", block)
        return [_F32(_nibble(qs, k, layout) - 8) * _F32(d) for k in range(32)]
    if type_name == "Q4_1":
        d, m, qs = struct.unpack(f"<{s}{s}16s", block)
        return [_F32(_nibble(qs, k, layout)) * _F32(d) + _F32(m) for k in range(32)]
    if type_name == "Q4_2":
        d, qs = struct.unpack("<e8s", block)
        return [_F32(_nibble(qs, k, 1) - 8) * _F32(d) for k in range(16)]
    if type_name == "Q4_3":
        d, m, qs = struct.unpack("<ee8s", block)
        return [_F32(_nibble(qs, k, 1)) * _F32(d) + _F32(m) for k in range(16)]
    if type_name == "Q5_0":
        d, qh, qs = struct.unpack("<eI16s", block)
        return [_F32((_nibble(qs, k, layout) | (qh >> k & 1) << 4) - 16) * _F32(d) for k in range(32)]
    if type_name == "Q5_1":
        d, m, qh, qs = struct.unpack("<eeI16s", block)
        return [_F32(_nibble(qs, k, layout) | (qh >> k & 1) << 4) * _F32(d) + _F32(m) for k in range(32)]
    if type_name == "Q8_0":
        d, *qs = struct.unpack(f"<{s}32b", block)
        return [_F32(q) * _F32(d) for q in qs]
    raise ValueError(f"no dequantizer for {type_name}")


def dequantize(raw: bytes, type_name: str, layout: int, shape: Sequence[int]) -> npt.NDArray[np.float32]:
    """Decode `raw` (type_name, block layout `layout`) into a float32 array of PyTorch `shape`.

    Raises: ValueError if the byte count does not match the shape.
    """
    shape = tuple(shape)
    size = nbytes(type_name, tuple(reversed(shape)), layout)
    if len(raw) != size:
        raise ValueError(f"{type_name} {shape} needs {size} bytes, got {len(raw)}")
    if type_name in ("F32", "F16"):
        return np.frombuffer(raw, "<f4" if type_name == "F32" else "<f2").astype(np.float32).reshape(shape)
    elems, block_bytes = BLOCKS[layout][type_name]
    out = np.empty(math.prod(shape), dtype=np.float32)
    for i in range(len(raw) // block_bytes):
        block = raw[i * block_bytes : (i + 1) * block_bytes]
        out[i * elems : (i + 1) * elems] = _dequant_block(block, type_name, layout)
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# Multi-part files (§6)


# The split rule, restated: `tok_embeddings.*` (a prefix), `*attention.wo.weight` and `*feed_forward.w2.weight`
# (suffixes) split along PyTorch axis 1 ("by columns": every shard has all rows); every other 2-D tensor along
# axis 0 ("by rows": output, wq, wk, wv, w1, w3); 1-D tensors are replicated in every shard.
COLUMN_SPLIT_PREFIX = "tok_embeddings."
COLUMN_SPLIT_SUFFIXES = ("attention.wo.weight", "feed_forward.w2.weight")


def split_axis(name: str, ndim: int) -> int | None:
    """PyTorch axis a tensor is split along across parts (docs/format.md §6); None = 1-D, copied into every part."""
    if ndim < 2:
        return None
    if name.startswith(COLUMN_SPLIT_PREFIX) or name.endswith(COLUMN_SPLIT_SUFFIXES):
        return 1
    return 0


def split_shards(full: Any, n: int, axis: int | None) -> list[Any]:
    """n contiguous copies of the equal slices of `full` (numpy array or torch tensor) along `axis`.

    axis None: n copies of the whole. Raises: ValueError if the axis does not divide into n.
    """
    if axis is None:
        pieces = [full] * n
    else:
        size, rest = divmod(full.shape[axis], n)
        if rest:
            raise ValueError(f"axis {axis} of {tuple(full.shape)} does not split into {n} parts")
        lead = (slice(None),) * axis
        pieces = [full[(*lead, slice(k * size, (k + 1) * size))] for k in range(n)]
    if hasattr(full, "clone"):  # torch
        return [p.contiguous().clone() for p in pieces]  # own storage, as a saved shard has
    return [np.array(p, order="C", copy=True) for p in pieces]


def shard_shape(name: str, shape: Sequence[int], n_parts: int) -> tuple[int, ...]:
    """PyTorch shape of one part's shard of a full tensor; Raises: ValueError if it does not divide."""
    axis = split_axis(name, len(shape))
    out = list(shape)
    if axis is not None:
        if shape[axis] % n_parts:
            raise ValueError(f"{name}: axis {axis} of {tuple(shape)} does not split into {n_parts} parts")
        out[axis] //= n_parts
    return tuple(out)


def split_for_parts(name: str, array: npt.NDArray[Any], n_parts: int) -> list[npt.NDArray[Any]]:
    """The n_parts shards of a full PyTorch-shaped array, per the §6 name rule; Raises: ValueError."""
    shard_shape(name, array.shape, n_parts)  # validates divisibility, naming the tensor
    return split_shards(array, n_parts, split_axis(name, array.ndim))


FullTensors = Mapping[str, tuple[str, npt.NDArray[np.float32]]]  # name -> (type name, PyTorch-shaped float32)


def _records(tensors: FullTensors, layout: int, full_range: bool) -> list[TensorInfo]:
    """(name, code, ne, data) records from PyTorch-shaped arrays, quantized for `layout`."""
    return [
        (name, TYPE_CODES[t], tuple(reversed(a.shape)), quantize(a, t, layout, full_range=full_range))
        for name, (t, a) in tensors.items()
    ]


def build_model(
    fmt: str,
    version: int | None,
    hparams: Mapping[str, int],
    vocab: Sequence[tuple[bytes, float | None]],
    tensors: FullTensors,
    *,
    full_range: bool = False,
) -> bytes:
    """A single-file model from PyTorch-shaped float32 arrays, each encoded as its type in the file's layout."""
    return build_file(fmt, version, hparams, vocab, _records(tensors, layout_of(fmt, version), full_range))


def build_parts(
    fmt: str,
    hparams: Mapping[str, int],
    vocab: Sequence[tuple[bytes, float | None]],
    full_tensors: FullTensors,
    n_parts: int,
    *,
    version: int | None = None,
    full_range: bool = False,
) -> list[bytes]:
    """The old multi-part files (§6.1): every part has the full header and vocab and its shard of every tensor.

    version defaults to None for ggml and 1 otherwise. Quantized tensors are quantized per shard.
    Raises: ValueError if a split axis does not divide or a shard is not whole blocks.
    """
    if version is None and fmt != "ggml":
        version = 1
    layout = layout_of(fmt, version)
    shards = {name: (t, split_for_parts(name, a, n_parts)) for name, (t, a) in full_tensors.items()}
    parts = []
    for k in range(n_parts):
        part_k = {name: (t, pieces[k]) for name, (t, pieces) in shards.items()}
        parts.append(build_file(fmt, version, hparams, vocab, _records(part_k, layout, full_range)))
    return parts


# ---------------------------------------------------------------------------------------------------------------
# LLaMA helpers


def llama_tensor_names(n_layers: int) -> list[str]:
    """Meta checkpoint key order (§8.2): tok_embeddings, norm, output, then 9 tensors per layer."""
    names = ["tok_embeddings.weight", "norm.weight", "output.weight"]
    per_layer = (
        "attention.wq",
        "attention.wk",
        "attention.wv",
        "attention.wo",
        "feed_forward.w1",
        "feed_forward.w2",
        "feed_forward.w3",
        "attention_norm",
        "ffn_norm",
    )
    for n in range(n_layers):
        names += [f"layers.{n}.{t}.weight" for t in per_layer]
    return names


def llama_n_ff(n_embd: int, n_mult: int) -> int:
    """Feed-forward size (§2.3): floor(8·n_embd/3) rounded up to a multiple of n_mult."""
    return ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult


def llama_hparams(n_vocab: int, dim: int, n_mult: int, n_head: int, n_layer: int, ftype: int) -> dict[str, int]:
    """The seven header fields (§2.1) with n_rot = dim // n_head; n_ff is not a field, see llama_n_ff."""
    return {
        "n_vocab": n_vocab,
        "n_embd": dim,
        "n_mult": n_mult,
        "n_head": n_head,
        "n_layer": n_layer,
        "n_rot": dim // n_head,
        "ftype": ftype,
    }


def llama_shapes(hparams: Mapping[str, int], *, n_ff: int | None = None,
                 kv_rows: int | None = None) -> dict[str, tuple[int, ...]]:
    """Full PyTorch shape of every tensor (§6.2), in Meta key order.

    The feed-forward width is llama_n_ff of n_mult unless `n_ff` is given (LLaMA-2's ffn_dim_multiplier); wk and
    wv have n_embd rows unless `kv_rows` is given (grouped-query attention).
    """
    dim, vocab = hparams["n_embd"], hparams["n_vocab"]
    hidden = llama_n_ff(dim, hparams["n_mult"]) if n_ff is None else n_ff
    kv = dim if kv_rows is None else kv_rows
    by_suffix = {
        "tok_embeddings.weight": (vocab, dim),
        "norm.weight": (dim,),
        "output.weight": (vocab, dim),
        "attention.wq.weight": (dim, dim),
        "attention.wk.weight": (kv, dim),
        "attention.wv.weight": (kv, dim),
        "attention.wo.weight": (dim, dim),
        "feed_forward.w1.weight": (hidden, dim),
        "feed_forward.w2.weight": (dim, hidden),
        "feed_forward.w3.weight": (hidden, dim),
        "attention_norm.weight": (dim,),
        "ffn_norm.weight": (dim,),
    }
    names = llama_tensor_names(hparams["n_layer"])
    return {n: by_suffix[n.split(".", 2)[2] if n.startswith("layers.") else n] for n in names}


def llama_tensors(
    hparams: Mapping[str, int], two_d_type: str = "F16", *, seed: int = 0
) -> dict[str, tuple[str, npt.NDArray[np.float32]]]:
    """Random full tensors for a toy LLaMA: 1-D F32, 2-D `two_d_type` (§4.4); F16 data is already f16-exact."""
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[str, npt.NDArray[np.float32]]] = {}
    for name, shape in llama_shapes(hparams).items():
        a = rng.standard_normal(shape).astype(np.float32)
        t = "F32" if len(shape) == 1 else two_d_type
        if t == "F16":
            a = a.astype(np.float16).astype(np.float32)  # so reading back f16 gives exactly these values
        out[name] = (t, a)
    return out


def llama_vocab(n_vocab: int) -> list[tuple[bytes, float]]:
    """A LLaMA-like vocab as the converter writes it (§3.1): <unk>, 2 empty controls, byte tokens, then words."""
    special = [(b" \xe2\x81\x87 ", 0.0), (b"", 0.0), (b"", 0.0)]
    byte_tokens = [(bytes([i]), 0.0) for i in range(256)]
    words = [(f" w{i}".encode(), -float(i)) for i in range(max(0, n_vocab - 259))]
    return (special + byte_tokens + words)[:n_vocab]


def section12_model() -> tuple[dict[str, int], list[tuple[bytes, float]], list[TensorInfo]]:
    """The tiny model of §4.6 (hparams, vocab, first three tensors) with deterministic data."""
    hp = llama_hparams(n_vocab=3, dim=64, n_mult=32, n_head=2, n_layer=1, ftype=1)
    vocab = llama_vocab(3)
    emb = (np.arange(3 * 64, dtype=np.float32).reshape(3, 64) / 64).astype("<f2")
    norm = np.linspace(0.5, 1.5, 64, dtype=np.float32)
    out = (-np.arange(3 * 64, dtype=np.float32).reshape(3, 64) / 32).astype("<f2")
    tensors: list[TensorInfo] = [
        ("tok_embeddings.weight", TYPE_CODES["F16"], (64, 3), emb.tobytes()),
        ("norm.weight", TYPE_CODES["F32"], (64,), norm.astype("<f4").tobytes()),
        ("output.weight", TYPE_CODES["F16"], (64, 3), out.tobytes()),
    ]
    return hp, vocab, tensors


# The hex dump printed in §4.6, verbatim (the tok_embeddings data left out): offset, 16 bytes a line.
SECTION12_HEX = """
00000000: 746a 6767 0100 0000 0300 0000 4000 0000
00000010: 2000 0000 0200 0000 0100 0000 2000 0000
00000020: 0100 0000 0500 0000 20e2 8187 2000 0000
00000030: 0000 0000 0000 0000 0000 0000 0000 0000
00000040: 0002 0000 0015 0000 0001 0000 0040 0000
00000050: 0003 0000 0074 6f6b 5f65 6d62 6564 6469
00000060: 6e67 732e 7765 6967 6874 0000 0000 0000
00000070: 0000 0000 0000 0000 0000 0000 0000 0000
00000200: 0100 0000 0b00 0000 0000 0000 4000 0000
00000210: 6e6f 726d 2e77 6569 6768 7400 0000 0000
"""


def section12_hexdump() -> dict[int, bytes]:
    """§4.6's hex dump as {file offset: the 16 bytes printed there}."""
    lines = [line.split(":", 1) for line in SECTION12_HEX.strip().splitlines()]
    return {int(addr, 16): bytes.fromhex(hexes.replace(" ", "")) for addr, hexes in lines}
