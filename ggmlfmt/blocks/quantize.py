"""Float rows -> Q8_0 blocks, byte-identical to llama.cpp's reference quantizer (docs/format.md §10.7).

llama.cpp's `quantize_row_q8_0_ref` (which `gguf.quants.quantize(a, GGMLQuantizationType.Q8_0)`
mirrors in numpy): per block of 32 float32 values, d = amax / 127, id = 1/d (0 when d is 0),
q = x * id rounded half away from zero, as int8; d is stored as f16. We compute the same float32
products on |x| (the rounding is symmetric: q(-x) = -q(x)), round as trunc(|y| + 0.5 - 2^-25), which
is half away from zero for every |y| < 2^23 (docs/format.md §10.7), put the sign bit back on the
float and let the int8 cast truncate, straight into the output records.

One thread, few passes: two threads quantizing halves of the rows contend for the GIL between
numpy's steps, and the engine gets more from its second core by writing the previous block
meanwhile (ggmlfmt.unshard). A call works through its rows in steps of QUANT_STEP_ELEMENTS, its
large temporaries preallocated per thread.
"""

from __future__ import annotations

import threading

import numpy as np

from ggmlfmt.blocks.floats import NotFinite
from ggmlfmt.constants import BLOCK_LAYOUTS, GGUF_BLOCK_GENERATION, GGMLType

Q8_0_LAYOUT = BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION][GGMLType.Q8_0]
Q8_0_BLOCK = Q8_0_LAYOUT.elements  # 32 values per block
Q8_0_MAX = np.float32(127)  # (1 << 7) - 1: the largest |q|
# Rounding half away from zero of |y| as trunc(|y| + HALF_DOWN), the float32 just below 0.5: 0.49999997 + it
# cannot round up to 1.0, while every true tie k + 0.5 still reaches k + 1 (docs/format.md §10.7).
HALF_DOWN = np.nextafter(np.float32(0.5), np.float32(0))
QUANT_STEP_ELEMENTS = 1 << 18  # values per step (3 MB of temporaries): the fastest of 2^15 .. 2^19 measured
F16_BIAS = np.float32(2.0**112)  # f16 magnitude bits shifted into float32's place are the value times 2^-112
SIGN = np.uint32(0x80000000)
# Per source dtype: the right shift that turns |x|'s bits, in the top of a uint32, into float32's (f16: times
# 2^-112, subnormals included), and |x|'s bits from NaN and infinity upwards in that place.
_WIDEN = {np.dtype(np.float32): (0, 0x7F800000),
          np.dtype(np.float16): (3, 0x7C00 << 13),
          np.dtype(np.uint16): (0, 0x7F800000)}  # bfloat16 bit patterns


class _Scratch(threading.local):
    """One step's temporaries, allocated once per thread."""

    def __init__(self) -> None:
        n = QUANT_STEP_ELEMENTS
        self.mag = np.empty(n, np.uint32)  # |x| as float32 bits, then y = |x| * id + HALF_DOWN with x's sign
        self.sign = np.empty(n, np.uint32)  # x's sign bit in float32's place
        self.inv = np.empty(n // Q8_0_BLOCK, np.float32)
        self.starts = np.arange(0, n, Q8_0_BLOCK)


_scratch = _Scratch()


def _quantize_step(x: np.ndarray, rec: np.ndarray, s: _Scratch) -> None:
    """x: at most QUANT_STEP_ELEMENTS contiguous values, whole blocks -> rec, their Q8_0 records.

    Raises:
        NotFinite: a NaN or infinity (index into x).
        FloatingPointError: a scale beyond f16's range (|x| > 65504 * 127): it would be stored as infinity.
    """
    n, nb = x.size, x.size // Q8_0_BLOCK
    right, not_finite = _WIDEN[x.dtype]
    mag, sign = s.mag[:n], s.sign[:n]
    bits = x.view(np.uint32) if x.itemsize == 4 else mag
    if x.itemsize == 2:  # f16, bf16: into the top half of a uint32 (the sign bit in float32's place)
        np.copyto(mag, x.view(np.uint16))
        mag <<= 16
    np.bitwise_and(bits, SIGN, out=sign)
    np.bitwise_xor(bits, sign, out=mag)
    if right:
        mag >>= right
    amax_bits = np.maximum.reduceat(mag, s.starts[:nb])  # magnitudes' bits order like the values, NaN above inf
    top = amax_bits.max()
    if top >= not_finite:
        bad = int(np.flatnonzero(mag >= not_finite)[0])
        value = mag[bad : bad + 1] | sign[bad : bad + 1]  # its float32 bits (bf16, f32; f16 is read as itself)
        raise NotFinite(bad, float(x[bad]) if right else float(value.view(np.float32)[0]))
    amax = amax_bits.view(np.float32)
    if right:
        amax = amax * F16_BIAS
    d = amax / Q8_0_MAX
    if np.isinf(np.float16(d.max())):
        raise FloatingPointError("overflow: a Q8_0 scale is beyond float16's range")
    inv = s.inv[:nb]
    inv.fill(0)
    np.divide(np.float32(1), d, out=inv, where=d != 0)  # id = d ? 1/d : 0 (inf when d is subnormal, as in C)
    y = mag.view(np.float32)
    if right:  # f16: |x| * 2^-112 * (id * 2^112) is |x| * id rounded once, if id * 2^112 stays finite
        if inv.max() < 2.0**16:
            inv *= F16_BIAS
        else:
            y *= F16_BIAS
    y *= np.repeat(inv, Q8_0_BLOCK)
    y += HALF_DOWN
    mag |= sign
    # the int8 cast truncates toward 0, which makes the rounding half away from zero; inf and NaN -> 0, as C on x86
    np.copyto(rec["qs"], y.reshape(nb, Q8_0_BLOCK), casting="unsafe")
    rec["d"] = d


def quantize_q8_0(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Fill dst (m, k/32 Q8_0 records) from src (m, k: float32, float16, or bfloat16 bit patterns as uint16).

    The engine's converter signature (ggmlfmt.unshard.Convert).

    Raises:
        ValueError: k is not a multiple of 32 or dst does not fit (a caller's bug: plans check row lengths).
        NotFinite: a NaN or infinity; its index counts src's elements in row-major order (the first one).
        FloatingPointError: a value whose block scale f16 cannot hold (|x| > 65504 * 127 = 8,319,008).
    """
    if src.dtype not in _WIDEN:
        raise TypeError(f"cannot quantize {src.dtype} values")
    if src.ndim != 2 or src.shape[1] % Q8_0_BLOCK or dst.shape != (src.shape[0], src.shape[1] // Q8_0_BLOCK):
        raise ValueError(f"cannot quantize {src.shape} values into {dst.shape} Q8_0 blocks")
    flat = np.ascontiguousarray(src).reshape(-1)
    out = dst if dst.flags.c_contiguous else np.empty(dst.shape, dst.dtype)  # e.g. a column slice of a row buffer
    records, step, s = out.reshape(-1), QUANT_STEP_ELEMENTS, _scratch
    with np.errstate(all="ignore"):
        for i in range(0, flat.size, step):
            try:
                _quantize_step(flat[i : i + step], records[i // Q8_0_BLOCK : (i + step) // Q8_0_BLOCK], s)
            except NotFinite as e:
                raise NotFinite(i + e.index, e.value) from None
    if out is not dst:
        dst[...] = out
    return dst


def quantize_rows_q8_0(a: np.ndarray) -> np.ndarray:
    """A 2-D float array (or bfloat16 bits as uint16) -> a new (m, k/32) array of Q8_0 records (tests, tools).

    Raises:
        as quantize_q8_0.
    """
    a = np.ascontiguousarray(a)
    if a.ndim != 2 or a.shape[1] % Q8_0_BLOCK:
        raise ValueError(f"cannot quantize shape {a.shape}: rows must be whole blocks of {Q8_0_BLOCK}")
    dst = np.empty((a.shape[0], a.shape[1] // Q8_0_BLOCK), Q8_0_LAYOUT.dtype)
    return quantize_q8_0(a, dst)
