"""Read and bound-check Meta's params.json before any other work (FORMATS.md §10.1)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ggmlfmt.errors import FormatError

# Upper bounds: far above any 2023 model (LLaMA-65B: dim 8192, 80 layers, 64 heads), far below what
# would overflow the header's i32 fields or make the derived shapes absurd.
MAX_DIM = 1 << 16
MAX_LAYERS = 1 << 12
MAX_MULTIPLE_OF = 1 << 16
MAX_PARAMS_BYTES = 1 << 20  # a params.json is ~100 bytes; do not read a huge file into memory

REQUIRED = ("dim", "multiple_of", "n_heads", "n_layers")


@dataclass(frozen=True, slots=True)
class Params:
    """The fields of params.json the 2023 header uses."""

    dim: int
    multiple_of: int
    n_heads: int
    n_layers: int
    vocab_size: int  # -1: "defined by the tokenizer" (every Meta release)

    @property
    def n_rot(self) -> int:
        """Rotary dimensions per head, written as the header's n_rot."""
        return self.dim // self.n_heads

    @property
    def n_ff(self) -> int:
        """Feed-forward width: 8*dim/3 rounded up to multiple_of (Meta's FeedForward, §2.3)."""
        return (2 * (4 * self.dim) // 3 + self.multiple_of - 1) // self.multiple_of * self.multiple_of


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
        raise FormatError(f"expected a small JSON object, found more than {MAX_PARAMS_BYTES:,} bytes", path=path)
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise FormatError(f"not valid JSON: {e}", path=path) from None
    return parse_params(obj, path=path)


def parse_params(obj: Any, *, path: str = "params.json") -> Params:
    """Validate a decoded params.json object.

    Raises:
        FormatError: a field is missing, not an integer, or out of range.
    """
    if not isinstance(obj, dict):
        raise FormatError(f"expected a JSON object, found {type(obj).__name__}", path=path)
    for key in REQUIRED:
        if key not in obj:
            raise FormatError("missing; a Meta params.json has dim, multiple_of, n_heads, n_layers", path=path,
                              field=key)
    dim = _int_field(obj, "dim", 1, MAX_DIM, path)
    multiple_of = _int_field(obj, "multiple_of", 1, MAX_MULTIPLE_OF, path)
    n_layers = _int_field(obj, "n_layers", 1, MAX_LAYERS, path)
    n_heads = _int_field(obj, "n_heads", 1, dim, path)
    if dim % n_heads:
        raise FormatError(f"{n_heads} heads do not divide dim {dim}", path=path, field="n_heads")
    vocab_size = _int_field(obj, "vocab_size", -1, 1 << 24, path) if "vocab_size" in obj else -1
    if vocab_size == 0:
        raise FormatError("expected -1 (from the tokenizer) or a positive size, found 0", path=path,
                          field="vocab_size")
    return Params(dim, multiple_of, n_heads, n_layers, vocab_size)


def _int_field(obj: dict[str, Any], key: str, lo: int, hi: int, path: str) -> int:
    """One integer field within [lo, hi].

    Raises:
        FormatError: not an integer (JSON true/false and 4096.0 included) or out of range.
    """
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"expected an integer, found {json.dumps(value)[:40]}", path=path, field=key)
    if not lo <= value <= hi:
        raise FormatError(f"expected {lo}..{hi}, found {value}", path=path, field=key)
    return value
