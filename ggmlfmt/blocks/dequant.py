"""numpy dequantization to float32 of every block type we know the layout of: the 2023 types of each
generation, and GGUF's K-quants, IQ types, TQ1_0/TQ2_0, MXFP4 and NVFP4 (docs/format.md §5.3, §17).

Each type is one kernel that turns a chunk of blocks into its float32 values: integer codes first
(bytes, worked 8 at a time over the whole chunk), then a cast and one or two float passes over the
chunk of output, which stays in cache. Every float operation is the one of the format's definition
in the same order (scale products first), so results are the reference's bit for bit, NaNs and
signed zeros included. numpy's cost per call and per short row, not arithmetic, is what the kernels
are shaped around: no per-block Python, few calls per chunk, no broadcasting over 16-value rows, no
(k, n) strided copies (a block's field moves as one opaque n-byte item; runs of codes are put in
order by one gather of whole runs), float16 scales widened by a table lookup rather than numpy's
slow float16 cast.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache

import numpy as np

from ggmlfmt.blocks.iqgrids import grid as _grid
from ggmlfmt.constants import (
    IQ1_DELTA,
    IQ4_NL_VALUES,
    MXFP4_VALUES,
    BlockLayout,
    GGMLType,
)
from ggmlfmt.errors import CannotWrite
from ggmlfmt.layout import TensorInfo, block_layout

CHUNK_ELEMENTS = 1 << 19  # values per kernel call (2 MiB of float32; temporaries a few MiB): measured best
_F32 = np.float32
_SHIFT2 = np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)  # the four 2-bit fields of a byte, low first
NIBBLES, CRUMBS, BITS = ((0, 4), 0x0F), ((0, 2, 4, 6), 0x03), (tuple(range(8)), 0x01)  # (shifts, mask) of a split


@cache
def _f16_values() -> np.ndarray:
    """Every float16 bit pattern's float32 value (256 KiB), made by numpy's own cast, so a lookup is that cast.

    numpy's float16 cast runs at several ns a value here; the lookup runs several times faster.
    """
    return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(_F32)


def _widen(x: np.ndarray) -> np.ndarray:
    """float16 or float32 values (any strides) as a new float32 array."""
    if x.dtype == np.float16:
        return np.take(_f16_values(), x.view(np.uint16), mode="clip")  # every u16 is an index of the table
    return x.astype(_F32)


def _scale(c: np.ndarray, field: str = "d") -> np.ndarray:
    """A block field widened to float32, shaped (k, 1) to broadcast over the block's values."""
    return _widen(c[field])[:, None]


def _column(c: np.ndarray, field: str) -> np.ndarray:
    """A field of every block of a contiguous chunk, copied contiguous: (k, *field shape).

    The copy moves each block's field as one opaque item of its size: numpy copies a long 1-D run of
    those fast, where a (k, n) strided copy pays per row of n bytes.
    """
    dt, offset = c.dtype.fields[field][:2]
    items = np.ndarray((len(c),), np.dtype((np.void, dt.itemsize)), buffer=c, offset=offset, strides=c.strides)
    return items.copy().view(dt.base).reshape(len(c), *dt.shape)


def _split(c: np.ndarray, field: str, groups: int, split: tuple[tuple[int, ...], int]) -> np.ndarray:
    """Codes packed several to a byte in `field`, in the K-quant order, as (k, values) u8.

    The field's bytes are cut into `groups` runs of n bytes; each run gives its n codes at the first
    shift, then its n codes at the next shift, and so on. Shifts and masks work on 8 bytes at a time
    over the whole chunk, one plane per shift; each plane then goes to its place as runs of n bytes
    moved as single items by one gather (no per-block numpy call).
    """
    shifts, mask = split
    words = _column(c, field).view("<u8")  # every split field is a multiple of 8 bytes
    k, n = len(c), words.shape[1] * 8 // groups
    planes = np.right_shift(words[None], np.array(shifts, np.uint64)[:, None, None])  # one call: (planes, k, words)
    np.bitwise_and(planes, np.uint64(mask * 0x0101010101010101), out=planes)
    runs = planes.view(np.dtype((np.void, n))).reshape(-1)  # (planes, k, groups) runs of n codes
    return np.take(runs, _run_order((len(shifts), k, groups), (1, 2, 0)), mode="clip").view(np.uint8).reshape(k, -1)


@lru_cache(maxsize=16)  # one per chunk shape in use; at most 128 KiB each
def _run_order(shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    """Where each run of runs laid out as `shape`, transposed to `axes`, comes from: the gather index."""
    return np.ascontiguousarray(np.arange(np.prod(shape), dtype=np.intp).reshape(shape).transpose(axes)).reshape(-1)


def _interleaved(qs: np.ndarray) -> np.ndarray:
    """4-bit codes of (k, n) bytes in generation 1's order: byte j = elements 2j (low), 2j+1 (high)."""
    codes = np.empty((*qs.shape, 2), np.uint8)
    np.bitwise_and(qs, 0x0F, out=codes[..., 0])
    np.right_shift(qs, 4, out=codes[..., 1])
    return codes.reshape(qs.shape[0], -1)


def _add_high(codes: np.ndarray, bits: np.ndarray, shift: int) -> None:
    """codes |= bits << shift, in place (bits are 0/1 or small codes of the same shape)."""
    np.multiply(bits, np.uint8(1 << shift), out=bits)  # numpy's uint8 left_shift has no fast loop; multiply has
    np.bitwise_or(codes, bits, out=codes)


def _signed(codes: np.ndarray, offset: int) -> np.ndarray:
    """Unsigned codes minus `offset`, as int8 (the subtraction wraps in uint8; the view reads it back signed)."""
    np.subtract(codes, np.uint8(offset), out=codes)
    return codes.view(np.int8)


@cache
def _pair_table(values: tuple[int, ...]) -> np.ndarray:
    """u16 table: two 4-bit codes (c0 | c1 << 8, as two adjacent code bytes read little-endian) -> two int8 values.

    Looking up two codes at once halves the gathers of the non-linear types.
    """
    v = np.array(values, np.int8).view(np.uint8).astype(np.uint16)
    i = np.arange(16 << 8, dtype=np.uint16)
    return v[i & 0x0F] | v[(i >> 8) & 0x0F] << 8


def _lookup(codes: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    """int8 value of each 4-bit code in (k, even n) contiguous codes."""
    table = _pair_table(values)
    pairs = np.take(table, codes.view("<u2"), mode="clip")  # codes < 16: every index is in the table
    return pairs.view(np.int8)


def _scaled(o: np.ndarray, d: np.ndarray, q: np.ndarray, m: np.ndarray | None = None, sub: bool = False) -> None:
    """o = d * q (then + m, or - m when `sub`), per group: d and m are (k, groups), q is (k, groups * n).

    Short groups get their scales repeated to one per value first: numpy broadcasting a scale over a
    16 or 32 value row costs more per row than the repeat does; over longer rows it is the cheaper.
    """
    k, g = d.shape
    n = q.shape[1] // g
    np.copyto(o, q, casting="unsafe")
    if n > 32:
        o3 = o.reshape(k, g, n)
        np.multiply(d[:, :, None], o3, out=o3)
        if m is not None:
            (np.subtract if sub else np.add)(o3, m[:, :, None], out=o3)
        return
    np.multiply(np.repeat(d.reshape(-1), n).reshape(o.shape), o, out=o)
    if m is not None:
        (np.subtract if sub else np.add)(o, np.repeat(m.reshape(-1), n).reshape(o.shape), out=o)


# ----------------------------------------------------------------- the 2023 types (docs/format.md §5.3)


def _halves(qs: np.ndarray) -> np.ndarray:
    """4-bit codes of (k, 16) contiguous bytes in the halves order: byte j = elements j (low), j + 16 (high)."""
    k = len(qs)
    planes = np.empty((2, k, 16), np.uint8)
    np.bitwise_and(qs, 0x0F, out=planes[0])
    np.right_shift(qs, 4, out=planes[1])
    codes = np.empty((k, 2, 16), np.uint8)
    rows = codes.view("V16")  # (k, 2, 1): each half of a block as one 16-byte item, copied in two 1-D runs
    for half in range(2):
        np.copyto(rows[:, half, 0], planes[half].view("V16")[:, 0])
    return codes.reshape(k, 32)


def _legacy(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    d = _scale(c)
    names = c.dtype.names
    if "qh" not in names and "m" not in names and c.dtype["qs"].base == np.int8:  # Q8_0
        _scaled(o, d, c["qs"])  # 32-byte rows: the cast reads them in place faster than a copy would gather them
        return
    qs = _column(c, "qs")
    codes = _interleaved(qs) if layout.nibble_order == "interleaved" else _halves(qs)
    if "qh" in names:
        fifth = np.unpackbits(_column(c, "qh").reshape(-1), bitorder="little")  # bit k = element k's fifth bit
        _add_high(codes, fifth.reshape(codes.shape), 4)
    if "m" in names:
        _scaled(o, d, codes, _scale(c, "m"))
    else:
        _scaled(o, d, _signed(codes, 16 if "qh" in names else 8))


# ----------------------------------------------------------------- GGUF's K-quants (docs/format.md §17.1)


def _rows(c: np.ndarray, field: str) -> np.ndarray:
    """A small per-block field as (field bytes, k): one copy, then every row operation runs over all k blocks at once."""
    return np.ascontiguousarray(c[field].T)


def _k_scales(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: the eight 6-bit scales and eight 6-bit mins packed in 12 bytes, as (8, k) u8 each."""
    s = _rows(c, "scales")
    a, b, m = s[0:4], s[4:8], s[8:12]
    scales = np.concatenate([a & 0x3F, (m & 0x0F) | (a >> 6) << 4])
    mins = np.concatenate([b & 0x3F, m >> 4 | (b >> 6) << 4])
    return scales, mins


def _times(c: np.ndarray, field: str, x: np.ndarray) -> np.ndarray:
    """d * x for every block: the f16/f32 scale `field` times (n, k) small integers -> (k, n) float32."""
    return np.ascontiguousarray((_widen(c[field]) * x.astype(_F32)).T)


_LOW4, _LOW2 = np.uint32(0x0F0F0F0F), np.uint32(0x03030303)  # a 4-bit and a 2-bit field in each byte of a u32


def _q2_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    s = _column(c, "scales").reshape(-1)  # byte i: scale i (low nibble), min i (high nibble)
    x = np.empty((2, len(s)), _F32)
    np.bitwise_and(s, np.uint8(0x0F), out=x[0], casting="unsafe")
    np.right_shift(s, np.uint8(4), out=x[1], casting="unsafe")
    d = _widen(np.stack([c["d"], c["dmin"]]))
    np.multiply(np.repeat(d, 16, axis=1), x, out=x)  # d * scale, dmin * min
    _scaled(o, x[0].reshape(len(c), 16), _split(c, "qs", 2, CRUMBS), x[1].reshape(len(c), 16), sub=True)


def _q3_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    w = np.ascontiguousarray(c["scales"]).view("<u4")  # words 0, 1: low nibbles of scales 0-7, high of 8-15
    s = np.empty((len(c), 4), np.uint32)  # word 2, bits 2j, 2j+1 of byte b: top bits of scale 4j + b
    for j, low in enumerate((w[:, 0] & _LOW4, w[:, 1] & _LOW4, (w[:, 0] >> 4) & _LOW4, (w[:, 1] >> 4) & _LOW4)):
        s[:, j] = low | ((w[:, 2] >> np.uint32(2 * j)) & _LOW2) << 4
    scales = _signed(s.view(np.uint8), 32)
    codes = _split(c, "qs", 2, CRUMBS)
    _add_high(codes, _split(c, "hmask", 1, BITS), 2)  # element e's bit is bit e // 32 of hmask[e % 32]
    _scaled(o, _scale(c) * scales.astype(_F32), _signed(codes, 4))


def _q4_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    scales, mins = _k_scales(c)
    codes = _split(c, "qs", 4, NIBBLES)
    if "qh" in c.dtype.names:  # Q5_K: element e's fifth bit is bit e // 32 of qh[e % 32]
        _add_high(codes, _split(c, "qh", 1, BITS), 4)
    _scaled(o, _times(c, "d", scales), codes, _times(c, "dmin", mins), sub=True)


_M2, _M4, _M14 = (np.uint64(b * 0x0101010101010101) for b in (0x03, 0x0F, 0x0E))  # a byte pattern in each byte
_SHIFTS = np.array([0, 2, 4, 6], np.uint64)[:, None, None, None]  # the four 2-bit fields of each qh byte


def _q6_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    # Per half of a block: ql bytes 0-31 (a), 32-63 (b) and qh bytes 0-31 (h) give the 32-value runs
    # a & 15, b & 15, a >> 4, b >> 4 (low parts) and h's 2-bit fields 0, 1, 2, 3 (high parts).
    # Each part is a whole-chunk plane of 8-byte words; one gather of 32-byte runs each puts them in value order.
    k = len(c)
    q = _column(c, "ql").view("<u8")
    low = np.empty((2, *q.shape), np.uint64)
    np.bitwise_and(q, _M4, out=low[0])
    np.bitwise_and(np.right_shift(q, np.uint64(4), out=low[1]), _M4, out=low[1])
    h = _column(c, "qh").view("<u8")
    high = np.right_shift(h[None], _SHIFTS)  # (4, k, 2 halves, 4 words)
    np.bitwise_and(high, _M2, out=high)
    np.add(high, _M14, out=high)  # (field + 14) & 15 << 4 = (field << 4) - 32 as a byte: 0xE0, 0xF0, 0, 0x10
    np.left_shift(np.bitwise_and(high, _M4, out=high), np.uint64(4), out=high)
    runs = np.dtype((np.void, 32))
    codes = np.take(low.view(runs).reshape(-1), _run_order((2, k * 2, 2), (1, 0, 2)), mode="clip").view("<u8")
    high = np.take(high.view(runs).reshape(-1), _run_order((4, k, 2), (1, 2, 0)), mode="clip").view("<u8")
    np.bitwise_or(codes, high, out=codes)
    scales = np.repeat(_widen(c["d"]), 16) * _column(c, "scales").reshape(-1).astype(_F32)  # d * scale, per 16
    _scaled(o, scales.reshape(k, 16), codes.view(np.int8).reshape(k, 256))  # low | high: the code - 32, as int8


def _q8_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    _scaled(o, _scale(c), c["qs"])


# ----------------------------------------------------------------- IQ4, TQ, MXFP4 (docs/format.md §17.2-§17.4)


def _iq4_nl(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    _scaled(o, _scale(c), _lookup(_split(c, "qs", 1, NIBBLES), IQ4_NL_VALUES))


def _iq4_xs(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    s = _rows(c, "scales_l")
    low = np.stack([s & 0x0F, s >> 4], axis=1).reshape(8, -1)  # scale i: nibble i % 2 of byte i // 2
    high = (c["scales_h"] >> np.arange(0, 16, 2, dtype=np.uint16)[:, None]) & 0x03  # scale i: bits 2i, 2i+1
    scales = _signed(low | high.astype(np.uint8) << 4, 32)
    _scaled(o, _times(c, "d", scales), _lookup(_split(c, "qs", 8, NIBBLES), IQ4_NL_VALUES))


_POWERS3 = np.array([1, 3, 9, 27, 81], np.uint8)[:, None, None]


def _digits(b: np.ndarray, n: int) -> np.ndarray:
    """Base-3 digits 0..n-1 of (k, m) TQ1_0 bytes as (n, k, m) u8, over the whole chunk at once.

    A byte holds its digits as a fraction of 256, rounded up: digit j is brought to the top by
    multiplying with 3**j (mod 256), then read as (x * 3) >> 8, which is 0 up to x = 85, 1 up to 170,
    else 2.
    """
    x = np.ascontiguousarray(b)[None] * _POWERS3[:n]
    return (x > 85).view(np.uint8) + (x > 170).view(np.uint8)


@lru_cache(maxsize=8)
def _tq1_order(k: int) -> np.ndarray:
    """Words of qs digits (5, k, 6 words) in value order: per block, bytes 0-31 of each digit, then 32-47 of each."""
    order = np.arange(5 * k * 6, dtype=np.intp).reshape(5, k, 6).transpose(1, 0, 2)
    return np.concatenate([order[:, :, :4].reshape(k, -1), order[:, :, 4:].reshape(k, -1)], axis=1)


def _tq1_0(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    k = len(c)
    head = np.take(_digits(c["qs"], 5).view("<u8").reshape(-1), _tq1_order(k))  # values 0-239: 30 words
    tail = _digits(c["qh"], 4).view("<u4").reshape(4, k).T  # values 240-255: qh byte l, digit j -> 240 + 4j + l
    codes = np.concatenate([head.view(np.uint8).reshape(k, -1), tail.copy().view(np.uint8)], axis=1)
    _scaled(o, _scale(c), _signed(codes, 1))


def _tq2_0(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    _scaled(o, _scale(c), _signed(_split(c, "qs", 2, CRUMBS), 1))


def _mxfp4(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    e = c["e"].astype(np.uint32)[:, None]
    # half of 2**(e - 127), as f32 bits: an exponent field of e - 1, or a subnormal for e < 2
    d = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << 23).view(_F32)
    _scaled(o, d, _lookup(_split(c, "qs", 1, NIBBLES), MXFP4_VALUES))


@cache
def _ue4m3_halves() -> np.ndarray:
    """Byte -> half its unsigned E4M3 value (bits 3-6 exponent, bias 7; bits 0-2 mantissa; bit 7 unread), f32.

    0x00 and 0x7F (E4M3's NaN) give 0. Every value is exact in f32.
    """
    x = np.arange(256, dtype=np.uint8)
    e, m = ((x >> 3) & 0x0F).astype(_F32), (x & 0x07).astype(_F32)
    d = np.where(e == 0, m * _F32(2.0**-9), (1 + m / 8) * np.exp2(e - 7)) * _F32(0.5)
    d[(x == 0) | (x == 0x7F)] = 0
    return d.astype(_F32)


def _nvfp4(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    d = np.take(_ue4m3_halves(), c["d"])  # four scales, each of 16 values
    codes = _split(c, "qs", 4, NIBBLES)  # per scale: 8 bytes, low nibbles then high nibbles
    _scaled(o, d, _lookup(codes, MXFP4_VALUES))


# ----------------------------------------------------------------- the grid types (docs/format.md §17.5)


@cache
def _sign_masks() -> np.ndarray:
    """IQ2/IQ3 sign index (7 bits) -> u64 of 8 byte masks, 0xFF where the value is negative.

    The 8th sign is the parity of the other seven (each group of 8 has an even number of minus signs).
    """
    i = np.arange(128, dtype=np.uint8)
    parity = np.unpackbits(i[:, None], axis=1).sum(axis=1).astype(np.uint8) & 1
    bits = np.unpackbits((i | parity << 7)[:, None], axis=1, bitorder="little")  # (128, 8): bit j = value j
    return (bits * np.uint8(0xFF)).view("<u8").reshape(-1)


def _lookup_grid(name: str, index: np.ndarray) -> np.ndarray:
    """(k, entries) grid indices -> (k, values) int8: each entry's values, in entry order."""
    return np.take(_grid(name), index, mode="clip").view(np.int8).reshape(len(index), -1)


def _with_signs(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """values negated where the int8 mask is -1 (two's complement: (v ^ m) - m), in place."""
    np.bitwise_xor(values, masks, out=values)
    np.subtract(values, masks, out=values)
    return values


def _bit_masks(bits: np.ndarray) -> np.ndarray:
    """(k, n) bytes -> (k, 8n) int8: -1 where bit e % 8 of byte e // 8 is set, else 0."""
    return np.negative(np.unpackbits(bits, axis=1, bitorder="little").view(np.int8))


def _nibble_pairs(b: np.ndarray) -> np.ndarray:
    """(k, n) bytes -> (k, 2n) u8: low nibble of byte j at 2j, high nibble at 2j + 1."""
    return np.stack([b & 0x0F, b >> 4], axis=2).reshape(len(b), -1)


def _half_steps(c: np.ndarray, scales: np.ndarray, unit: float) -> np.ndarray:
    """IQ2/IQ3_XXS group scales: d·(0.5 + s)·unit, in that order."""
    return _scale(c) * (_F32(0.5) + scales.astype(_F32)) * _F32(unit)


def _iq2_xxs(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    words = np.ascontiguousarray(c["qs"]).view("<u4").reshape(len(c), 8, 2)  # per group: 4 indices, signs + scale
    index, aux = np.ascontiguousarray(words[:, :, 0]).view(np.uint8), words[:, :, 1]
    signs = (aux[:, :, None] >> np.array([0, 7, 14, 21], np.uint32)) & 0x7F
    masks = np.take(_sign_masks(), signs.reshape(len(c), -1)).view(np.int8)
    _scaled(o, _half_steps(c, aux >> 28, 0.25), _with_signs(_lookup_grid("IQ2XXS_GRID", index), masks))


def _iq2_xs(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    qs = np.ascontiguousarray(c["qs"])  # per 8 values: 9-bit grid index, 7-bit sign index
    masks = np.take(_sign_masks(), qs >> 9).view(np.int8)
    values = _with_signs(_lookup_grid("IQ2XS_GRID", qs & 0x1FF), masks)
    _scaled(o, _half_steps(c, _nibble_pairs(c["scales"]), 0.25), values)


def _iq2_s(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    high = (c["qh"][:, :, None] >> _SHIFT2[0, :, 0]) & 0x03  # entry i: bits 2 (i % 4) of qh[i // 4]
    index = c["qs"].astype(np.uint16) | high.reshape(len(c), -1).astype(np.uint16) << 8
    values = _with_signs(_lookup_grid("IQ2S_GRID", index), _bit_masks(c["signs"]))
    _scaled(o, _half_steps(c, _nibble_pairs(c["scales"]), 0.25), values)


def _iq3_xxs(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    aux = np.ascontiguousarray(c["scales_signs"])
    signs = (aux[:, :, None] >> np.array([0, 7, 14, 21], np.uint32)) & 0x7F
    masks = np.take(_sign_masks(), signs.reshape(len(c), -1)).view(np.int8)
    values = _with_signs(_lookup_grid("IQ3XXS_GRID", np.ascontiguousarray(c["qs"])), masks)
    _scaled(o, _half_steps(c, aux >> 28, 0.5), values)


def _iq3_s(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    high = np.unpackbits(c["qh"], axis=1, bitorder="little").astype(np.uint16)  # entry i: bit i % 8 of qh[i // 8]
    index = c["qs"].astype(np.uint16) | high << 8
    values = _with_signs(_lookup_grid("IQ3S_GRID", index), _bit_masks(c["signs"]))
    _scaled(o, _scale(c) * (1 + 2 * _nibble_pairs(c["scales"])), values)  # odd steps 1, 3, .. 31


def _iq1(o: np.ndarray, dl: np.ndarray, index: np.ndarray, negative: np.ndarray) -> None:
    """IQ1 values: dl·(grid + delta), delta ±IQ1_DELTA per grid entry (negative where `negative`)."""
    delta = np.where(negative, _F32(-IQ1_DELTA), _F32(IQ1_DELTA))
    grid = _lookup_grid("IQ1S_GRID", index).reshape(*index.shape, 8)
    _scaled(o, dl, (grid + delta[:, :, None]).reshape(len(index), -1))


def _iq1_s(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    qh = c["qh"]  # per group of 32: 4 x 3 high index bits, a 3-bit scale, the delta's sign
    high = (qh[:, :, None] >> np.array([0, 3, 6, 9], np.uint16)) & 0x07
    index = c["qs"].astype(np.uint16) | high.reshape(len(c), -1) << 8
    negative = np.repeat((qh & 0x8000) != 0, 4, axis=1)
    _iq1(o, _scale(c) * (2 * ((qh >> 12) & 0x07) + 1), index, negative)


def _iq1_m(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    s = c["scales"]  # four u16: 4 x 3-bit group scales each, and a nibble of the block's f16 scale on top
    bits = (s[:, 0] >> 12) | (s[:, 1] >> 8) & 0x00F0 | (s[:, 2] >> 4) & 0x0F00 | s[:, 3] & 0xF000
    d = bits.astype(np.uint16).view(np.float16).astype(_F32)[:, None]
    group = (s[:, :, None] >> np.array([0, 3, 6, 9], np.uint16)) & 0x07
    half = _nibble_pairs(c["qh"])  # entry i: nibble i % 2 of qh[i // 2]: 3 high index bits, the delta's sign
    index = c["qs"].astype(np.uint16) | (half & 0x07).astype(np.uint16) << 8
    _iq1(o, d * (2 * group.reshape(len(c), -1) + 1), index, (half & 0x08) != 0)


Kernel = Callable[[np.ndarray, np.ndarray, BlockLayout], None]
KERNELS: dict[GGMLType, Kernel] = {
    **dict.fromkeys([GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_2, GGMLType.Q4_3, GGMLType.Q5_0, GGMLType.Q5_1,
                     GGMLType.Q8_0], _legacy),
    GGMLType.Q2_K: _q2_k, GGMLType.Q3_K: _q3_k, GGMLType.Q4_K: _q4_k, GGMLType.Q5_K: _q4_k,
    GGMLType.Q6_K: _q6_k, GGMLType.Q8_K: _q8_k, GGMLType.IQ4_NL: _iq4_nl, GGMLType.IQ4_XS: _iq4_xs,
    GGMLType.TQ1_0: _tq1_0, GGMLType.TQ2_0: _tq2_0, GGMLType.MXFP4: _mxfp4, GGMLType.NVFP4: _nvfp4,
    GGMLType.IQ2_XXS: _iq2_xxs, GGMLType.IQ2_XS: _iq2_xs, GGMLType.IQ2_S: _iq2_s, GGMLType.IQ3_XXS: _iq3_xxs,
    GGMLType.IQ3_S: _iq3_s, GGMLType.IQ1_S: _iq1_s, GGMLType.IQ1_M: _iq1_m,
}


def dequantize_blocks(blocks: np.ndarray, ggml_type: GGMLType, generation: int) -> np.ndarray:
    """Float32 values of an array of blocks (..., n_blocks) -> (..., n_blocks * block elements).

    `generation` is 1..3 for the 2023 files, 4 (GGUF_BLOCK_GENERATION, i.e. GGUFVersion.block_generation)
    for GGUF. The blocks are converted CHUNK_ELEMENTS values at a time into the result, so the
    temporaries stay small whatever the tensor's size.

    Raises:
        CannotWrite: the type has no dequantizer here (Q1_0, Q8_1: docs/format.md §17.6).
        BadValue, ValueError: as block_layout.
    """
    layout = block_layout(ggml_type, generation, blocks)
    t = GGMLType(ggml_type)
    if t == GGMLType.BF16:  # the high half of an f32 (docs/format.md §11.6)
        return (blocks.astype(np.uint32) << 16).view(_F32)
    if layout.elements == 1:
        return blocks.astype(_F32)
    kernel = KERNELS.get(t)
    if kernel is None:
        raise CannotWrite(f"no numpy dequantizer for {t.name}; its blocks are raw bytes here")
    flat = np.ascontiguousarray(blocks).reshape(-1)  # kernels read each chunk's bytes whole
    out = np.empty((flat.shape[0], layout.elements), _F32)
    step = max(1, CHUNK_ELEMENTS // layout.elements)
    with np.errstate(all="ignore"):  # NaN/inf scales give NaN/inf values, as in the reference; not an error
        for start in range(0, flat.shape[0], step):
            kernel(flat[start : start + step], out[start : start + step], layout)
    return out.reshape(*blocks.shape[:-1], blocks.shape[-1] * layout.elements)  # not -1: zero blocks are legal


def dequantize(array: np.ndarray, info: TensorInfo, generation: int) -> np.ndarray:
    """A tensor view from `Model.tensors` as float32 with its PyTorch-order shape."""
    return dequantize_blocks(array, info.type, generation).reshape(info.shape)
