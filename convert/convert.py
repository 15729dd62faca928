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
import math
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from convert.checkpoint import (
    TensorMeta,
    check_shards,
    find_shards,
    find_tokenizer,
    is_hf_dir,
    skipped_name,
)
from convert.pth import Checkpoint, open_checkpoint
from ggmlfmt.atomic import refuse_existing
from ggmlfmt.blocks.floats import CASTS
from ggmlfmt.blocks.quantize import quantize_q8_0
from ggmlfmt.constants import (
    BLOCK_LAYOUTS,
    CHUNK_BYTES,
    GGUF_BLOCK_GENERATION,
    FileVersion,
    FType,
    GGMLType,
)
from ggmlfmt.errors import CannotWrite, FormatError
from ggmlfmt.layout import HParams, Plan, TensorInfo, TensorSpec, Vocab, plan
from ggmlfmt.llama.model import (
    ROPE_FREQS,
    GGUFVocab,
    LlamaHParams,
    MetaKV,
    OutTensor,
    llama3_rope_factors,
    plan_llama_gguf,
    skipped_tensor,
)
from ggmlfmt.llama.params import Params, gguf_hparams, read_params
from ggmlfmt.llama.spm import load_gguf_vocab, load_vocab
from ggmlfmt.llama.tiktoken_vocab import (
    N_SPECIAL,
    bpe_vocab,
    looks_like_tiktoken,
    read_ranks,
    special_tokens,
)
from ggmlfmt.parts import full_shape, n_parts_for_dim, split_axis, split_axis_by_shape
from ggmlfmt.unshard import (
    Piece,
    Source,
    computed_source,
    open_read_only,
    write_tensors,
)
from ggmlfmt.writer import FileWriter

log = logging.getLogger(__name__)

COMPUTED = "computed"  # source_dtype of a tensor no shard holds (the plan shows it)
SNIFF_BYTES = 64  # how much of tokenizer.model tells tiktoken from SentencePiece
LLAMA3_CONTEXT = {"3": 8192, "3.1": 131072, "3.2": 131072, "3.3": 131072}  # Meta's context length per release

# --outtype -> the type of every 2-D weight (docs/format.md §8.3); "auto": the checkpoint's own (AUTO_TYPES)
OUTTYPES: dict[str, GGMLType | None] = {"auto": None, "bf16": GGMLType.BF16, "f16": GGMLType.F16,
                                        "f32": GGMLType.F32, "q8_0": GGMLType.Q8_0}
AUTO_TYPES = {"bfloat16": GGMLType.BF16, "float16": GGMLType.F16, "float32": GGMLType.F32}  # never rounds
TYPE_NAMES = {t: name for name, t in OUTTYPES.items() if t is not None}  # GGMLType -> its --outtype (file names)
GGJT_FTYPES = {"f16": FType.MOSTLY_F16, "f32": FType.ALL_F32}  # the 2023 file's types; "auto" means f16 there
GGJT_AUTO = "f16"  # the 2023 converter's default, kept so the ggjt default output is unchanged
FORMATS = ("ggjt", "gguf")
SUFFIXES = {"ggjt": ".bin", "gguf": ".gguf"}
# Converters by (checkpoint dtype, output type) beyond the float casts: the q8_0 quantizer (ggmlfmt.blocks.quantize)
QUANTIZERS = {(dtype, GGMLType.Q8_0): quantize_q8_0 for dtype in AUTO_TYPES}


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
    computed: tuple[tuple[str, np.ndarray], ...] = ()  # tensors no shard holds (rope_freqs.weight), by name
    source: Any = None  # None: Meta shards; a Hugging Face directory: convert.hf.HFSource


@dataclass(frozen=True, slots=True)
class GGUFContent:
    """The metadata a GGUF conversion writes (docs/format.md §14): hyper-parameters, vocabulary, model name."""

    hparams: LlamaHParams
    vocab: GGUFVocab
    name: str
    n_params: int | None = None  # every checkpoint tensor's values (general.size_label)
    extra: tuple[MetaKV, ...] = ()  # written after the tokenizer keys (a Hugging Face directory's, §19)


def default_outfile(model_dir: str | os.PathLike[str], outtype: str, fmt: str = "gguf") -> Path:
    """MODEL_DIR/ggml-model-<outtype>.gguf, or .bin for ggjt (the 2023 converter's name).

    outtype "auto" must be resolved first (resolved_outtype): the name says what the file holds.
    """
    if outtype == "auto":
        raise CannotWrite("outtype 'auto' names no file: resolve it from the checkpoint first")
    return Path(model_dir) / f"ggml-model-{outtype}{SUFFIXES[fmt]}"


def implied_format(outfile: str | os.PathLike[str] | None) -> str | None:
    """The format an output name implies: gguf for .gguf, ggjt for .bin (docs/format.md §8.2), else None."""
    name = os.fspath(outfile) if outfile is not None else ""
    return "gguf" if name.endswith(".gguf") else "ggjt" if name.endswith(".bin") else None


def resolve_format(fmt: str | None, outfile: str | os.PathLike[str] | None) -> str:
    """The output format: `fmt` if given, else what the outfile's name implies (.bin: ggjt), else gguf.

    Raises:
        CannotWrite: an unknown format, or --format ggjt with an outfile ending in .gguf.
    """
    if fmt is None:
        return implied_format(outfile) or "gguf"
    if fmt not in FORMATS:
        raise CannotWrite(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "ggjt" and implied_format(outfile) == "gguf":
        raise CannotWrite(f"{outfile}: a .gguf output name with --format {fmt}; drop one of them")
    return fmt


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
                    llama_release: str | None = None) -> ConversionPlan:
    """Check every input and lay out the output file; reads shard metadata only, writes nothing.

    fmt None: what outfile's name implies, else gguf (resolve_format). outtype "auto": each 2-D weight
    keeps its checkpoint type (gguf), f16 for ggjt; outfile None: MODEL_DIR/ggml-model-<resolved outtype>.
    fmt "ggjt": the 2023 file (context_length and rms_eps must be None). fmt "gguf": context_length
    None means LLaMA-1's 2048; rms_eps applies only when params.json has no norm_eps (None: 1e-6).
    A tiktoken tokenizer.model makes it a Llama 3 checkpoint (GGUF only, docs/format.md §16.1):
    llama_release ("3", "3.1", "3.2", "3.3") chooses the special tokens, None infers it from params.json;
    context_length None is then the release's (8,192 for 3, 131,072 for 3.1+). A Hugging Face directory
    (config.json, no params.json) goes to convert.hf.plan_hf (docs/format.md §19).

    Raises:
        FormatError: bad params.json, tokenizer or shards (names the file, and the field or tensor),
            or a model ggjt cannot describe (GQA, ffn_dim_multiplier) with fmt "ggjt".
        CannotWrite: an unknown outtype or format, an option the format does not take, or an output
            path that is one of the inputs.
        OSError: an input cannot be read.
    """
    bin_note = fmt is None and implied_format(outfile) == "ggjt"
    fmt = resolve_format(fmt, outfile)
    outtype = check_outtype(outtype, fmt)
    if fmt == "ggjt" and (context_length is not None or rms_eps is not None):
        raise CannotWrite("--ctx and --eps apply to --format gguf only (a ggjt file stores neither)")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a model directory", str(model_dir))
    if is_hf_dir(model_dir):
        from convert.hf import plan_hf  # hf builds on this module's records

        return plan_hf(model_dir, None if outfile is None else Path(outfile), outtype=outtype, tokenizer=tokenizer,
                       fmt=fmt, context_length=context_length, rms_eps=rms_eps, llama_release=llama_release)
    params_path = model_dir / "params.json"
    params = read_params(params_path)  # first: absurd values stop everything
    if fmt == "ggjt" and (problem := params.ggjt_problem()) is not None:
        raise FormatError(problem, path=str(params_path))  # before any shape error the tensors would give
    params = _with_eps(params, rms_eps, params_path) if fmt == "gguf" else params
    vocab_path = find_tokenizer(model_dir, tokenizer)
    shards = find_shards(model_dir)
    if outfile is not None:
        refuse_existing(outfile, overwrite=True, inputs=[params_path, vocab_path, *shards])  # before reading more
    ranks = _tiktoken_ranks(vocab_path, fmt, llama_release)
    tokens: Vocab | GGUFVocab | None = None
    if ranks is None:
        tokens = load_vocab(vocab_path) if fmt == "ggjt" else load_gguf_vocab(vocab_path)
    n_vocab = len(tokens) if ranks is None else len(ranks) + N_SPECIAL
    if params.vocab_size > 0 and params.vocab_size != n_vocab:
        pieces = "pieces" if ranks is None else f"tokens ({len(ranks)} ranks + {N_SPECIAL} special)"
        raise FormatError(f"{params.vocab_size} does not match the {n_vocab} {pieces} of {vocab_path}",
                          path=str(params_path), field="vocab_size")
    metas = check_shards(shards)
    llama3 = None if ranks is None else _llama3(params, metas, ranks, llama_release, context_length)
    if llama3 is not None:
        tokens, context_length = llama3.vocab, llama3.context_length
    if fmt == "gguf":
        layout, entries, skipped, content = _plan_gguf(model_dir, params, tokens, metas, shards, outtype,
                                                       context_length, llama3)
    else:
        layout, entries, skipped = _plan_ggjt(params, tokens, metas, shards, outtype)
        content = None
    _log_plan(shards, params, layout)
    if bin_note:  # said once every input is checked, so that an error stays one line
        log.info("%s: a .bin name without --format writes the 2023 ggjt file (--format gguf for today's "
                 "llama.cpp)", outfile)
    warn_rounding(entries)
    if outfile is None:
        outfile = default_outfile(model_dir, resolved_outtype([e.info.type for e in entries if len(e.shape) == 2]), fmt)
        refuse_existing(outfile, overwrite=True, inputs=[params_path, vocab_path, *shards])  # --force never replaces an input
    computed = () if llama3 is None or llama3.rope_freqs is None else ((ROPE_FREQS, llama3.rope_freqs),)
    return ConversionPlan(model_dir, Path(outfile), outtype, vocab_path, tuple(shards), params, layout, tuple(entries),
                          tuple(skipped), fmt, content, computed)


@dataclass(frozen=True, slots=True)
class _Llama3:
    """What a Llama 3 checkpoint adds (docs/format.md §16.1): its vocabulary, context length, tied
    embeddings, and the scaled-RoPE factors (None without use_scaled_rope)."""

    vocab: GGUFVocab
    context_length: int
    tied: bool
    rope_freqs: np.ndarray | None


def _tiktoken_ranks(vocab_path: Path, fmt: str, llama_release: str | None) -> list[bytes] | None:
    """The base tokens of a tiktoken tokenizer.model (Llama 3), or None for a SentencePiece one.

    Raises:
        CannotWrite: a tiktoken tokenizer with fmt "ggjt", or llama_release for a SentencePiece one.
        FormatError: a bad tiktoken file. OSError: unreadable.
    """
    with open(vocab_path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if not looks_like_tiktoken(head):
        if llama_release is not None:
            raise CannotWrite(f"{vocab_path}: a SentencePiece tokenizer; --llama-release applies to Llama 3 "
                              "checkpoints, whose tokenizer.model is a tiktoken file")
        return None
    if fmt != "gguf":
        raise CannotWrite(f"{vocab_path}: a tiktoken tokenizer (Llama 3), which a ggjt file cannot hold; "
                          "use --format gguf")
    return read_ranks(vocab_path)


def _llama3(params: Params, metas: list[TensorMeta], ranks: list[bytes], release: str | None,
            context_length: int | None) -> _Llama3:
    """The release (given, or from params.json), its special tokens and context length, tied embeddings, rope_freqs.

    Raises:
        CannotWrite: an unknown release.
    """
    tied = not any(m.name == "output.weight" for m in metas)
    if release is None:
        release, why = (("3", "params.json has no use_scaled_rope") if not params.use_scaled_rope
                        else ("3.2", "use_scaled_rope and no output.weight") if tied
                        else ("3.1", "params.json has use_scaled_rope"))
        log.info("special tokens of Llama %s (%s); --llama-release chooses another release's", release, why)
    vocab = bpe_vocab(ranks, special_tokens(release))
    if context_length is None:
        context_length = LLAMA3_CONTEXT[release]
        log.info("context length %d, Llama %s's (a checkpoint does not store it); --ctx N sets it", context_length,
                 release)
    if tied:
        log.info("no output.weight: the output shares the token embedding (tied), so the file has none and "
                 "llama.cpp uses token_embd.weight")
    rope = None
    if params.rope_scaling is not None:
        factor, high = params.rope_scaling
        rope = llama3_rope_factors(params.n_rot, params.rope_theta or 10000.0, factor=factor, high_freq_factor=high)
        log.info("scaled RoPE (use_scaled_rope): rope_freqs.weight, %d factors, scale %g, high-frequency factor %g",
                 len(rope), factor, high)
    return _Llama3(vocab, context_length, tied, rope)


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
    pending, skipped = _specs(metas, shards, params, params.shapes(len(tokens)), outtype)
    layout = plan(FileVersion.GGJT_V1, hparams, tokens, [p.spec for p in pending])
    return layout, _entries(pending, layout), skipped


def _plan_gguf(model_dir: Path, params: Params, vocab: GGUFVocab, metas: list[TensorMeta], shards: list[Path],
               outtype: str, context_length: int | None, llama3: _Llama3 | None = None,
               ) -> tuple[Plan, list[TensorEntry], list[str], GGUFContent]:
    """The GGUF layout (docs/format.md §8.1): shapes checked with GQA/ffn_dim_multiplier, names mapped.

    Llama 3 (docs/format.md §16.1): no output.weight when tied; rope_freqs.weight first when computed.

    Raises:
        FormatError: a tensor GGUF's LLaMA does not have, a shape params.json does not imply, a bad value.
    """
    tied = llama3 is not None and llama3.tied
    expected = params.shapes(len(vocab), gguf=True)
    if tied:
        del expected["output.weight"]
    pending, skipped = _specs(metas, shards, params, expected, outtype, gguf=True)
    if llama3 is not None and llama3.rope_freqs is not None:
        n = len(llama3.rope_freqs)
        meta = TensorMeta(ROPE_FREQS, (n,), COMPUTED, None)
        pending.insert(0, _Pending(meta, None, (n,), TensorSpec.from_shape(ROPE_FREQS, GGMLType.F32, (n,))))
    shapes = {p.meta.name: p.shape for p in pending}
    hp = gguf_hparams(params, len(vocab), shapes, context_length=context_length, tied_embeddings=tied,
                      path=str(model_dir / "params.json"))
    for field in hp.defaults:
        value, option = (hp.context_length, "--ctx N") if field == "context_length" else (hp.rms_eps, "--eps X")
        log.warning("%s not in the checkpoint: using %g, LLaMA-1's value (%s sets it)",
                    "context length" if field == "context_length" else "norm_eps", value, option)
    name = model_dir.resolve().name or "llama"
    n_params = sum(math.prod(full_shape(m.shape, split_axis(m.name, len(m.shape)), len(shards))) for m in metas)
    layout = plan_llama_gguf(hp, vocab, [OutTensor(p.meta.name, p.spec.type, p.shape) for p in pending], name=name,
                             n_params=n_params)
    return layout, _entries(pending, layout), skipped, GGUFContent(hp, vocab, name, n_params)


def _hparams(params: Params, n_vocab: int, outtype: str) -> HParams:
    ftype = GGJT_FTYPES[outtype]
    return HParams(n_vocab, params.dim, params.multiple_of, params.n_heads, params.n_layers, params.n_rot, int(ftype))


def _log_plan(shards: list[Path], params: Params, layout: Plan) -> None:
    expected = n_parts_for_dim(params.dim)
    if expected is not None and expected != len(shards):
        log.warning("dim %d was released as %d shards; found %d", params.dim, expected, len(shards))
    log.debug("planned %d tensors, %s bytes", len(layout.tensors), f"{layout.size:,}")


# (output type, checkpoint dtype) pairs that round (f16 and bf16 each lack the other's bits)
_ROUNDS = {(GGMLType.F16, "float32"), (GGMLType.F16, "bfloat16"), (GGMLType.BF16, "float32"),
           (GGMLType.BF16, "float16")}


def warn_rounding(entries: list[TensorEntry]) -> None:
    """Say so before writing when a cast rounds or weights are quantized: never silently lossy."""
    for out_type in (GGMLType.F16, GGMLType.BF16):
        narrowed = [e for e in entries if (e.info.type, e.source_dtype) in _ROUNDS and e.info.type == out_type]
        if narrowed:
            dtypes = sorted({e.source_dtype for e in narrowed})
            log.warning("%d tensor(s) are %s in the checkpoint and are rounded to %s (to nearest even); "
                        "--outtype f32 keeps every value exact (for GGUF, auto too)", len(narrowed), "/".join(dtypes),
                        "float16" if out_type == GGMLType.F16 else "bfloat16")
    quantized = sum(e.info.type == GGMLType.Q8_0 for e in entries)
    if quantized:
        log.info("%d tensor(s) are quantized to q8_0 (llama.cpp's reference rounding; lossy by design)", quantized)


# ------------------------------------------------------------------ what goes into the file


@dataclass(frozen=True, slots=True)
class _Pending:
    """A checkpoint tensor on its way into the plan: what the shards hold, how they split, what is written."""

    meta: TensorMeta  # shard 0's record
    axis: int | None  # PyTorch axis the shards split; None: replicated
    shape: tuple[int, ...]  # full PyTorch shape
    spec: TensorSpec


def _specs(metas: list[TensorMeta], shards: list[Path], params: Params, expected: dict[str, tuple[int, ...]],
           outtype: str, *, gguf: bool = False) -> tuple[list[_Pending], list[str]]:
    """Output tensors in checkpoint key order, with their types, checked against the shapes params.json implies.

    `expected` (from llama_shapes) is consumed. gguf: a tensor outside LLaMA is refused (today's
    llama.cpp would refuse the file), and only the RoPE tables are skipped (docs/format.md §13).

    Raises:
        FormatError: a LLaMA tensor is missing or has another shape than the header says; with gguf,
            a tensor that is not LLaMA's.
        CannotWrite: a row length the output type's blocks do not divide (q8_0: 32 values per block).
    """
    n_parts = len(shards)
    skip = skipped_tensor if gguf else skipped_name
    pending: list[_Pending] = []
    skipped: list[str] = []
    for m in metas:
        if skip(m.name):
            skipped.append(m.name)
            continue
        want = expected.pop(m.name, None)
        axis = split_axis(m.name, len(m.shape)) if want is None else split_axis_by_shape(m.name, m.shape, want,
                                                                                           n_parts)
        shape = full_shape(m.shape, axis, n_parts)
        if want is None and gguf:
            raise FormatError("not a LLaMA tensor; today's llama.cpp refuses a GGUF file with tensors it does not "
                              "expect", path=str(shards[0]), field=f"tensor {m.name!r}")
        if want is None:
            log.warning("%s: tensor %r is not part of LLaMA; writing it anyway, as the 2023 converter did",
                        shards[0], m.name)
        elif shape != want:
            raise FormatError(f"full shape {list(shape)} ({n_parts} shard(s) of {list(m.shape)}) differs from "
                              f"{list(want)} implied by params.json and the tokenizer; neither a split by rows nor "
                              "one by columns gives it", path=str(shards[0]),
                              field=f"tensor {m.name!r}")
        ggml_type = output_type(outtype, m.dtype, len(shape))
        check_rows(m.name, ggml_type, shape)
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
        from convert.hf import write_hf

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
    computed = dict(cp.computed)
    for e in cp.entries:
        if e.name in computed:
            yield computed_source(e.info, computed[e.name])
            continue
        pieces = []
        for path, shard, fd in zip(cp.shards, shards, fds):
            t = shard.tensors.get(e.name)
            if t is None or t.shape != e.shard_shape or t.dtype != e.source_dtype:
                raise FormatError("changed since it was checked: re-run the conversion", path=str(path),
                                  field=f"tensor {e.name!r}")
            rows = shard.array(e.name)
            pieces.append(Piece(fd, t.offset, rows.reshape(1, -1) if rows.ndim == 1 else rows))
        yield Source(e.info, e.axis, pieces, converter(e.source_dtype, e.info.type))


def converter(source_dtype: str, out_type: GGMLType) -> Callable[[Any, Any], object] | None:
    """The engine's convert for a checkpoint dtype -> output type; None when the bytes pass unchanged."""
    key = (source_dtype, out_type)
    return CASTS.get(key) or QUANTIZERS.get(key)


def early_outfile(model_dir: str | os.PathLike[str], outfile: str | os.PathLike[str] | None, outtype: str,
                  fmt: str) -> Path | None:
    """The output path when known before planning (given, or a fixed outtype's default); None for GGUF "auto".

    Raises:
        CannotWrite: as check_outtype.
    """
    outtype = check_outtype(outtype, fmt)
    if outfile is not None:
        return Path(outfile)
    return None if outtype == "auto" else default_outfile(model_dir, outtype, fmt)


def convert_checkpoint(model_dir: str | os.PathLike[str], outfile: str | os.PathLike[str] | None = None, *,
                       outtype: str = "auto", tokenizer: str | os.PathLike[str] | None = None, force: bool = False,
                       progress: Callable[[int], Any] | None = None, fmt: str | None = None,
                       context_length: int | None = None, rms_eps: float | None = None,
                       llama_release: str | None = None) -> ConversionPlan:
    """Convert Meta's consolidated.NN.pth shards in `model_dir` into one ggjt v1 or GGUF v3 file; return the plan.

    fmt, context_length, rms_eps, llama_release: as plan_conversion.

    Raises:
        FileExistsError: the output exists and force is False (checked before any other work).
        FormatError (CannotWrite among them), OSError: as plan_conversion and write_conversion.
    """
    given, fmt = fmt, resolve_format(fmt, outfile)
    out = early_outfile(model_dir, outfile, outtype, fmt)
    if out is not None:
        refuse_existing(out, overwrite=force)
    cp = plan_conversion(model_dir, out, outtype=outtype, tokenizer=tokenizer, fmt=given, context_length=context_length,
                         rms_eps=rms_eps, llama_release=llama_release)
    write_conversion(cp, force=force, progress=progress)
    log.info("wrote %s: %d tensors from %d shard(s), %s bytes", cp.outfile, len(cp.entries), len(cp.shards),
             f"{cp.plan.size:,}")
    return cp
