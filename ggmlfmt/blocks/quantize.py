"""Float rows -> Q8_0 blocks, byte-identical to llama.cpp's reference quantizer (docs/format.md §10.7).

llama.cpp's `quantize_row_q8_0_ref` (which `gguf.quants.quantize(a, GGMLQuantizationType.Q8_0)`
mirrors in numpy): per block of 32 float32 values, d = amax / 127, id = 1/d (0 when d is 0),
q = x * id rounded half away from zero, as int8; d is stored as f16. We compute the same float32
products in the same order; only the rounding is done in fewer steps (trunc(|y| + 0.5 - 2^-25),
which equals half-away-from-zero rounding for every |y| < 2^23, docs/format.md §10.7), on |x|, with the
sign put back on the int8 result (the rounding is symmetric).

Memory stays bounded: a call converts a block of whole rows (the engine's few MB), cut into steps of
QUANT_STEP_ELEMENTS so every temporary stays in the CPU cache, and spread over a small thread pool
(numpy releases the GIL inside its loops, so both cores of a 2-core machine work).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ggmlfmt.blocks.floats import NotFinite
from ggmlfmt.constants import BLOCK_LAYOUTS, GGUF_BLOCK_GENERATION, GGMLType

Q8_0_LAYOUT = BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION][GGMLType.Q8_0]
Q8_0_BLOCK = Q8_0_LAYOUT.elements  # 32 values per block
Q8_0_MAX = np.float32(127)  # (1 << 7) - 1: the largest |q|
# Rounding half away from zero of |y| as trunc(|y| + HALF_DOWN), the float32 just below 0.5: 0.49999997 + it
# cannot round up to 1.0, while every true tie k + 0.5 still reaches k + 1 (docs/format.md §10.7).
HALF_DOWN = np.nextafter(np.float32(0.5), np.float32(0))
QUANT_STEP_ELEMENTS = 1 << 15  # values per step (128 KiB of float32): every temporary stays in the cache
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
QUANT_THREADS = max(1, min(4, _CPUS))  # workers over row ranges (numpy's loops release the GIL)
MIN_ROWS_PER_THREAD = 4  # smaller calls run on the caller's thread

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(QUANT_THREADS, thread_name_prefix="ggmlfmt-q8_0")
        return _pool


# Per source dtype: (its unsigned view, the mask of its magnitude bits, the shift that makes them float32's
# bits, a power-of-two factor that re-biases f16's exponent). Shifted magnitudes order like the values.
_MAGNITUDES = {
    np.dtype(np.float32): (np.uint32, 0x7FFFFFFF, 0, None),
    np.dtype(np.float16): (np.uint16, 0x7FFF, 13, np.float32(2.0**112)),  # exact, subnormals included
    np.dtype(np.uint16): (np.uint16, 0x7FFF, 16, None),  # bfloat16 bit patterns
}
F32_INF_BITS = 0x7F800000


def _quantize_blocks(src: np.ndarray, d_out: np.ndarray, qs_out: np.ndarray) -> None:
    """src: flat values (float32, float16 or bfloat16 bits), whole blocks -> d_out (n,) f16, qs_out (n, 32) int8.

    The reference's float32 operations on |x| (its rounding is symmetric: q(-x) = -q(x)), the sign put
    back on the int8 results. numpy's slow spots avoided: amax as a reduceat over the magnitudes' float32
    bits (ordered like the values, NaN above infinity), the inverse scale repeated rather than broadcast.

    Raises:
        NotFinite: a NaN or infinity (index into src).
        FloatingPointError: a scale beyond f16's range (|x| > 65504 * 127): it would be stored as infinity.
    """
    unsigned, mask, shift, factor = _MAGNITUDES[src.dtype]
    raw = src.view(unsigned)
    if shift:  # f16, bf16: widened to float32 bits
        mag = raw.astype(np.uint32)
        mag &= mask
        mag <<= shift
    else:
        mag = raw & np.uint32(mask)
    amax_bits = np.maximum.reduceat(mag, np.arange(0, mag.size, Q8_0_BLOCK))
    y = mag.view(np.float32)  # |x|, in a temporary of ours
    if factor is not None:
        y *= factor
    not_finite = F32_INF_BITS if factor is None else 0x7C00 << shift  # before the f16 factor: its inf bits
    if amax_bits.max() >= not_finite:  # found again, only here, in values widened to float32
        values = src.astype(np.float32) if shift != 16 else (raw.astype(np.uint32) << 16).view(np.float32)
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise NotFinite(bad, float(values[bad]))
    amax = amax_bits.view(np.float32) if factor is None else amax_bits.view(np.float32) * factor
    d = amax / Q8_0_MAX
    inv = np.zeros_like(d)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        np.divide(np.float32(1), d, out=inv, where=d != 0)  # id = d ? 1/d : 0 (inf when d is subnormal, as in C)
        y *= np.repeat(inv, Q8_0_BLOCK)
        y += HALF_DOWN
        q = qs_out.reshape(-1)
        np.copyto(q, y, casting="unsafe")  # truncates toward 0: half away from zero; inf, NaN -> 0, as C on x86
    negative = (raw >> (8 * raw.itemsize - 1)).astype(np.int8)  # 1 where the sign bit is set
    q ^= -negative
    q += negative  # (q ^ -1) + 1 = -q
    with np.errstate(over="ignore"):
        scales = d.astype(np.float16)
    if np.isinf(scales).any():
        raise FloatingPointError("overflow: a Q8_0 scale is beyond float16's range")
    d_out[...] = scales


def _quantize_range(src: np.ndarray, dst: np.ndarray, start: int, stop: int) -> None:
    """Rows [start, stop) of src into dst, QUANT_STEP_ELEMENTS at a time.

    Raises:
        NotFinite: with the index into src's flat order.
        FloatingPointError: as _quantize_blocks.
    """
    n_cols = src.shape[1]
    step = max(1, QUANT_STEP_ELEMENTS // max(n_cols, 1))
    for r in range(start, stop, step):
        m = min(step, stop - r)
        out = dst[r : r + m]  # may be a column slice of a wider buffer: written through, never reshaped
        qs = np.empty((out.size, Q8_0_BLOCK), np.int8)
        d = np.empty(out.size, np.float16)
        try:
            _quantize_blocks(np.ascontiguousarray(src[r : r + m]).reshape(-1), d, qs)
        except NotFinite as e:
            raise NotFinite(r * n_cols + e.index, e.value) from None
        out["d"] = d.reshape(out.shape)
        out["qs"] = qs.reshape(*out.shape, Q8_0_BLOCK)


def quantize_q8_0(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Fill dst (m, k/32 Q8_0 records) from src (m, k: float32, float16, or bfloat16 bit patterns as uint16).

    The engine's converter signature (ggmlfmt.unshard.Convert). Rows are spread over QUANT_THREADS.

    Raises:
        ValueError: k is not a multiple of 32 or dst does not fit (a caller's bug: plans check row lengths).
        NotFinite: a NaN or infinity; its index counts src's elements in row-major order (the first one).
        FloatingPointError: a value whose block scale f16 cannot hold (|x| > 65504 * 127 = 8,319,008).
    """
    if src.dtype not in _MAGNITUDES:
        raise TypeError(f"cannot quantize {src.dtype} values")
    if src.ndim != 2 or src.shape[1] % Q8_0_BLOCK or dst.shape != (src.shape[0], src.shape[1] // Q8_0_BLOCK):
        raise ValueError(f"cannot quantize {src.shape} values into {dst.shape} Q8_0 blocks")
    n_rows = src.shape[0]
    n_threads = min(QUANT_THREADS, n_rows // MIN_ROWS_PER_THREAD)
    if n_threads <= 1:
        _quantize_range(src, dst, 0, n_rows)
        return dst
    bounds = [n_rows * k // n_threads for k in range(n_threads + 1)]
    jobs = [_executor().submit(_quantize_range, src, dst, a, b) for a, b in zip(bounds, bounds[1:])]
    errors = []
    for job in jobs:  # wait for all (dst must not be written after we return), report the first in row order
        try:
            job.result()
        except Exception as e:  # noqa: BLE001 - re-raised below, after every worker stopped
            errors.append(e)
    if errors:
        raise errors[0]
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
