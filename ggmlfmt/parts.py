"""How Meta shards and the old multi-part files split LLaMA tensors, and where each piece goes.

Shared by convert-model (shards of .pth) and migrate-old-weights (parts of ggml/ggmf files):
one rule for the split axis, one for the full shape, one for the place of shard k.
"""

from __future__ import annotations

from collections.abc import Sequence

from ggmlfmt.constants import N_PARTS_BY_DIM
from ggmlfmt.errors import CannotWrite
from ggmlfmt.layout import TensorInfo

# 2-D tensors split along PyTorch axis 1 ("by columns": each shard holds a slice of every row).
# Every other 2-D tensor splits along axis 0 ("by rows"); 1-D tensors are replicated.
_COLUMN_SPLIT = ("attention.wo.weight", "feed_forward.w2.weight")


def split_axis(name: str, ndim: int) -> int | None:
    """PyTorch axis along which the shards of `name` are split; None if every shard holds all of it."""
    if ndim < 2:
        return None
    if name.startswith("tok_embeddings") or any(s in name for s in _COLUMN_SPLIT):
        return 1
    return 0


def split_axis_by_shape(name: str, shard_shape: Sequence[int], want: Sequence[int], n_parts: int) -> int | None:
    """The axis along which n_parts shards of `shard_shape` make the full shape `want` (§6.3).

    The shapes decide: a 2-D tensor splits along the axis whose shard size times n_parts gives
    `want` (Meta's LLaMA-1/2 split the token embedding by columns, Llama 3's vocab-parallel
    embedding by rows). The name rule (split_axis) answers where the shapes cannot tell: 1-D
    tensors, one shard, or shapes that fit no split, which the caller then refuses by comparing
    full_shape with `want`.
    """
    shard, want = tuple(shard_shape), tuple(want)
    if len(shard) >= 2 and n_parts > 1:
        fits = [axis for axis in range(len(shard)) if full_shape(shard, axis, n_parts) == want]
        if len(fits) == 1:
            return fits[0]
    return split_axis(name, len(shard))


def n_parts_for_dim(n_embd: int) -> int | None:
    """Number of Meta shards / old part files the 2023 tools used for a model width (None if not a LLaMA size)."""
    return N_PARTS_BY_DIM.get(n_embd)


def full_shape(shard_shape: Sequence[int], axis: int | None, n_parts: int) -> tuple[int, ...]:
    """PyTorch shape of the whole tensor given one shard's shape."""
    shape = list(shard_shape)
    if axis is not None:
        shape[axis] *= n_parts
    return tuple(shape)


def shard_region(info: TensorInfo, axis: int | None, n_parts: int, k: int) -> tuple[int, int, int] | None:
    """Where shard k's data goes in the full tensor: (first row, first byte of each row, rows).

    None when shard k contributes nothing (a replicated tensor is written from shard 0 only).
    Byte arithmetic uses the block layout, so quantized column slices are whole blocks.

    Raises:
        CannotWrite: the split does not fall on row or block boundaries.
    """
    if axis is None or n_parts == 1:
        return (0, 0, info.n_rows) if k == 0 else None
    if axis == 0:
        if info.n_rows % n_parts:
            raise CannotWrite(f"tensor {info.name!r}: {info.n_rows} rows do not split into {n_parts} parts")
        rows = info.n_rows // n_parts
        return k * rows, 0, rows
    if info.row_bytes % n_parts or (info.ne[0] // n_parts) % info.block.elements:
        raise CannotWrite(f"tensor {info.name!r}: a row of {info.ne[0]} elements does not split into {n_parts} "
                         f"parts of whole {info.block.elements}-element blocks")
    return 0, k * (info.row_bytes // n_parts), info.n_rows

