"""Old quantized blocks -> GGUF blocks (the ggjt v3 layouts), vectorised over arrays of block records.

Pure numpy over bounded slices: a caller converts a tensor chunk by chunk (any leading shape, the last
axis counted in blocks) and gets arrays it can write as they are. Mapping and rounding rules:
docs/format.md §12 (bare § in this module = its sections).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np

from ggmlfmt.blocks.dequant import dequantize_blocks
from ggmlfmt.blocks.floats import Convert
from ggmlfmt.constants import BLOCK_LAYOUTS, F16_MAX, GGMLType
from ggmlfmt.errors import CannotWrite
from ggmlfmt.layout import block_layout

GGUF_GENERATION = 3  # GGUF's quantized blocks are the ggjt v3 ones, byte for byte (§12)
_F32_SCALES = {"d", "m"}  # the scale fields that may be f32 in generations 1 and 2


class ScaleOverflow(CannotWrite):
    """A finite f32 scale is beyond f16's range: the block cannot become a GGUF block without changing.

    The source block is valid; the request (this type in GGUF) is what cannot be carried out (write F32).
    """


class Target(NamedTuple):
    """What a source tensor becomes in GGUF: its type there, and the block converter (None: copy the bytes).

    convert(blocks, out=None) is the engine's convert(src, out) (blocks.floats.Convert); without `out` it
    returns a new array.
    """

    type: GGMLType
    convert: Convert | None


@dataclass(frozen=True, slots=True)
class Rounding:
    """What converting f32 scales to f16 does to a chunk of blocks; chunks add up with `+`.

    `max_rel_change` is the largest |f16(s) - s| / |s| over every finite non-zero f32 scale s (d, and m
    for Q4_1) that stays finite in f16, computed in float64 (§12.3). Overflowing scales are counted in
    `overflow` instead.
    """

    scales: int = 0  # f32 scale values looked at
    rounded: int = 0  # of those, how many change value (overflow included)
    overflow: int = 0  # finite scales whose f16 is infinite
    max_rel_change: float = 0.0

    def __add__(self, other: Rounding) -> Rounding:
        return Rounding(self.scales + other.scales, self.rounded + other.rounded, self.overflow + other.overflow,
                        max(self.max_rel_change, other.max_rel_change))

    @property
    def exact(self) -> bool:
        """True when the converted blocks dequantize to exactly the source values."""
        return self.rounded == 0

    def __str__(self) -> str:
        if not self.scales:
            return "no f32 scales"
        text = (f"{self.rounded:,} of {self.scales:,} f32 scales change in f16, largest relative change "
                f"{self.max_rel_change:.3g}")
        return text + (f", {self.overflow:,} beyond f16's range" if self.overflow else "")


def _layouts(generation: int, ggml_type: GGMLType,
             blocks: np.ndarray | None = None) -> tuple[np.dtype, np.dtype | None]:
    """Source block dtype (checked against `blocks`' dtype when given) and GGUF block dtype (None: it has none).

    Raises:
        BadValue: the type does not exist in that generation. ValueError: `blocks` has another dtype.
    """
    src = block_layout(ggml_type, generation, blocks).dtype
    dst = BLOCK_LAYOUTS[GGUF_GENERATION].get(GGMLType(ggml_type))
    return src, None if dst is None else dst.dtype


def f32_scale_fields(generation: int, ggml_type: GGMLType) -> tuple[str, ...]:
    """Names of the block fields that are f32 in the source and f16 in GGUF (empty: nothing rounds).

    Raises:
        BadValue: the type does not exist in that generation.
    """
    src, dst = _layouts(generation, ggml_type)
    if dst is None or src.names is None:
        return ()
    return tuple(f for f in src.names if f in _F32_SCALES and src[f] != dst[f])


def _halves_from_interleaved(qs: np.ndarray) -> np.ndarray:
    """Generation-1 nibble bytes (byte j = x[2j] low, x[2j+1] high) -> byte j = x[j] low, x[j+16] high."""
    x = np.stack([qs & 0x0F, qs >> 4], axis=-1).reshape(*qs.shape[:-1], 2 * qs.shape[-1])  # x[k], k = 0..31
    half = qs.shape[-1]
    return x[..., :half] | (x[..., half:] << 4)


def _f16(values: np.ndarray) -> np.ndarray:
    """IEEE round-to-nearest-even f32 -> f16 (numpy's cast), overflow to inf without a warning."""
    with np.errstate(over="ignore"):
        return values.astype("<f2")


def _to_gguf(blocks: np.ndarray, out: np.ndarray | None = None, *, ggml_type: GGMLType, generation: int) -> np.ndarray:
    """Source block records -> GGUF block records (in `out`): scales to f16, generation-1 nibbles repacked.

    Raises:
        ValueError: wrong dtype. ScaleOverflow: a finite scale does not fit f16 (write F32 instead).
    """
    src, dst = _layouts(generation, ggml_type, blocks)
    out = np.empty(blocks.shape, dtype=dst) if out is None else out
    for name in dst.names:
        if name == "qs" and BLOCK_LAYOUTS[generation][ggml_type].nibble_order == "interleaved":
            out[name] = _halves_from_interleaved(blocks[name])
        elif dst[name] != src[name]:
            out[name] = _f16(blocks[name])
            bad = np.isinf(out[name]) & np.isfinite(blocks[name])
            if bad.any():
                k = int(np.flatnonzero(bad.reshape(-1))[0])
                raise ScaleOverflow(f"scale {float(blocks[name].reshape(-1)[k])!r} of block {k} of this chunk is "
                                    f"beyond f16 (max {F16_MAX}); write the tensor as F32", field=name)
        else:
            out[name] = blocks[name]
    return out


def scale_rounding(blocks: np.ndarray, generation: int, ggml_type: GGMLType) -> Rounding:
    """How the f32 -> f16 scale conversion changes a chunk of blocks (reads only the scale fields).

    Raises:
        BadValue: unknown type. ValueError: wrong dtype.
    """
    _layouts(generation, ggml_type, blocks)
    total = Rounding()
    for name in f32_scale_fields(generation, ggml_type):
        s = blocks[name].reshape(-1)
        back = _f16(s).astype(np.float64)
        s64 = s.astype(np.float64)
        finite = np.isfinite(s64)
        overflow = finite & np.isinf(back)
        changed = finite & (back != s64)
        ok = changed & ~overflow & (s64 != 0)
        rel = np.abs(back[ok] - s64[ok]) / np.abs(s64[ok])
        total += Rounding(int(s.size), int(changed.sum()), int(overflow.sum()), float(rel.max()) if rel.size else 0.0)
    return total


def scan(blocks: np.ndarray, generation: int, ggml_type: GGMLType, *, chunk_blocks: int = 1 << 20) -> Rounding:
    """`scale_rounding` of a whole tensor view (a memory map, say), `chunk_blocks` blocks at a time (flat memory).

    Raises:
        BadValue: unknown type. ValueError: wrong dtype or a chunk size below 1.
    """
    if chunk_blocks < 1:
        raise ValueError(f"chunk_blocks must be positive, got {chunk_blocks}")
    flat = blocks.reshape(-1)  # a view for any C-contiguous tensor view
    total = scale_rounding(flat[:0], generation, ggml_type)  # checks the dtype even for an empty tensor
    for start in range(0, flat.size, chunk_blocks):
        total += scale_rounding(flat[start:start + chunk_blocks], generation, ggml_type)
    return total


def convert_blocks(blocks: np.ndarray, generation: int, ggml_type: GGMLType) -> tuple[np.ndarray, Rounding]:
    """A chunk as GGUF block records of the same type, and what rounding that did (no F32 fallback here).

    Raises:
        CannotWrite: the type has no GGUF block (Q4_2, Q4_3); ScaleOverflow: a finite scale does not fit f16.
        ValueError: wrong dtype (a caller's bug).
    """
    _, dst = _layouts(generation, ggml_type)
    if dst is None:
        raise CannotWrite(f"{GGMLType(ggml_type).name} has no GGUF block; its target is F32 (docs/format.md §12)")
    rounding = scale_rounding(blocks, generation, ggml_type)
    target = gguf_target(generation, ggml_type)
    return (blocks if target.convert is None else target.convert(blocks)), rounding


def _to_f32(blocks: np.ndarray, out: np.ndarray | None = None, *, ggml_type: GGMLType, generation: int) -> np.ndarray:
    """F32 values of a chunk of blocks (in `out`): (..., n_blocks) -> (..., n_blocks * elements), exact per §5."""
    values = dequantize_blocks(blocks, ggml_type, generation)
    if out is None:
        return values
    out[...] = values
    return out


def gguf_target(generation: int, ggml_type: GGMLType, lossless: bool = False, *,
                rounding: Rounding | None = None) -> Target:
    """GGUF type and converter for a tensor of `ggml_type` in a file of block `generation` (§12.1).

    `rounding` is the tensor's whole `scale_rounding` if the caller scanned it: then `lossless` writes F32
    only for tensors whose scales really round, and overflowing scales always give F32. Without it,
    `lossless` writes F32 for every tensor with f32 scales.

    Raises:
        BadValue: the type does not exist in that generation.
    """
    src, dst = _layouts(generation, ggml_type)
    ggml_type = GGMLType(ggml_type)
    to_f32 = Target(GGMLType.F32, partial(_to_f32, ggml_type=ggml_type, generation=generation))
    if dst is None:
        return to_f32
    if src == dst and BLOCK_LAYOUTS[generation][ggml_type].nibble_order != "interleaved":
        return Target(ggml_type, None)  # same bytes: F32, F16, every v3 block, v2 Q5_*
    rounds = bool(f32_scale_fields(generation, ggml_type)) if rounding is None else not rounding.exact
    if (rounding is not None and rounding.overflow) or (lossless and rounds):
        return to_f32
    return Target(ggml_type, partial(_to_gguf, ggml_type=ggml_type, generation=generation))
