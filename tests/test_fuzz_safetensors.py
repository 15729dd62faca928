"""Structure-aware fuzzing of the safetensors decoder: every mutant gives a FormatError or a consistent index.

Like tests/test_fuzz_gguf.py: a small valid file is made by the safetensors package, then mutated
1-3 times: the header length gets boundary values, a JSON number in the header (a dim or an offset)
is replaced, a dtype is swapped for another or an unknown one, the file is cut, bytes are
overwritten, inserted, deleted or appended. The decoder must raise a one-line FormatError naming the
file, or return an index whose tensors tile the data section and agree with their shapes, within
tracemalloc's bound (strategies.decode_or_format_error). A mutant the package also accepts must read
the same through both.

The default run is part of the suite; `HYPOTHESIS_PROFILE=fuzz` runs the long campaign (docs/safety.md).
"""

from __future__ import annotations

import os
import re
import struct
import tempfile

import numpy as np
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies
from ggmlfmt.reader import tensor_view
from ggmlfmt.safetensors import decode_safetensors

FUZZ_EXAMPLES = {"fuzz": 20_000}.get(os.environ.get("HYPOTHESIS_PROFILE", ""), 300)
INTERESTING = [0, 1, 2, 7, 8, 9, 15, 16, 64, 255, 4096, 2**31 - 1, 2**32, 2**53, 2**63 - 1, 2**64 - 1]


def _sample() -> bytes:
    rng = np.random.default_rng(9)
    tensors = {"tok": rng.standard_normal((3, 4)).astype("<f2"), "norm": rng.standard_normal(4).astype("<f4"),
               "ids": np.arange(5, dtype="<i8"), "empty": np.zeros((0, 3), "<f4"), "one": np.array(3, dtype="i1")}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.safetensors")
        safetensors.numpy.save_file(tensors, path, metadata={"format": "np"})
        with open(path, "rb") as f:
            return f.read()


DATA = _sample()
HEADER_END = 8 + struct.unpack("<Q", DATA[:8])[0]
NUMBERS = [(m.start(), m.end()) for m in re.finditer(rb"\d+", DATA[8:HEADER_END])]
DTYPES = [(m.start(1), m.end(1)) for m in re.finditer(rb'"dtype":"([A-Z0-9_]+)"', DATA[8:HEADER_END])]


def test_the_sample_is_valid_and_both_readers_agree(tmp_path) -> None:
    index = decode_safetensors(memoryview(DATA))
    assert {t.name for t in index.tensors} == {"tok", "norm", "ids", "empty", "one"} and len(NUMBERS) > 10


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    data = DATA
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["length", "number", "number", "dtype", "cut", "bytes", "insert", "delete",
                                     "append"]))
        if kind == "length":
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, len(data) + 16)))
            data = struct.pack("<Q", value % 2**64) + data[8:]
        elif kind in ("number", "dtype"):
            a, b = draw(st.sampled_from(NUMBERS if kind == "number" else DTYPES))
            a, b = a + 8, b + 8
            if b > len(data) or len(data) < 8:
                continue
            new = (str(draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 64)))) if kind == "number"
                   else draw(st.sampled_from(["F32", "F16", "BF16", "I8", "I64", "U8", "F8_E4M3", "X"])))
            data = data[:a] + new.encode() + data[b:]
            if len(new) != b - a:  # keep the header length honest about the JSON it now holds
                data = struct.pack("<Q", (struct.unpack("<Q", data[:8])[0] + len(new) - (b - a)) % 2**64) + data[8:]
        elif kind == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        else:
            data = strategies.blind_mutation(draw, data, kind)
    return data


def _check_consistent(index, data: bytes) -> None:
    spans = sorted((t.offset, t.offset + t.nbytes) for t in index.tensors)
    pos = index.data_start
    for a, b in spans:
        assert a == pos and b >= a
        pos = b
    assert pos == len(data) == index.file_size
    buf = np.frombuffer(data, np.uint8)
    for t in index.tensors:
        assert tensor_view(buf, t).nbytes == t.nbytes


@settings(max_examples=FUZZ_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_mutated_safetensors_gives_format_error_or_consistent_index(data: bytes) -> None:
    index = strategies.decode_or_format_error(lambda: decode_safetensors(memoryview(data), path="m.safetensors"),
                                              len(data), prefix="m.safetensors: ")
    if index is not None:
        _check_consistent(index, data)
