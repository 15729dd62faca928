"""Old llama.cpp files -> one GGUF v3 file for today's llama.cpp (docs/format.md §9.1; bare § = its sections).

Inputs: old multi-part ggml/ggmf files (as the ggjt path reads them) and single-file ggjt v1/v2/v3.
Everything is planned before the first byte: parts opened and cross-checked, every quantized
tensor's f32 scales scanned (what f16 would round, §12.3), each tensor's GGUF type chosen (§12.1),
hyper-parameters (§14, §16) and vocabulary (§15) built, the GGUF layout planned (§11.8). Then the
shared unsharding engine writes it: unchanged bytes (F32, F16, ggjt v3 blocks, v2 Q5_*) move with
copy_file_range, repacked blocks and F32 fallbacks go through its bounded buffer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ggmlfmt.blocks.requant import Rounding, Target, f32_scale_fields, gguf_target, scan
from ggmlfmt.constants import CHUNK_BYTES, GGMLType
from ggmlfmt.errors import CannotWrite, FormatError, RequestError
from ggmlfmt.layout import Plan, TensorInfo
from ggmlfmt.llama.model import (
    GGUFVocab,
    LlamaHParams,
    OutTensor,
    llama_hparams,
    plan_llama_gguf,
    reconstruct_vocab,
    skipped_tensor,
)
from ggmlfmt.llama.spm import vocab_for_old_file
from ggmlfmt.parts import full_shape, shard_region, split_axis
from ggmlfmt.unshard import Piece, Source, open_read_only, write_tensors
from ggmlfmt.writer import FileWriter
from migrate.migrate import Progress, check_destination
from migrate.sources import OpenedParts, SourcePart, find_parts, open_part, open_parts

log = logging.getLogger(__name__)

NO_GGUF_BLOCK = (GGMLType.Q4_2, GGMLType.Q4_3)  # always written as F32 values (docs/format.md §12.2)


@dataclass(frozen=True, slots=True)
class TensorMove:
    """One source tensor on its way into the GGUF file."""

    name: str  # Meta/ggjt name in the source
    in_type: GGMLType
    target: Target  # GGUF type and block converter (None: the bytes pass unchanged)
    rounding: Rounding | None  # the scan of its f32 scales over every part (None: it has none)
    axis: int | None  # PyTorch split axis across parts (None: one part, or replicated)
    shape: tuple[int, ...]  # the whole tensor's PyTorch-order shape (a part holds 1/n of it along axis)
    record_offset: int  # of its record in part 0, for errors


@dataclass(frozen=True, slots=True)
class GGUFMigration(OpenedParts):
    """Opened, cross-checked parts, what happens to each tensor, and the planned GGUF file."""

    parts: tuple[SourcePart, ...]
    moves: tuple[TensorMove, ...]  # in output order: moves[i] becomes plan.tensors[i]
    plan: Plan  # names are GGUF names
    hparams: LlamaHParams
    vocab: GGUFVocab
    vocab_source: str  # "the file's texts" or the tokenizer.model path
    lossless: bool


def open_gguf_migration(src: str | os.PathLike[str], *, lossless: bool = False,
                        tokenizer: str | os.PathLike[str] | None = None, ctx: int | None = None,
                        eps: float | None = None, name: str | None = None) -> GGUFMigration:
    """Open SRC (and its parts), scan every quantized tensor and plan the GGUF output; nothing is written.

    Raises:
        FormatError: malformed or inconsistent input, a model GGUF cannot describe (names file and field),
            a tokenizer.model that is not this file's (--vocab). OSError: an input cannot be read.
    """
    parts = open_sources(src)
    part0 = parts[0]
    moves = tuple(_moves(parts, lossless))
    try:
        hp = _hparams(parts, moves, ctx, eps)
        gvocab = reconstruct_vocab(part0.index.vocab) if tokenizer is None else _tokenizer_vocab(tokenizer, part0)
        outs = [OutTensor(mv.name, mv.target.type, mv.shape) for mv in moves]
        plan = plan_llama_gguf(hp, gvocab, outs, name=name or _model_name(part0.path))
    except (FormatError, RequestError) as e:  # a spec GGUF cannot store is a CannotWrite
        raise e.with_path(part0.path) from None
    for mv, info in zip(moves, plan.tensors):
        _check_regions(info, mv, parts)
    return GGUFMigration(tuple(parts), moves, plan, hp, gvocab,
                         "the file's texts" if tokenizer is None else os.fspath(tokenizer), lossless)


def _tokenizer_vocab(path: str | os.PathLike[str], part0: SourcePart) -> GGUFVocab:
    """The GGUF vocabulary of --vocab's tokenizer.model, checked against part 0's texts (docs/format.md §15).

    Raises:
        FormatError: not a SentencePiece model, or not this file's. CannotWrite: sentencepiece is not installed.
        OSError: unreadable.
    """
    try:
        return vocab_for_old_file(path, part0.index.vocab)
    except ImportError as e:  # the one optional dependency, needed only for --vocab
        raise CannotWrite(f"--vocab {os.fspath(path)}: reading a tokenizer.model needs the sentencepiece package "
                         f"({e})") from None


def open_sources(src: str | os.PathLike[str]) -> list[SourcePart]:
    """Old ggml/ggmf parts (every cross-part check), or one ggjt file (which has no parts).

    Raises:
        FormatError: malformed input, or a ggjt file with SRC.1 beside it. OSError: unreadable.
    """
    paths = find_parts(src)
    part0 = open_part(paths[0], accept_ggjt=True)
    if part0.index.version.magic_name != "ggjt":
        return open_parts(src, part0)
    if len(paths) > 1:
        raise FormatError(f"is {part0.index.version}, a single-file format, but {paths[1].name} exists beside it; "
                          "multi-part ggjt files are not read (move it away if it is not part of this model)",
                          path=part0.path, offset=0, field="magic")
    return [part0]


def _moves(parts: list[SourcePart], lossless: bool) -> Iterator[TensorMove]:
    """Each tensor's GGUF target, in part 0's order; RoPE frequency tables are left out (docs/format.md §13)."""
    part0 = parts[0]
    generation = part0.index.version.block_generation
    n = len(parts)
    for i, t in enumerate(part0.index.tensors):
        if skipped_tensor(t.name):
            log.info("%s: skipping %s (RoPE frequencies; every loader recomputes them)", part0.path, t.name)
            continue
        rounding = None
        if f32_scale_fields(generation, t.type):
            rounding = sum((scan(p.raw(p.index.tensors[i]).view(t.block.dtype), generation, t.type) for p in parts),
                           Rounding())
        target = gguf_target(generation, t.type, lossless, rounding=rounding)
        if len(t.ne) == 1 and t.type is GGMLType.F16:  # norms are F32 in every GGUF LLaMA (exact)
            target = Target(GGMLType.F32, _to_f32)
        axis = split_axis(t.name, len(t.ne)) if n > 1 else None
        yield TensorMove(t.name, t.type, target, rounding, axis, full_shape(t.shape, axis, n), t.record_offset)


def _to_f32(values: np.ndarray) -> np.ndarray:
    return values.astype("<f4")


def _hparams(parts: list[SourcePart], moves: Sequence[TensorMove], ctx: int | None, eps: float | None) -> LlamaHParams:
    """llama.* values from part 0's header and the full tensor shapes (n_ff, head_count_kv from tensors).

    Raises:
        FormatError: a missing tensor, a shape that disagrees, n_rot other than the head size.
    """
    h = parts[0].index.hparams
    shapes = {mv.name: mv.shape for mv in moves}
    return llama_hparams(shapes, n_vocab=h.n_vocab, n_embd=h.n_embd, n_head=h.n_head, n_layer=h.n_layer,
                         n_rot=h.n_rot, context_length=ctx, rms_eps=eps)


def _model_name(path: Path) -> str:
    """general.name: the source file's name without its .bin suffix."""
    return path.name.removesuffix(".bin") or path.name


def _check_regions(full: TensorInfo, mv: TensorMove, parts: list[SourcePart]) -> None:
    """Every part's share lands on whole rows or whole output blocks (checked before any byte is written).

    Raises:
        FormatError: naming part 0's record of the tensor.
    """
    for k in range(len(parts)):
        try:
            shard_region(full, mv.axis, len(parts), k)
        except CannotWrite as e:
            raise e.with_path(parts[0].path, offset=mv.record_offset) from None


# ------------------------------------------------------------------ what to say before writing


def rounding_summary(m: GGUFMigration) -> str | None:
    """One line when f16 rounds some scales (or --lossless kept them as F32); None when nothing rounds."""
    would = [mv for mv in m.moves if mv.rounding is not None and not mv.rounding.exact and not mv.rounding.overflow]
    if not would:
        return None
    worst = max(mv.rounding.max_rel_change for mv in would)  # type: ignore[union-attr]
    if m.lossless:
        return (f"--lossless: {len(would)} tensor(s) whose f32 scales f16 would round (largest relative change "
                f"{worst:.3g}) are written as F32 values")
    return (f"{len(would)} tensor(s) have f32 scales that f16 rounds, largest relative change {worst:.3g}; "
            "--lossless writes those tensors as F32 instead")


def notes(m: GGUFMigration) -> list[tuple[int, str]]:
    """Every (log level, line) the command says on stderr before writing: defaults used, F32 fallbacks, rounding.

    What changes values (rounding, overflow fallbacks) is a warning, so --quiet does not hide it.
    """
    out = []
    if "context_length" in m.hparams.defaults:
        out.append(f"llama.context_length is not in the input: using {m.hparams.context_length} (LLaMA-1); "
                   "--ctx overrides")
    if "rms_eps" in m.hparams.defaults:
        out.append(f"llama.attention.layer_norm_rms_epsilon is not in the input: using {m.hparams.rms_eps:g} "
                   "(LLaMA-1); --eps overrides")
    if m.parts[0].index.vocab.scores is None and m.vocab_source == "the file's texts":
        out.append(f"{m.parts[0].path.name} is unversioned 'ggml' and has no token scores: writing 0.0 for every "
                   "token (--vocab tokenizer.model gives the real ones)")
    old = [mv for mv in m.moves if mv.in_type in NO_GGUF_BLOCK]
    if old:
        kinds = "/".join(sorted({mv.in_type.name for mv in old}))
        out.append(f"{len(old)} {kinds} tensor(s) written as F32 values: GGUF has no 16-element block "
                   "(docs/format.md §12.2)")
    out = [(logging.INFO, line) for line in out]
    over = [mv for mv in m.moves if mv.rounding is not None and mv.rounding.overflow]
    if over:
        out.append((logging.WARNING, f"{len(over)} tensor(s) have scales beyond f16's range: written as F32 values "
                                     "(docs/format.md §12.3)"))
    summary = rounding_summary(m)
    return out + ([(logging.WARNING, summary)] if summary else [])


# ------------------------------------------------------------------ writing


def write_gguf_migration(m: GGUFMigration, dst: str | os.PathLike[str], *, overwrite: bool = False,
                         progress: Progress | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Write the planned GGUF file: temp file beside DST, every tensor placed, coverage proven, renamed.

    Raises:
        OSError: DST exists without overwrite, disk full, ... (the temp file is removed; DST untouched).
        CannotWrite: a part does not fit its planned place (cannot happen after open_gguf_migration's checks).
    """
    with ExitStack() as stack:
        fds = [open_read_only(stack, p.path) for p in m.parts]
        w = stack.enter_context(FileWriter(dst, m.plan, overwrite=overwrite, progress=progress))
        write_tensors(w, _sources(m, fds), chunk_bytes=chunk_bytes)


def _fill(convert: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], None]:
    """A requant converter (blocks -> new array) as the engine's fill(src_rows, out_rows)."""
    def fill(src: np.ndarray, out: np.ndarray) -> None:
        out[...] = convert(src)
    return fill


def _sources(m: GGUFMigration, fds: list[int]) -> Iterator[Source]:
    """Each output tensor with its piece in every part (the same record in each: checked on opening)."""
    index_of = {t.name: i for i, t in enumerate(m.parts[0].index.tensors)}
    for mv, full in zip(m.moves, m.plan.tensors):
        i = index_of[mv.name]
        pieces = []
        for part, fd in zip(m.parts, fds):
            t = part.index.tensors[i]
            raw = part.raw(t)
            pieces.append(Piece(fd, t.offset, raw if mv.target.convert is None else raw.view(t.block.dtype)))
        convert = None if mv.target.convert is None else _fill(mv.target.convert)
        yield Source(full, mv.axis, pieces, convert)


def migrate_to_gguf(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False,
                    lossless: bool = False, tokenizer: str | os.PathLike[str] | None = None, ctx: int | None = None,
                    eps: float | None = None, progress: Progress | None = None) -> GGUFMigration:
    """Migrate SRC (and SRC.1, ... for ggml/ggmf) to one GGUF v3 file DST; return what was planned.

    Raises:
        FormatError: malformed or inconsistent input, a model GGUF cannot describe, a mismatching --vocab.
        CannotWrite: DST is an input. OSError: DST exists (without overwrite), I/O failure, disk full.
    """
    check_destination(dst, find_parts(src), overwrite=overwrite)
    m = open_gguf_migration(src, lossless=lossless, tokenizer=tokenizer, ctx=ctx, eps=eps)
    for level, line in notes(m):
        log.log(level, "%s", line)
    write_gguf_migration(m, dst, overwrite=overwrite, progress=progress)
    return m
