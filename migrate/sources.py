"""The old multi-part files of one model: find them, map them, and prove they belong together.

Every check names the part file, the offset and the field or tensor that is wrong. Parts are
mapped read-only (numpy.memmap); nothing here copies tensor data into private memory.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ggmlfmt.constants import HPARAMS, GGMLType
from ggmlfmt.errors import BadLayout, BadMagic, BadValue, FormatError
from ggmlfmt.layout import (
    HParams,
    Index,
    TensorInfo,
    decode_index,
    decode_version,
    vocab_bytes,
)
from ggmlfmt.parts import split_axis
from ggmlfmt.reader import map_file

log = logging.getLogger(__name__)


# What the pre-ggjt tools could write: every other type code appeared only after ggjt (2023-03-29).
OLD_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.Q4_0, GGMLType.Q4_1)
PART_COUNT_TENSOR = "tok_embeddings.weight"  # its ne[0] is n_embd / parts (the 04-08 loader's rule)
COMPARE_CHUNK = 1 << 22  # bytes of replicated tensors compared at a time


class AlreadyMigrated(FormatError):
    """The input is already a ggjt file: there is nothing to migrate."""


@dataclass(frozen=True, slots=True)
class SourcePart:
    """One part file: its path, its parsed index, and a read-only map of all its bytes."""

    path: Path
    index: Index
    data: np.ndarray  # uint8 memmap, mode "r"

    def raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes as a (rows, row_bytes) uint8 view of the map (no copy)."""
        return self.data[info.offset : info.offset + info.nbytes].reshape(info.n_rows, info.row_bytes)


def find_parts(src: str | os.PathLike[str]) -> list[Path]:
    """SRC, SRC.1, SRC.2, ... as long as they exist.

    Raises:
        FileNotFoundError: SRC does not exist.
    """
    first = Path(src)
    if not first.exists():
        raise FileNotFoundError(2, "No such file or directory", str(first))
    return part_paths(first)


def part_paths(first: Path) -> list[Path]:
    """`first`, then `first.1`, `first.2`, ... while they exist (the old multi-part naming, docs/format.md §6.1)."""
    paths = [first]
    while (nxt := first.with_name(f"{first.name}.{len(paths)}")).exists():
        paths.append(nxt)
    return paths


def open_part(path: Path, part0: SourcePart | None = None, *, accept_ggjt: bool = False) -> SourcePart:
    """Map one part and parse its structure; its format is checked first (old, or the same as part 0's).

    accept_ggjt: part 0 may also be a single-file ggjt v1/v2/v3 (the GGUF output path reads those).

    Raises:
        AlreadyMigrated: part 0 is a ggjt file and accept_ggjt is False. FormatError: wrong format, or
            malformed (names file, offset, field). OSError: unreadable.
    """
    data = map_file(path, "r")
    try:
        version, _ = decode_version(memoryview(data))
    except FormatError as e:
        raise e.with_path(path) from None
    if part0 is None and version.magic_name == "ggjt" and not accept_ggjt:  # decode_version knows no other
        raise AlreadyMigrated(f"already {version}, the aligned single-file format this command writes; "
                              "nothing to migrate (load it directly, or write GGUF with --format gguf)",
                              path=path, offset=0, field="magic")
    if part0 is not None and version is not part0.index.version:
        raise BadMagic(f"is {version} but part 0 ({part0.path.name}) is {part0.index.version}; all parts must "
                       "have the same format", path=path, offset=0, field="magic")
    return SourcePart(path, decode_index(memoryview(data), path=os.fspath(path)), data)


def check_old_types(part: SourcePart) -> None:
    """Every record holds a type the pre-ggjt tools wrote (F32, F16, Q4_0, Q4_1).

    Raises:
        FormatError: naming the tensor, its record offset and its type.
    """
    allowed = ", ".join(t.name for t in OLD_TYPES)
    for t in part.index.tensors:
        if t.type not in OLD_TYPES:
            raise BadValue(f"type {t.type.name} did not exist before ggjt; a {part.index.version} file holds "
                           f"only {allowed}", path=part.path, offset=t.record_offset + 8, field=f"tensor {t.name!r}")


def implied_part_count(part0: SourcePart, found: int) -> int:
    """How many parts part 0 says the model has: n_embd / ne[0] of tok_embeddings.weight.

    Without that tensor a lone file is taken as one part (nothing to split).

    Raises:
        FormatError: the tensor is missing while other parts exist, is not 2-D, or does not divide n_embd.
    """
    info = part0.index.by_name().get(PART_COUNT_TENSOR)
    n_embd = part0.index.hparams.n_embd
    if info is None:
        if found == 1:
            return 1
        raise BadLayout(f"no {PART_COUNT_TENSOR} record, so the number of parts cannot be checked "
                        f"({found} part files exist)", path=part0.path, field=PART_COUNT_TENSOR)
    where = {"path": part0.path, "offset": info.record_offset, "field": f"tensor {PART_COUNT_TENSOR!r}"}
    if len(info.ne) != 2:
        raise BadValue(f"expected 2 dims, found {len(info.ne)}", **where)
    if info.ne[0] <= 0 or n_embd % info.ne[0]:
        raise BadValue(f"ne[0] = {info.ne[0]} does not divide the header's n_embd {n_embd}, so it is not "
                       "a whole shard of the embedding", **where)
    return n_embd // info.ne[0]


def check_part_count(paths: Sequence[Path], implied: int, part0: SourcePart) -> None:
    """The part files found on disk are exactly the ones part 0 implies.

    Raises:
        FormatError: a part is missing, or an extra one exists.
    """
    if len(paths) == implied:
        return
    found = ", ".join(p.name for p in paths)
    why = f"n_embd {part0.index.hparams.n_embd} / ne[0] of {PART_COUNT_TENSOR} = {implied} part(s)"
    if len(paths) < implied:
        missing = paths[0].with_name(f"{paths[0].name}.{len(paths)}")
        hint = _first_part_hint(paths[0])
        raise BadLayout(f"{why}, but {missing.name} does not exist (found {found}){hint}", path=part0.path)
    raise BadLayout(f"{why}, but {paths[implied].name} also exists (found {found}); move it away if it is "
                    "not part of this model", path=part0.path)


def _first_part_hint(src: Path) -> str:
    """A hint when SRC looks like a later part (model.bin.1) of a model whose first part exists."""
    m = re.fullmatch(r"(.+)\.(\d+)", src.name)
    if m and src.with_name(m[1]).exists():
        return f"; {src.name} looks like part {m[2]} of {m[1]}: pass the first part"
    return ""


def check_same_header(part0: SourcePart, part: SourcePart) -> None:
    """Header fields and every vocabulary entry (text and score) equal part 0's (the format is checked on opening).

    Raises:
        FormatError: naming the part, the offset and the first field that differs.
    """
    a, b = part0.index, part.index
    for i, (name, x, y) in enumerate(zip(HParams.__slots__, a.hparams.astuple(), b.hparams.astuple())):
        if x != y:
            raise BadValue(f"{y} here, {x} in part 0 ({part0.path.name}); all parts must have the same header",
                           path=part.path, offset=b.header_size - HPARAMS.size + 4 * i, field=name)
    i = _first_vocab_difference(a, b)
    if i is not None:
        raise BadValue(f"{_vocab_entry(b, i)} here, {_vocab_entry(a, i)} in part 0 ({part0.path.name}); all "
                       "parts must have the same vocabulary", path=part.path, offset=_vocab_offset(b, i),
                       field=f"vocab[{i}]")


def _first_vocab_difference(a: Index, b: Index) -> int | None:
    """Index of the first entry whose text or score (bit for bit) differs; None if all agree."""
    if a.vocab.tokens != b.vocab.tokens:  # same n_vocab (header checked first), so one entry differs
        return next(i for i, (x, y) in enumerate(zip(a.vocab.tokens, b.vocab.tokens)) if x != y)
    if a.vocab.scores is not None and b.vocab.scores is not None:
        diff = np.nonzero(a.vocab.scores.view(np.uint32) != b.vocab.scores.view(np.uint32))[0]
        if len(diff):
            return int(diff[0])
    return None


def _vocab_entry(index: Index, i: int) -> str:
    text = index.vocab.tokens[i]
    return f"{text!r}" if index.vocab.scores is None else f"{text!r} score {index.vocab.scores[i]!r}"


def _vocab_offset(index: Index, i: int) -> int:
    """File offset of vocabulary entry i (entries have variable length)."""
    return index.header_size + vocab_bytes(index.vocab.tokens[:i], index.vocab.scores is not None)


def check_same_records(part0: SourcePart, part: SourcePart) -> None:
    """Same tensors in the same order, with the same type and the same shard dims, as part 0.

    Raises:
        FormatError: naming the part, the record offset and the tensor.
    """
    a, b = part0.index.tensors, part.index.tensors
    for i, (x, y) in enumerate(zip(a, b)):
        if (x.name, x.type, x.ne) != (y.name, y.type, y.ne):
            raise BadLayout(f"found {_describe(y)}, part 0 ({part0.path.name}) has {_describe(x)}; every part "
                            "holds the same tensors in the same order with the same shard shape",
                            path=part.path, offset=y.record_offset, field=f"tensor[{i}]")
    if len(a) != len(b):
        where = b[len(a)].record_offset if len(b) > len(a) else part.index.file_size
        extra = f"extra {_describe(b[len(a)])}" if len(b) > len(a) else f"missing {_describe(a[len(b)])}"
        raise BadLayout(f"{len(b)} tensors, part 0 ({part0.path.name}) has {len(a)}: {extra}",
                        path=part.path, offset=where, field=f"tensor[{min(len(a), len(b))}]")


def _describe(t: TensorInfo) -> str:
    return f"{t.name!r} {t.type.name} ne={list(t.ne)}"


def check_split_dims(part0: SourcePart, n_parts: int) -> None:
    """With several parts, only 1-D and 2-D tensors occur (the split rules cover nothing else).

    Raises:
        FormatError: naming the tensor and its record offset.
    """
    if n_parts == 1:
        return
    for t in part0.index.tensors:
        if len(t.ne) > 2:
            raise BadLayout(f"{len(t.ne)} dims in a {n_parts}-part model; the split rules cover 1-D and 2-D "
                            "tensors only", path=part0.path, offset=t.record_offset, field=f"tensor {t.name!r}")


def check_replicated(part0: SourcePart, part: SourcePart) -> None:
    """Tensors that are not split (1-D) hold the same bytes in every part.

    Only part 0's copy is written, so a difference would silently drop data; it is an error.

    Raises:
        FormatError: naming the part, the tensor and the first element that differs.
    """
    for x, y in zip(part0.index.tensors, part.index.tensors):
        if split_axis(x.name, len(x.ne)) is not None:
            continue
        a = part0.data[x.offset : x.offset + x.nbytes]
        b = part.data[y.offset : y.offset + y.nbytes]
        for start in range(0, x.nbytes, COMPARE_CHUNK):  # bounded temporaries whatever the size
            diff = np.nonzero(a[start : start + COMPARE_CHUNK] != b[start : start + COMPARE_CHUNK])[0]
            if len(diff):
                byte = start + int(diff[0])
                raise BadValue(f"differs from part 0 ({part0.path.name}) at data byte {byte} (element "
                               f"{byte // x.block.nbytes * x.block.elements}); a tensor that is not split must "
                               "be identical in every part", path=part.path, offset=y.offset + byte,
                               field=f"tensor {y.name!r}")


def open_parts(paths: Sequence[Path], *, accept_ggjt: bool = False) -> list[SourcePart]:
    """Map and parse every part once (paths: find_parts') and run every cross-part check.

    accept_ggjt: part 0 may be a single-file ggjt v1/v2/v3 (GGUF output), which has no further parts.

    Raises:
        AlreadyMigrated: a ggjt part 0 without accept_ggjt. FormatError: malformed or inconsistent parts, or a
            ggjt file with SRC.1 beside it. OSError: unreadable.
    """
    part0 = open_part(paths[0], accept_ggjt=accept_ggjt)
    if part0.index.version.magic_name == "ggjt":
        if len(paths) > 1:
            raise BadLayout(f"is {part0.index.version}, a single-file format, but {paths[1].name} exists beside it; "
                            "multi-part ggjt files are not read (move it away if it is not part of this model)",
                            path=part0.path, offset=0, field="magic")
        return [part0]
    check_old_types(part0)
    n_parts = implied_part_count(part0, len(paths))
    check_part_count(paths, n_parts, part0)
    check_split_dims(part0, n_parts)
    parts = [part0]
    for path in paths[1:]:
        part = open_part(path, part0)
        check_same_header(part0, part)
        check_same_records(part0, part)
        check_replicated(part0, part)
        parts.append(replace(part, index=replace(part.index, vocab=part0.index.vocab)))  # one copy is enough
    log.debug("%s: %s, %d part(s), %d tensors", paths[0], part0.index.version, n_parts, len(part0.index.tensors))
    return parts
