"""Put n parts of each tensor at their planned places in one output file (docs/format.md §6).

convert-model (shards of .pth files) and migrate-old-weights (parts of ggml/ggmf files) do the
same thing from two kinds of source, so both hand this module a `Source` per tensor: where each
part's bytes lie in its file, and a typed read-only view of them. Every part is mapped at once
(maps cost no private memory), tensors go out in file order, and each output byte is written once:

- unchanged bytes of a row split or replicated tensor (one contiguous run in source and output)
  move inside the kernel with `os.copy_file_range`, no trip through Python objects;
- column splits (each part holds a slice of every row) are gathered into blocks of whole output
  rows, a few MB at a time, and written with one `pwrite` each;
- conversions (f16/bf16/f32 casts, float values -> q8_0 blocks, old quantized blocks -> new ones
  or F32 values: each one `blocks.floats.Convert`, called as convert(src rows, out rows) with no
  wrapper) go through two bounded buffers (one is converted while a helper thread writes the other:
  pwrite releases the GIL), so private memory stays flat whatever the model size; values quantized
  from column splits are first joined into whole rows in a further bounded buffer (a block may
  straddle two parts).

The writer's coverage proof at commit still checks that every byte was written exactly once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from ggmlfmt.blocks.floats import Convert, NotFinite
from ggmlfmt.constants import CHUNK_BYTES
from ggmlfmt.errors import CannotWrite
from ggmlfmt.layout import TensorInfo
from ggmlfmt.parts import shard_region
from ggmlfmt.writer import FileWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Piece:
    """One part's share of a tensor as it lies in its file: a contiguous run of (rows x units).

    `array` is a read-only (rows, units) view of those bytes in the source's element or block
    dtype; `fd` and `offset` locate the same bytes for in-kernel copies.
    """

    fd: int | None  # None: no file, the bytes are `array` in memory (a computed tensor, see computed_source)
    offset: int
    array: np.ndarray


@dataclass(frozen=True, slots=True)
class Source:
    """Everything needed to write one output tensor: its planned place, split axis and parts."""

    info: TensorInfo  # the output tensor, as planned
    axis: int | None  # PyTorch axis the parts split (None: replicated, taken from part 0)
    pieces: Sequence[Piece]  # one per part, in part order
    convert: Convert | None = None  # None: the bytes pass unchanged
    order: np.ndarray | None = None  # output row r is row order[r] of the one piece (Hugging Face q/k, §19.3)


def computed_source(info: TensorInfo, array: np.ndarray) -> Source:
    """A tensor no input holds (e.g. Llama 3.1's rope_freqs): `array`'s elements, already in the planned type."""
    rows = np.ascontiguousarray(array).reshape(max(info.n_rows, 1), -1)
    return Source(info, None, [Piece(None, 0, rows)])


def open_read_only(stack: ExitStack, path: str | os.PathLike[str]) -> int:
    """An O_RDONLY descriptor of `path` for a `Piece`, closed when `stack` closes.

    Raises:
        OSError.
    """
    fd = os.open(path, os.O_RDONLY)
    stack.callback(os.close, fd)
    return fd


def write_tensors(writer: FileWriter, sources: Iterable[Source], *, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Write every source tensor at its planned place in `writer`'s file.

    Raises:
        CannotWrite: a part does not fit the planned tensor (shape or byte size), or a cast would
            turn a finite value into infinity.
        OSError: reading a part or writing the output failed.
    """
    buffer = _Buffer(chunk_bytes)
    try:
        for src in sources:
            if not src.info.nbytes:
                continue
            with np.errstate(over="raise"):  # a finite value that a narrowing cast would turn into infinity
                try:
                    _write_one(writer, src, buffer)
                    buffer.drain()  # between tensors only this thread uses the writer
                except FloatingPointError:
                    raise CannotWrite(f"tensor {src.info.name!r}: a value is beyond the range of {src.info.type.name} "
                                     "and would become infinity; choose a wider output type") from None
    finally:
        buffer.close()


class _Buffer:
    """Private byte buffers, grown only when a single output row needs more (then kept).

    Two output buffers: while a block of rows is written on a helper thread (pwrite releases the GIL),
    the next block is converted into the other one, so conversion and writing overlap on two cores.
    """

    def __init__(self, nbytes: int) -> None:
        self.data = np.empty(nbytes, dtype=np.uint8)  # the block being converted
        self.other = np.empty(nbytes, dtype=np.uint8)  # the block being written
        self.gather = np.empty(0, dtype=np.uint8)  # whole source rows for a block converter (allocated on use)
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def gathered(self, nbytes: int) -> np.ndarray:
        """The gather buffer, at least `nbytes` long."""
        if len(self.gather) < nbytes:
            self.gather = np.empty(nbytes, dtype=np.uint8)
        return self.gather

    def rows(self, row_bytes: int, limit: int) -> int:
        """How many whole rows of `row_bytes` fit (at least one, growing the buffers if needed), at most limit."""
        if row_bytes > len(self.data):
            self.drain()
            self.data, self.other = np.empty(row_bytes, dtype=np.uint8), np.empty(row_bytes, dtype=np.uint8)
        return max(1, min(limit, len(self.data) // max(row_bytes, 1)))

    def write(self, w: FileWriter, name: str, out: np.ndarray, row: int) -> None:
        """Write `out` (a view of `data`) at `row` on the helper thread, then swap buffers for the next block."""
        self.drain()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="ggmlfmt-write")
        self._pending = self._writer.submit(w.write_region, name, out, row=row)
        self.data, self.other = self.other, self.data

    def drain(self) -> None:
        """Wait for the write in flight. Raises: what it raised (CannotWrite, OSError)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            if self._writer is not None:
                self._writer.shutdown()


def _write_one(w: FileWriter, src: Source, buf: _Buffer) -> None:
    info, n = src.info, len(src.pieces)
    if src.order is not None:
        _check_piece(info, src.pieces[0], info.n_rows, src.convert is None, 1, 0)
        if n != 1 or not np.array_equal(np.sort(src.order), np.arange(info.n_rows)):
            raise CannotWrite(f"tensor {info.name!r}: a row order must take each of the {info.n_rows} rows of "
                              "one part once")
        _convert_rows(w, info, src.pieces, [0], 0, info.n_rows, src.convert, buf, src.order)
        return
    if src.axis == 1 and n > 1 and src.convert is not None and info.block.elements > 1 \
            and src.pieces[0].array.dtype.fields is None:
        # values quantized into blocks, which may straddle parts (4 parts of a 64-value row hold 16 each):
        # whole rows are joined first
        _gather_convert_rows(w, info, src.pieces, src.convert, buf)
        return
    regions = [shard_region(info, src.axis, n, k) for k in range(n)]
    for k, (piece, region) in enumerate(zip(src.pieces, regions)):
        if region is not None:
            _check_piece(info, piece, region[2], src.convert is None, n if src.axis == 1 else 1, k)
    if src.axis == 1 and n > 1:
        cols = [region[1] for region in regions]
        if src.convert is None and info.row_bytes > len(buf.data):
            _copy_row_pieces(w, info, src.pieces, cols)  # rows too long to gather: each row piece is a run
        else:
            _convert_rows(w, info, src.pieces, cols, 0, info.n_rows, src.convert, buf)
        return
    for piece, region in zip(src.pieces, regions):
        if region is None:
            continue
        row, _, n_rows = region
        if src.convert is None and piece.fd is None:
            w.write_region(info.name, piece.array, row=row)
        elif src.convert is None:
            w.copy_rows(info.name, piece.fd, piece.offset, row=row, n_rows=n_rows, fallback=piece.array)
        else:
            _convert_rows(w, info, [piece], [0], row, n_rows, src.convert, buf)


def _check_piece(info: TensorInfo, piece: Piece, n_rows: int, same_bytes: bool, n_cols: int, k: int) -> None:
    """Raises: CannotWrite when part k's view cannot fill its planned region (n_rows x 1/n_cols of each row)."""
    a = piece.array
    if a.ndim != 2 or a.shape[0] != n_rows:
        raise CannotWrite(f"tensor {info.name!r}: part {k} has shape {list(a.shape)}, expected {n_rows} rows")
    width = info.row_bytes // n_cols
    if same_bytes and a.shape[1] * a.itemsize != width:
        raise CannotWrite(f"tensor {info.name!r}: part {k} rows are {a.shape[1] * a.itemsize} bytes, "
                         f"expected {width}")


def _copy_row_pieces(w: FileWriter, info: TensorInfo, pieces: Sequence[Piece], cols: list[int]) -> None:
    """Column split with rows longer than the buffer: each part's slice of each row is its own run."""
    for r in range(info.n_rows):
        for piece, col in zip(pieces, cols):
            width = piece.array.shape[1] * piece.array.itemsize
            w.copy_span(info.name, piece.fd, piece.offset + r * width, row=r, col_byte=col, nbytes=width,
                        fallback=piece.array[r : r + 1])


def _convert_rows(w: FileWriter, info: TensorInfo, pieces: Sequence[Piece], cols: list[int], row: int,
                  n_rows: int, convert: Convert | None, buf: _Buffer, order: np.ndarray | None = None) -> None:
    """Rows [row, row+n_rows) of the output, built block by block in the buffer from every piece.

    One piece with cols [0]: a row split or replicated tensor being cast, or (`order`) one whose rows
    are taken in that order. Several: a column split, each piece filling its byte columns of every
    output row. One pwrite per block of rows.
    """
    width = info.row_bytes // len(pieces)  # output bytes of each row that one piece fills
    picked = pieces[0].array.strides[0] if order is not None and convert is not None else 0  # gathered, then converted
    step = buf.rows(max(info.row_bytes, picked), n_rows)
    for r in range(0, n_rows, step):
        m = min(step, n_rows - r)
        out = buf.data[: m * info.row_bytes].reshape(m, info.row_bytes)
        for piece, col in zip(pieces, cols):
            src, dst = piece.array[r : r + m], out[:, col : col + width]
            if order is not None:  # one piece, its rows picked: straight into the block, or to be converted
                into = out if convert is None else buf.gathered(src.nbytes)[: src.nbytes]
                src = np.take(piece.array, order[row + r : row + r + m], axis=0,
                              out=into.view(src.dtype).reshape(src.shape))
                if convert is None:
                    continue
            if convert is None:
                dst[...] = src.view(np.uint8).reshape(m, width)
            else:
                _convert(info, convert, src, dst.view(info.block.dtype), row + r)
        buf.write(w, info.name, out, row + r)


def _convert(info: TensorInfo, convert: Convert, src: np.ndarray, dst: np.ndarray, row: int) -> None:
    """convert(src, dst) for whole rows starting at tensor row `row`.

    Raises:
        CannotWrite: a NotFinite, placed in the whole tensor (row-major, PyTorch order).
    """
    try:
        convert(src, dst)
    except NotFinite as e:
        n_cols = src.shape[1]
        r, col = row + e.index // n_cols, e.index % n_cols
        raise CannotWrite(f"tensor {info.name!r}: element {r * n_cols + col:,} (row {r}, column {col}) is "
                          f"{e.value}; {info.type.name} needs finite values") from None


def _gather_convert_rows(w: FileWriter, info: TensorInfo, pieces: Sequence[Piece], convert: Convert,
                         buf: _Buffer) -> None:
    """Column split into a block type: each block of rows is joined from every part, then converted whole."""
    widths = [p.array.shape[1] for p in pieces]
    dtype = pieces[0].array.dtype
    if sum(widths) != info.ne[0] or any(p.array.dtype != dtype or p.array.shape[0] != info.n_rows for p in pieces):
        raise CannotWrite(f"tensor {info.name!r}: parts of {widths} {dtype} columns do not make rows of {info.ne[0]}")
    src_row_bytes = sum(widths) * dtype.itemsize
    step = buf.rows(max(info.row_bytes, src_row_bytes), info.n_rows)
    for r in range(0, info.n_rows, step):
        m = min(step, info.n_rows - r)
        rows = buf.gathered(m * src_row_bytes)[: m * src_row_bytes].view(dtype).reshape(m, sum(widths))
        np.concatenate([p.array[r : r + m] for p in pieces], axis=1, out=rows)
        out = buf.data[: m * info.row_bytes].reshape(m, info.row_bytes)
        _convert(info, convert, rows, out.view(info.block.dtype), r)
        buf.write(w, info.name, out, r)
