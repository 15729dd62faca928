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


def _sample(alignment: int = 32, first_name: bytes = b"tok",
            zero: bool = False) -> tuple[bytes, tuple[Field, ...], list[tuple[int, int]]]:
    """A small GGUF v3 file, its field map, and the (start, end) of each kv pair and tensor info.

    Valid unless first_name is empty or longer than 4096 bytes; zero adds a zero-size 4-dim F32 tensor
    (ne 32, 0, 1, 1), whose other dims an int mutation can then make overflow behind the zero.
    """
    b = _Builder()
    rng = np.random.default_rng(5)
    tensors = [(first_name, 1, (64, 3), rng.standard_normal((3, 64)).astype("<f2").tobytes()),
               ("norm", 0, (64,), rng.standard_normal(64).astype("<f4").tobytes()),
               ("q4", 2, (64, 2), gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32),
                                                         gguf.GGMLQuantizationType.Q4_0).tobytes()),
               ("q8", 8, (32, 1, 1, 1), bytes(34)),
               ("k", 12, (256,), bytes(range(144)))] + ([("z", 0, (32, 0, 1, 1), b"")] if zero else [])
    kvs = [("general.architecture", 8, b"llama"), ("general.alignment", 4, alignment), ("u8", 0, 7), ("b", 7, 1),
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
        name = name if isinstance(name, bytes) else name.encode()
        b.string(f"{name[:8].decode()}.name", name)
        b.put(f"{name}.n_dims", "<I", len(ne))
        what = name[:8].decode()
        for d, n in enumerate(ne):
            b.put(f"{what}.ne[{d}]", "<Q", n)
        b.put(f"{what}.type", "<I", t)
        b.put(f"{what}.offset", "<Q", rel)
        rel += -(-len(data) // alignment) * alignment
        spans.append((start, len(b.out)))
    b.out += bytes(-len(b.out) % alignment)
    for _, _, _, data in tensors:
        b.fields.append(Field("data", len(b.out), len(data)))
        b.out += data + bytes(-len(data) % alignment)
    return bytes(b.out), tuple(b.fields), spans


# Bases the mutations start from (issue 17): other alignments laid out as a writer would, a zero-size
# tensor, and first names of 0, 1 and 4,096 bytes (0 is refused; 4,096 is the longest the reader takes).
SAMPLES = {"a32": _sample(), "a1": _sample(1), "a8": _sample(8), "a4096": _sample(4096), "zero": _sample(zero=True),
           "name0": _sample(first_name=b""), "name1": _sample(first_name=b"t"),
           "name4096": _sample(first_name=b"n" * 4096)}
DATA, FIELDS, SPANS = SAMPLES["a32"]
INTS = [f for f in FIELDS if f.integer]
ALIGNMENTS = [0, 1, 3, 8, 48, 4096, 2**24 - 1, 2**24, 2**24 + 1, 2**25, 2**31, 2**32 - 1]  # around the cap


def test_the_sample_is_valid_and_gguf_py_agrees(tmp_path):
    index = decode_gguf(DATA)
    assert [t.name for t in index.tensors] == ["tok", "norm", "q4", "q8", "k"]
    (tmp_path / "s.gguf").write_bytes(DATA)
    ref = gguf.GGUFReader(tmp_path / "s.gguf")
    assert [t.name for t in ref.tensors] == [t.name for t in index.tensors]
    assert ref.fields["toks"].contents() == list(index.metadata["toks"])


def _put(data: bytes, f: Field, value: int) -> bytes:
    return data[: f.offset] + (value % 2 ** (8 * f.size)).to_bytes(f.size, "little") + data[f.offset + f.size :]


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    data, fields, spans = SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))]
    ints = [f for f in fields if f.integer]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["int", "int", "int", "cut", "bytes", "insert", "delete", "append", "dup",
                                     "align", "dims"]))
        if kind == "align":  # general.alignment: powers of two up to and past the cap, and values that are not
            f = next(f for f in fields if f.name == "general.alignment")
            data = _put(data, f, draw(st.one_of(st.sampled_from(ALIGNMENTS), st.integers(0, 31).map(lambda k: 2**k))))
        elif kind == "dims":  # one dim of a tensor 0, others huge: an overflow hidden behind the zero
            tensor = draw(st.sampled_from(sorted({f.name.split(".ne[")[0] for f in fields if ".ne[" in f.name})))
            dims = [f for f in fields if f.name.startswith(f"{tensor}.ne[")]
            zero_at = draw(st.integers(0, len(dims) - 1))
            for i, f in enumerate(dims):
                data = _put(data, f, 0 if i == zero_at else draw(st.sampled_from([1, 32, 2**31, 2**32, 2**61, 2**62,
                                                                                  2**63 - 1, 2**64 - 1])))
        elif kind == "int":
            f = draw(st.sampled_from(ints))
            if f.offset + f.size > len(data):
                continue
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2 ** (8 * f.size) - 1)))
            data = _put(data, f, value)
        elif kind == "cut":
            edges = sorted({f.offset for f in fields} | {f.offset + f.size for f in fields})
            data = data[: draw(st.one_of(st.sampled_from(edges), st.integers(0, len(data))))]
        elif kind in strategies.BLIND_MUTATIONS:
            data = strategies.blind_mutation(draw, data, kind)
        elif kind == "dup":  # repeat one kv pair or tensor info in place: duplicate keys/names, shifted offsets
            a, b = draw(st.sampled_from(spans))
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
    assert 1 <= index.alignment <= 2**24  # docs/format.md §11.5's cap
    for t in index.tensors:
        assert index.data_start <= t.offset <= t.offset + t.nbytes <= len(data)
        assert (t.offset - index.data_start) % index.alignment == 0
        assert t.ne[0] % t.block.elements == 0 and 1 <= len(t.ne) <= 4
        assert 1 <= len(t.name.encode()) <= 4096
        # the judges: llama.cpp's dims rule, and numpy making the view (last axis in blocks)
        assert strategies.llama_cpp_dims_ok(t.ne), t.ne
        view_shape = (*reversed(t.ne[1:]), t.ne[0] // t.block.elements)
        assert strategies.numpy_can_view(data, view_shape, t.block.nbytes, t.offset), t.ne
    for value in index.metadata.values():  # validation was complete: lazy strings all decode
        if isinstance(value, GGUFStrings):
            list(value)


@strategies.capped
@settings(max_examples=FUZZ_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_mutated_gguf_gives_format_error_or_consistent_index(data):
    index = strategies.decode_or_format_error(lambda: decode_gguf(data, path="m.gguf"), len(data), prefix="m.gguf: ")
    if index is not None:
        _check_consistent(index, data)
