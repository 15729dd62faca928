"""One planner and one writer for every input: Meta LLaMA shards or a Hugging Face directory -> one ggjt v1
file (byte for byte what the post-#613 converter wrote, docs/format.md §8) or one GGUF v3 file for today's
llama.cpp (docs/format.md §8.1, §13-§16, §19).

Two phases. Planning checks the request, lets the input's source module (convert.shards, convert.hf)
open and parse each input file once and describe every output tensor (convert.source.TensorEntry),
chooses each tensor's output type, and lays out every byte of the output. Writing maps each input file
(no parsing: the plan holds every offset) and hands each tensor to the unsharding engine
(ggmlfmt.unshard): unchanged runs move inside the kernel, column splits and casts go through one buffer
of a few MB. The writer proves every data byte was written exactly once before renaming.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from convert import hf, shards
from convert.checkpoint import is_hf_dir
from convert.source import COMPUTED, Notes, Request, TensorEntry, file_stat, view_dtype
from ggmlfmt.blocks.floats import CASTS
from ggmlfmt.blocks.quantize import quantize_q8_0
from ggmlfmt.constants import (
    BLOCK_LAYOUTS,
    CHUNK_BYTES,
    GGUF_BLOCK_GENERATION,
    FileVersion,
    FType,
    GGMLType,
    GGUFValueType,
)
from ggmlfmt.errors import BadLayout, CannotWrite
from ggmlfmt.job import SUFFIXES, Job, Note, Tensor, output_format, write
from ggmlfmt.layout import HParams, Plan, TensorInfo, plan
from ggmlfmt.llama.model import (
    GGUFVocab,
    LlamaHParams,
    MetaKV,
    OutTensor,
    check_overrides,
    plan_llama_gguf,
)
from ggmlfmt.unshard import Piece, Source, computed_source, open_read_only
from ggmlfmt.writer import refuse_existing

log = logging.getLogger(__name__)

__all__ = ["COMPUTED", "ConversionPlan", "GGUFContent", "TensorEntry", "convert_checkpoint", "job", "plan_conversion",
           "write_conversion"]

# --outtype -> the type of every 2-D weight (docs/format.md §8.3); "auto": the checkpoint's own (AUTO_TYPES)
OUTTYPES: dict[str, GGMLType | None] = {"auto": None, "bf16": GGMLType.BF16, "f16": GGMLType.F16,
                                        "f32": GGMLType.F32, "q8_0": GGMLType.Q8_0}
AUTO_TYPES = {"bfloat16": GGMLType.BF16, "float16": GGMLType.F16, "float32": GGMLType.F32}  # never rounds
TYPE_NAMES = {t: name for name, t in OUTTYPES.items() if t is not None}  # GGMLType -> its --outtype (file names)
GGJT_FTYPES = {"f16": FType.MOSTLY_F16, "f32": FType.ALL_F32}  # the 2023 file's types; "auto" means f16 there
GGJT_AUTO = "f16"  # the 2023 converter's default, kept so the ggjt default output is unchanged
# LlamaHParams.defaults names -> the GGUF keys they fill (--dry-run marks them)
DEFAULTED_KEYS = {"context_length": "llama.context_length", "rms_eps": "llama.attention.layer_norm_rms_epsilon"}
# Converters by (checkpoint dtype, output type) beyond the float casts: the q8_0 quantizer (ggmlfmt.blocks.quantize)
QUANTIZERS = {(dtype, GGMLType.Q8_0): quantize_q8_0 for dtype in AUTO_TYPES}


@dataclass(frozen=True, slots=True)
class GGUFContent:
    """The metadata a GGUF conversion writes (docs/format.md §14), as planned: what --dry-run shows."""

    hparams: LlamaHParams
    vocab: GGUFVocab
    metadata: tuple[MetaKV, ...]  # every key/value in file order (general.alignment apart)


@dataclass(frozen=True, slots=True)
class ConversionPlan:
    """Everything known before the first byte is written: the layout, and where every tensor's bytes lie."""

    model_dir: Path
    outfile: Path
    outtype: str
    vocab_path: Path
    shards: tuple[Path, ...]  # the weight files (Meta shards, or a Hugging Face directory's files)
    stats: tuple[tuple[int, int, int], ...]  # each file's (inode, size, mtime) when it was parsed
    plan: Plan
    entries: tuple[TensorEntry, ...]  # each with its planned info
    skipped: tuple[str, ...]  # tensors of the files not written (rope.freqs, rotary_emb.inv_freq)
    format: str = "ggjt"  # "ggjt" (v1) or "gguf" (v3)
    gguf: GGUFContent | None = None  # None for ggjt
    notes: tuple[Note, ...] = ()  # logged once planning succeeded; --dry-run lists them
    inputs: tuple[Path, ...] = ()  # every file read: params.json or config.json, the tokenizer, the weight files


def default_outfile(model_dir: str | os.PathLike[str], outtype: str, fmt: str = "gguf") -> Path:
    """MODEL_DIR/ggml-model-<outtype>.gguf, or .bin for ggjt (the 2023 converter's name).

    outtype "auto" must be resolved first (resolved_outtype): the name says what the file holds.
    """
    if outtype == "auto":
        raise CannotWrite("outtype 'auto' names no file: resolve it from the checkpoint first")
    return Path(model_dir) / f"ggml-model-{outtype}{SUFFIXES[fmt]}"


def check_outtype(outtype: str, fmt: str) -> str:
    """The outtype to plan with: ggjt's "auto" is f16 (the 2023 default).

    Raises:
        CannotWrite: an unknown outtype, or one the 2023 format has no type for.
    """
    if outtype not in OUTTYPES:
        raise CannotWrite(f"outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    if fmt == "ggjt" and outtype == "auto":
        return GGJT_AUTO
    if fmt == "ggjt" and outtype not in GGJT_FTYPES:
        raise CannotWrite(f"--outtype {outtype} needs --format gguf: the 2023 ggjt file holds only "
                          f"{' and '.join(GGJT_FTYPES)} weights")
    return outtype


def output_type(outtype: str, source_dtype: str, ndim: int) -> GGMLType:
    """The type a tensor is written as: 1-D always F32; 2-D the outtype's, or with "auto" the checkpoint's."""
    if ndim == 1:
        return GGMLType.F32  # docs/format.md §4.4
    fixed = OUTTYPES[outtype]
    return fixed if fixed is not None else AUTO_TYPES[source_dtype]


def check_rows(name: str, ggml_type: GGMLType, shape: tuple[int, ...]) -> None:
    """Raises: CannotWrite when rows of `shape` are not whole blocks of `ggml_type` (q8_0: 32 values)."""
    per_block = BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION][ggml_type].elements
    if shape[-1] % per_block:
        raise CannotWrite(f"tensor {name!r}: rows of {shape[-1]} values are not whole {ggml_type.name} blocks "
                          f"of {per_block}; choose another --outtype")


def resolved_outtype(types_2d: list[GGMLType]) -> str:
    """The outtype a file's 2-D types amount to (the most common one, as general.file_type): its name's part."""
    if not types_2d:
        return "f32"
    return TYPE_NAMES[max(set(types_2d), key=lambda t: (types_2d.count(t), -types_2d.index(t)))]


def plan_conversion(model_dir: str | os.PathLike[str], outfile: str | os.PathLike[str] | None = None, *,
                    outtype: str = "auto", tokenizer: str | os.PathLike[str] | None = None, fmt: str | None = None,
                    context_length: int | None = None, rms_eps: float | None = None,
                    llama_release: str | None = None, overwrite: bool = True) -> ConversionPlan:
    """Check every input and lay out the output file; parses each input once, writes nothing.

    fmt None: what outfile's name implies, else gguf (job.output_format). outtype "auto": each 2-D weight
    keeps its checkpoint type (gguf), f16 for ggjt; outfile None: MODEL_DIR/ggml-model-<resolved outtype>.
    fmt "ggjt": the 2023 file (context_length and rms_eps must be None). fmt "gguf": context_length
    None means LLaMA-1's 2048; rms_eps applies only when params.json has no norm_eps (None: 1e-6).
    A tiktoken tokenizer.model makes it a Llama 3 checkpoint (GGUF only, docs/format.md §16.1):
    llama_release ("3", "3.1", "3.2", "3.3") chooses the special tokens, None infers it from params.json;
    context_length None is then the release's (8,192 for 3, 131,072 for 3.1+). A Hugging Face directory
    (config.json, no params.json) is read by convert.hf (docs/format.md §19). The one "output exists"
    check of a run is here, as soon as the output name is known: an output that is an input is always
    refused, an existing one unless overwrite.

    Raises:
        FormatError: bad inputs (names the file, and the field or tensor).
        BadOption: --ctx or --eps out of range.
        CannotWrite: an unknown outtype or format, an option the input or format does not take, a model
            the format cannot hold, or an output path that is one of the inputs.
        FileExistsError: the output exists and not overwrite. OSError: an input cannot be read.
    """
    fmt, format_note = output_format(fmt, outfile)
    outtype = check_outtype(outtype, fmt)
    if fmt == "ggjt" and (context_length is not None or rms_eps is not None):
        raise CannotWrite("--ctx and --eps apply to --format gguf only (a ggjt file stores neither)")
    check_overrides(context_length, rms_eps)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a model directory", str(model_dir))
    req = Request(fmt, outtype, None if tokenizer is None else Path(tokenizer), context_length, rms_eps, llama_release)
    source = hf if is_hf_dir(model_dir) else shards
    found = source.locate(model_dir, req)
    out = (Path(outfile) if outfile is not None else None if outtype == "auto"
           else default_outfile(model_dir, outtype, fmt))
    if out is not None:
        refuse_existing(out, overwrite=overwrite, inputs=found.inputs)  # before reading more
    stats = tuple(file_stat(p) for p in found.files)  # before parsing: a file changed after this is refused
    notes = Notes()
    model = source.read(found, req, notes)
    outs = []
    for t in model.tensors:
        out_type = GGMLType.F32 if t.data is not None else output_type(outtype, t.source_dtype, len(t.shape))
        check_rows(t.name, out_type, t.shape)
        outs.append(OutTensor(t.llama_name, out_type, t.shape))
    content = None
    if fmt == "ggjt":
        p = model.params
        header = HParams(len(model.vocab), p.dim, p.multiple_of, p.n_heads, p.n_layers, p.n_rot,
                         int(GGJT_FTYPES[outtype]))
        layout = plan(FileVersion.GGJT_V1, header, model.vocab, [TensorInfo.from_shape(*t) for t in outs])
    else:
        layout, content = _plan_gguf(model.hparams, model.vocab, outs, model_dir.resolve().name or "llama",
                                     model.n_params, model.extra)
    entries = tuple(replace(t, info=info) for t, info in zip(model.tensors, layout.tensors, strict=True))
    notes += [format_note] if format_note else []
    notes += rounding_notes(entries)
    if out is None:
        out = default_outfile(model_dir, resolved_outtype([t.type for t in outs if len(t.shape) == 2]), fmt)
        refuse_existing(out, overwrite=overwrite, inputs=found.inputs)
    for note in notes:
        log.log(note.level, "%s", note.text)
    log.debug("planned %d tensors, %s bytes", len(layout.tensors), f"{layout.size:,}")
    return ConversionPlan(model_dir, out, outtype, found.vocab, found.files, stats, layout, entries,
                          model.skipped, fmt, content, tuple(notes), tuple(found.inputs))


def _plan_gguf(hp: LlamaHParams, vocab: GGUFVocab, outs: list[OutTensor], name: str, n_params: int | None,
               extra: tuple[MetaKV, ...]) -> tuple[Plan, GGUFContent]:
    """The GGUF layout (llama.plan_llama_gguf) and the metadata it writes, kept for --dry-run."""
    layout, metadata = plan_llama_gguf(hp, vocab, outs, name=name, n_params=n_params, extra=extra)
    return layout, GGUFContent(hp, vocab, tuple(metadata))


# (output type, checkpoint dtype) pairs that round (f16 and bf16 each lack the other's bits)
_ROUNDS = {(GGMLType.F16, "float32"), (GGMLType.F16, "bfloat16"), (GGMLType.BF16, "float32"),
           (GGMLType.BF16, "float16")}


def rounding_notes(entries: tuple[TensorEntry, ...]) -> Notes:
    """What to say before writing when a cast rounds or weights are quantized: never silently lossy."""
    notes = Notes()
    for out_type in (GGMLType.F16, GGMLType.BF16):
        narrowed = [e for e in entries if (e.info.type, e.source_dtype) in _ROUNDS and e.info.type == out_type]
        if narrowed:
            dtypes = sorted({e.source_dtype for e in narrowed})
            to = "float16" if out_type == GGMLType.F16 else "bfloat16"
            notes.warning("rounds", f"{len(narrowed)} tensor(s) are {'/'.join(dtypes)} in the checkpoint and are "
                                    f"rounded to {to} (to nearest even); --outtype f32 keeps every value exact (for "
                                    "GGUF, auto too)")
    quantized = sum(e.info.type == GGMLType.Q8_0 for e in entries)
    if quantized:
        notes.info("q8_0", f"{quantized} tensor(s) are quantized to q8_0 (llama.cpp's reference rounding; lossy "
                           "by design)")
    return notes



# ------------------------------------------------------------------ writing


def write_conversion(cp: ConversionPlan, *, force: bool = False, progress: Callable[[int], Any] | None = None) -> None:
    """Write the planned file (ggmlfmt.job.write): each tensor's pieces at their final places, then commit.

    Raises:
        FileExistsError: the output exists and force is False (FileWriter's own guard at creation).
        IncompleteWrite: the inputs did not cover every data byte exactly once.
        FormatError: an input changed since planning. OSError: disk full, ...
    """
    write(job(cp, overwrite=force), progress=progress, chunk_bytes=CHUNK_BYTES)


def job(cp: ConversionPlan, *, overwrite: bool = False) -> Job:
    """The plan as the job layer's Job (ggmlfmt.job): what write() writes is what describe() shows."""
    gguf = cp.format == "gguf"
    label = cp.outtype
    if gguf and label == "auto":  # say what it resolved to
        label += ": " + resolved_outtype([e.info.type for e in cp.entries if len(e.shape) == 2])
    heading = [f"plan: {len(cp.shards)} shard(s) of {cp.model_dir} -> {cp.outfile} ({cp.plan.version}, 2-D {label})"]
    facts: dict[str, Any] = {"vocab": str(cp.vocab_path)}
    if gguf:
        facts |= {"metadata": metadata_values(cp.gguf.metadata),
                  "defaults": [DEFAULTED_KEYS[field] for field in cp.gguf.hparams.defaults]}
        for key, value in facts["metadata"].items():
            shown = (f"[{value['count']} {value['type']}]" if isinstance(value, dict)
                     else str(np.float32(value)) if isinstance(value, float) else repr(value))
            default = " (not in the checkpoint: LLaMA-1's value)" if key in facts["defaults"] else ""
            heading.append(f"meta: {key} = {shown}{default}")
    else:
        facts["hparams"] = asdict(cp.plan.hparams)
        heading.append("header: " + ", ".join(f"{k} {v}" for k, v in facts["hparams"].items())
                       + f"; vocabulary from {cp.vocab_path}")
    tensors = tuple(Tensor(e.info, e.name, e.source_dtype, e.shape, e.shard_shape, e.axis) for e in cp.entries)
    return Job(cp.outfile, cp.plan, tensors, partial(_sources, cp), cp.inputs, overwrite, cp.notes, tuple(heading),
               ("ne", "type", "axis", "source") if gguf else ("shape", "type", "axis"), cp.skipped, facts)


def metadata_values(metadata: tuple[MetaKV, ...]) -> dict[str, Any]:
    """GGUF metadata as plain values: scalars as they are stored, arrays as {"type", "count"}."""
    out: dict[str, Any] = {}
    for kv in metadata:
        if kv.type == GGUFValueType.ARRAY:
            element, items = kv.value
            out[kv.key] = {"type": GGUFValueType(element).name.lower(), "count": len(items)}
        else:  # an f32 as stored (1e-5 is 9.99999974e-06 in the file): what a reader will see
            out[kv.key] = float(np.float32(kv.value)) if kv.type == GGUFValueType.FLOAT32 else kv.value
    return out


def _sources(cp: ConversionPlan, stack: ExitStack) -> Iterator[Source]:  # Job.sources
    """One engine Source per planned tensor, its files opened (a descriptor and a read-only map) on first use.

    Each part is a view at its planned offset (nothing is parsed again); a Hugging Face q/k weight is its
    one part with the row order llama.cpp wants (convert.hf.unpermute_rows); the converter is the
    cast or quantizer from the checkpoint dtype, if any.

    Raises:
        BadLayout: a file is not the one planned from (another inode, size or modification time).
    """
    opened: dict[int, tuple[int, np.ndarray]] = {}
    for e in cp.entries:
        if e.data is not None:
            yield computed_source(e.info, e.data)
            continue
        dtype = view_dtype(e.source_dtype)
        pieces = []
        for k, offset in e.parts:
            if k not in opened:
                opened[k] = _open(stack, cp.shards[k], cp.stats[k])
            fd, data = opened[k]
            n_rows = e.shard_shape[0] if len(e.shard_shape) == 2 else 1
            rows = data[offset : offset + math.prod(e.shard_shape) * dtype.itemsize].view(dtype).reshape(n_rows, -1)
            pieces.append(Piece(fd, offset, rows))
        cast = converter(e.source_dtype, e.info.type)
        if not e.heads:
            yield Source(e.info, e.axis, pieces, cast)
            continue
        yield Source(e.info, None, pieces, cast, order=hf.unpermute_rows(rows.shape[0], e.heads))


def _open(stack: ExitStack, path: Path, planned: tuple[int, int, int]) -> tuple[int, np.ndarray]:
    fd = open_read_only(stack, path)
    st = os.fstat(fd)
    if (st.st_ino, st.st_size, st.st_mtime_ns) != planned:
        raise BadLayout("changed since it was checked: re-run the conversion", path=str(path))
    return fd, np.frombuffer(mmap.mmap(fd, 0, access=mmap.ACCESS_READ), np.uint8)  # unmapped with its last view


def converter(source_dtype: str, out_type: GGMLType) -> Callable[[Any, Any], object] | None:
    """The engine's convert for a checkpoint dtype -> output type; None when the bytes pass unchanged."""
    key = (source_dtype, out_type)
    return CASTS.get(key) or QUANTIZERS.get(key)


def convert_checkpoint(model_dir: str | os.PathLike[str], outfile: str | os.PathLike[str] | None = None, *,
                       outtype: str = "auto", tokenizer: str | os.PathLike[str] | None = None, force: bool = False,
                       progress: Callable[[int], Any] | None = None, fmt: str | None = None,
                       context_length: int | None = None, rms_eps: float | None = None,
                       llama_release: str | None = None) -> ConversionPlan:
    """Convert a Meta checkpoint or a Hugging Face directory into one ggjt v1 or GGUF v3 file; return the plan.

    fmt, context_length, rms_eps, llama_release: as plan_conversion.

    Raises:
        FileExistsError: the output exists and force is False (checked as soon as its name is known).
        FormatError, CannotWrite, OSError: as plan_conversion and write_conversion.
    """
    cp = plan_conversion(model_dir, outfile, outtype=outtype, tokenizer=tokenizer, fmt=fmt,
                         context_length=context_length, rms_eps=rms_eps, llama_release=llama_release, overwrite=force)
    write_conversion(cp, force=force, progress=progress)
    log.info("wrote %s: %d tensors from %d file(s), %s bytes", cp.outfile, len(cp.entries), len(cp.shards),
             f"{cp.plan.size:,}")
    return cp
