"""Read and bound-check Meta's params.json before any other work (docs/format.md §8, §16)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ggmlfmt.errors import BadValue
from ggmlfmt.layout import ff_width
from ggmlfmt.llama.model import LlamaHParams, llama_hparams, llama_shapes

# Upper bounds: far above any 2023 model (LLaMA-65B: dim 8192, 80 layers, 64 heads), far below what
# would overflow the header's i32 fields or make the derived shapes absurd.
MAX_DIM = 1 << 16
MAX_LAYERS = 1 << 12
MAX_MULTIPLE_OF = 1 << 16
MAX_PARAMS_BYTES = 1 << 20  # a params.json is ~100 bytes; do not read a huge file into memory
MAX_FFN_MULTIPLIER = 16.0  # Meta's largest is 1.3 (LLaMA-2 70B); a larger factor is a typo or hostile
MAX_ROPE_THETA = 1e12  # Meta: 10,000 (LLaMA-1/2), 500,000 (LLaMA-3); beyond f32's comfortable range is nonsense

REQUIRED = ("dim", "multiple_of", "n_heads", "n_layers")
LLAMA3_ROPE_FACTOR = 8.0  # Meta's apply_scaling (llama-models, models/llama3/model.py), every Llama 3.x release
LLAMA3_HIGH_FREQ_FACTOR = 4.0  # its low_freq_factor is 1 and old_context_len 8192 (§16.2)
MAX_ROPE_SCALING = 1024.0


@dataclass(frozen=True, slots=True)
class Params:
    """The fields of params.json: those the 2023 header uses, then the LLaMA-2 and Llama 3 ones (None: absent)."""

    dim: int
    multiple_of: int
    n_heads: int
    n_layers: int
    vocab_size: int  # -1: "defined by the tokenizer" (every Meta release)
    n_kv_heads: int | None = None  # grouped-query attention (LLaMA-2 70B: 8)
    ffn_dim_multiplier: float | None = None  # LLaMA-2 70B: 1.3
    norm_eps: float | None = None  # every Meta release has it (1e-06 LLaMA-1, 1e-05 LLaMA-2)
    rope_theta: float | None = None
    use_scaled_rope: bool | None = None  # Llama 3.1+: true (§16.2); absent in Llama 3 and before
    rope_scaling_factor: float | None = None  # Meta's apply_scaling for Llama 3 hard-codes 8; a params.json may say
    rope_high_freq_factor: float | None = None  # ... and 4 (both keys as Meta's Llama 4 params name them)

    @property
    def rope_scaling(self) -> tuple[float, float] | None:
        """(scale factor, high-frequency factor) of Llama 3.1+ scaled RoPE, or None without use_scaled_rope."""
        if not self.use_scaled_rope:
            return None
        return (LLAMA3_ROPE_FACTOR if self.rope_scaling_factor is None else self.rope_scaling_factor,
                LLAMA3_HIGH_FREQ_FACTOR if self.rope_high_freq_factor is None else self.rope_high_freq_factor)

    @property
    def n_rot(self) -> int:
        """Rotary dimensions per head, written as the header's n_rot."""
        return self.dim // self.n_heads

    @property
    def n_head_kv(self) -> int:
        """Key/value heads: n_kv_heads, or n_heads when absent (no grouped-query attention)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def kv_dim(self) -> int:
        """Rows of wk and wv: n_head_kv heads of dim // n_heads rows (dim without grouped-query attention)."""
        return self.n_head_kv * (self.dim // self.n_heads)

    @property
    def n_ff(self) -> int:
        """Feed-forward width a ggjt header implies: 8*dim/3 rounded up to multiple_of (docs/format.md §2.3). It is Meta's
        `hidden_dim` unless params.json has ffn_dim_multiplier (ggjt_problem says when they differ)."""
        return ff_width(self.dim, self.multiple_of)

    @property
    def hidden_dim(self) -> int:
        """Feed-forward width by Meta's FeedForward (docs/format.md §16): int(8*dim/3), times
        ffn_dim_multiplier if given, rounded up to multiple_of."""
        return ff_width(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    def shapes(self, n_vocab: int, *, gguf: bool = False) -> dict[str, tuple[int, ...]]:
        """Full PyTorch shape of every LLaMA tensor this implies (docs/format.md §6.2), in Meta key order.

        ggjt: the header's view (n_ff from n_mult, wk/wv dim rows). gguf: Meta's (docs/format.md §16):
        wk/wv have kv_dim rows, the feed-forward width is hidden_dim (ffn_dim_multiplier).
        """
        hidden, kv = (self.hidden_dim, self.kv_dim) if gguf else (self.n_ff, self.dim)
        return llama_shapes(n_vocab, self.dim, self.n_layers, hidden, kv)

    def ggjt_problem(self) -> str | None:
        """Why a ggjt file cannot describe this model (None: it can): GQA, or an n_ff n_mult cannot produce."""
        if self.n_head_kv != self.n_heads:
            return (f"n_kv_heads {self.n_head_kv} < n_heads {self.n_heads} (grouped-query attention) cannot be "
                    "described by a ggjt file; use --format gguf")
        if self.hidden_dim != self.n_ff:
            return (f"feed-forward size {self.hidden_dim} (ffn_dim_multiplier {self.ffn_dim_multiplier}) is not the "
                    f"{self.n_ff} a ggjt header's n_mult {self.multiple_of} produces; use --format gguf")
        return None


def read_params(path: str | os.PathLike[str]) -> Params:
    """Read params.json and check every field the header needs.

    Raises:
        FormatError: not JSON, not an object, a field missing, not an integer or out of range
            (names params.json and the field). OSError: the file cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read(MAX_PARAMS_BYTES + 1)
    if len(raw) > MAX_PARAMS_BYTES:
        raise BadValue(f"expected a small JSON object, found more than {MAX_PARAMS_BYTES:,} bytes", path=path)
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise BadValue(f"not valid JSON: {e}", path=path) from None
    return parse_params(obj, path=path)


def parse_params(obj: Any, *, path: str = "params.json") -> Params:
    """Validate a decoded params.json object; the LLaMA-2 and Llama 3 fields are None when absent or JSON null.

    Raises:
        FormatError: a field is missing, not an integer (a number, true/false) or out of range; n_heads or
            n_kv_heads not dividing what they must; a high-frequency factor not above the low one (1).
    """
    if not isinstance(obj, dict):
        raise BadValue(f"expected a JSON object, found {type(obj).__name__}", path=path)
    for key in REQUIRED:
        if key not in obj:
            raise BadValue("missing; a Meta params.json has dim, multiple_of, n_heads, n_layers", path=path,
                           field=key)
    dim = json_int(obj, "dim", 1, MAX_DIM, path)
    multiple_of = json_int(obj, "multiple_of", 1, MAX_MULTIPLE_OF, path)
    n_layers = json_int(obj, "n_layers", 1, MAX_LAYERS, path)
    n_heads = json_int(obj, "n_heads", 1, dim, path)
    if dim % n_heads:
        raise BadValue(f"{n_heads} heads do not divide dim {dim}", path=path, field="n_heads")
    vocab_size = json_int(obj, "vocab_size", -1, 1 << 24, path) if "vocab_size" in obj else -1
    if vocab_size == 0:
        raise BadValue("expected -1 (from the tokenizer) or a positive size, found 0", path=path,
                       field="vocab_size")
    n_kv = json_int(obj, "n_kv_heads", 1, n_heads, path) if obj.get("n_kv_heads") is not None else None
    if n_kv is not None and n_heads % n_kv:
        raise BadValue(f"{n_kv} key/value heads do not divide n_heads {n_heads}", path=path, field="n_kv_heads")
    floats = [json_float(obj, k, hi, path, optional=True) for k, hi in (
        ("ffn_dim_multiplier", MAX_FFN_MULTIPLIER), ("norm_eps", 1.0), ("rope_theta", MAX_ROPE_THETA))]
    scaled = obj.get("use_scaled_rope")
    if scaled is not None and not isinstance(scaled, bool):
        raise BadValue(f"expected true or false, found {json.dumps(scaled)[:40]}", path=path,
                       field="use_scaled_rope")
    factor, high = (json_float(obj, k, MAX_ROPE_SCALING, path, optional=True)
                    for k in ("rope_scaling_factor", "rope_high_freq_factor"))
    if high is not None and high <= 1:  # the blend divides by (high - low), low being 1
        raise BadValue(f"expected a number above 1, found {high!r}", path=path, field="rope_high_freq_factor")
    return Params(dim, multiple_of, n_heads, n_layers, vocab_size, n_kv, *floats, scaled, factor, high)


def gguf_hparams(params: Params, n_vocab: int, shapes: Mapping[str, Sequence[int]], *,
                 context_length: int | None = None, tied_embeddings: bool = False,
                 path: str = "params.json") -> LlamaHParams:
    """GGUF hyper-parameters of a checkpoint: params.json's values, checked against the full tensor shapes.

    context_length None: LLaMA-1's 2048 (named in the result's `defaults`, for the caller to log); norm_eps
    absent: 1e-6, likewise.

    Raises:
        FormatError: the tensors disagree with params.json (n_ff, n_kv_heads), or a bad shape.
    """
    hp = llama_hparams(shapes, n_vocab=n_vocab, n_embd=params.dim, n_head=params.n_heads,
                       n_layer=params.n_layers, n_rot=params.n_rot, context_length=context_length,
                       rms_eps=params.norm_eps, rope_freq_base=params.rope_theta, tied_embeddings=tied_embeddings)
    for field, ours, theirs in (("ffn_dim_multiplier", params.hidden_dim, hp.n_ff),
                                ("n_kv_heads", params.n_head_kv, hp.n_head_kv)):
        if ours != theirs:
            what = "feed-forward size" if field == "ffn_dim_multiplier" else "key/value heads"
            raise BadValue(f"params.json implies {what} {ours}, the tensors have {theirs}", path=path,
                           field=field)
    return hp


def json_int(obj: dict[str, Any], key: str, lo: int, hi: int, path: str | os.PathLike[str], *,
             joined: bool = False) -> int:
    """A field of a decoded JSON object that must be an integer in lo..hi (absent: JSON null, refused).

    joined: one sentence for both faults with the range spelled 1..65,536 (config.json's errors); else
    "expected an integer" or "expected lo..hi" (params.json's).

    Raises:
        FormatError: not an integer (JSON true/false and 4096.0 included) or out of range (names path and key).
    """
    value = obj.get(key)
    typed = not isinstance(value, bool) and isinstance(value, int)
    if not (typed and lo <= value <= hi):
        found = json.dumps(value)[:40]
        msg = (f"expected an integer in {lo}..{hi:,}, found {found}" if joined else
               f"expected {lo}..{hi}, found {found}" if typed else f"expected an integer, found {found}")
        raise BadValue(msg, path=os.fspath(path), field=key)
    return value


def json_float(obj: dict[str, Any], key: str, hi: float, path: str | os.PathLike[str], *,
               optional: bool = False) -> float | None:
    """A field of a decoded JSON object that must be a finite number in (0, hi) (integers allowed).

    optional: absent or JSON null gives None; else it is refused as any other non-number.

    Raises:
        FormatError: not a number (JSON true/false included), not finite, or out of range (names path and key).
    """
    value = obj.get(key)
    if value is None and optional:
        return None
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        number = float(value) if numeric else math.nan
    except OverflowError:  # a JSON integer with hundreds of digits
        number = math.inf
    if not (math.isfinite(number) and 0 < number < hi):
        found = repr(number) if numeric else json.dumps(value)[:40]
        raise BadValue(f"expected a number in (0, {hi:g}), found {found}", path=os.fspath(path), field=key)
    return number
