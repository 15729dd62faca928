"""numpy dequantization to float32 of every block type we know the layout of: the 2023 types of each
generation, and GGUF's K-quants, IQ4_NL/IQ4_XS, TQ1_0/TQ2_0 and MXFP4 (docs/format.md §5.3, §17).

Each type is one kernel that turns a chunk of blocks into its float32 values: integer codes first
(bytes, cheap), then one or two float passes over the chunk of output, which stays in cache. Every
float operation is the one of the format's definition in the same order (scale products first),
so results are the reference's bit for bit, NaNs and signed zeros included.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

from .constants import BLOCK_LAYOUTS, IQ4_NL_VALUES, MXFP4_VALUES, BlockLayout, GGMLType
from .layout import TensorInfo

CHUNK_ELEMENTS = 1 << 17  # values per kernel call (512 KiB of float32): bounds the temporaries
_F32 = np.float32
_SHIFT2 = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)  # the four 2-bit fields of a byte, low first


def _scale(c: np.ndarray, field: str = "d") -> np.ndarray:
    """A block field widened to float32, shaped (k, 1) to broadcast over the block's values."""
    return c[field].astype(_F32)[:, None]


def _halves(qs: np.ndarray) -> np.ndarray:
    """4-bit codes of (k, groups, n) bytes: per group, the n low nibbles then the n high ones (k, groups * 2n)."""
    k, g, n = qs.shape
    codes = np.empty((k, g, 2, n), np.uint8)
    np.bitwise_and(qs, 0x0F, out=codes[:, :, 0])
    np.right_shift(qs, 4, out=codes[:, :, 1])
    return codes.reshape(k, g * 2 * n)


def _interleaved(qs: np.ndarray) -> np.ndarray:
    """4-bit codes of (k, n) bytes in generation 1's order: byte j = elements 2j (low), 2j+1 (high)."""
    codes = np.empty((*qs.shape, 2), np.uint8)
    np.bitwise_and(qs, 0x0F, out=codes[..., 0])
    np.right_shift(qs, 4, out=codes[..., 1])
    return codes.reshape(qs.shape[0], -1)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """2-bit codes of (k, groups, 32) bytes: per group, bits 0-1 of the 32 bytes, then bits 2-3, 4-5, 6-7."""
    k, g, n = qs.shape
    codes = np.empty((k, g, 4, n), np.uint8)
    np.right_shift(qs[:, :, None, :], _SHIFT2, out=codes)
    np.bitwise_and(codes, 0x03, out=codes)
    return codes.reshape(k, g * 4 * n)


def _bit_planes(bits: np.ndarray) -> np.ndarray:
    """(k, n) bytes -> (k, 8 * n): bit 0 of every byte, then bit 1 of every byte, ... (K-quant high bits)."""
    return np.unpackbits(bits[:, None, :], axis=1, bitorder="little").reshape(bits.shape[0], -1)


def _add_high(codes: np.ndarray, bits: np.ndarray, shift: int) -> None:
    """codes |= bits << shift, in place (bits are 0/1 or small codes of the same shape)."""
    np.left_shift(bits, shift, out=bits)
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
    """o = d * q (then + m, or - m when `sub`), per group: d and m are (k, groups), q is (k, groups * n)."""
    k, g = d.shape
    o3, q3 = o.reshape(k, g, -1), q.reshape(k, g, -1)
    np.multiply(d[:, :, None], q3, out=o3)
    if m is not None:
        (np.subtract if sub else np.add)(o3, m[:, :, None], out=o3)


# ----------------------------------------------------------------- the 2023 types (docs/format.md §5.3)


def _legacy(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    d = _scale(c)
    names = c.dtype.names
    if "qh" not in names and "m" not in names and c.dtype["qs"].base == np.int8:  # Q8_0
        np.multiply(c["qs"], d, out=o)
        return
    qs = c["qs"]
    codes = _interleaved(qs) if layout.nibble_order == "interleaved" else _halves(qs[:, None, :])
    if "qh" in names:
        _add_high(codes, np.unpackbits(c["qh"], axis=-1, bitorder="little"), 4)  # bit k = element k's fifth bit
    if "m" in names:
        _scaled(o, d, codes, _scale(c, "m"))
    else:
        np.multiply(d, _signed(codes, 16 if "qh" in names else 8), out=o)


# ----------------------------------------------------------------- GGUF's K-quants (docs/format.md §17.1)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: the eight 6-bit scales and eight 6-bit mins packed in 12 bytes, as (k, 8) u8 each."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([a & 0x3F, (c & 0x0F) | (a >> 6) << 4], axis=1)
    mins = np.concatenate([b & 0x3F, c >> 4 | (b >> 6) << 4], axis=1)
    return scales, mins


def _q2_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    k, s = len(c), c["scales"]
    dl = _scale(c) * (s & 0x0F).astype(_F32)
    ml = _scale(c, "dmin") * (s >> 4).astype(_F32)
    _scaled(o, dl, _crumbs(c["qs"].reshape(k, 2, 32)), ml, sub=True)


def _q3_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    k, s = len(c), c["scales"]
    high = (s[:, None, 8:12] >> _SHIFT2[0]) & 0x03  # (k, 4, 4): scale i's top two bits at byte 8 + i % 4, bits 2 (i // 4)
    low = np.concatenate([s[:, :8] & 0x0F, s[:, :8] >> 4], axis=1)
    scales = _signed(low | high.reshape(k, 16) << 4, 32)
    codes = _crumbs(c["qs"].reshape(k, 2, 32))
    _add_high(codes, _bit_planes(c["hmask"]), 2)
    _scaled(o, _scale(c) * scales.astype(_F32), _signed(codes, 4))


def _q4_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    k = len(c)
    scales, mins = _k_scales(c["scales"])
    codes = _halves(c["qs"].reshape(k, 4, 32))
    if "qh" in c.dtype.names:  # Q5_K: element e's fifth bit is bit e // 32 of qh[e % 32]
        _add_high(codes, _bit_planes(c["qh"]), 4)
    _scaled(o, _scale(c) * scales.astype(_F32), codes, _scale(c, "dmin") * mins.astype(_F32), sub=True)


def _q6_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    k = len(c)
    codes = _halves(c["ql"].reshape(k, 2, 64))
    _add_high(codes, _crumbs(c["qh"].reshape(k, 2, 32)), 4)
    _scaled(o, _scale(c) * c["scales"].astype(_F32), _signed(codes, 32))


def _q8_k(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    np.multiply(_scale(c), c["qs"], out=o)


# ----------------------------------------------------------------- IQ4, TQ, MXFP4 (docs/format.md §17.2-§17.4)


def _iq4_nl(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    np.multiply(_scale(c), _lookup(_halves(c["qs"][:, None, :]), IQ4_NL_VALUES), out=o)


def _iq4_xs(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    k = len(c)
    low = np.empty((k, 4, 2), np.uint8)
    np.bitwise_and(c["scales_l"], 0x0F, out=low[:, :, 0])
    np.right_shift(c["scales_l"], 4, out=low[:, :, 1])
    high = (c["scales_h"][:, None] >> np.arange(0, 16, 2, dtype=np.uint16)) & 0x03  # scale i: bits 2i, 2i+1
    scales = _signed(low.reshape(k, 8) | high.astype(np.uint8) << 4, 32)
    values = _lookup(_halves(c["qs"].reshape(k, 8, 16)), IQ4_NL_VALUES)
    _scaled(o, _scale(c) * scales.astype(_F32), values)


def _tq1_0(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    k = len(c)
    qs = c["qs"]
    parts = [(qs[:, None, :32], 5), (qs[:, None, 32:], 5), (c["qh"][:, None, :], 4)]  # 160 + 80 + 16 values
    # value j of a byte b is the j-th base-3 digit from the top of the fraction b / 256 (b was rounded up):
    # shift it to the top by multiplying with 3**j (mod 256), then read it as (x * 3) >> 8.
    x = np.concatenate([(b * np.array([1, 3, 9, 27, 81][:n], np.uint8)[:, None]).reshape(k, -1) for b, n in parts], axis=1)
    trits = ((x.astype(np.uint16) * 3) >> 8).astype(np.uint8)
    np.multiply(_scale(c), _signed(trits, 1), out=o)


def _tq2_0(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    np.multiply(_scale(c), _signed(_crumbs(c["qs"].reshape(len(c), 2, 32)), 1), out=o)


def _mxfp4(c: np.ndarray, o: np.ndarray, layout: BlockLayout) -> None:
    e = c["e"].astype(np.uint32)[:, None]
    # half of 2**(e - 127), as f32 bits: an exponent field of e - 1, or a subnormal for e < 2
    d = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << 23).view(_F32)
    np.multiply(d, _lookup(_halves(c["qs"][:, None, :]), MXFP4_VALUES), out=o)


Kernel = Callable[[np.ndarray, np.ndarray, BlockLayout], None]
KERNELS: dict[GGMLType, Kernel] = {
    **dict.fromkeys([GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_2, GGMLType.Q4_3, GGMLType.Q5_0, GGMLType.Q5_1,
                     GGMLType.Q8_0], _legacy),
    GGMLType.Q2_K: _q2_k, GGMLType.Q3_K: _q3_k, GGMLType.Q4_K: _q4_k, GGMLType.Q5_K: _q4_k,
    GGMLType.Q6_K: _q6_k, GGMLType.Q8_K: _q8_k, GGMLType.IQ4_NL: _iq4_nl, GGMLType.IQ4_XS: _iq4_xs,
    GGMLType.TQ1_0: _tq1_0, GGMLType.TQ2_0: _tq2_0, GGMLType.MXFP4: _mxfp4,
}


def dequantize_blocks(blocks: np.ndarray, ggml_type: GGMLType, generation: int) -> np.ndarray:
    """Float32 values of an array of blocks (..., n_blocks) -> (..., n_blocks * block elements).

    `generation` is 1..3 for the 2023 files, 4 (GGUF_BLOCK_GENERATION, i.e. GGUFVersion.block_generation)
    for GGUF. The blocks are converted CHUNK_ELEMENTS values at a time into the result, so the
    temporaries stay small whatever the tensor's size.

    Raises:
        ValueError: the array's dtype is not the block dtype of that type and generation, or the type has
            no dequantizer here (GGUF's IQ1/IQ2/IQ3 types, NVFP4, Q1_0, Q8_1: docs/format.md §17.5).
    """
    t = GGMLType(ggml_type)
    layout = BLOCK_LAYOUTS[generation][t]
    if blocks.dtype != layout.dtype:
        raise ValueError(f"{t.name} v{generation} blocks have dtype {layout.dtype}, got {blocks.dtype}")
    if t == GGMLType.BF16:  # the high half of an f32 (docs/format.md §11.6)
        return (blocks.astype(np.uint32) << 16).view(_F32)
    if layout.elements == 1:
        return blocks.astype(_F32)
    kernel = KERNELS.get(t)
    if kernel is None:
        raise ValueError(f"no numpy dequantizer for {t.name}; its blocks are raw bytes here")
    flat = blocks.reshape(-1)
    out = np.empty((flat.shape[0], layout.elements), _F32)
    step = max(1, CHUNK_ELEMENTS // layout.elements)
    for start in range(0, flat.shape[0], step):
        kernel(flat[start : start + step], out[start : start + step], layout)
    return out.reshape(*blocks.shape[:-1], blocks.shape[-1] * layout.elements)  # not -1: zero blocks are legal


def dequantize(array: np.ndarray, info: TensorInfo, generation: int) -> np.ndarray:
    """A tensor view from `Model.tensors` as float32 with its PyTorch-order shape."""
    return dequantize_blocks(array, info.type, generation).reshape(info.shape)
