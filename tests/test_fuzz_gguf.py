"""Structure-aware fuzzing of the GGUF decoder: every mutant gives a FormatError or a consistent index.

Like tests/test_fuzz.py: a small valid GGUF file is built here with struct (a field map records
where every count, length, type code, dim and offset is), then mutated 1-3 times: integer fields
get boundary values, the file is cut at field edges, bytes are overwritten, inserted, deleted or
appended, a metadata pair or tensor info is repeated. The decoder must raise a one-line
FormatError naming the file, or return an index whose tensors lie in the file, aligned, unique and
non-overlapping, and whose every string decodes, within a deadline and a tracemalloc bound.

The default run is part of the suite; `HYPOTHESIS_PROFILE=fuzz` runs the long campaign (docs/safety.md).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import gguf
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies
from ggmlfmt.gguf import GGUFStrings, decode_gguf

FUZZ_EXAMPLES = {"fuzz": 20_000}.get(os.environ.get("HYPOTHESIS_PROFILE", ""), 300)

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 31, 32, 33, 64, 255, 256, 4096, 65535, 2**31 - 1, 2**31, 2**32 - 1,
               2**32, 2**60, 2**63 - 1, 2**63, 2**64 - 1]


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    integer: bool = False  # a u32/u64 field the mutations may set (counts, lengths, types, dims, offsets)


class _Builder:
    """Bytes plus a map of where each field is (independent of ggmlfmt.gguf)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.fields: list[Field] = []

    def put(self, name: str, fmt: str, *values) -> None:
        self.fields.append(Field(name, len(self.out), struct.calcsize(fmt), fmt in ("<I", "<Q")))
        self.out += struct.pack(fmt, *values)

    def string(self, name: str, s: bytes) -> None:
        self.put(f"{name}.len", "<Q", len(s))
        self.fields.append(Field(name, len(self.out), len(s)))
        self.out += s


def _sample() -> tuple[bytes, tuple[Field, ...], list[tuple[int, int]]]:
    """A small valid GGUF v3 file, its field map, and the (start, end) of each kv pair and tensor info."""
    b = _Builder()
    rng = np.random.default_rng(5)
    tensors = [("tok", 1, (64, 3), rng.standard_normal((3, 64)).astype("<f2").tobytes()),
               ("norm", 0, (64,), rng.standard_normal(64).astype("<f4").tobytes()),
               ("q4", 2, (64, 2), gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32),
                                                         gguf.GGMLQuantizationType.Q4_0).tobytes()),
               ("q8", 8, (32, 1, 1, 1), bytes(34)),
               ("k", 12, (256,), bytes(range(144)))]
    kvs = [("general.architecture", 8, b"llama"), ("general.alignment", 4, 32), ("u8", 0, 7), ("b", 7, 1),
           ("f", 6, 0.5), ("u64", 10, 2**40), ("toks", (9, 8), [b"<unk>", b"", b"\xe2\x96\x81a", b"x" * 130]),
           ("scores", (9, 6), [0.0, -1.0, -2.0]), ("bools", (9, 7), [1, 0]), ("nest", (9, 9), [[1, 2], [3]])]
    b.put("magic", "<I", 0x46554747)
    b.put("version", "<I", 3)
    b.put("tensor_count", "<Q", len(tensors))
    b.put("kv_count", "<Q", len(kvs))
    spans = []
    for key, t, v in kvs:
        start = len(b.out)
        b.string(f"{key}.key", key.encode())
        code = {8: "<Q", 4: "<I", 0: "<B", 7: "<B", 6: "<f", 10: "<Q"}
        b.put(f"{key}.type", "<I", t if isinstance(t, int) else 9)
        if t == 8:
            b.string(key, v)
        elif isinstance(t, int):
            b.put(key, code[t], v)
        else:
            b.put(f"{key}.etype", "<I", t[1])
            b.put(f"{key}.count", "<Q", len(v))
            for i, item in enumerate(v):
                if t[1] == 8:
                    b.string(f"{key}[{i}]", item)
                elif t[1] == 9:
                    b.put(f"{key}[{i}].etype", "<I", 5)
                    b.put(f"{key}[{i}].count", "<Q", len(item))
                    for j, x in enumerate(item):
                        b.put(f"{key}[{i}][{j}]", "<i", x)
                else:
                    b.put(f"{key}[{i}]", code[t[1]], item)
        spans.append((start, len(b.out)))
    rel = 0
    for name, t, ne, data in tensors:
        start = len(b.out)
        b.string(f"{name}.name", name.encode())
        b.put(f"{name}.n_dims", "<I", len(ne))
        for d, n in enumerate(ne):
            b.put(f"{name}.ne[{d}]", "<Q", n)
        b.put(f"{name}.type", "<I", t)
        b.put(f"{name}.offset", "<Q", rel)
        rel += -(-len(data) // 32) * 32
        spans.append((start, len(b.out)))
    b.out += bytes(-len(b.out) % 32)
    for _, _, _, data in tensors:
        b.fields.append(Field("data", len(b.out), len(data)))
        b.out += data + bytes(-len(data) % 32)
    return bytes(b.out), tuple(b.fields), spans


DATA, FIELDS, SPANS = _sample()
INTS = [f for f in FIELDS if f.integer]


def test_the_sample_is_valid_and_gguf_py_agrees(tmp_path):
    index = decode_gguf(DATA)
    assert [t.name for t in index.tensors] == ["tok", "norm", "q4", "q8", "k"]
    (tmp_path / "s.gguf").write_bytes(DATA)
    ref = gguf.GGUFReader(tmp_path / "s.gguf")
    assert [t.name for t in ref.tensors] == [t.name for t in index.tensors]
    assert ref.fields["toks"].contents() == list(index.metadata["toks"])


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    data = DATA
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["int", "int", "int", "cut", "bytes", "insert", "delete", "append", "dup"]))
        if kind == "int":
            f = draw(st.sampled_from(INTS))
            if f.offset + f.size > len(data):
                continue
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2 ** (8 * f.size) - 1)))
            data = data[: f.offset] + (value % 2 ** (8 * f.size)).to_bytes(f.size, "little") + data[f.offset + f.size :]
        elif kind == "cut":
            edges = sorted({f.offset for f in FIELDS} | {f.offset + f.size for f in FIELDS})
            data = data[: draw(st.one_of(st.sampled_from(edges), st.integers(0, len(data))))]
        elif kind in strategies.BLIND_MUTATIONS:
            data = strategies.blind_mutation(draw, data, kind)
        elif kind == "dup":  # repeat one kv pair or tensor info in place: duplicate keys/names, shifted offsets
            a, b = draw(st.sampled_from(SPANS))
            if b <= len(data):
                data = data[:b] + data[a:b] + data[b:]
    return data


def _check_consistent(index, data: bytes) -> None:
    names = [t.name for t in index.tensors]
    assert len(names) == len(set(names))
    assert index.data_start % index.alignment == 0 and index.alignment & (index.alignment - 1) == 0
    spans = sorted((t.offset, t.offset + t.nbytes) for t in index.tensors)
    for (a0, a1), (b0, _) in zip(spans, spans[1:]):
        assert a1 <= b0
    for t in index.tensors:
        assert index.data_start <= t.offset <= t.offset + t.nbytes <= len(data)
        assert (t.offset - index.data_start) % index.alignment == 0
        assert t.ne[0] % t.block.elements == 0 and 1 <= len(t.ne) <= 4
    for value in index.metadata.values():  # validation was complete: lazy strings all decode
        if isinstance(value, GGUFStrings):
            list(value)


@settings(max_examples=FUZZ_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_mutated_gguf_gives_format_error_or_consistent_index(data):
    index = strategies.decode_or_format_error(lambda: decode_gguf(data, path="m.gguf"), len(data), prefix="m.gguf: ")
    if index is not None:
        _check_consistent(index, data)
