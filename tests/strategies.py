"""Hypothesis strategies for ggmlfmt tests, plus adapters between tests/builders.py values and ggmlfmt's.

Strategies produce ggmlfmt inputs (arrays, Vocab, HParams); the adapters turn them into the plain
values the independent builder/parser in tests/builders.py takes, so expectations never come from
the code under test.
"""

from __future__ import annotations

import functools
import os
import traceback
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import builders
from ggmlfmt import FormatError, FType, HParams, Vocab

T = TypeVar("T")

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


def builder_records(tensors: Mapping[str, npt.NDArray[Any]]) -> list[builders.TensorInfo]:
    """save()'s input as builder records: (name, type code, ne = reversed shape, data bytes)."""
    code = {"f4": builders.TYPE_CODES["F32"], "f2": builders.TYPE_CODES["F16"]}
    return [(name, code[a.dtype.str[1:]], tuple(reversed(a.shape)), le_bytes(a)) for name, a in tensors.items()]


def vocab_from_builder(vocab: list[tuple[bytes, float | None]]) -> Vocab:
    """A builder vocabulary as ggmlfmt's Vocab."""
    scores = None if any(s is None for _, s in vocab) else np.array([s for _, s in vocab], np.float32)
    return Vocab(tuple(t for t, _ in vocab), scores)


def arrays_from_records(records: list[builders.TensorInfo]) -> dict[str, npt.NDArray[Any]]:
    """F32/F16 builder records as PyTorch-shaped arrays (read-only views of the record bytes)."""
    dtype = {builders.TYPE_CODES["F32"]: "<f4", builders.TYPE_CODES["F16"]: "<f2"}
    return {str(name): np.frombuffer(data, dtype[code]).reshape(tuple(reversed(ne)))
            for name, code, ne, data in records}


# ---------------------------------------------------------------------------------------------------------
# Fuzzing: the structure-blind byte mutations every fuzz test applies besides its format-aware ones

BLIND_MUTATIONS = ("bytes", "insert", "delete", "append")


def blind_mutation(draw: st.DrawFn, data: bytes, kind: str, *, max_chunk: int = 40) -> bytes:
    """`data` with `kind` applied: "bytes" overwrites 1-8 bytes, "insert"/"delete" up to max_chunk bytes at a
    random place, "append" adds 1-64 bytes; overwriting or deleting in empty data leaves it as it is.

    Raises: ValueError for a kind not in BLIND_MUTATIONS.
    """
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    if kind == "insert":
        pos = draw(st.integers(0, len(data)))
        return data[:pos] + draw(st.binary(min_size=1, max_size=max_chunk)) + data[pos:]
    if kind not in BLIND_MUTATIONS:
        raise ValueError(f"not a blind mutation: {kind!r}")
    if not data:
        return data
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "bytes":
        return data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos + 8 :]
    return data[:pos] + data[pos + draw(st.integers(1, max_chunk)) :]


def decode_or_format_error(decode: Callable[[], T], n_bytes: int, *, prefix: str = "", what: str = "") -> T | None:
    """decode()'s result, or None if it raised a one-line FormatError starting with `prefix`.

    Either way its peak allocation (tracemalloc) stays below 64 bytes per input byte plus 1 MiB, the bound of
    docs/safety.md. Raises: AssertionError otherwise; any other exception from decode propagates.
    """
    tracemalloc.start()
    try:
        return decode()
    except FormatError as e:
        assert str(e).startswith(prefix) and "\n" not in str(e), str(e)
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 64 * n_bytes + (1 << 20), f"{what}decoding {n_bytes} bytes allocated {peak}"


# ---------------------------------------------------------------------------------------------------------
# Fuzzing in a worker whose address space is capped (issue 17)

WORKER_HEADROOM = 1 << 30  # address space a fuzz worker may map beyond what it had when it was forked


def _mapped_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_capped(fn: Callable[[], object], headroom: int = WORKER_HEADROOM, timeout: float | None = None) -> None:
    """Run fn() in a forked child whose RLIMIT_AS is what it has mapped plus `headroom`; fail here if it fails.

    tracemalloc sees Python's and numpy's allocations, not a map or a C library's; and on a big machine
    an allocation sized by a hostile field may simply succeed. Under the cap any such allocation of a
    GiB or more raises MemoryError (or kills the child), which fails the test with the child's traceback
    (hypothesis' falsifying example included). With `timeout`, a child still running after that many
    seconds is killed and the test fails (a guard against a hang in C code, not a speed check).
    """
    import resource
    import select
    import signal

    import pytest

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            limit = _mapped_bytes() + headroom
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            fn()
            status = 0
        except BaseException:  # noqa: BLE001 - everything goes to the parent
            os.write(write_end, traceback.format_exc()[-20000:].encode("utf-8", "replace"))
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        if timeout is not None and not select.select([r], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"fuzz worker still running after {timeout} s: killed", pytrace=False)
        report = r.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        how = f"exit status {os.waitstatus_to_exitcode(status)}"
        pytest.fail(f"fuzz worker (address space capped at +{headroom >> 20} MiB) failed, {how}:\n{report}",
                    pytrace=False)


def capped(test: Callable[..., object]) -> Callable[..., None]:
    """Decorator: the (hypothesis) test runs whole in run_capped's worker; fixtures are passed through."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        run_capped(lambda: test(*args, **kwargs))

    return wrapper


# ---------------------------------------------------------------------------------------------------------
# Independent judges of a tensor's dims: llama.cpp's rule, and whether numpy can view it

INT64_MAX = (1 << 63) - 1


def llama_cpp_dims_ok(ne: Sequence[int]) -> bool:
    """gguf.cpp's check (gguf_init_from_file_impl): each ne >= 0, and the running product of ne[0..3] (missing
    dims are 1; a factor of 0 or 1 is not checked) never passes INT64_MAX / the next factor."""
    dims = [*ne, *[1] * (4 - len(ne))]
    if min(dims) < 0 or max(dims) > INT64_MAX:
        return False
    product = dims[0]
    for n in dims[1:]:
        if n > 1 and INT64_MAX // n < product:
            return False
        product *= n
    return True


def numpy_can_view(data: bytes | np.ndarray, shape: Sequence[int], itemsize: int, offset: int = 0) -> bool:
    """Whether numpy makes an ndarray of `shape` with `itemsize`-byte items at `offset` of `data` (the judge of
    "a view can be made"): False on numpy's own "array is too big" or a bad dimension."""
    try:
        view = np.ndarray(tuple(shape), np.dtype(f"V{itemsize}"), data, offset)
    except (ValueError, OverflowError, TypeError):
        return False
    return view.nbytes == itemsize * int(np.prod(shape, dtype=object))
