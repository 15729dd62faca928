"""What a GGUF file says about a LLaMA model: tensor names, hyper-parameters, vocabulary, metadata.

Pure functions from what we read (hparams, tensor shapes, the old files' vocabulary) to GGUF content;
no I/O, no GGUF bytes (the GGUF layer encodes what this returns). Rules: docs/format.md §13-§16 (bare § = its sections).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ggmlfmt.constants import (
    BLOCK_LAYOUTS,
    GGUF_BLOCK_GENERATION,
    GGUF_FTYPE_MOSTLY_BF16,
    GGUF_QUANTIZATION_VERSION,
    LLAMA1_CONTEXT_LENGTH,
    LLAMA1_RMS_EPS,
    LLAMA_BYTE_TOKENS,
    FType,
    GGMLType,
    GGUFValueType,
    TokenType,
)
from ggmlfmt.errors import BadLayout, BadOption, BadValue, CannotWrite
from ggmlfmt.gguf import plan_gguf
from ggmlfmt.layout import Plan, TensorInfo, Vocab

# ------------------------------------------------------------------ tensor names (§13)

ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's per-frequency RoPE factors (LLM_TENSOR_ROPE_FREQS)

_GLOBAL_NAMES = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    ROPE_FREQS: ROPE_FREQS,  # computed, not read: Llama 3.1+ scaled RoPE (§16.2)
}
_LAYER_NAMES = {
    "attention_norm": "attn_norm",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
}
_LAYER_RE = re.compile(r"layers\.(0|[1-9][0-9]{0,5})\.(.+)\.weight")
# RoPE frequency tables: recomputed by every loader, so not part of the model (today's converters skip them)
_SKIPPED_RE = re.compile(r"rope\.freqs|layers\.(0|[1-9][0-9]{0,5})\.attention\.inner_attention\.rope\.freqs")


class UnknownTensor(BadValue):
    """A tensor name that is not part of the LLaMA model GGUF describes."""


def skipped_tensor(name: str) -> bool:
    """True for the RoPE frequency tables a checkpoint may carry (`rope.freqs`), which GGUF does not hold."""
    return _SKIPPED_RE.fullmatch(name) is not None


def gguf_tensor_name(name: str, n_layer: int | None = None) -> str:
    """The GGUF name of a Meta/ggjt tensor name (`layers.3.attention.wq.weight` -> `blk.3.attn_q.weight`).

    Raises:
        UnknownTensor: a name outside the LLaMA set (rope.freqs included: ask `skipped_tensor` first),
            or a layer number not below n_layer.
    """
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER_RE.fullmatch(name)
    if m is not None and m[2] in _LAYER_NAMES:
        block = int(m[1])
        if n_layer is not None and block >= n_layer:
            raise UnknownTensor(f"layer {block} is not below n_layer {n_layer}", field=f"tensor {name!r}")
        return f"blk.{block}.{_LAYER_NAMES[m[2]]}.weight"
    what = "skipped (RoPE frequencies)" if skipped_tensor(name) else "not a LLaMA tensor"
    raise UnknownTensor(f"{what}; today's llama.cpp refuses a file with tensors it does not expect",
                        field=f"tensor {name!r}")


# ------------------------------------------------------------------ file type (§14)

_FTYPE_OF: dict[GGMLType, int] = {
    GGMLType.F32: FType.ALL_F32,
    GGMLType.BF16: GGUF_FTYPE_MOSTLY_BF16,
    GGMLType.F16: FType.MOSTLY_F16,
    GGMLType.Q4_0: FType.MOSTLY_Q4_0,
    GGMLType.Q4_1: FType.MOSTLY_Q4_1,
    GGMLType.Q5_0: FType.MOSTLY_Q5_0,
    GGMLType.Q5_1: FType.MOSTLY_Q5_1,
    GGMLType.Q8_0: FType.MOSTLY_Q8_0,
}


def llama_file_type(types_2d: Iterable[GGMLType]) -> int:
    """general.file_type from the GGUF types of the 2-D tensors: the most common one (ties: the first seen).

    Raises:
        CannotWrite: a type with no GGUF llama_ftype (Q4_2, Q4_3 never reach GGUF).
    """
    counts = Counter(GGMLType(t) for t in types_2d)
    if not counts:
        return FType.ALL_F32
    dominant = counts.most_common(1)[0][0]
    if dominant not in _FTYPE_OF:
        raise CannotWrite(f"{dominant.name} has no GGUF file type; expected one of "
                          f"{', '.join(t.name for t in _FTYPE_OF)}", field="general.file_type")
    return _FTYPE_OF[dominant]


def size_label(n_params: int) -> str:
    """general.size_label as llama.cpp's converters write it (§14.2): the parameter count rounded to
    at least two significant digits with a K, M, B or T suffix (7,000,000 -> "7.0M", 6.74e9 -> "6.7B")."""
    for above, factor, suffix in ((1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M"), (-1, 1e-3, "K")):
        if n_params > above:
            break
    scaled = n_params * factor  # multiplied, as llama.cpp does: the same float, so the same rounding
    digits = len(str(round(scaled)).lstrip("0"))  # integer digits; none below 1
    return f"{scaled:.{max(2 - digits, 0)}f}{suffix}"


# ------------------------------------------------------------------ hyper-parameters (§14, §16)


@dataclass(frozen=True, slots=True)
class LlamaHParams:
    """The llama.* values of a GGUF file; `defaults` names the ones not found in the input."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_rot: int
    context_length: int
    rms_eps: float
    rope_freq_base: float | None = None
    defaults: tuple[str, ...] = ()  # "context_length", "rms_eps": the LLaMA-1 values were used


def _shape(shapes: Mapping[str, Sequence[int]], name: str) -> tuple[int, ...]:
    """Raises: BadLayout when a tensor the model needs is missing."""
    if name not in shapes:
        raise BadLayout("missing; every LLaMA model has it", field=f"tensor {name!r}")
    return tuple(int(d) for d in shapes[name])


def _expect(shapes: Mapping[str, Sequence[int]], name: str, want: tuple[int, ...], why: str) -> None:
    """Raises: FormatError when a tensor's (PyTorch-order) shape is not `want`."""
    got = _shape(shapes, name)
    if got != want:
        raise BadValue(f"shape {list(got)}, expected {list(want)} ({why})", field=f"tensor {name!r}")


def _rows(shapes: Mapping[str, Sequence[int]], name: str) -> int:
    """Rows of a 2-D tensor. Raises: FormatError when it is missing or not 2-D."""
    shape = _shape(shapes, name)
    if len(shape) != 2:
        raise BadValue(f"shape {list(shape)}, expected 2 dimensions", field=f"tensor {name!r}")
    return shape[0]


def llama_hparams(shapes: Mapping[str, Sequence[int]], *, n_vocab: int, n_embd: int, n_head: int, n_layer: int,
                  n_rot: int, context_length: int | None = None, rms_eps: float | None = None,
                  rope_freq_base: float | None = None, tied_embeddings: bool = False) -> LlamaHParams:
    """GGUF hyper-parameters from the header/params values and the full tensors' PyTorch-order shapes.

    n_ff comes from layers.0.feed_forward.w1 and head_count_kv from layers.0.attention.wk; every layer
    is checked against them. context_length / rms_eps None: the LLaMA-1 values, named in `defaults`.
    tied_embeddings: the model has no output.weight (llama.cpp then uses the token embedding, §16.1).

    Raises:
        FormatError: a missing tensor, a shape that disagrees, n_rot other than the head size (today's
            llama.cpp refuses it), or a value out of range.
    """
    if n_head <= 0 or n_embd <= 0 or n_embd % n_head:
        raise BadValue(f"{n_head} heads do not divide n_embd {n_embd}", field="n_head")
    head = n_embd // n_head
    if n_rot != head:
        raise BadValue(f"n_rot {n_rot} is not the head size {head}; today's llama.cpp rotates whole heads "
                       "only (llama.rope.dimension_count must equal it)", field="n_rot")
    _expect(shapes, "tok_embeddings.weight", (n_vocab, n_embd), "n_vocab x n_embd")
    if not tied_embeddings:
        _expect(shapes, "output.weight", (n_vocab, n_embd), "n_vocab x n_embd")
    elif "output.weight" in shapes:
        raise BadLayout("present, although the embeddings were declared tied", field="tensor 'output.weight'")
    _expect(shapes, "norm.weight", (n_embd,), "n_embd")
    n_ff = _rows(shapes, "layers.0.feed_forward.w1.weight")
    kv_rows = _rows(shapes, "layers.0.attention.wk.weight")
    if kv_rows <= 0 or kv_rows % head or n_head % (kv_rows // head):
        raise BadValue(f"{kv_rows} rows are not a whole number of {head}-row heads dividing {n_head}",
                       field="tensor 'layers.0.attention.wk.weight'")
    for n in range(n_layer):  # every layer as layer 0 implies
        for name, want in _layer_shapes(n, n_embd, n_ff, kv_rows).items():
            _expect(shapes, name, want, "from layer 0 and n_embd")
    defaults = tuple(k for k, v in (("context_length", context_length), ("rms_eps", rms_eps)) if v is None)
    ctx = LLAMA1_CONTEXT_LENGTH if context_length is None else context_length
    eps = LLAMA1_RMS_EPS if rms_eps is None else rms_eps
    _check_positive(ctx, eps, rope_freq_base)
    return LlamaHParams(n_vocab, n_embd, n_layer, n_head, kv_rows // head, n_ff, n_rot, ctx, eps, rope_freq_base,
                        defaults)


def llama3_rope_factors(n_rot: int, theta: float, *, factor: float = 8.0, low_freq_factor: float = 1.0,
                        high_freq_factor: float = 4.0, old_context: int = 8192) -> np.ndarray:
    """rope_freqs.weight of Llama 3.1+ scaled RoPE (§16.2): one float32 divisor per rotary frequency.

    Meta's apply_scaling divides frequency i by factor when its wavelength exceeds old_context /
    low_freq_factor, keeps it below old_context / high_freq_factor, and blends in between; llama.cpp
    takes the divisors (its rope multiplies the angle by 1/divisor). Computed in float32, operation
    by operation, as llama.cpp's HF converter does (rope_type llama3).
    """
    f32 = np.float32
    exponents = np.arange(0, n_rot, 2, dtype=f32) / f32(n_rot)
    freqs = f32(1.0) / (np.float64(theta) ** exponents.astype(np.float64)).astype(f32)  # torch: pow in double
    low_wavelen, high_wavelen = old_context / low_freq_factor, old_context / high_freq_factor
    out = np.empty(len(freqs), f32)
    for i, freq in enumerate(freqs):
        wavelen = (f32(1) / freq) * f32(2 * math.pi)  # torch's scalar / tensor is reciprocal, then product
        if wavelen < high_wavelen:
            out[i] = 1.0
        elif wavelen > low_wavelen:
            out[i] = factor
        else:
            smooth = ((f32(1) / wavelen) * f32(old_context) - f32(low_freq_factor)) / f32(high_freq_factor
                                                                                         - low_freq_factor)
            out[i] = f32(1) / ((f32(1) - smooth) / f32(factor) + smooth)
    return out


def llama_shapes(n_vocab: int, n_embd: int, n_layer: int, n_ff: int, kv_rows: int) -> dict[str, tuple[int, ...]]:
    """Full PyTorch-order shape of every LLaMA tensor (docs/format.md §6.2, §16), in Meta's key order.

    kv_rows: rows of wk and wv (n_embd without grouped-query attention); n_ff: the feed-forward width.
    """
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (n_vocab, n_embd), "norm.weight": (n_embd,), "output.weight": (n_vocab, n_embd)}
    for n in range(n_layer):
        shapes.update(_layer_shapes(n, n_embd, n_ff, kv_rows))
    return shapes


def _layer_shapes(n: int, n_embd: int, n_ff: int, kv_rows: int) -> dict[str, tuple[int, ...]]:
    p = f"layers.{n}."
    return {f"{p}attention.wq.weight": (n_embd, n_embd), f"{p}attention.wk.weight": (kv_rows, n_embd),
            f"{p}attention.wv.weight": (kv_rows, n_embd), f"{p}attention.wo.weight": (n_embd, n_embd),
            f"{p}feed_forward.w1.weight": (n_ff, n_embd), f"{p}feed_forward.w2.weight": (n_embd, n_ff),
            f"{p}feed_forward.w3.weight": (n_ff, n_embd), f"{p}attention_norm.weight": (n_embd,),
            f"{p}ffn_norm.weight": (n_embd,)}


def check_overrides(context_length: int | None, rms_eps: float | None) -> None:
    """--ctx and --eps checked as requests, before any input is read (a bad one is not the input's fault).

    Raises: BadOption naming the option and the GGUF field it sets.
    """
    try:
        _check_positive(context_length, rms_eps)
    except BadValue as e:
        option = "--ctx" if e.field == "context_length" else "--eps"
        raise BadOption(f"{e.field}: {e.msg}", field=option) from None


def _check_positive(context_length: int | None, rms_eps: float | None, rope_freq_base: float | None = None) -> None:
    """Raises: FormatError unless the context length (when given) is a u32 above 0, and each float given is a finite
    positive number that f32 represents as non-zero."""
    if context_length is not None and not 0 < context_length < 1 << 32:
        raise BadValue(f"expected 1..{(1 << 32) - 1}, found {context_length}", field="context_length")
    for field, value in (("rms_eps", rms_eps), ("rope_freq_base", rope_freq_base)):
        with np.errstate(over="ignore", under="ignore"):
            as_f32 = np.float32(value) if value is not None and math.isfinite(value) else np.float32(0)
        if value is not None and not (value > 0 and 0 < as_f32 < np.inf):
            raise BadValue(f"expected a positive finite f32, found {value!r}", field=field)


# ------------------------------------------------------------------ vocabulary (§15)

UNKNOWN_TEXT = " \u2047 ".encode()  # what the 2023 converters stored for <unk>
SPACE_MARKER = "\u2581"  # SentencePiece's space, stored as ASCII space by the 2023 converters
LLAMA_CONTROL_NAMES = {1: "<s>", 2: "</s>"}  # LLaMA's bos and eos; the old files stored both as empty texts
BPE_MODEL = "gpt2"  # tokenizer.ggml.model of every byte-level BPE (Meta's tiktoken file and tokenizer.json alike)


@dataclass(frozen=True, slots=True)
class GGUFVocab:
    """tokenizer.ggml.*: the pieces as stored in GGUF, with scores, types and special ids.

    SentencePiece (model "llama"): pieces, scores, types. Byte-level BPE (model "gpt2", §15.1): pieces
    in GPT-2's byte alphabet, no scores, `pre` naming llama.cpp's pre-tokenizer, and `merges`
    ("left right", in rank order). `extra_ids` holds further tokenizer.ggml.<key> ids (eot, eom).
    """

    pieces: Sequence[str]  # a tuple, or (a large vocabulary) GGUFStrings
    scores: np.ndarray | None  # float32, one per piece; None: not written (BPE)
    types: np.ndarray  # int32 TokenType codes, one per piece
    unk_id: int | None
    bos_id: int | None
    eos_id: int | None
    model: str = "llama"  # tokenizer.ggml.model
    pre: str | None = None  # tokenizer.ggml.pre
    merges: Sequence[str] | None = None  # tokenizer.ggml.merges
    extra_ids: tuple[tuple[str, int], ...] = ()  # (key without prefix, id), e.g. ("eot_token_id", 128009)

    def __post_init__(self) -> None:
        n_scores = len(self.pieces) if self.scores is None else len(self.scores)
        if not len(self.pieces) == n_scores == len(self.types):
            raise CannotWrite(f"{len(self.pieces)} pieces, {n_scores} scores, {len(self.types)} types")

    def __len__(self) -> int:
        return len(self.pieces)


def control_placeholder(token_id: int) -> str:
    """The piece we give a control token whose name the old file lost (it stored an empty text)."""
    return f"<ctl{token_id}>"


def _byte_run_start(tokens: Sequence[bytes]) -> int | None:
    """First id s where ids s..s+255 hold the single bytes 00..FF (SentencePiece byte fallback), else None."""
    for s, t in enumerate(tokens[: len(tokens) - LLAMA_BYTE_TOKENS + 1]):
        if t == b"\0" and all(tokens[s + b] == bytes([b]) for b in range(LLAMA_BYTE_TOKENS)):
            return s
    return None


def reconstruct_vocab(vocab: Vocab) -> GGUFVocab:
    """SentencePiece pieces, scores and types from an old file's stored texts (the inverse of §3, rules §15).

    Raises:
        FormatError: a text that is neither a byte token nor UTF-8 (names the token id).
    """
    tokens = vocab.tokens
    start = _byte_run_start(tokens)
    byte_ids = range(0) if start is None else range(start, start + LLAMA_BYTE_TOKENS)
    unk_id = next((i for i, t in enumerate(tokens) if t == UNKNOWN_TEXT), None)
    pieces, types = [], []
    for i, text in enumerate(tokens):
        piece, kind = _piece(i, text, unk_id, byte_ids)
        pieces.append(piece)
        types.append(kind)
    scores = np.zeros(len(tokens), np.float32) if vocab.scores is None else np.asarray(vocab.scores, np.float32)
    is_control = [t == TokenType.CONTROL for t in types]
    bos = 1 if len(tokens) > 1 and is_control[1] else None
    eos = 2 if len(tokens) > 2 and is_control[2] else None
    return GGUFVocab(tuple(pieces), scores.copy(), np.array(types, np.int32), unk_id, bos, eos)


def _piece(i: int, text: bytes, unk_id: int | None, byte_ids: range) -> tuple[str, TokenType]:
    """One token's piece and type, by the rules of §15 in order: unknown, control, byte, normal.

    Raises:
        FormatError: a normal text that is not UTF-8.
    """
    if i == unk_id:
        return "<unk>", TokenType.UNKNOWN
    if not text:
        name = LLAMA_CONTROL_NAMES.get(i) or control_placeholder(i)
        return name, TokenType.CONTROL
    if i in byte_ids:
        return f"<0x{text[0]:02X}>", TokenType.BYTE
    try:
        return text.decode("utf-8").replace(" ", SPACE_MARKER), TokenType.NORMAL
    except UnicodeDecodeError:
        raise BadValue(f"text {text[:16]!r} is not UTF-8 and not a byte token; GGUF pieces are UTF-8",
                       field=f"token {i}") from None


def check_vocab_matches(file_vocab: Vocab, model_vocab: Vocab, *, model_path: str) -> None:
    """Check that a tokenizer.model's old-style texts/scores are what the file stores, id by id.

    `model_vocab` is the tokenizer's vocabulary as the 2023 converter wrote it (ggmlfmt.llama.spm.load_vocab);
    scores are compared bit for bit when the file has them (unversioned 'ggml' has none).

    Raises:
        FormatError: a different size, or the first id whose text or score differs (both shown).
    """
    if len(file_vocab) != len(model_vocab):
        raise BadValue(f"{len(model_vocab):,} pieces, the file has {len(file_vocab):,} tokens", path=model_path,
                       field="vocab size")
    for i, (ours, theirs) in enumerate(zip(file_vocab.tokens, model_vocab.tokens, strict=True)):
        if ours != theirs:
            raise BadValue(f"text {theirs[:40]!r} differs from the file's {ours[:40]!r}; not this model's "
                           "tokenizer", path=model_path, field=f"token {i}")
    if file_vocab.scores is None or model_vocab.scores is None:
        return
    a = np.asarray(file_vocab.scores, "<f4").view("<u4")
    b = np.asarray(model_vocab.scores, "<f4").view("<u4")
    diff = np.flatnonzero(a != b)
    if diff.size:
        i = int(diff[0])
        raise BadValue(f"score {float(model_vocab.scores[i])!r} differs from the file's "
                       f"{float(file_vocab.scores[i])!r}", path=model_path, field=f"token {i}")


# ------------------------------------------------------------------ metadata (§14)


class MetaKV(NamedTuple):
    """One metadata entry; for ARRAY, value is (element type, sequence of elements)."""

    key: str
    type: GGUFValueType
    value: Any


def llama_metadata(hp: LlamaHParams, vocab: GGUFVocab, *, name: str, file_type: int,
                   quantized: bool, n_params: int | None = None, extra: Sequence[MetaKV] = ()) -> list[MetaKV]:
    """Every key/value today's llama.cpp reads for a LLaMA model, in the order we write them.

    n_params (the checkpoint's parameter count, every tensor as llama.cpp's Meta converter counts):
    also general.size_label and llama.vocab_size, which that converter writes (§14.2). extra: further
    entries written last, as given (a Hugging Face directory's rope scaling and tokenizer settings, §19).

    Raises:
        FormatError: the vocabulary size is not n_vocab, or a special id is outside the vocabulary.
    """
    if len(vocab) != hp.n_vocab:
        raise BadValue(f"{len(vocab):,} tokens, expected n_vocab {hp.n_vocab:,}", field="tokenizer.ggml.tokens")
    u32, s = GGUFValueType.UINT32, GGUFValueType.STRING
    out = [MetaKV("general.architecture", s, "llama"), MetaKV("general.name", s, name),
           MetaKV("general.file_type", u32, int(file_type))]
    if n_params is not None:
        out.append(MetaKV("general.size_label", s, size_label(n_params)))
    if quantized:
        out.append(MetaKV("general.quantization_version", u32, GGUF_QUANTIZATION_VERSION))
    if n_params is not None:
        out.append(MetaKV("llama.vocab_size", u32, hp.n_vocab))
    out += [MetaKV(f"llama.{k}", u32, v) for k, v in (
        ("context_length", hp.context_length), ("embedding_length", hp.n_embd), ("block_count", hp.n_layer),
        ("feed_forward_length", hp.n_ff), ("rope.dimension_count", hp.n_rot),
        ("attention.head_count", hp.n_head), ("attention.head_count_kv", hp.n_head_kv))]
    out.append(MetaKV("llama.attention.layer_norm_rms_epsilon", GGUFValueType.FLOAT32, hp.rms_eps))
    if hp.rope_freq_base is not None:
        out.append(MetaKV("llama.rope.freq_base", GGUFValueType.FLOAT32, hp.rope_freq_base))
    return out + _tokenizer_metadata(vocab) + list(extra)


def _tokenizer_metadata(vocab: GGUFVocab) -> list[MetaKV]:
    """tokenizer.ggml.* entries.

    Raises:
        FormatError: a special id outside the vocabulary.
    """
    arr, s = GGUFValueType.ARRAY, GGUFValueType.STRING
    out = [MetaKV("tokenizer.ggml.model", s, vocab.model)]
    if vocab.pre is not None:
        out.append(MetaKV("tokenizer.ggml.pre", s, vocab.pre))
    out.append(MetaKV("tokenizer.ggml.tokens", arr, (s, vocab.pieces)))
    if vocab.scores is not None:
        out.append(MetaKV("tokenizer.ggml.scores", arr, (GGUFValueType.FLOAT32, vocab.scores)))
    out.append(MetaKV("tokenizer.ggml.token_type", arr, (GGUFValueType.INT32, vocab.types)))
    if vocab.merges is not None:
        out.append(MetaKV("tokenizer.ggml.merges", arr, (s, vocab.merges)))
    for key, value in (("bos_token_id", vocab.bos_id), ("eos_token_id", vocab.eos_id),
                       ("unknown_token_id", vocab.unk_id), *vocab.extra_ids):
        if value is None:
            continue
        if not 0 <= value < len(vocab):
            raise BadValue(f"id {value} is outside the {len(vocab):,} tokens", field=f"tokenizer.ggml.{key}")
        out.append(MetaKV(f"tokenizer.ggml.{key}", GGUFValueType.UINT32, value))
    return out


# ------------------------------------------------------------------ the whole file (§11.8, §13, §14)


class OutTensor(NamedTuple):
    """One tensor to write into a GGUF LLaMA file: its Meta/ggjt name, output type and PyTorch-order shape."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]


def plan_llama_gguf(hp: LlamaHParams, vocab: GGUFVocab, tensors: Sequence[OutTensor], *, name: str,
                    n_params: int | None = None, extra: Sequence[MetaKV] = ()) -> tuple[Plan, list[MetaKV]]:
    """Lay out a GGUF v3 LLaMA file: metadata (§14), tensors under their GGUF names (§13), in the given order.

    general.file_type is the most common 2-D type; general.quantization_version is written when any
    tensor is quantized; n_params and extra as llama_metadata. Returns the plan, which names tensors by
    their GGUF names, and the metadata it writes (for --dry-run to show what is written, not a recomputation).

    Raises:
        FormatError: a value llama.cpp would refuse (vocabulary size, special ids, unknown tensors).
        CannotWrite: a spec GGUF cannot store.
    """
    types_2d = [t.type for t in tensors if len(t.shape) == 2]
    quantized = any(BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION][t.type].elements > 1 for t in tensors)
    meta = llama_metadata(hp, vocab, name=name, file_type=llama_file_type(types_2d), quantized=quantized,
                          n_params=n_params, extra=extra)
    specs = [TensorInfo.from_shape(gguf_tensor_name(t.name, hp.n_layer), t.type, t.shape) for t in tensors]
    arrays_typed = [(k, (t, v[0]), v[1]) if t == GGUFValueType.ARRAY else (k, t, v) for k, t, v in meta]
    return plan_gguf(arrays_typed, specs), meta  # plan_gguf wants an array's element type in the type
