"""Float conversions of tensor elements, bit-identical to torch's Tensor.to (docs/format.md §10), and the
converter signature every block conversion shares (casts here, blocks.quantize, blocks.requant).

numpy has no bfloat16: bf16 tensors travel as their uint16 bit patterns. Every function writes
into `out` when given one (any view, e.g. a column slice of a row buffer), so callers bound memory.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ggmlfmt.constants import GGMLType


class NotFinite(ArithmeticError):
    """A converter that needs finite values met NaN or infinity; `index` counts its source's elements row-major."""

    def __init__(self, index: int, value: float) -> None:
        super().__init__(f"element {index} is {value}")
        self.index = index
        self.value = value


F16_QUIET_NAN = 0x7E00  # exponent all ones + quiet bit: what torch's cast gives a NaN, with the top payload bits


def bf16_to_f32(bits: npt.NDArray[np.uint16], out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """bfloat16 bit patterns as float32: exact (bf16 is the top half of an f32)."""
    if out is None:
        out = np.empty(bits.shape, np.float32)
    wide = out.view(np.uint32)
    np.copyto(wide, bits, casting="safe")
    wide <<= 16
    return out


def f32_to_f16(a: npt.NDArray[np.float32], out: npt.NDArray[np.float16] | None = None) -> npt.NDArray[np.float16]:
    """float32 -> float16, round to nearest even, bit-identical to torch's Tensor.to(torch.float16).

    numpy rounds every number the same way; NaNs differ: torch keeps the top 10 payload bits and sets
    the quiet bit, numpy keeps them without it. So NaNs are redone the torch way.
    """
    if out is None:
        out = np.empty(a.shape, np.float16)
    np.copyto(out, a, casting="unsafe")
    nan = np.isnan(a)
    if nan.any():
        bits = a.view(np.uint32)[nan]
        out.view(np.uint16)[nan] = ((bits >> 16) & 0x8000) | F16_QUIET_NAN | ((bits >> 13) & 0x3FF)
    return out


def bf16_to_f16(bits: npt.NDArray[np.uint16], out: npt.NDArray[np.float16] | None = None) -> npt.NDArray[np.float16]:
    """bfloat16 bit patterns -> float16, round to nearest even, bit-identical to torch (via exact float32)."""
    return f32_to_f16(bf16_to_f32(bits), out)


# What torch's Tensor.to(torch.bfloat16) gives a NaN: every f32 NaN becomes 0xffff, every f16 NaN 0x7fc0
# (measured on torch 2.13 CPU over every NaN pattern of f16 and sampled f32 ones; docs/format.md §10.5).
BF16_NAN_FROM_F32 = 0xFFFF
BF16_NAN_FROM_F16 = 0x7FC0
BF16_ROUNDS_TO_INF = 0x7F7F8000  # the smallest f32 magnitude (as bits) that rounds to bf16 infinity


def f32_bits_to_bf16(a: npt.NDArray[np.float32], out: npt.NDArray[np.uint16], *,
                     nan: int = BF16_NAN_FROM_F32) -> npt.NDArray[np.uint16]:
    """float32 -> bfloat16 bit patterns in `out`, round to nearest even, bit-identical to torch's tensor cast.

    Raises:
        FloatingPointError: a finite value would round to infinity (beyond bf16's range).
    """
    bits = np.ascontiguousarray(a).view(np.uint32)
    wide = bits >> 16
    wide &= 1
    wide += 0x7FFF
    wide += bits  # wraps only for NaNs, which are replaced below
    wide >>= 16
    np.copyto(out, wide.reshape(out.shape), casting="unsafe")
    limit = np.float32(np.uint32(BF16_ROUNDS_TO_INF).view(np.float32))
    if not (-limit < a.min() and a.max() < limit):  # NaN fails both comparisons
        if np.any(np.isfinite(a) & (np.abs(a) >= limit)):
            raise FloatingPointError("overflow: a finite value rounds to bfloat16 infinity")
        out[np.isnan(a)] = nan
    return out


def f16_to_bf16(a: npt.NDArray[np.float16], out: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
    """float16 -> bfloat16 bit patterns, round to nearest even, as torch (via exact float32; never overflows)."""
    return f32_bits_to_bf16(a.astype(np.float32), out, nan=BF16_NAN_FROM_F16)


def f16_to_f32(a: npt.NDArray[np.float16], out: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """float16 -> float32: exact."""
    np.copyto(out, a, casting="safe")
    return out


# The one converter signature: convert(src, out) writes the converted `src` (R rows of source elements or
# blocks) into `out` (R rows of output elements or blocks, any view); it raises NotFinite where it needs
# finite values. ggmlfmt.unshard's engine calls every conversion this way, with no wrapper.
Convert = Callable[[np.ndarray, np.ndarray], object]

# (source dtype name, output type) -> the conversion; a pair missing here needs none (same bytes)
CASTS: dict[tuple[str, GGMLType], Convert] = {
    ("float16", GGMLType.F32): f16_to_f32,
    ("float32", GGMLType.F16): f32_to_f16,
    ("bfloat16", GGMLType.F32): bf16_to_f32,
    ("bfloat16", GGMLType.F16): bf16_to_f16,
    ("float16", GGMLType.BF16): f16_to_bf16,
    ("float32", GGMLType.BF16): f32_bits_to_bf16,
}
