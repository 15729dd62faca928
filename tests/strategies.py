"""Hypothesis strategies for ggmlfmt tests, plus adapters between tests/builders.py values and ggmlfmt's.

Strategies produce ggmlfmt inputs (arrays, Vocab, HParams); the adapters turn them into the plain
values the independent builder/parser in tests/builders.py takes, so expectations never come from
the code under test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import builders
from ggmlfmt import FType, HParams, Vocab

FLOAT_DTYPES = ("<f4", ">f4", "<f2", ">f2")  # big-endian inputs must come back as the same values


def tensor_names() -> st.SearchStrategy[str]:
    """Any non-empty Unicode name (no surrogates: names are stored as UTF-8); 40 characters fit easily."""
    return st.text(min_size=1, max_size=40)


def shapes() -> st.SearchStrategy[tuple[int, ...]]:
    """PyTorch-order shapes of 1 to 4 dims, zero-size dims included, small enough to write per example."""
    return st.lists(st.integers(0, 7), min_size=1, max_size=4).map(tuple)


@st.composite
def float_arrays(draw: st.DrawFn) -> npt.NDArray[Any]:
    """f32/f16 arrays in either byte order, any values (NaN, inf, -0.0), sometimes not C-contiguous."""
    dtype = np.dtype(draw(st.sampled_from(FLOAT_DTYPES)))
    shape = draw(shapes())
    arr = draw(hnp.arrays(dtype, shape))
    if arr.ndim >= 2 and draw(st.booleans()):
        arr = arr.T  # a transposed view: save() must write C order of the shape it is given
    return arr


def tensor_dicts(max_size: int = 6) -> st.SearchStrategy[dict[str, npt.NDArray[Any]]]:
    """name -> array mappings as save() takes them."""
    return st.dictionaries(tensor_names(), float_arrays(), max_size=max_size)


@st.composite
def vocabs(draw: st.DrawFn, max_size: int = 30) -> Vocab:
    """Token texts of arbitrary bytes (empty ones too) with finite or infinite f32 scores.

    NaN scores are left out here because the builder packs scores through Python floats, which may
    quiet a signalling NaN; test_roundtrip checks NaN payloads through ggmlfmt alone.
    """
    tokens = draw(st.lists(st.binary(max_size=24), max_size=max_size))
    scores = draw(hnp.arrays(np.float32, len(tokens), elements=st.floats(width=32, allow_nan=False)))
    return Vocab(tuple(tokens), scores)


@st.composite
def hparams_for(draw: st.DrawFn, vocab: Vocab) -> HParams:
    """Header fields: n_vocab matches the vocabulary, the rest any non-negative i32, ftype a known value."""
    field = st.integers(0, 2**31 - 1)
    return HParams(len(vocab), draw(field), draw(field), draw(field), draw(field), draw(field),
                   int(draw(st.sampled_from(list(FType)))))


# ---------------------------------------------------------------- adapters to tests/builders.py values


def builder_hparams(hp: HParams) -> dict[str, int]:
    """HParams as the builder's name -> value mapping."""
    return dict(zip(builders.HPARAM_NAMES, hp.astuple()))


def builder_vocab(vocab: Vocab, *, scores: bool = True) -> list[tuple[bytes, float | None]]:
    """Vocab as the builder's [(text, score)] list (score None when the format has none)."""
    if not scores or vocab.scores is None:
        return [(t, None) for t in vocab.tokens]
    return [(t, float(s)) for t, s in zip(vocab.tokens, vocab.scores)]


def le_bytes(arr: npt.NDArray[Any]) -> bytes:
    """The little-endian C-order bytes of an f32/f16 array: what the format stores for it."""
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()


def builder_records(tensors: Mapping[str, npt.NDArray[Any]]) -> list[builders.TensorSpec]:
    """save()'s input as builder records: (name, type code, ne = reversed shape, data bytes)."""
    code = {"f4": builders.TYPE_CODES["F32"], "f2": builders.TYPE_CODES["F16"]}
    return [(name, code[a.dtype.str[1:]], tuple(reversed(a.shape)), le_bytes(a)) for name, a in tensors.items()]


def vocab_from_builder(vocab: list[tuple[bytes, float | None]]) -> Vocab:
    """A builder vocabulary as ggmlfmt's Vocab."""
    scores = None if any(s is None for _, s in vocab) else np.array([s for _, s in vocab], np.float32)
    return Vocab(tuple(t for t, _ in vocab), scores)


def arrays_from_records(records: list[builders.TensorSpec]) -> dict[str, npt.NDArray[Any]]:
    """F32/F16 builder records as PyTorch-shaped arrays (read-only views of the record bytes)."""
    dtype = {builders.TYPE_CODES["F32"]: "<f4", builders.TYPE_CODES["F16"]: "<f2"}
    return {str(name): np.frombuffer(data, dtype[code]).reshape(tuple(reversed(ne)))
            for name, code, ne, data in records}
