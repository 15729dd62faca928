"""numpy dequantization of every block type the 2023 files hold, and GGUF's plain and 2023-era types, to float32."""

from __future__ import annotations

import numpy as np

from .constants import BLOCK_LAYOUTS, GGMLType
from .layout import TensorInfo


def _nibbles(qs: np.ndarray, order: str) -> np.ndarray:
    """4-bit values per element, from (..., n_bytes) packed bytes in the generation's order."""
    lo, hi = qs & 0x0F, qs >> 4
    if order == "interleaved":  # byte j = elements 2j (low), 2j+1 (high)
        return np.stack([lo, hi], axis=-1).reshape(*qs.shape[:-1], 2 * qs.shape[-1])  # not -1: zero blocks
    return np.concatenate([lo, hi], axis=-1)  # byte j = elements j (low), j + n_bytes (high)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Bit k of the 32-bit little-endian qh word, for k = 0..31 (element k's fifth bit, in every generation)."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def dequantize_blocks(blocks: np.ndarray, ggml_type: GGMLType, generation: int) -> np.ndarray:
    """Float32 values of an array of blocks (..., n_blocks) -> (..., n_blocks * block elements).

    `generation` is 1..3 for the 2023 files, 4 (GGUF_BLOCK_GENERATION, i.e. GGUFVersion.block_generation)
    for GGUF, whose blocks are generation 3's.

    Raises:
        ValueError: the array's dtype is not the block dtype of that type and generation, or the type has
            no dequantizer here (GGUF's K-quants and IQ types).
    """
    layout = BLOCK_LAYOUTS[generation][GGMLType(ggml_type)]
    if blocks.dtype != layout.dtype:
        raise ValueError(f"{GGMLType(ggml_type).name} v{generation} blocks have dtype {layout.dtype}, got {blocks.dtype}")
    if ggml_type == GGMLType.BF16:  # the high half of an f32 (docs/format.md §11.6)
        return (blocks.astype(np.uint32) << 16).view(np.float32)
    if layout.elements == 1:
        return blocks.astype(np.float32)
    if layout.dtype.names is None:  # a GGUF type we view as opaque bytes (K-quants, IQ*, ...)
        raise ValueError(f"no numpy dequantizer for {GGMLType(ggml_type).name}; its blocks are raw bytes here")
    d = blocks["d"].astype(np.float32)[..., None]
    if ggml_type == GGMLType.Q8_0:
        x = blocks["qs"].astype(np.float32) * d
    else:
        q = _nibbles(blocks["qs"], layout.nibble_order).astype(np.int16)
        if "qh" in blocks.dtype.names:
            q |= _high_bits(blocks["qh"]).astype(np.int16) << 4
        if "m" in blocks.dtype.names:
            x = q.astype(np.float32) * d + blocks["m"].astype(np.float32)[..., None]
        else:
            offset = 16 if "qh" in blocks.dtype.names else 8
            x = (q - offset).astype(np.float32) * d
    return x.reshape(*blocks.shape[:-1], blocks.shape[-1] * layout.elements)  # not -1: zero blocks are legal


def dequantize(array: np.ndarray, info: TensorInfo, generation: int) -> np.ndarray:
    """A tensor view from `Model.tensors` as float32 with its PyTorch-order shape."""
    return dequantize_blocks(array, info.type, generation).reshape(info.shape)
