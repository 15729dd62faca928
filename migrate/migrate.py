"""Old multi-part ggml/ggmf files -> one ggjt v1 file, exactly as the 2023 migrate script wrote it.

Header (magic ggjt, version 1, hparams and ftype unchanged), vocabulary, part 0's tensor order,
record headers with the full dims, 32-byte padding, and every shard's bytes at the place the
shared split rules (ggmlfmt.parts) give. Blocks are copied, never re-quantized. Tensor data goes
from read-only maps of the parts to the output in bounded chunks, so memory does not grow with
the model.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ggmlfmt.atomic import refuse_existing
from ggmlfmt.constants import CHUNK_BYTES, FileVersion
from ggmlfmt.errors import CannotWrite
from ggmlfmt.layout import Plan, TensorInfo, TensorSpec, Vocab, plan
from ggmlfmt.parts import full_shape, shard_region, split_axis
from ggmlfmt.unshard import Piece, Source, open_read_only, write_tensors
from ggmlfmt.writer import FileWriter
from migrate.sources import OpenedParts, SourcePart, find_parts, open_parts

log = logging.getLogger(__name__)

OUTPUT_VERSION = FileVersion.GGJT_V1  # what the 2023 script wrote; v1 keeps the old quantized block layouts
GGML_SCORE = 0.0  # unversioned 'ggml' has no token scores; ggjt needs one per token

Progress = Callable[[int], Any]


@dataclass(frozen=True, slots=True)
class Migration(OpenedParts):
    """Opened, cross-checked parts and the planned output file."""

    parts: tuple[SourcePart, ...]
    axes: Mapping[str, int | None]  # tensor -> PyTorch split axis (None: not split)
    plan: Plan


def open_migration(src: str | os.PathLike[str]) -> Migration:
    """Find, map and check every part of SRC and plan the output (the maps live as long as the result).

    Raises:
        FormatError (AlreadyMigrated for a ggjt input): the parts are malformed or do not belong together.
        OSError: a part cannot be read.
    """
    parts = open_parts(src)
    return Migration(tuple(parts), *plan_output(parts))


def output_vocab(part0: SourcePart) -> Vocab:
    """Part 0's vocabulary, with a score of GGML_SCORE per token when the input has none."""
    vocab = part0.index.vocab
    if vocab.scores is not None:
        return vocab
    log.warning("%s is unversioned 'ggml' and has no token scores; writing score %s for every token "
                "(regenerate the vocabulary from tokenizer.model for real scores)", part0.path, GGML_SCORE)
    return Vocab(vocab.tokens, np.full(len(vocab), GGML_SCORE, dtype=np.float32))


def plan_output(parts: list[SourcePart]) -> tuple[dict[str, int | None], Plan]:
    """Split axes and the ggjt v1 layout: part 0's header and order, every tensor at its full shape.

    Raises:
        CannotWrite: a shard does not split on row or block boundaries.
    """
    part0, n = parts[0], len(parts)
    axes: dict[str, int | None] = {}
    specs = []
    for t in part0.index.tensors:
        axes[t.name] = split_axis(t.name, len(t.ne)) if n > 1 else None
        specs.append(TensorSpec.from_shape(t.name, t.type, full_shape(t.shape, axes[t.name], n)))
    try:
        layout = plan(OUTPUT_VERSION, part0.index.hparams, output_vocab(part0), specs)
    except CannotWrite as e:  # a full dim beyond i32: the parts cannot be one file
        raise e.with_path(part0.path) from None
    for t in layout.tensors:
        for k in range(n):
            _check_region(t, axes[t.name], n, k, part0)  # every split checked before the first byte is written
    return axes, layout


def _check_region(full: TensorInfo, axis: int | None, n_parts: int, k: int, part0: SourcePart) -> None:
    """shard_region succeeds; its CannotWrite names part 0 and the record.

    Raises:
        FormatError.
    """
    try:
        shard_region(full, axis, n_parts, k)
    except CannotWrite as e:
        raise e.with_path(part0.path, offset=part0.index.by_name()[full.name].record_offset) from None


def write_migration(m: Migration, dst: str | os.PathLike[str], *, overwrite: bool = False,
                    progress: Progress | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Write the planned file: temp file beside DST, every tensor copied, coverage proven, renamed.

    Raises:
        OSError: DST exists without overwrite, disk full, ... (the temp file is removed; DST untouched).
    """
    with ExitStack() as stack:
        fds = [open_read_only(stack, p.path) for p in m.parts]
        w = stack.enter_context(FileWriter(dst, m.plan, overwrite=overwrite, progress=progress))
        write_tensors(w, _sources(m, fds), chunk_bytes=chunk_bytes)


def _sources(m: Migration, fds: list[int]) -> Iterator[Source]:
    """Each output tensor with its part in every input (same record index: checked on opening)."""
    for i, full in enumerate(m.plan.tensors):
        pieces = []
        for part, fd in zip(m.parts, fds):
            t = part.index.tensors[i]
            pieces.append(Piece(fd, t.offset, part.raw(t)))
        yield Source(full, m.axes[full.name], pieces)


def check_destination(dst: str | os.PathLike[str], parts: list[Path] | tuple[Path, ...], *,
                      overwrite: bool) -> None:
    """DST is not an input (same path, link or inode), nor named like a further part; exists only if allowed.

    Raises:
        CannotWrite: DST is an input part or would look like one. FileExistsError: DST exists, overwrite is False.
    """
    dst = Path(dst)
    refuse_existing(dst, overwrite=overwrite, inputs=parts, role="input part")
    if _looks_like_part(dst, parts[0]):
        raise CannotWrite(f"{dst}: the output would be taken for a part of {parts[0]} (SRC.1, SRC.2, ... are parts); "
                         "choose another output name")


def _looks_like_part(dst: Path, src: Path) -> bool:
    """Whether DST is SRC.<number> in SRC's directory (compared by inode when the directory exists)."""
    if not re.fullmatch(re.escape(src.name) + r"\.\d+", dst.name):
        return False
    a, b = dst.parent, src.parent
    return a.exists() and os.path.samefile(a, b)


def migrate_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False,
                 progress: Progress | None = None, chunk_bytes: int = CHUNK_BYTES) -> Plan:
    """Migrate SRC (and SRC.1, SRC.2, ...) to one ggjt v1 file DST; return the written layout.

    Raises:
        FormatError: the inputs are malformed, inconsistent, or already ggjt (AlreadyMigrated).
        CannotWrite: DST is an input. OSError: DST exists (without overwrite), I/O failure, disk full.
    """
    check_destination(dst, find_parts(src), overwrite=overwrite)
    m = open_migration(src)
    write_migration(m, dst, overwrite=overwrite, progress=progress, chunk_bytes=chunk_bytes)
    log.info("wrote %s: %s from %d %s part(s), %d tensors, %s bytes", dst, OUTPUT_VERSION, m.n_parts,
             m.source_version, len(m.plan.tensors), f"{m.plan.size:,}")
    return m.plan
