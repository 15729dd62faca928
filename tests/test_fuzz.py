"""Structure-aware fuzzing: mutated files of every format give a FormatError or a consistent model, nothing else.

The mutations know where every field is (tests/builders.py's field map): counts, dims, type codes,
name and token lengths get boundary values, files are cut at field edges, records are duplicated,
bytes are inserted, deleted or appended. For every mutant the decoder must either raise
ggmlfmt.FormatError or return an index whose every tensor lies inside the file, within bounded
time (hypothesis deadline) and bounded memory (tracemalloc peak against the file size).

The default run is part of the suite; the long campaign is the same test with
`HYPOTHESIS_PROFILE=fuzz` (see docs/safety.md for its command and result).
"""

from __future__ import annotations

import os
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders
import strategies
from ggmlfmt import FormatError
from ggmlfmt.layout import decode_index

FUZZ_EXAMPLES = {"fuzz": 100_000}.get(os.environ.get("HYPOTHESIS_PROFILE", ""), 400)

INTERESTING_I32 = [0, 1, 2, 3, 4, 5, 31, 32, 33, 255, 4096, 65535, 65536, 0x7FFFFFFF, -1, -2, -32, -0x80000000]


@dataclass(frozen=True)
class Sample:
    data: bytes
    fields: tuple[builders.Field, ...]


def _sample(fmt: str, version: int | None, *, first_name: str = "tok_embeddings.weight", zero: bool = False) -> Sample:
    """A small file with 1-D, 2-D and (where the version has them) quantized tensors.

    Valid for names of 1..4096 bytes; zero appends a zero-size 4-dim F32 tensor
    (ne 32, 0, 1, 1; no data), whose other dims a mutation can then make overflow behind the zero.
    """
    layout = builders.layout_of(fmt, version)
    rng = np.random.default_rng(7)
    hp = builders.llama_hparams(n_vocab=5, dim=64, n_mult=32, n_head=2, n_layer=1, ftype=1)
    vocab = [(b" \xe2\x81\x87 ", 0.0), (b"", 0.0), (b"", 0.0), (b"\n", -1.5), (b" the", -2.25)]
    vocab = [(t, s if fmt != "ggml" else None) for t, s in vocab]
    tensors = [
        (first_name, 1, (64, 5), rng.standard_normal((5, 64)).astype("<f2").tobytes()),
        ("norm.weight", 0, (64,), rng.standard_normal(64).astype("<f4").tobytes()),
        ("layers.0.attention.wq.weight", 2, (64, 2), builders.quantize(rng.standard_normal((2, 64)), "Q4_0", layout)),
        ("layers.0.attention.wk.weight", 8, (32, 3, 1, 1),
         builders.quantize(rng.standard_normal((3, 32)), "Q8_0", layout)),
    ] + ([("zero", 0, (32, 0, 1, 1), b"")] if zero else [])
    valid = not zero and 0 < len(first_name.encode()) <= 4096  # the builder's own check refuses these
    data, fields = builders.build_file_with_fields(fmt, version, hp, vocab, tensors, validate=valid)
    return Sample(data, tuple(fields))


FORMATS = [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)]
BASES = {f"{fmt}{version or ''}": _sample(fmt, version) for fmt, version in FORMATS}
# More valid starting points (issue 17): a zero-size tensor last, and first names of 1 and 4,096 bytes (a name
# length of 0 or 4,097 is an int mutation away)
SAMPLES = {**BASES, "ggjt3-zero": _sample("ggjt", 3, zero=True), "ggml-zero": _sample("ggml", None, zero=True),
           "ggmf1-name1": _sample("ggmf", 1, first_name="t"), "ggjt2-name4096": _sample("ggjt", 2, first_name="n" * 4096)}
BIG_I32 = [1, 32, 65536, 1 << 20, 1 << 30, 0x7FFFFFFF]


def _set_field(data: bytes, field: builders.Field, value: int) -> bytes:
    """Overwrite a 32-bit integer field with `value` as two's complement (so -1 and 0xFFFFFFFF are one bit pattern)."""
    return data[: field.offset] + (value & 0xFFFFFFFF).to_bytes(4, "little") + data[field.offset + 4 :]


@st.composite
def mutants(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid file of some format, mutated 1-3 times in a way that knows the structure."""
    key = draw(st.sampled_from(sorted(SAMPLES)))
    sample = SAMPLES[key]
    data = sample.data
    numeric = [f for f in sample.fields if f.fmt and f.fmt[-1] in "iI"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["int", "int", "int", "cut", "bytes", "insert", "delete", "append", "dup",
                                     "dims"]))
        if kind == "dims":  # one dim of the last tensor 0, the others big; its data cut: an overflow behind a zero
            last = max(int(f.name[7:].split("]")[0]) for f in sample.fields if f.name.startswith("tensor["))
            dims = [f for f in sample.fields if f.name.startswith(f"tensor[{last}].ne[")]
            zero_at = draw(st.integers(0, len(dims) - 1))
            for i, f in enumerate(dims):
                data = _set_field(data, f, 0 if i == zero_at else draw(st.sampled_from(BIG_I32)))
            data = data[: next(f.offset for f in sample.fields if f.name == f"tensor[{last}].data")]
        elif kind == "int":
            field = draw(st.sampled_from(numeric))
            value = draw(st.one_of(st.sampled_from(INTERESTING_I32), st.integers(-(2**31), 2**32 - 1)))
            data = _set_field(data, field, value)
        elif kind == "cut":
            edges = sorted({f.offset for f in sample.fields} | {f.offset + f.size for f in sample.fields})
            cut = draw(st.one_of(st.sampled_from(edges), st.integers(0, len(data))))
            data = data[: min(cut, len(data))]
        elif kind in strategies.BLIND_MUTATIONS:
            data = strategies.blind_mutation(draw, data, kind)
        elif kind == "dup":  # repeat the whole tensor section: duplicate names, misaligned copies
            first = next(f.offset for f in sample.fields if f.name.startswith("tensor[0]"))
            data = data + data[first:]
    return key, data


def _check_consistent(index, data: bytes) -> None:
    names = [t.name for t in index.tensors]
    assert len(names) == len(set(names))
    pos = index.vocab_end
    for t in index.tensors:
        assert t.record_offset == pos
        assert t.record_offset < t.offset <= t.offset + t.nbytes <= len(data)
        if index.version.aligned:
            assert t.offset % 32 == 0
        assert 1 <= len(t.name.encode()) <= 4096
        # the judges: llama.cpp's dims rule, and numpy making the view (last axis in blocks)
        assert strategies.llama_cpp_dims_ok(t.ne), t.ne
        view_shape = (*reversed(t.ne[1:]), t.ne[0] // t.block.elements)
        assert strategies.numpy_can_view(data, view_shape, t.block.nbytes, t.offset), t.ne
        pos = t.offset + t.nbytes
    assert pos == len(data)


@strategies.capped
@settings(max_examples=FUZZ_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_mutated_files_give_format_error_or_consistent_index(case):
    key, data = case
    index = strategies.decode_or_format_error(lambda: decode_index(data, path=f"{key}.bin"), len(data),
                                              prefix=f"{key}.bin: ")
    if index is not None:
        _check_consistent(index, data)


@pytest.mark.parametrize("key", sorted(BASES))
def test_every_truncation_is_a_format_error(key):
    data = SAMPLES[key].data
    boundaries = {t["record_offset"] for t in builders.parse_file(data)["tensors"]}
    for cut in range(len(data)):
        if cut in boundaries:
            continue  # a file may legitimately end after any whole record
        with pytest.raises(FormatError):
            decode_index(data[:cut])


@pytest.mark.parametrize("value", [0x7FFFFFFF, 0x40000000, -1])
def test_huge_counts_are_refused_before_allocation(value):
    sample = SAMPLES["ggjt1"]
    for name in ("n_vocab", "vocab[0].len", "tensor[0].name_len", "tensor[0].ne[1]", "tensor[0].n_dims"):
        field = next(f for f in sample.fields if f.name == name)
        tracemalloc.start()
        with pytest.raises(FormatError):
            decode_index(_set_field(sample.data, field, value))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 1 << 20, f"{name}={value} allocated {peak} bytes before failing"


def _two_part_set() -> tuple[list[bytes], list[builders.Field]]:
    """A valid 2-part ggmf q4_0/f16/f32 model, and the field map of part 1 (the one the mutants change)."""
    rng = np.random.default_rng(3)
    hp = builders.llama_hparams(n_vocab=4, dim=64, n_mult=32, n_head=2, n_layer=1, ftype=2)
    vocab = [(b"a", 0.0), (b"", -1.0), (b"bc", -2.0), (b"\xff", -3.0)]
    full = {"tok_embeddings.weight": ("F16", rng.standard_normal((4, 64)).astype(np.float32)),
            "norm.weight": ("F32", rng.standard_normal(64).astype(np.float32)),
            "output.weight": ("Q4_0", rng.standard_normal((4, 64)).astype(np.float32)),
            "layers.0.attention.wo.weight": ("Q4_1", rng.standard_normal((64, 64)).astype(np.float32))}
    parts = builders.build_parts("ggmf", hp, vocab, full, 2)
    shard = {n: (t, builders.split_for_parts(n, a, 2)[1]) for n, (t, a) in full.items()}
    specs = [(n, builders.TYPE_CODES[t], tuple(reversed(a.shape)), builders.quantize(a, t, 1)) for n, (t, a) in shard.items()]
    data, fields = builders.build_file_with_fields("ggmf", 1, hp, vocab, specs)
    assert data == parts[1]
    return parts, fields


PARTS, PART1_FIELDS = _two_part_set()


@strategies.capped
@settings(max_examples=FUZZ_EXAMPLES // 4, deadline=5000,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from([f for f in PART1_FIELDS if f.fmt and f.fmt[-1] in "iI"]),
       value=st.one_of(st.sampled_from(INTERESTING_I32), st.integers(-(2**31), 2**32 - 1)),
       cut=st.none() | st.integers(0, len(PARTS[1])))
def test_migrate_answers_a_mutated_part_with_format_error_only(tmp_path_factory, field, value, cut):
    from migrate import migrate_file

    d = tmp_path_factory.mktemp("fz")
    part1 = _set_field(PARTS[1], field, value)[:cut]
    (d / "m.bin").write_bytes(PARTS[0])
    (d / "m.bin.1").write_bytes(part1)
    try:
        migrate_file(d / "m.bin", d / "out.bin")
    except FormatError as e:
        assert "\n" not in str(e) and "m.bin" in str(e)
        assert sorted(p.name for p in d.iterdir()) == ["m.bin", "m.bin.1"]  # nothing written, no temp left
        return
    decode_index((d / "out.bin").read_bytes())  # a mutation that changed nothing structural: output is valid


def test_the_fuzz_worker_fails_an_allocation_of_a_gib():
    """The control of strategies.capped: the same worker passes a 64 MiB allocation and fails a 1.5 GiB one."""
    strategies.run_capped(lambda: np.empty(64 << 20, np.uint8))
    with pytest.raises(pytest.fail.Exception, match="MemoryError"):
        strategies.run_capped(lambda: np.empty(3 << 29, np.uint8))
