"""GGUF v2/v3: the gguf package's files read by us, ours read by its GGUFReader, hostile input refused.

Expected values come from the gguf package (GGUFWriter, GGUFReader, GGML_QUANT_SIZES, quants), from
struct-based decoding written here, and from the values the tests put in; never from ggmlfmt alone.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest

import builders
import ggmlfmt
from ggmlfmt import FileWriter, FormatError, GGMLType, TensorInfo, dequantize, load, read_index
from ggmlfmt.constants import BLOCK_LAYOUTS, GGUF_BLOCK_GENERATION, GGUF_TYPE_SIZES, GGUFValueType as V
from ggmlfmt.errors import BadLayout, BadValue, CannotWrite, Truncated, UnsupportedVersion
from ggmlfmt.gguf import GGUFStrings, decode_gguf, encode_value, plan_gguf
from ggmlfmt.summary import describe

Q = gguf.GGMLQuantizationType
RNG = np.random.default_rng(10)

# (key, gguf-py value type, value) for every scalar type, then arrays of each element type
SCALARS = [
    ("t.u8", V.UINT8, 255), ("t.i8", V.INT8, -128), ("t.u16", V.UINT16, 65535), ("t.i16", V.INT16, -32768),
    ("t.u32", V.UINT32, 2**32 - 1), ("t.i32", V.INT32, -(2**31)), ("t.f32", V.FLOAT32, 1.5),
    ("t.bool", V.BOOL, True), ("t.str", V.STRING, "héllo ▁wörld"), ("t.u64", V.UINT64, 2**64 - 1),
    ("t.i64", V.INT64, -(2**63)), ("t.f64", V.FLOAT64, -2.0**-1000),
]
ARRAYS = [
    ("a.u8", V.UINT8, [0, 1, 255]), ("a.i8", V.INT8, [-1, 2]), ("a.u16", V.UINT16, [7, 65535]),
    ("a.i16", V.INT16, [-5]), ("a.u32", V.UINT32, [1, 2, 3]), ("a.i32", V.INT32, list(range(-3, 40))),
    ("a.f32", V.FLOAT32, [0.25, -1e30]), ("a.bool", V.BOOL, [True, False, True]),
    ("a.str", V.STRING, ["<unk>", "", "▁the", "日本", "<0x0A>"]), ("a.u64", V.UINT64, [2**64 - 1]),
    ("a.i64", V.INT64, [-(2**63), 5]), ("a.f64", V.FLOAT64, [math.pi]),
]
NESTED = ("a.nested", [[1, 2, 3], [4], [5, 6]])  # array of arrays of INT32 (gguf-py types ints as INT32)


def _tensors() -> list[tuple[str, np.ndarray, Q | None, tuple[int, ...]]]:
    """(name, array as handed to GGUFWriter, raw type or None, PyTorch-order shape)."""
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    out = [
        ("f32", x, None, (4, 64)),
        ("f16", x.astype(np.float16), None, (4, 64)),
        ("i32", np.arange(12, dtype=np.int32).reshape(3, 4), None, (3, 4)),
        ("bf16", gguf.quants.quantize(x, Q.BF16), Q.BF16, (4, 64)),
        ("q4_k", RNG.integers(0, 256, (2, 144), dtype=np.uint8), Q.Q4_K, (2, 256)),  # random K-quant bytes
    ]
    for t in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):
        out.append((t.name.lower(), gguf.quants.quantize(x, t), t, (4, 64)))
    return out


def write_with_gguf_py(path: Path, *, alignment: int | None = None, tensors=None) -> list:
    """A file written by the gguf package's GGUFWriter with every value type; returns the tensor list."""
    w = gguf.GGUFWriter(path, "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    for key, vtype, value in SCALARS:
        w.add_key_value(key, value, gguf.GGUFValueType(int(vtype)))
    for key, vtype, value in ARRAYS:
        w.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType(int(vtype)))
    w.add_key_value(NESTED[0], NESTED[1], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.ARRAY)
    tensors = _tensors() if tensors is None else tensors
    for name, arr, raw, _ in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_type_table_is_gguf_py_s():
    ours = {t.name: (int(t), size) for t, size in GGUF_TYPE_SIZES.items()}
    theirs = {t.name: (int(t), tuple(gguf.GGML_QUANT_SIZES[t])) for t in Q}
    assert ours == theirs
    for t in GGUF_TYPE_SIZES:  # the block layouts the reader uses for GGUF, against gguf-py's sizes
        layout = BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION][t]
        assert (layout.elements, layout.nbytes) == tuple(gguf.GGML_QUANT_SIZES[Q[t.name]]), t.name
    for t in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0):  # docs/format.md §11.6: ggjt v3 blocks
        assert BLOCK_LAYOUTS[GGUF_BLOCK_GENERATION][t] is BLOCK_LAYOUTS[3][t]
        # ... and the test-side v3 layout (builders, from docs/format.md §5) is gguf-py's block, byte for byte
        assert builders.BLOCKS[3][t.name] == tuple(gguf.GGML_QUANT_SIZES[Q[t.name]]), t.name
        x = np.random.default_rng(int(t)).standard_normal(64).astype(np.float32)
        assert builders.quantize(x, t.name, 3) == gguf.quants.quantize(x, Q[t.name]).tobytes(), t.name


def test_value_type_codes_are_gguf_py_s():
    assert {t.name: int(t) for t in V} == {t.name: int(t) for t in gguf.GGUFValueType}


@pytest.mark.parametrize("alignment", [None, 64, 8])
def test_a_gguf_py_file_reads_with_the_same_metadata_tensors_and_bytes(tmp_path, alignment):
    path = tmp_path / "m.gguf"
    tensors = write_with_gguf_py(path, alignment=alignment)
    model = load(path)
    assert model.format == "gguf" and model.version == ggmlfmt.constants.GGUFVersion.V3
    assert model.hparams is None and model.vocab is None
    md, types = model.metadata, model.index.types
    assert md["general.architecture"] == "llama"
    assert model.index.alignment == (alignment or 32)
    for key, vtype, value in SCALARS:
        assert types[key] == (vtype,) and md[key] == value and type(md[key]) is type(value), key
    for key, vtype, value in ARRAYS:
        assert types[key] == (V.ARRAY, vtype), key
        if vtype is V.STRING:
            assert isinstance(md[key], GGUFStrings) and md[key] == value and list(md[key]) == value
        elif vtype is V.FLOAT32:
            np.testing.assert_array_equal(md[key], np.array(value, np.float32))
        else:
            assert md[key].tolist() == value, key
    assert types[NESTED[0]] == (V.ARRAY, V.ARRAY, V.INT32)
    assert [a.tolist() for a in md[NESTED[0]]] == NESTED[1]
    # against the reference reader: names, ne, types, bytes, offsets
    ref = gguf.GGUFReader(path)
    assert [t.name for t in ref.tensors] == list(model.info) == [t[0] for t in tensors]
    for rt, (name, arr, raw, shape) in zip(ref.tensors, tensors):
        info = model.info[name]
        assert info.type.name == rt.tensor_type.name
        assert list(info.ne) == [int(n) for n in rt.shape] and info.shape == shape
        assert info.offset == rt.data_offset and info.nbytes == rt.n_bytes
        view = model.tensors[name]
        assert view.tobytes() == rt.data.tobytes() == arr.tobytes()
        assert np.shares_memory(view, model.data)
    for key, field in ref.fields.items():
        if not key.startswith("GGUF."):
            assert [int(t) for t in field.types][:2] == [int(t) for t in types[key]][:2], key


def test_dequantize_agrees_with_gguf_py_for_every_type_we_can_write(tmp_path):
    path = tmp_path / "m.gguf"
    tensors = write_with_gguf_py(path)
    model = load(path)
    gen = model.version.block_generation
    for name, arr, raw, shape in tensors:
        info = model.info[name]
        expected = gguf.quants.dequantize(arr, raw) if raw is not None else arr.astype(np.float32)
        got = dequantize(model.tensors[name], info, gen)
        assert got.shape == shape  # bit patterns: the random Q4_K scales include NaNs
        np.testing.assert_array_equal(got.view(np.uint32), expected.reshape(shape).view(np.uint32))


def _our_metadata():
    return [
        *SCALARS,
        *[(k, (V.ARRAY, t), v) for k, t, v in ARRAYS],
        ("a.np.f32", V.ARRAY, np.linspace(-1, 1, 1000, dtype=np.float32)),
        ("a.np.i32", V.ARRAY, np.arange(-5, 5, dtype=np.int32)),
        ("a.empty", (V.ARRAY, V.STRING), []),
        ("a.nested", (V.ARRAY, V.ARRAY, V.INT32), NESTED[1]),
    ]


def _our_specs_and_data():
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    q8 = gguf.quants.quantize(x, Q.Q8_0)
    k = RNG.integers(0, 256, (2, 210), dtype=np.uint8)
    return [
        (TensorInfo.from_shape("token_embd.weight", GGMLType.F16, (3, 64)), x.astype(np.float16)),
        (TensorInfo.from_shape("blk.0.attn_q.weight", GGMLType.Q8_0, (3, 64)), q8),
        (TensorInfo.from_shape("output_norm.weight", GGMLType.F32, (64,)), x[0]),
        (TensorInfo.from_shape("blk.0.ffn_up.weight", GGMLType.Q6_K, (2, 256)), k),
        (TensorInfo.from_shape("empty", GGMLType.F32, (0, 4)), np.zeros((0, 4), np.float32)),
        (TensorInfo.from_shape("odd", GGMLType.I8, (3,)), np.array([1, -2, 3], np.int8)),
    ]


def write_ours(path: Path, alignment: int = 32):
    specs = _our_specs_and_data()
    plan = plan_gguf(_our_metadata(), [s for s, _ in specs], alignment=alignment)
    with FileWriter(path, plan) as w:
        for spec, data in specs:
            w.write_tensor(spec.name, data)
    return plan, specs


@pytest.mark.parametrize("alignment", [32, 128])
def test_our_file_reads_in_gguf_py_identically(tmp_path, alignment):
    path = tmp_path / "ours.gguf"
    plan, specs = write_ours(path, alignment)
    assert path.stat().st_size == plan.size and plan.size % alignment == 0
    ref = gguf.GGUFReader(path)
    assert ref.alignment == alignment and ref.fields["general.alignment"].contents() == alignment
    assert [int(t) for t in ref.fields["general.alignment"].types] == [int(V.UINT32)]
    for key, vtype, value in SCALARS:
        f = ref.fields[key]
        assert [int(t) for t in f.types] == [int(vtype)] and f.contents() == value, key
    for key, vtype, value in ARRAYS:
        f = ref.fields[key]
        assert [int(t) for t in f.types] == [int(V.ARRAY), int(vtype)], key
        got = f.contents()
        assert got == (np.array(value, np.float32).tolist() if vtype is V.FLOAT32 else value), key
    assert ref.fields["a.np.f32"].contents() == np.linspace(-1, 1, 1000, dtype=np.float32).tolist()
    assert ref.fields["a.empty"].contents() == []
    assert [int(t) for t in ref.fields["a.nested"].types] == [int(V.ARRAY), int(V.ARRAY), int(V.INT32)]
    assert [rt.name for rt in ref.tensors] == [s.name for s, _ in specs]
    for rt, (spec, data) in zip(ref.tensors, specs):
        assert rt.tensor_type.name == spec.type.name and [int(n) for n in rt.shape] == list(spec.ne)
        assert rt.data.tobytes() == np.ascontiguousarray(data).tobytes(), spec.name
    model = load(path)  # and by our own reader
    assert model.metadata["a.np.i32"].tolist() == list(range(-5, 5)) and model.index.sequential
    for spec, data in specs:
        assert model.tensors[spec.name].tobytes() == np.ascontiguousarray(data).tobytes()
        assert model.info[spec.name].shape == tuple(reversed(spec.ne))


def test_our_header_bytes_by_hand(tmp_path):
    """A struct-based decode written here, independent of ggmlfmt.gguf."""
    plan = plan_gguf([("general.architecture", V.STRING, "llama"), ("x", (V.ARRAY, V.UINT16), [1, 2])],
                     [TensorInfo("w", GGMLType.F16, (3, 2)), TensorInfo("v", GGMLType.Q4_0, (32,))])
    b = plan.prefix
    assert b[:4] == b"GGUF" and struct.unpack_from("<IQQ", b, 4) == (3, 2, 3)
    pos = 24
    out = {}
    for _ in range(3):
        (n,) = struct.unpack_from("<Q", b, pos)
        key = b[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (t,) = struct.unpack_from("<I", b, pos)
        pos += 4
        if t == 8:
            (n,) = struct.unpack_from("<Q", b, pos)
            out[key] = (t, b[pos + 8 : pos + 8 + n].decode())
            pos += 8 + n
        elif t == 9:
            et, count = struct.unpack_from("<IQ", b, pos)
            out[key] = (t, et, struct.unpack_from(f"<{count}H", b, pos + 12))
            pos += 12 + 2 * count
        else:
            out[key] = (t, struct.unpack_from("<I", b, pos)[0])
            pos += 4
    assert out == {"general.architecture": (8, "llama"), "x": (9, 2, (1, 2)), "general.alignment": (4, 32)}
    infos = []
    for _ in range(2):
        (n,) = struct.unpack_from("<Q", b, pos)
        name = b[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (nd,) = struct.unpack_from("<I", b, pos)
        ne = struct.unpack_from(f"<{nd}Q", b, pos + 4)
        t, off = struct.unpack_from("<IQ", b, pos + 4 + 8 * nd)
        pos += 4 + 8 * nd + 12
        infos.append((name, ne, t, off))
    assert infos == [("w", (3, 2), 1, 0), ("v", (32,), 2, 32)]  # 12 bytes of f16, padded to 32
    data_start = (pos + 31) // 32 * 32
    assert len(b) == data_start and b[pos:] == bytes(data_start - pos)
    assert plan.size == data_start + 32 + 32 and [t.offset for t in plan.tensors] == [data_start, data_start + 32]


def test_no_tensors_and_empty_metadata(tmp_path):
    plan = plan_gguf([], [])
    path = tmp_path / "e.gguf"
    with FileWriter(path, plan):
        pass
    ref = gguf.GGUFReader(path)
    assert len(ref.tensors) == 0 and ref.fields["general.alignment"].contents() == 32
    idx = read_index(path)
    assert idx.tensors == () and idx.metadata == {"general.alignment": 32}


# ---------------------------------------------------------------- refusals


def small_file(tmp_path: Path) -> bytes:
    path = tmp_path / "s.gguf"
    tensors = [("w", np.arange(8, dtype=np.float32).reshape(2, 4), None, (2, 4)),
               ("q", gguf.quants.quantize(np.ones((1, 32), np.float32), Q.Q8_0), Q.Q8_0, (1, 32))]
    write_with_gguf_py(path, tensors=tensors)
    return path.read_bytes()


def test_every_truncation_is_a_format_error(tmp_path):
    raw = small_file(tmp_path)
    full = decode_gguf(raw)
    last = max(t.offset + t.nbytes for t in full.tensors)
    for cut in range(last):
        with pytest.raises(FormatError):
            decode_gguf(raw[:cut])
    for cut in range(last, len(raw) + 1):  # the last tensor's padding may be missing
        assert decode_gguf(raw[:cut]).tensors == full.tensors


def header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def info(name: str, ne: tuple[int, ...], t: int, off: int) -> bytes:
    return gstr(name.encode()) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, t, off)


def file_of(kvs: list[bytes], infos: list[bytes], data: bytes = b"", align: int = 32) -> bytes:
    head = header(len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % align) + data


HOSTILE = {
    "n_kv": header(0, 2**60) + bytes(64),
    "n_tensors": header(2**60, 0) + bytes(64),
    "key length": header(0, 1) + struct.pack("<Q", 2**62) + bytes(64),
    "string length": kv("k", 8, struct.pack("<Q", 2**63)) + bytes(64),
    "array count": kv("k", 9, struct.pack("<IQ", 6, 2**61)) + bytes(64),
    "string array count": kv("k", 9, struct.pack("<IQ", 8, 2**60)) + bytes(64),
    "nested count": kv("k", 9, struct.pack("<IQ", 9, 2**59)) + bytes(64),
    "string array item": kv("k", 9, struct.pack("<IQ", 8, 3) + gstr(b"ab") + struct.pack("<Q", 2**64 - 1)) + bytes(8),
    "ne": info("w", (2**62, 2**62), 0, 0),
    "deep nesting": kv("k", 9, struct.pack("<IQ", 9, 1) * 5000) + bytes(64),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_counts_fail_fast_with_little_memory(case):
    raw = HOSTILE[case]
    if not raw.startswith(b"GGUF"):
        raw = (header(1, 0) if case == "ne" else header(0, 1)) + raw
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(FormatError):
            decode_gguf(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < (1 << 20), (case, peak)


def test_error_messages_name_offset_and_field():
    raw = header(0, 1) + kv("k", 9, struct.pack("<IQ", 6, 2**61)) + bytes(16)
    with pytest.raises(Truncated, match=r"offset 0x31: k: 2305843009213693952 x FLOAT32 need 9223372036854775808 bytes, 16 left"):
        decode_gguf(raw)
    raw = header(0, 1) + kv("k", 9, struct.pack("<IQ", 8, 3) + gstr(b"ab") + gstr(b"\xc3(") + gstr(b"x"))
    with pytest.raises(BadValue, match=r"offset 0x43: k\[1\]: expected UTF-8, found byte 0xc3 at byte 0") as e:
        decode_gguf(raw)
    assert raw[e.value.offset] == 0xC3


@pytest.mark.parametrize("strings", [[b"\xe2\x96", b"\x81x"], [b"\x81"], [b"ok", b"\xff"], [b"a" * 200, b"\xc3"]])
def test_a_string_array_is_utf8_element_by_element(strings):
    """Joined, ["\\xe2\\x96", "\\x81x"] would be valid UTF-8 ('▁x'); each element alone is not."""
    raw = header(0, 1) + kv("k", 9, struct.pack("<IQ", 8, len(strings)) + b"".join(gstr(s) for s in strings))
    with pytest.raises(BadValue, match="expected UTF-8"):
        decode_gguf(raw)


def test_a_string_array_encodes_element_by_element():
    """Each element: u64 length, UTF-8 bytes (built by hand here), across the encoder's steps of 4,096;
    a GGUFStrings read from a file encodes as the file held it."""
    texts = ["", "a", "\u0120the", "\u4eca\u65e5", "x" * 300] * 2000
    want = struct.pack("<IQ", V.STRING, len(texts)) + b"".join(gstr(t.encode()) for t in texts)
    assert encode_value((V.ARRAY, V.STRING), texts) == encode_value((V.ARRAY, V.STRING), tuple(texts)) == want
    read = decode_gguf(file_of([kv("k", V.ARRAY, want)], [])).metadata["k"]
    assert isinstance(read, GGUFStrings) and encode_value((V.ARRAY, V.STRING), read) == want
    assert encode_value((V.ARRAY, V.STRING), texts[:-1]) != want  # control: one element less differs


def test_gguf_strings_of_encodes_once_and_reads_back():
    """GGUFStrings.of: the encoding a file holds (built by hand), its items, equality with the list; a GGUFStrings
    passes through as it is; a non-str element is CannotWrite naming the key (control: a changed item differs)."""
    texts = ["a b", "\u0120t he", "", "\u4eca\u65e5 x"] * 3000
    s = GGUFStrings.of(texts, "tokenizer.ggml.merges")
    assert s.encoded == b"".join(gstr(t.encode()) for t in texts) and len(s) == len(texts)
    assert s == texts and s[1] == "\u0120t he" and list(s[-2:]) == texts[-2:] and GGUFStrings.of(s) is s
    assert s != texts[:-1] + ["other"]
    with pytest.raises(CannotWrite, match="tokenizer.ggml.merges"):
        GGUFStrings.of(["a", 3], "tokenizer.ggml.merges")


@pytest.mark.parametrize("step", [None, 7])  # the default, and a step that cuts the strings into many passes
def test_gguf_strings_from_runs_spell_each_string_from_its_runs(monkeypatch, step):
    """GGUFStrings.from_runs: string i is its runs of the source in order (empty runs and strings included); the
    encoding is the hand-built one of those strings joined in Python; controls: runs in another order differ."""
    if step is not None:
        monkeypatch.setattr(ggmlfmt.gguf, "RUNS_STEP", step)
    words = ["", "a", " ", "\u0120the", "\u4eca\u65e5", "x" * 300, "b"]
    source = "".join(words).encode()
    at = np.cumsum([0] + [len(w.encode()) for w in words])
    picks = RNG.integers(0, len(words), (500, 3))
    texts = ["".join(words[j] for j in row) for row in picks]
    s = GGUFStrings.from_runs(np.frombuffer(source, np.uint8), at[picks], at[picks + 1] - at[picks])
    assert s.encoded == b"".join(gstr(t.encode()) for t in texts) and list(s) == texts and s[-1] == texts[-1]
    swapped = GGUFStrings.from_runs(np.frombuffer(source, np.uint8), at[picks[:, ::-1]], (at[picks + 1] - at[picks])[:, ::-1])
    assert swapped.encoded != s.encoded
    assert GGUFStrings.from_runs(np.frombuffer(source, np.uint8), np.zeros((0, 2), int), np.zeros((0, 2), int)) == []


def test_long_and_short_strings_decode_alike():
    strings = ["a" * 300, "", "▁" * 50, "x", "日本語" * 60]
    raw = header(0, 1) + kv("k", 9, struct.pack("<IQ", 8, 5) + b"".join(gstr(s.encode()) for s in strings))
    got = decode_gguf(raw).metadata["k"]
    assert list(got) == strings and got[-1] == strings[-1] and got[2:4] == strings[2:4] and len(got) == 5
    with pytest.raises(IndexError):
        got[5]


def test_big_endian_and_v1_get_clear_errors(tmp_path):
    path = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_tensor("w", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedVersion, match="big-endian GGUF v3 .*little-endian GGUF only"):
        load(path)
    raw = bytearray(small_file(tmp_path))
    raw[4:8] = struct.pack("<I", 1)
    with pytest.raises(UnsupportedVersion, match=r"offset 0x4: version: GGUF v1 .* not read"):
        decode_gguf(bytes(raw))
    raw[4:8] = struct.pack("<I", 2)  # v2 has v3's layout
    assert decode_gguf(bytes(raw)).version == 2


F32 = int(GGMLType.F32)
BAD = {
    "duplicate key": ([kv("a", 4, bytes(4)), kv("a", 4, bytes(4))], [], b"", BadLayout, "duplicate metadata key 'a'"),
    "empty key": ([kv("", 4, bytes(4))], [], b"", BadValue, "non-empty key"),
    "bad key utf-8": ([gstr(b"\xff") + struct.pack("<I", 4) + bytes(4)], [], b"", BadValue, "expected UTF-8"),
    "value type": ([kv("a", 13, bytes(4))], [], b"", BadValue, "value type code 0..12, found 13"),
    "element type": ([kv("a", 9, struct.pack("<IQ", 99, 0))], [], b"", BadValue, "found 99"),
    "bool": ([kv("a", 7, b"\x02")], [], b"", BadValue, "bool 0 or 1, found 2"),
    "bool array": ([kv("a", 9, struct.pack("<IQ", 7, 2) + b"\x01\x05")], [], b"", BadValue, "found 5"),
    "alignment type": ([kv("general.alignment", 10, struct.pack("<Q", 32))], [], b"", BadValue, "UINT32"),
    "alignment 0": ([kv("general.alignment", 4, struct.pack("<I", 0))], [], b"", BadValue,
                    r"power of two 1\.\.16777216 \(2\*\*24\), found 0"),
    "alignment 2**25": ([kv("general.alignment", 4, struct.pack("<I", 2**25))], [], b"", BadValue, "found 33554432"),
    "alignment 2**31": ([kv("general.alignment", 4, struct.pack("<I", 2**31))], [], b"", BadValue, "found 2147483648"),
    "alignment 48": ([kv("general.alignment", 4, struct.pack("<I", 48))], [], b"", BadValue, "found 48"),
    "duplicate tensor": ([], [info("w", (4,), F32, 0), info("w", (4,), F32, 32)], bytes(64), BadLayout,
                         "duplicate tensor name 'w'"),
    "n_dims 0": ([], [gstr(b"w") + struct.pack("<IIQ", 0, F32, 0)], bytes(32), BadValue, "1..4 dims, found 0"),
    "n_dims 5": ([], [info("w", (1, 1, 1, 1, 1), F32, 0)], bytes(32), BadValue, "found 5"),
    "type": ([], [info("w", (4,), 99, 0)], bytes(32), BadValue, "unknown tensor type code 99"),
    "2023 type": ([], [info("w", (16,), 4, 0)], bytes(32), BadValue, r"code 4 \(Q4_2, a 2023 type"),
    "removed type": ([], [info("w", (32,), 31, 0)], bytes(32), BadValue, "unknown tensor type code 31"),
    "block": ([], [info("w", (33,), int(GGMLType.Q8_0), 0)], bytes(64), BadValue, "multiple of the Q8_0 block size 32"),
    "misaligned": ([], [info("w", (4,), F32, 16)], bytes(64), BadLayout, "multiple of the alignment 32, found 16"),
    "overlap": ([], [info("a", (16,), F32, 0), info("b", (4,), F32, 32)], bytes(64), BadLayout, "overlaps tensor 'a'"),
    "outside": ([], [info("w", (16,), F32, 32)], bytes(64), Truncated, "needs 64 bytes, 32 left"),
    "huge ne": ([], [info("w", (2**63,), F32, 0)], bytes(32), BadValue, "below 2\\*\\*63"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_are_refused_naming_what(case):
    kvs, infos, data, cls, match = BAD[case]
    with pytest.raises(cls, match=match):
        decode_gguf(file_of(kvs, infos, data))


def test_nonzero_padding_after_infos_is_refused():
    raw = bytearray(file_of([], [info("w", (4,), F32, 0)], bytes(16)))
    raw[-17] = 1
    with pytest.raises(BadLayout, match="zero bytes of alignment padding"):
        decode_gguf(bytes(raw))


def test_any_aligned_non_overlapping_order_is_read_and_flagged():
    raw = file_of([], [info("a", (4,), F32, 32), info("b", (4,), F32, 0)], bytes(range(64)))
    idx = decode_gguf(raw)
    assert [t.offset - idx.data_start for t in idx.tensors] == [32, 0] and not idx.sequential
    assert decode_gguf(file_of([], [info("a", (4,), F32, 0), info("b", (4,), F32, 32)], bytes(64))).sequential


def test_load_names_the_file(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(file_of([kv("a", 7, b"\x02")], []))
    with pytest.raises(BadValue, match=r"bad\.gguf: offset 0x25: a: expected a bool"):
        load(path)


# ---------------------------------------------------------------- writer refusals


@pytest.mark.parametrize(("metadata", "specs", "match"), [
    ([("k", V.UINT8, 256)], [], "'k': 256 does not fit a UINT8"),
    ([("k", V.INT32, 1.5)], [], "'k': a INT32 must be an integer"),
    ([("k", V.FLOAT32, 1e300)], [], "'k': 1e\\+300 does not fit a FLOAT32"),
    ([("k", V.BOOL, 2)], [], "'k': a BOOL"),
    ([("k", V.STRING, b"bytes")], [], "'k': a STRING must be str"),
    ([("k", V.STRING, "\udc80")], [], "'k': not encodable"),
    ([("k", (V.ARRAY, V.STRING), ["a", b"b"])], [], "'k': a STRING must be str"),
    ([("k", (V.ARRAY, V.STRING), ["a"] * 5000 + ["\udc80"])], [], "'k': not encodable"),
    ([("k", (V.ARRAY, V.UINT16), [1, 70000])], [], "'k': values .* do not fit an array of UINT16"),
    ([("k", (V.ARRAY, V.INT8), [1.5])], [], "'k'"),
    ([("k", V.ARRAY, [[1], [2]])], [], "'k': cannot tell the element type"),
    ([("k", (V.ARRAY, V.INT32), np.zeros((2, 2), np.int32))], [], "'k': an ARRAY must be 1-D"),
    ([("k", V.UINT8, 1), ("k", V.UINT8, 1)], [], "duplicate metadata key 'k'"),
    ([("", V.UINT8, 1)], [], "non-empty"),
    ([("general.alignment", V.UINT32, 64)], [], "must be UINT32 32"),
    ([], [TensorInfo("w" * 64, GGMLType.F32, (1,))], "1..63 UTF-8 bytes"),
    ([], [TensorInfo("w", GGMLType.F32, (1,)), TensorInfo("w", GGMLType.F32, (1,))], "duplicate tensor name 'w'"),
    ([], [TensorInfo("w", GGMLType.Q4_2, (16,))], r"'w': unknown tensor type code 4 \(Q4_2, a 2023 type GGUF does not have\)"),
    ([], [TensorInfo("w", 99, (16,))], "'w': unknown tensor type code 99; expected a code of today's ggml_type enum"),
    ([], [TensorInfo("w", GGMLType.Q4_K, (32,))], "'w': ne\\[0\\] = 32 is not a multiple of the Q4_K block size 256"),
    ([], [TensorInfo("w", GGMLType.F32, ())], "'w': GGUF stores 1..4 dims"),
    ([], [TensorInfo("w", GGMLType.F32, (-1,))], "'w': every dim"),
])
def test_plan_refuses_what_it_cannot_write(metadata, specs, match):
    with pytest.raises(ValueError, match=match):
        plan_gguf(metadata, specs)


@pytest.mark.parametrize("alignment", [0, 4, 48, 2**32])
def test_plan_refuses_bad_alignments(alignment):
    with pytest.raises(ValueError, match="alignment must be a power of two"):
        plan_gguf([], [], alignment=alignment)


def test_a_mapping_of_metadata_is_accepted_in_order():
    plan = plan_gguf({"b": (V.UINT8, 1), "a": (V.STRING, "x")}, [])
    assert list(decode_gguf(plan.prefix).metadata) == ["b", "a", "general.alignment"]


def test_encode_value_vectorises_numbers():
    assert encode_value(V.ARRAY, np.arange(3, dtype=np.uint16)) == struct.pack("<IQ3H", 2, 3, 0, 1, 2)
    assert encode_value((V.ARRAY, V.BOOL), [True, False]) == struct.pack("<IQ2B", 7, 2, 1, 0)


# ---------------------------------------------------------------- the command


def test_inspect_shows_metadata_tensors_and_bytes(tmp_path):
    path = tmp_path / "m.gguf"
    write_with_gguf_py(path)
    desc = describe(read_index(path))
    assert desc["format"] == "gguf" and desc["metadata"]["a.i32"] == {
        "type": "ARRAY[INT32]", "count": 43, "first": list(range(-3, 5))}
    assert desc["metadata"]["a.str"]["value"] == ["<unk>", "", "▁the", "日本", "<0x0A>"]
    assert desc["metadata"]["a.nested"]["type"] == "ARRAY[ARRAY[INT32]]"
    b = desc["bytes"]
    assert sum(v for k, v in b.items() if k != "total") == b["total"] == path.stat().st_size
    assert [t["name"] for t in desc["tensors"]] == [t.name for t in gguf.GGUFReader(path).tensors]
    from ggmlfmt.cli import main
    assert main(["inspect", "--quiet", str(path)]) == 0
    assert main(["verify", "--quiet", str(path)]) == 0
    assert main(["residency", "--quiet", "--json", str(path)]) == 0
    assert main(["load", "--quiet", "--touch", str(path)]) == 0


def test_torch_tensors_of_a_gguf_file(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "m.gguf"
    tensors = {name: (arr, raw, shape) for name, arr, raw, shape in write_with_gguf_py(path)}
    got = load(path).torch_tensors()
    x = torch.from_numpy(tensors["f32"][0])
    assert got["bf16"].dtype == torch.bfloat16 and torch.equal(got["bf16"], x.to(torch.bfloat16))
    assert torch.equal(got["f16"], torch.from_numpy(tensors["f16"][0]))
    assert got["q4_k"].dtype == torch.uint8 and got["q4_k"].shape == (2, 144)
    assert got["q4_k"].numpy().tobytes() == tensors["q4_k"][0].tobytes()


def test_rewriting_what_we_read_reproduces_a_gguf_py_file_byte_for_byte(tmp_path):
    """Read metadata (values + type paths) and tensors go straight back into plan_gguf: same bytes."""
    src, dst = tmp_path / "src.gguf", tmp_path / "dst.gguf"
    write_with_gguf_py(src, alignment=64)  # general.alignment in the metadata, so its place is kept
    model = load(src)
    metadata = [(k, model.index.types[k], v) for k, v in model.metadata.items()]
    specs = [TensorInfo(t.name, t.type, t.ne) for t in model.info.values()]
    plan = plan_gguf(metadata, specs, alignment=model.index.alignment)
    with FileWriter(dst, plan) as w:
        for name in model.info:
            w.write_tensor(name, model.tensors[name])
    assert dst.read_bytes() == src.read_bytes()


# ---------------------------------------------------------------- property: any writable metadata round-trips

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_INT_RANGES = {V.UINT8: (0, 2**8 - 1), V.INT8: (-(2**7), 2**7 - 1), V.UINT16: (0, 2**16 - 1),
               V.INT16: (-(2**15), 2**15 - 1), V.UINT32: (0, 2**32 - 1), V.INT32: (-(2**31), 2**31 - 1),
               V.UINT64: (0, 2**64 - 1), V.INT64: (-(2**63), 2**63 - 1)}


def _values_of(t: V) -> st.SearchStrategy:
    if t in _INT_RANGES:
        return st.integers(*_INT_RANGES[t])
    if t is V.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if t is V.FLOAT64:
        return st.floats(allow_nan=False)
    if t is V.BOOL:
        return st.booleans()
    return st.text(max_size=12)


SCALAR_TYPES = [t for t in V if t is not V.ARRAY]


@st.composite
def entries(draw) -> tuple:
    t = draw(st.sampled_from(SCALAR_TYPES))
    if draw(st.booleans()):
        return t, draw(_values_of(t))
    return (V.ARRAY, t), draw(st.lists(_values_of(t), max_size=40))


@settings(max_examples=60)
@given(st.dictionaries(st.text(min_size=1, max_size=20).filter(lambda k: k != "general.alignment"), entries(),
                       max_size=8))
def test_any_writable_metadata_round_trips_through_us_and_gguf_py(tmp_path_factory, md):
    path = tmp_path_factory.mktemp("md") / "m.gguf"
    with FileWriter(path, plan_gguf({k: tv for k, tv in md.items()}, [])):
        pass
    ours = read_index(path)
    ref = gguf.GGUFReader(path)
    for key, (t, value) in md.items():
        got = ours.metadata[key]
        if isinstance(t, tuple):
            assert ours.types[key] == t
            got = list(got) if t[1] is V.STRING else got.tolist()
        else:
            assert ours.types[key] == (t,)
        assert got == value, key
        assert ref.fields[key].contents() == value, key


@pytest.mark.parametrize("options", [{"prefault": True}, {"method": "pread"}, {"mode": "c"}])
def test_the_load_options_work_on_gguf(tmp_path, options):
    path = tmp_path / "m.gguf"
    tensors = write_with_gguf_py(path)
    model = load(path, **options)
    for name, arr, _, _ in tensors:
        assert model.tensors[name].tobytes() == arr.tobytes()


def test_inspect_text_escapes_control_characters_in_keys(tmp_path, capsys):
    path = tmp_path / "k.gguf"
    path.write_bytes(file_of([kv("evil\x1b[2Jkey", 4, bytes(4))], []))
    from ggmlfmt.cli import main
    assert main(["inspect", "--quiet", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "'evil\\x1b[2Jkey'" in out


def test_inspect_text_shows_float32_values_as_float32(tmp_path, capsys):
    """Text: the shortest decimal of each float32 (gguf-py's writer stores 1e-5 as the float32 nearest it);
    --json: the float32's exact value, which is what the text showed before (the control)."""
    path = tmp_path / "f.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_array("a.f32", [0.1, 1e-5])  # gguf-py stores Python floats in an array as FLOAT32
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    from ggmlfmt.cli import main
    assert main(["inspect", "--quiet", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"layer_norm_rms_epsilon +FLOAT32 +1e-05\n", out) and re.search(r"ARRAY\[FLOAT32\] x2 +\[0\.1, 1e-05\]", out)
    assert main(["inspect", "--quiet", "--json", str(path)]) == 0
    meta = json.loads(capsys.readouterr().out)["metadata"]
    exact = float(np.float32(1e-5))
    assert meta["llama.attention.layer_norm_rms_epsilon"]["value"] == exact != 1e-5 and repr(exact) not in out
