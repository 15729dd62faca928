"""Meta LLaMA shards -> one ggjt v1 file (byte for byte what the post-#613 converter wrote, docs/format.md §8),
or one GGUF v3 file for today's llama.cpp (docs/format.md §8.1, §13-§16).

Two phases. Planning reads params.json, the tokenizer and every shard's metadata, checks that the
shards agree (one shard open at a time), and lays out every byte of the output. Writing maps every
shard at once (maps cost no private memory) and hands each tensor to the unsharding engine
(ggmlfmt.unshard): unchanged runs move inside the kernel, column splits and casts go through one
buffer of a few MB. The writer proves every data byte was written exactly once before renaming.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ggmlfmt.atomic import refuse_existing
from ggmlfmt.constants import CHUNK_BYTES, FTYPE_2D_TYPE, FileVersion, FType, GGMLType
from ggmlfmt.floats import CASTS
from ggmlfmt.errors import CannotWrite, FormatError
from ggmlfmt.layout import HParams, Plan, TensorInfo, TensorSpec, Vocab, plan
from ggmlfmt.llama import GGUFVocab, LlamaHParams, OutTensor, plan_llama_gguf, skipped_tensor
from ggmlfmt.parts import full_shape, n_parts_for_dim, split_axis
from ggmlfmt.unshard import Piece, Source, open_read_only, write_tensors
from ggmlfmt.writer import FileWriter

from .checkpoint import TensorMeta, check_shards, find_shards, find_tokenizer, is_hf_dir, skipped_name
from .pth import Checkpoint, open_checkpoint
from .params import Params, gguf_hparams, read_params
from ggmlfmt.tokenizer import load_gguf_vocab, load_vocab

log = logging.getLogger(__name__)

OUTTYPES = {"f32": FType.ALL_F32, "f16": FType.MOSTLY_F16}  # --outtype -> header ftype; FTYPE_2D_TYPE gives the 2-D type
FORMATS = ("ggjt", "gguf")
SUFFIXES = {"ggjt": ".bin", "gguf": ".gguf"}


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One output tensor: its shapes, how the shards split it, and its planned place in the file."""

    name: str
    shape: tuple[int, ...]  # full PyTorch shape
    shard_shape: tuple[int, ...]
    axis: int | None  # PyTorch axis the shards split; None: replicated (1-D)
    source_dtype: str
    info: TensorInfo


@dataclass(frozen=True, slots=True)
class ConversionPlan:
    """Everything known before the first byte is written."""

    model_dir: Path
    outfile: Path
    outtype: str
    vocab_path: Path
    shards: tuple[Path, ...]
    params: Params
    plan: Plan
    entries: tuple[TensorEntry, ...]
    skipped: tuple[str, ...]  # checkpoint keys not written (rope.freqs)
    format: str = "ggjt"  # "ggjt" (v1) or "gguf" (v3)
    gguf: GGUFContent | None = None  # what the GGUF metadata says; None for ggjt
    source: Any = None  # None: Meta shards; a Hugging Face directory: convert.hf.HFSource


@dataclass(frozen=True, slots=True)
class GGUFContent:
    """The metadata a GGUF conversion writes (docs/format.md §14): hyper-parameters, vocabulary, model name."""

    hparams: LlamaHParams
    vocab: GGUFVocab
    name: str


def default_outfile(model_dir: str | os.PathLike[str], outtype: str, fmt: str = "ggjt") -> Path:
    """MODEL_DIR/ggml-model-<outtype>.bin (the 2023 converter's name), or .gguf for GGUF."""
    return Path(model_dir) / f"ggml-model-{outtype}{SUFFIXES[fmt]}"


def resolve_format(fmt: str | None, outfile: str | os.PathLike[str] | None) -> str:
    """The output format: `fmt` if given, else gguf for an outfile ending in .gguf, else ggjt.

    Raises:
        CannotWrite: an unknown format, or --format ggjt with an outfile ending in .gguf.
    """
    implied = "gguf" if outfile is not None and os.fspath(outfile).endswith(".gguf") else None
    if fmt is None:
        return implied or "ggjt"
    if fmt not in FORMATS:
        raise CannotWrite(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if implied and fmt != implied:
        raise CannotWrite(f"{outfile}: a .gguf output name with --format {fmt}; drop one of them")
    return fmt





def plan_conversion(model_dir: str | os.PathLike[str], outfile: str | os.PathLike[str] | None = None, *,
                    outtype: str = "f16", tokenizer: str | os.PathLike[str] | None = None, fmt: str | None = None,
                    context_length: int | None = None, rms_eps: float | None = None) -> ConversionPlan:
    """Check every input and lay out the output file; reads shard metadata only, writes nothing.

    fmt None: gguf when outfile ends in .gguf, else ggjt (resolve_format).
    fmt "ggjt": the 2023 file (context_length and rms_eps must be None). fmt "gguf": context_length
    None means LLaMA-1's 2048; rms_eps applies only when params.json has no norm_eps (None: 1e-6).

    Raises:
        FormatError: bad params.json, tokenizer or shards (names the file, and the field or tensor),
            or a model ggjt cannot describe (GQA, ffn_dim_multiplier) with fmt "ggjt".
        CannotWrite: an unknown outtype or format, an option the format does not take, or an output
            path that is one of the inputs.
        OSError: an input cannot be read.
    """
    if outtype not in OUTTYPES:
        raise CannotWrite(f"outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    fmt = resolve_format(fmt, outfile)
    if fmt == "ggjt" and (context_length is not None or rms_eps is not None):
        raise CannotWrite("--ctx and --eps apply to --format gguf only (a ggjt file stores neither)")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a model directory", str(model_dir))
    if is_hf_dir(model_dir):
        from .hf import plan_hf  # hf builds on this module's records

        return plan_hf(model_dir, None if outfile is None else Path(outfile), outtype=outtype, tokenizer=tokenizer,
                       fmt=fmt, context_length=context_length, rms_eps=rms_eps)
    params_path = model_dir / "params.json"
    params = read_params(params_path)  # first: absurd values stop everything
    if fmt == "ggjt" and (problem := params.ggjt_problem()) is not None:
        raise FormatError(problem, path=str(params_path))  # before any shape error the tensors would give
    params = _with_eps(params, rms_eps, params_path) if fmt == "gguf" else params
    out = Path(outfile) if outfile is not None else default_outfile(model_dir, outtype, fmt)
    vocab_path = find_tokenizer(model_dir, tokenizer)
    shards = find_shards(model_dir)
    refuse_existing(out, overwrite=True, inputs=[params_path, vocab_path, *shards])  # --force never replaces an input
    tokens: Vocab | GGUFVocab = load_vocab(vocab_path) if fmt == "ggjt" else load_gguf_vocab(vocab_path)
    if params.vocab_size > 0 and params.vocab_size != len(tokens):
        raise FormatError(f"{params.vocab_size} does not match the {len(tokens)} pieces of {vocab_path}",
                          path=str(params_path), field="vocab_size")
    metas = check_shards(shards)
    if fmt == "gguf":
        layout, entries, skipped, content = _plan_gguf(model_dir, params, tokens, metas, shards, outtype,
                                                       context_length)
    else:
        layout, entries, skipped = _plan_ggjt(params, tokens, metas, shards, outtype)
        content = None
    _log_plan(shards, params, layout)
    _warn_rounding(entries, outtype)
    return ConversionPlan(model_dir, out, outtype, vocab_path, tuple(shards), params, layout, tuple(entries),
                          tuple(skipped), fmt, content)


def _with_eps(params: Params, rms_eps: float | None, path: Path) -> Params:
    """params with norm_eps from --eps when params.json has none.

    Raises:
        CannotWrite: --eps out of (0, 1), or given although params.json has norm_eps (which one
            would win is not obvious: refused rather than guessed).
    """
    if rms_eps is None:
        return params
    if not 0 < rms_eps < 1:  # the range params.json's norm_eps is held to (docs/format.md §16)
        raise CannotWrite(f"--eps must be in (0, 1), not {rms_eps!r}")
    if params.norm_eps is not None:
        raise CannotWrite(f"{path}: norm_eps is {params.norm_eps!r}; --eps applies only when params.json has none")
    return replace(params, norm_eps=rms_eps)


def _entries(pending: list[_Pending], layout: Plan) -> list[TensorEntry]:
    """TensorEntry per pending tensor, with its planned TensorInfo (both planners keep the given order)."""
    return [TensorEntry(p.meta.name, p.shape, p.meta.shape, p.axis, p.meta.dtype, info)
            for p, info in zip(pending, layout.tensors, strict=True)]


def _plan_ggjt(params: Params, tokens: Vocab, metas: list[TensorMeta], shards: list[Path],
               outtype: str) -> tuple[Plan, list[TensorEntry], list[str]]:
    """The 2023 layout (docs/format.md §8): header from params.json, names and key order unchanged.

    Raises:
        FormatError: a LLaMA tensor missing or with another shape than the header implies.
    """
    hparams = _hparams(params, len(tokens), outtype)
    pending, skipped = _specs(metas, shards, params, params.shapes(len(tokens)), FTYPE_2D_TYPE[OUTTYPES[outtype]])
    layout = plan(FileVersion.GGJT_V1, hparams, tokens, [p.spec for p in pending])
    return layout, _entries(pending, layout), skipped


def _plan_gguf(model_dir: Path, params: Params, vocab: GGUFVocab, metas: list[TensorMeta], shards: list[Path],
               outtype: str, context_length: int | None) -> tuple[Plan, list[TensorEntry], list[str], GGUFContent]:
    """The GGUF layout (docs/format.md §8.1): shapes checked with GQA/ffn_dim_multiplier, names mapped.

    Raises:
        FormatError: a tensor GGUF's LLaMA does not have, a shape params.json does not imply, a bad value.
    """
    expected = params.shapes(len(vocab), gguf=True)
    pending, skipped = _specs(metas, shards, params, expected, FTYPE_2D_TYPE[OUTTYPES[outtype]], gguf=True)
    shapes = {p.meta.name: p.shape for p in pending}
    hp = gguf_hparams(params, len(vocab), shapes, context_length=context_length,
                      path=str(model_dir / "params.json"))
    for field in hp.defaults:
        value, option = (hp.context_length, "--ctx N") if field == "context_length" else (hp.rms_eps, "--eps X")
        log.warning("%s not in the checkpoint: using %g, LLaMA-1's value (%s sets it)",
                    "context length" if field == "context_length" else "norm_eps", value, option)
    name = model_dir.resolve().name or "llama"
    layout = plan_llama_gguf(hp, vocab, [OutTensor(p.meta.name, p.spec.type, p.shape) for p in pending], name=name)
    return layout, _entries(pending, layout), skipped, GGUFContent(hp, vocab, name)


def _hparams(params: Params, n_vocab: int, outtype: str) -> HParams:
    ftype = OUTTYPES[outtype]
    return HParams(n_vocab, params.dim, params.multiple_of, params.n_heads, params.n_layers, params.n_rot, int(ftype))


def _log_plan(shards: list[Path], params: Params, layout: Plan) -> None:
    expected = n_parts_for_dim(params.dim)
    if expected is not None and expected != len(shards):
        log.warning("dim %d was released as %d shards; found %d", params.dim, expected, len(shards))
    log.debug("planned %d tensors, %s bytes", len(layout.tensors), f"{layout.size:,}")


def _warn_rounding(entries: list[TensorEntry], outtype: str) -> None:
    """Say so before writing when a cast rounds (f32 or bf16 weights to f16): never silently lossy."""
    narrowed = [e.name for e in entries if e.info.type == GGMLType.F16 and e.source_dtype != "float16"]
    if narrowed:
        dtypes = sorted({e.source_dtype for e in entries if e.name in set(narrowed)})
        log.warning("%d tensor(s) are %s in the checkpoint and are rounded to float16 (to nearest even); "
                    "--outtype f32 keeps every value exact", len(narrowed), "/".join(dtypes))


# ------------------------------------------------------------------ what goes into the file


@dataclass(frozen=True, slots=True)
class _Pending:
    """A checkpoint tensor on its way into the plan: what the shards hold, how they split, what is written."""

    meta: TensorMeta  # shard 0's record
    axis: int | None  # PyTorch axis the shards split; None: replicated
    shape: tuple[int, ...]  # full PyTorch shape
    spec: TensorSpec


def _specs(metas: list[TensorMeta], shards: list[Path], params: Params, expected: dict[str, tuple[int, ...]],
           two_d_type: GGMLType, *, gguf: bool = False) -> tuple[list[_Pending], list[str]]:
    """Output tensors in checkpoint key order, with their types, checked against the shapes params.json implies.

    `expected` (from llama_shapes) is consumed. gguf: a tensor outside LLaMA is refused (today's
    llama.cpp would refuse the file), and only the RoPE tables are skipped (docs/format.md §13).

    Raises:
        FormatError: a LLaMA tensor is missing or has another shape than the header says; with gguf,
            a tensor that is not LLaMA's.
    """
    n_parts = len(shards)
    skip = skipped_tensor if gguf else skipped_name
    pending: list[_Pending] = []
    skipped: list[str] = []
    for m in metas:
        if skip(m.name):
            skipped.append(m.name)
            continue
        axis = split_axis(m.name, len(m.shape))
        shape = full_shape(m.shape, axis, n_parts)
        want = expected.pop(m.name, None)
        if want is None and gguf:
            raise FormatError("not a LLaMA tensor; today's llama.cpp refuses a GGUF file with tensors it does not "
                              "expect", path=str(shards[0]), field=f"tensor {m.name!r}")
        if want is None:
            log.warning("%s: tensor %r is not part of LLaMA; writing it anyway, as the 2023 converter did",
                        shards[0], m.name)
        elif shape != want:
            raise FormatError(f"full shape {list(shape)} ({n_parts} shard(s) of {list(m.shape)}) differs from "
                              f"{list(want)} implied by params.json and the tokenizer", path=str(shards[0]),
                              field=f"tensor {m.name!r}")
        ggml_type = GGMLType.F32 if len(shape) == 1 else two_d_type  # 1-D always f32 (docs/format.md §4.4)
        pending.append(_Pending(m, axis, shape, TensorSpec.from_shape(m.name, ggml_type, shape)))
    if expected:
        name = next(iter(expected))
        raise FormatError(f"missing; params.json (n_layers {params.n_layers}) implies {len(expected)} more "
                          "tensor(s)", path=str(shards[0]), field=f"tensor {name!r}")
    return pending, skipped


# ------------------------------------------------------------------ writing


def write_conversion(cp: ConversionPlan, *, force: bool = False, progress: Callable[[int], Any] | None = None) -> None:
    """Write the planned file: every shard mapped at once, each tensor's pieces at their final places, then commit.

    Raises:
        FileExistsError: the output exists and force is False.
        IncompleteWrite: the shards did not cover every data byte exactly once.
        FormatError, OSError: a shard changed since planning, disk full, ...
    """
    if cp.source is not None:
        from .hf import write_hf

        return write_hf(cp, force=force, progress=progress)
    with ExitStack() as stack:
        shards = [stack.enter_context(open_checkpoint(p)) for p in cp.shards]
        fds = [open_read_only(stack, p) for p in cp.shards]
        writer = stack.enter_context(FileWriter(cp.outfile, cp.plan, overwrite=force, progress=progress))
        write_tensors(writer, _sources(cp, shards, fds), chunk_bytes=CHUNK_BYTES)


def _sources(cp: ConversionPlan, shards: list[Checkpoint], fds: list[int]) -> Iterator[Source]:
    """Each planned tensor with its piece in every shard, and the cast from the shard's dtype if any.

    Raises:
        FormatError: a shard no longer holds the tensor as planned (it changed since planning).
    """
    for e in cp.entries:
        pieces = []
        for path, shard, fd in zip(cp.shards, shards, fds):
            t = shard.tensors.get(e.name)
            if t is None or t.shape != e.shard_shape or t.dtype != e.source_dtype:
                raise FormatError("changed since it was checked: re-run the conversion", path=str(path),
                                  field=f"tensor {e.name!r}")
            rows = shard.array(e.name)
            pieces.append(Piece(fd, t.offset, rows.reshape(1, -1) if rows.ndim == 1 else rows))
        yield Source(e.info, e.axis, pieces, CASTS.get((e.source_dtype, e.info.type)))


def convert_checkpoint(model_dir: str | os.PathLike[str], outfile: str | os.PathLike[str] | None = None, *,
                       outtype: str = "f16", tokenizer: str | os.PathLike[str] | None = None, force: bool = False,
                       progress: Callable[[int], Any] | None = None, fmt: str | None = None,
                       context_length: int | None = None, rms_eps: float | None = None) -> ConversionPlan:
    """Convert Meta's consolidated.NN.pth shards in `model_dir` into one ggjt v1 or GGUF v3 file; return the plan.

    fmt, context_length, rms_eps: as plan_conversion.

    Raises:
        FileExistsError: the output exists and force is False (checked before any other work).
        FormatError (CannotWrite among them), OSError: as plan_conversion and write_conversion.
    """
    fmt = resolve_format(fmt, outfile)
    out = Path(outfile) if outfile is not None else default_outfile(model_dir, outtype, fmt)
    refuse_existing(out, overwrite=force)
    cp = plan_conversion(model_dir, out, outtype=outtype, tokenizer=tokenizer, fmt=fmt, context_length=context_length,
                         rms_eps=rms_eps)
    write_conversion(cp, force=force, progress=progress)
    log.info("wrote %s: %d tensors from %d shard(s), %s bytes", cp.outfile, len(cp.entries), len(cp.shards),
             f"{cp.plan.size:,}")
    return cp
