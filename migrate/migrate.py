"""Old llama.cpp files -> one ggjt v1 file exactly as the 2023 migrate script wrote it, or one GGUF v3 file
for today's llama.cpp (docs/format.md §9, §9.1; bare § = its sections).

One pipeline with a format branch, everything planned before the first byte: the parts are found and
the destination checked once, every part mapped and parsed once and cross-checked (migrate.sources),
then the output planned as a `ggmlfmt.job.Job`, which the command writes or describes.

- ggjt: part 0's header (hparams and ftype unchanged), vocabulary and tensor order, every tensor at
  its full shape; blocks are copied, never re-quantized.
- GGUF: inputs are old ggml/ggmf parts or single-file ggjt v1/v2/v3. Every quantized tensor's f32
  scales are scanned (what f16 would round, §12.3), each tensor's GGUF type chosen (§12.1), the
  hyper-parameters (§14, §16) and vocabulary (§15) built, the GGUF layout planned (§11.8); the RoPE
  tables are left out (§13).

Writing goes through the shared engine (ggmlfmt.unshard) from read-only maps of the parts: unchanged
bytes move with copy_file_range, repacked blocks and F32 fallbacks through its bounded buffer.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ggmlfmt.blocks.floats import Convert, f16_to_f32
from ggmlfmt.blocks.requant import Rounding, Target, f32_scale_fields, gguf_target, scan
from ggmlfmt.constants import CHUNK_BYTES, FileVersion, GGMLType
from ggmlfmt.errors import CannotWrite, FormatError, RequestError
from ggmlfmt.job import FORMATS, Job, Note, Progress, Tensor, log_notes, write
from ggmlfmt.layout import Plan, TensorInfo, Vocab, plan
from ggmlfmt.llama.model import (
    GGUFVocab,
    LlamaHParams,
    OutTensor,
    check_overrides,
    llama_hparams,
    plan_llama_gguf,
    reconstruct_vocab,
    skipped_tensor,
)
from ggmlfmt.llama.spm import vocab_for_old_file
from ggmlfmt.parts import full_shape, shard_region, split_axis
from ggmlfmt.unshard import Piece, Source, open_read_only
from ggmlfmt.writer import refuse_existing
from migrate.sources import SourcePart, find_parts, open_parts

log = logging.getLogger(__name__)

OUTPUT_VERSION = FileVersion.GGJT_V1  # what the 2023 script wrote; v1 keeps the old quantized block layouts
GGML_SCORE = 0.0  # unversioned 'ggml' has no token scores; ggjt and GGUF need one per token
NO_GGUF_BLOCK = (GGMLType.Q4_2, GGMLType.Q4_3)  # always written as F32 values (§12.2)


def plan_migration(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, fmt: str = "ggjt",
                   overwrite: bool = False, lossless: bool = False, tokenizer: str | os.PathLike[str] | None = None,
                   ctx: int | None = None, eps: float | None = None) -> Job:
    """Find SRC's parts, check DST, open and check every part, and plan the output; nothing is written.

    fmt "ggjt": the 2023 file (lossless, tokenizer, ctx and eps must be left unset); "gguf": GGUF v3, with
    tokenizer a tokenizer.model checked against the file's texts, ctx and eps None meaning LLaMA-1's values.

    Raises:
        CannotWrite: an unknown format, a GGUF option with ggjt, DST is an input or looks like a further
            part, a split off row or block boundaries, sentencepiece missing for a tokenizer.
        FileExistsError: DST exists and overwrite is False.
        FormatError (AlreadyMigrated for a ggjt input with ggjt output): malformed or inconsistent inputs, a
            model GGUF cannot describe, a tokenizer.model that is not this file's. OSError: unreadable.
    """
    if fmt not in FORMATS:
        raise CannotWrite(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    given = [o for o, v in (("--lossless", lossless), ("--vocab", tokenizer), ("--ctx", ctx), ("--eps", eps))
             if v not in (None, False)]
    if fmt == "ggjt" and given:
        raise CannotWrite(f"{', '.join(given)}: only with --format gguf (ggjt output copies the old file's blocks, "
                          "vocabulary and header unchanged)")
    check_overrides(ctx, eps)
    paths = find_parts(src)
    check_destination(dst, paths, overwrite=overwrite)  # the run's one check, before reading gigabytes
    parts = open_parts(paths, accept_ggjt=fmt == "gguf")
    part0, n, records = parts[0], len(parts), parts[0].index.tensors
    axes = [split_axis(t.name, len(t.ne)) if n > 1 else None for t in records]
    shapes = [full_shape(t.shape, axis, n) for t, axis in zip(records, axes)]
    if fmt == "gguf":
        layout, picks, notes, heading, facts = _plan_gguf(parts, shapes, lossless, tokenizer, ctx, eps)
    else:
        layout, picks, notes, heading, facts = _plan_ggjt(parts, shapes)
    tensors = []
    for info, (i, _) in zip(layout.tensors, picks):
        for k in range(n):  # every split checked before the first byte is written
            try:
                shard_region(info, axes[i], n, k)
            except CannotWrite as e:
                raise e.with_path(part0.path, offset=records[i].record_offset) from None
        tensors.append(Tensor(info, records[i].name, records[i].type.name, shapes[i], records[i].shape, axes[i]))
    picked = {i for i, _ in picks}
    return Job(Path(dst), layout, tuple(tensors), partial(_sources, parts, tensors, picks), tuple(paths),
               overwrite=overwrite, notes=tuple(notes), skipped=tuple(t.name for i, t in enumerate(records)
                                                                      if i not in picked),
               heading=(f"input   {part0.index.version}, {n} part(s): {', '.join(p.name for p in paths)}", *heading),
               columns=("types" if fmt == "gguf" else "type", "shape", "split"),
               facts={"source_format": str(part0.index.version), **facts})


def check_destination(dst: str | os.PathLike[str], parts: Sequence[Path], *, overwrite: bool) -> None:
    """DST is not an input (same path, link or inode), nor named like a further part; exists only if allowed.

    Raises:
        CannotWrite: DST is an input part or would look like one. FileExistsError: DST exists, overwrite is False.
    """
    dst = Path(dst)
    refuse_existing(dst, overwrite=overwrite, inputs=parts, role="input part")
    src = parts[0]
    if re.fullmatch(re.escape(src.name) + r"\.\d+", dst.name) and dst.parent.exists() \
            and os.path.samefile(dst.parent, src.parent):
        raise CannotWrite(f"{dst}: the output would be taken for a part of {src} (SRC.1, SRC.2, ... are parts); "
                          "choose another output name")


Pick = tuple[int, Convert | None]  # an output tensor's record index in every part, and its block converter
Planned = tuple[Plan, list[Pick], list[Note], list[str], dict[str, Any]]  # + describe's heading lines and facts


def _plan_ggjt(parts: list[SourcePart], shapes: list[tuple[int, ...]]) -> Planned:
    """The ggjt v1 layout: part 0's header, vocabulary (scores added for ggml) and order, full shapes.

    Raises:
        CannotWrite: a full dim beyond i32 (the parts cannot be one file), naming part 0.
    """
    part0 = parts[0]
    vocab, notes = part0.index.vocab, []
    if vocab.scores is None:
        vocab = Vocab(vocab.tokens, np.full(len(vocab), GGML_SCORE, dtype=np.float32))
        notes.append(Note(logging.WARNING, "vocab", _no_scores(part0, "regenerate the vocabulary from "
                                                                      "tokenizer.model for real scores")))
    specs = [TensorInfo.from_shape(t.name, t.type, shape) for t, shape in zip(part0.index.tensors, shapes)]
    try:
        layout = plan(OUTPUT_VERSION, part0.index.hparams, vocab, specs)
    except CannotWrite as e:
        raise e.with_path(part0.path) from None
    heading = [f"output  {layout.version}, {len(layout.tensors)} tensors"]
    return layout, [(i, None) for i in range(len(specs))], notes, heading, {"hparams": asdict(layout.hparams)}


def _no_scores(part0: SourcePart, hint: str) -> str:
    return (f"{part0.path} is unversioned 'ggml' and has no token scores: writing {GGML_SCORE} for every "
            f"token ({hint})")


def _plan_gguf(parts: list[SourcePart], shapes: list[tuple[int, ...]], lossless: bool,
               tokenizer: str | os.PathLike[str] | None, ctx: int | None, eps: float | None) -> Planned:
    """Each tensor's GGUF target (scales scanned over every part), the hyper-parameters, vocabulary and layout.

    Raises:
        FormatError: a model GGUF cannot describe (names part 0 and the field), a tokenizer.model that is not
            this file's. CannotWrite: a spec GGUF cannot store; sentencepiece missing for a tokenizer.
    """
    part0 = parts[0]
    generation = part0.index.version.block_generation
    outs, picks, roundings, skipped = [], [], [], []
    for i, t in enumerate(part0.index.tensors):
        if skipped_tensor(t.name):
            skipped.append(t.name)
            continue
        rounding = None
        if f32_scale_fields(generation, t.type):
            rounding = sum((scan(p.raw(p.index.tensors[i]).view(t.block.dtype), generation, t.type) for p in parts),
                           Rounding())
        target = gguf_target(generation, t.type, lossless, rounding=rounding)
        if len(t.ne) == 1 and t.type is GGMLType.F16:  # norms are F32 in every GGUF LLaMA (exact)
            target = Target(GGMLType.F32, f16_to_f32)
        outs.append(OutTensor(t.name, target.type, shapes[i]))
        picks.append((i, target.convert))
        roundings.append(rounding)
    h = part0.index.hparams
    try:
        vocab = reconstruct_vocab(part0.index.vocab) if tokenizer is None else _tokenizer_vocab(tokenizer, part0)
        hp = llama_hparams({t.name: t.shape for t in outs}, n_vocab=h.n_vocab, n_embd=h.n_embd, n_head=h.n_head,
                           n_layer=h.n_layer, n_rot=h.n_rot, context_length=ctx, rms_eps=eps)
        layout, _ = plan_llama_gguf(hp, vocab, outs, name=part0.path.name.removesuffix(".bin") or part0.path.name)
    except (FormatError, RequestError) as e:
        raise e.with_path(part0.path) from None
    vocab_source = "the file's texts" if tokenizer is None else os.fspath(tokenizer)
    heading = [f"output  {layout.version}, {len(outs)} tensors, vocabulary from {vocab_source}",
               (f"llama   n_vocab {hp.n_vocab}, n_embd {hp.n_embd}, n_layer {hp.n_layer}, n_head {hp.n_head}, "
                f"n_head_kv {hp.n_head_kv}, n_ff {hp.n_ff}, n_rot {hp.n_rot}, context {hp.context_length}, "
                f"eps {hp.rms_eps:g}")]
    in_types = [part0.index.tensors[i].type for i, _ in picks]
    notes = _gguf_notes(part0, hp, tokenizer is None, in_types, roundings, lossless, skipped)
    return layout, picks, notes, heading, {"llama": asdict(hp), "vocab": vocab_source}


def _tokenizer_vocab(path: str | os.PathLike[str], part0: SourcePart) -> GGUFVocab:
    """The GGUF vocabulary of --vocab's tokenizer.model, checked against part 0's texts (§15).

    Raises:
        FormatError: not a SentencePiece model, or not this file's. CannotWrite: sentencepiece is not installed.
        OSError: unreadable.
    """
    try:
        return vocab_for_old_file(path, part0.index.vocab)
    except ImportError as e:  # the one optional dependency, needed only for --vocab
        raise CannotWrite(f"--vocab {os.fspath(path)}: reading a tokenizer.model needs the sentencepiece package "
                          f"({e})") from None


def _gguf_notes(part0: SourcePart, hp: LlamaHParams, file_texts: bool, in_types: list[GGMLType],
                roundings: list[Rounding | None], lossless: bool, skipped: list[str]) -> list[Note]:
    """Defaults used, tensors left out, F32 fallbacks, rounding: what changes values is a warning."""
    info, warn = logging.INFO, logging.WARNING
    notes = [Note(info, "skipped", f"{name}: RoPE frequencies, which every loader recomputes") for name in skipped]
    if "context_length" in hp.defaults:
        notes.append(Note(info, "default", f"llama.context_length is not in the input: using {hp.context_length} "
                                           "(LLaMA-1); --ctx overrides"))
    if "rms_eps" in hp.defaults:
        notes.append(Note(info, "default", "llama.attention.layer_norm_rms_epsilon is not in the input: using "
                                           f"{hp.rms_eps:g} (LLaMA-1); --eps overrides"))
    if part0.index.vocab.scores is None and file_texts:
        notes.append(Note(info, "vocab", _no_scores(part0, "--vocab tokenizer.model gives the real ones")))
    old = [t for t in in_types if t in NO_GGUF_BLOCK]
    if old:
        kinds = "/".join(sorted({t.name for t in old}))
        notes.append(Note(info, "types", f"{len(old)} {kinds} tensor(s) written as F32 values: GGUF has no "
                                         "16-element block (docs/format.md §12.2)"))
    over = sum(r is not None and r.overflow > 0 for r in roundings)
    if over:
        notes.append(Note(warn, "scales", f"{over} tensor(s) have scales beyond f16's range: written as F32 values "
                                          "(docs/format.md §12.3)"))
    would = [r for r in roundings if r is not None and not r.exact and not r.overflow]
    worst = max((r.max_rel_change for r in would), default=0.0)
    if not would:
        notes.append(Note(logging.DEBUG, "scales", "no f32 scale rounds: every tensor keeps its exact values"))
    elif lossless:
        notes.append(Note(warn, "scales", f"--lossless: {len(would)} tensor(s) whose f32 scales f16 would round "
                                          f"(largest relative change {worst:.3g}) are written as F32 values"))
    else:
        notes.append(Note(warn, "scales", f"{len(would)} tensor(s) have f32 scales that f16 rounds, largest relative "
                                          f"change {worst:.3g}; --lossless writes those tensors as F32 instead"))
    return notes


def _sources(parts: list[SourcePart], tensors: list[Tensor], picks: list[Pick], stack: ExitStack) -> Iterator[Source]:
    """Each output tensor with its piece in every part (the same record in each: checked on opening)."""
    fds = [open_read_only(stack, p.path) for p in parts]
    for t, (i, convert) in zip(tensors, picks):
        pieces = []
        for part, fd in zip(parts, fds):
            rec = part.index.tensors[i]
            raw = part.raw(rec)
            pieces.append(Piece(fd, rec.offset, raw if convert is None else raw.view(rec.block.dtype)))
        yield Source(t.info, t.axis, pieces, convert)


def migrate_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, fmt: str = "ggjt",
                 overwrite: bool = False, progress: Progress | None = None, chunk_bytes: int = CHUNK_BYTES,
                 **options) -> Plan:
    """Migrate SRC (and SRC.1, SRC.2, ...) to one file DST (options: plan_migration's); return the written layout.

    Raises:
        as plan_migration and ggmlfmt.job.write.
    """
    job = plan_migration(src, dst, fmt=fmt, overwrite=overwrite, **options)
    log_notes(job, log)
    write(job, progress=progress, chunk_bytes=chunk_bytes)
    return job.plan
