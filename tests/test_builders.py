"""Tests of the independent test-side builders against hard facts from docs/format.md (bare § = its sections), not against their own output."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import (
    BLOCKS,
    TYPE_CODES,
    Field,
    build_file,
    build_file_with_fields,
    build_model,
    build_parts,
    dequantize,
    header,
    layout_of,
    llama_hparams,
    llama_n_ff,
    llama_shapes,
    llama_tensor_names,
    llama_tensors,
    llama_vocab,
    parse_file,
    quantize,
    section12_hexdump,
    section12_model,
    shard_shape,
    split_axis,
    split_for_parts,
    split_shards,
    tensor_array,
)

# ---------------------------------------------------------------------------------------------------------------
# §4.6 worked example

def _fields(data_fields: list[Field]) -> dict[str, Field]:
    return {f.name: f for f in data_fields}


def test_section12_ggjt_offsets() -> None:
    hp, vocab, tensors = section12_model()
    data, fields = build_file_with_fields("ggjt", 1, hp, vocab, tensors)
    f = _fields(fields)
    assert f["vocab[0].len"].offset == 36 and f["vocab[0].text"].offset == 40 and f["vocab[0].score"].offset == 45
    assert (f["vocab[1].len"].offset, f["vocab[1].score"].offset) == (49, 53)
    assert (f["vocab[2].len"].offset, f["vocab[2].score"].offset) == (57, 61)
    assert f["tensor[0].n_dims"].offset == 65  # record 1 right after the vocab, unpadded
    assert (f["tensor[0].name_len"].offset, f["tensor[0].type"].offset) == (69, 73)
    assert (f["tensor[0].ne[0]"].offset, f["tensor[0].ne[1]"].offset) == (77, 81)
    assert (f["tensor[0].name"].offset, f["tensor[0].name"].size) == (85, 21)
    assert (f["tensor[0].pad"].offset, f["tensor[0].pad"].size) == (106, 22)
    assert (f["tensor[0].data"].offset, f["tensor[0].data"].size) == (128, 384)
    assert f["tensor[1].n_dims"].offset == 512
    assert (f["tensor[1].name"].offset, f["tensor[1].pad"].offset, f["tensor[1].pad"].size) == (528, 539, 5)
    assert (f["tensor[1].data"].offset, f["tensor[1].data"].size) == (544, 256)
    assert f["tensor[2].n_dims"].offset == 800
    assert f["tensor[2].pad"].size == 31 and f["tensor[2].pad"].offset == 833  # header 800-832
    data_field = f["tensor[2].data"]
    assert (data_field.offset, data_field.offset + data_field.size - 1) == (864, 1247)
    assert len(data) == 1248  # ends exactly with the last tensor's data


def test_section12_hexdump() -> None:
    hp, vocab, tensors = section12_model()
    data = build_file("ggjt", 1, hp, vocab, tensors)
    for offset, expected in section12_hexdump().items():
        assert data[offset : offset + 16] == expected, f"line {offset:#010x}"


@pytest.mark.parametrize(
    ("fmt", "version", "magic_bytes", "records", "size"),
    [
        ("ggjt", 1, b"tjgg", [(65, 128, 511), (512, 544, 799), (800, 864, 1247)], 1248),
        ("ggmf", 1, b"fmgg", [(65, 106, 489), (490, 517, 772), (773, 806, 1189)], 1190),
        ("ggml", None, b"lmgg", [(49, 90, 473), (474, 501, 756), (757, 790, 1173)], 1174),
    ],
)
def test_section12_all_formats(fmt: str, version: int | None, magic_bytes: bytes, records: list, size: int) -> None:
    hp, vocab, tensors = section12_model()
    data = build_file(fmt, version, hp, vocab, tensors)
    assert data[:4] == magic_bytes
    assert len(data) == size
    parsed = parse_file(data)
    got = [(t["record_offset"], t["data_offset"], t["data_offset"] + t["nbytes"] - 1) for t in parsed["tensors"]]
    assert got == records
    assert parsed["magic"] == fmt and parsed["version"] == version and parsed["hparams"] == hp
    assert [t["name"] for t in parsed["tensors"]] == ["tok_embeddings.weight", "norm.weight", "output.weight"]
    assert parsed["vocab"][0][0] == bytes.fromhex("20e2818720")


def test_header_sizes_and_magic_bytes() -> None:
    hp = llama_hparams(32000, 4096, 256, 32, 32, 1)
    assert header("ggml", None, hp) == b"lmgg" + struct.pack("<7i", 32000, 4096, 256, 32, 32, 128, 1)
    assert header("ggmf", 1, hp)[:8] == b"fmgg\x01\x00\x00\x00"
    assert header("ggjt", 3, hp)[:8] == b"tjgg\x03\x00\x00\x00"
    assert len(header("ggjt", 1, hp)) == 36


def test_no_padding_field_outside_ggjt() -> None:
    hp, vocab, tensors = section12_model()
    for fmt, version in (("ggml", None), ("ggmf", 1)):
        _, fields = build_file_with_fields(fmt, version, hp, vocab, tensors)
        assert not [f for f in fields if f.name.endswith(".pad")]


def test_field_map_covers_every_byte_once() -> None:
    hp, vocab, tensors = section12_model()
    data, fields = build_file_with_fields("ggjt", 1, hp, vocab, tensors)
    pos = 0
    for f in fields:
        assert f.offset == pos, f.name
        if f.fmt is not None:
            assert struct.calcsize(f.fmt) == f.size
        pos += f.size
    assert pos == len(data)


def test_hostile_knobs() -> None:
    hp, vocab, tensors = section12_model()
    unpadded = build_file("ggjt", 1, hp, vocab, tensors, pad=False)
    assert len(unpadded) == 1190  # same bytes as ggmf apart from the magic
    with pytest.raises(ValueError):
        parse_file(unpadded)
    assert build_file("ggjt", 4, hp, vocab, tensors, validate=False)[4:8] == b"\x04\x00\x00\x00"
    with pytest.raises(ValueError):
        build_file("ggjt", 4, hp, vocab, tensors)
    with pytest.raises(ValueError):
        build_file("ggjt", 1, hp, vocab, [("x", TYPE_CODES["F32"], (4,), bytes(15))])
    assert build_file("ggjt", 1, hp, vocab, tensors, magic=0x46554747)[:4] == b"GGUF"


# ---------------------------------------------------------------------------------------------------------------
# Parser: inverse of the builder, and rejection of malformed input

_FORMATS = [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)]


@st.composite
def _files(draw: st.DrawFn) -> tuple[str, int | None, dict, list, list]:
    fmt, version = draw(st.sampled_from(_FORMATS))
    layout = layout_of(fmt, version)
    i32 = st.integers(0, 2**31 - 1)
    hp = {name: draw(i32) for name in ("n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")}
    f32 = st.floats(width=32, allow_nan=False)
    score = st.none() if fmt == "ggml" else f32
    vocab = draw(st.lists(st.tuples(st.binary(max_size=12), score), max_size=6))
    hp["n_vocab"] = len(vocab)
    tensors = []
    for i in range(draw(st.integers(0, 4))):
        type_name = draw(st.sampled_from(sorted(BLOCKS[layout])))
        elems = BLOCKS[layout][type_name][0]
        ne = (elems * draw(st.integers(1, 3)), *draw(st.lists(st.integers(1, 3), max_size=1)))
        name = draw(st.text(max_size=40)) + f"#{i}"
        size = int(np.prod(ne)) // elems * BLOCKS[layout][type_name][1]
        tensors.append((name, TYPE_CODES[type_name], ne, draw(st.binary(min_size=size, max_size=size))))
    return fmt, version, hp, vocab, tensors


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_files())
def test_parse_inverts_build(case: tuple) -> None:
    fmt, version, hp, vocab, tensors = case
    data = build_file(fmt, version, hp, vocab, tensors)
    parsed = parse_file(data)
    assert (parsed["magic"], parsed["version"], parsed["hparams"]) == (fmt, version, hp)
    assert parsed["vocab"] == vocab
    assert [(t["name"], t["type"], t["ne"]) for t in parsed["tensors"]] == [(n, c, ne) for n, c, ne, _ in tensors]
    for t, (_, _, _, raw) in zip(parsed["tensors"], tensors):
        assert data[t["data_offset"] : t["data_offset"] + t["nbytes"]] == raw
        if fmt == "ggjt":
            assert t["data_offset"] % 32 == 0
    end = parsed["tensors"][-1]["data_offset"] + parsed["tensors"][-1]["nbytes"] if tensors else None
    assert end is None or end == len(data)


def test_every_truncation_is_rejected_or_a_record_boundary() -> None:
    hp, vocab, tensors = section12_model()
    for fmt, version in (("ggjt", 1), ("ggml", None)):
        data = build_file(fmt, version, hp, vocab, tensors)
        records = [t["record_offset"] for t in parse_file(data)["tensors"]]
        for cut in range(len(data)):
            if cut in records:  # a clean EOF on a record boundary is a valid, shorter file
                assert len(parse_file(data[:cut])["tensors"]) == records.index(cut)
            else:
                with pytest.raises(ValueError):
                    parse_file(data[:cut])


def _patched(data: bytes, field: Field, value: int) -> bytes:
    assert field.fmt is not None
    return data[: field.offset] + struct.pack(field.fmt, value) + data[field.offset + field.size :]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("magic", 0x67676C61),  # ggla: a LoRA adapter, not a model
        ("version", 4),
        ("n_vocab", -1),
        ("n_vocab", 2**31 - 1),
        ("vocab[0].len", -1),
        ("vocab[0].len", 10**6),
        ("tensor[1].n_dims", 0),
        ("tensor[1].n_dims", 5),
        ("tensor[1].name_len", -1),
        ("tensor[0].type", 9),  # Q8_1 never appears in files
        ("tensor[0].ne[0]", 0),
        ("tensor[0].ne[1]", 4),  # data would run past EOF
    ],
)
def test_parse_rejects_bad_fields(field: str, value: int) -> None:
    hp, vocab, tensors = section12_model()
    data, fields = build_file_with_fields("ggjt", 1, hp, vocab, tensors)
    with pytest.raises(ValueError):
        parse_file(_patched(data, _fields(fields)[field], value))


def test_parse_rejects_semantic_errors() -> None:
    hp, vocab, _ = section12_model()
    q4_2 = [("w", TYPE_CODES["Q4_2"], (16,), bytes(10))]
    assert parse_file(build_file("ggjt", 1, hp, vocab, q4_2))["tensors"][0]["nbytes"] == 10
    with pytest.raises(ValueError, match="type"):  # Q4_2 is gone from ggjt v2 on (§1.3)
        parse_file(build_file("ggjt", 2, hp, vocab, q4_2, validate=False))
    partial_block = [("w", TYPE_CODES["Q4_0"], (16,), bytes(10))]
    with pytest.raises(ValueError, match="block"):
        parse_file(build_file("ggjt", 1, hp, vocab, partial_block, validate=False))
    data, fields = build_file_with_fields("ggjt", 1, hp, vocab, section12_model()[2])
    pad = _fields(fields)["tensor[0].pad"]
    dirty = data[: pad.offset] + b"\x01" + data[pad.offset + 1 :]
    with pytest.raises(ValueError, match="padding"):
        parse_file(dirty)
    assert parse_file(dirty, check_padding=False)["tensors"][0]["data_offset"] == 128


# ---------------------------------------------------------------------------------------------------------------
# Quantizers: hand-computed blocks from the §5 formulas

SPEC_BLOCK_BYTES = {  # §5.1 table, copied by hand: type -> (bytes v1, v2, v3); None = not in that layout
    "Q4_0": (20, 20, 18),
    "Q4_1": (24, 24, 20),
    "Q4_2": (10, None, None),
    "Q4_3": (12, None, None),
    "Q5_0": (22, 22, 22),
    "Q5_1": (24, 24, 24),
    "Q8_0": (36, 36, 34),
}


@pytest.mark.parametrize("type_name", sorted(SPEC_BLOCK_BYTES))
@pytest.mark.parametrize("layout", [1, 2, 3])
def test_block_sizes_match_spec_table(type_name: str, layout: int) -> None:
    size = SPEC_BLOCK_BYTES[type_name][layout - 1]
    elems = 16 if type_name in ("Q4_2", "Q4_3") else 32
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    if size is None:
        with pytest.raises(ValueError):
            quantize(x, type_name, layout)
    else:
        assert len(quantize(x, type_name, layout)) == 3 * (64 // elems) * size


def _v1_nibbles(q: list[int]) -> bytes:
    return bytes(q[2 * j] | q[2 * j + 1] << 4 for j in range(len(q) // 2))


def _v2_nibbles(q: list[int]) -> bytes:
    half = len(q) // 2
    return bytes(q[j] | q[j + half] << 4 for j in range(half))


# values -7..7 with amax 7: March Q4_0 gives d = 1 and q = x + 8
_INTS7 = [(k % 15) - 7 for k in range(32)]


def test_q4_0_march_block() -> None:
    q = [v + 8 for v in _INTS7]
    assert quantize(np.array([_INTS7], np.float32), "Q4_0", 1) == struct.pack("<f", 1.0) + _v1_nibbles(q)


def test_q4_0_rounding_differs_between_layouts() -> None:
    # M = -8 (first largest |x|) so d = 1 in every variant; 2.5 and -2.5 expose the rounding rule
    x = np.array([[-8.0, 2.5, -2.5, 7.0] + [0.0] * 28], np.float32)
    march = quantize(x, "Q4_0", 1)  # d = 8/7 here, so only check the bytes of the full-range variants
    assert struct.unpack("<f", march[:4])[0] == pytest.approx(8 / 7)
    full_v1 = quantize(x, "Q4_0", 1, full_range=True)
    # round half away from zero: 2.5 -> 3 -> 11, -2.5 -> -3 -> 5; 7 -> 15; -8 -> 0; zeros -> 8
    q_v1 = [0, 11, 5, 15] + [8] * 28
    assert full_v1 == struct.pack("<f", 1.0) + _v1_nibbles(q_v1)
    # v2: trunc(x + 8.5): 2.5 -> 11, -2.5 -> 6 (not 5)
    q_v2 = [0, 11, 6, 15] + [8] * 28
    assert quantize(x, "Q4_0", 2) == struct.pack("<f", 1.0) + _v2_nibbles(q_v2)
    assert quantize(x, "Q4_0", 3) == b"\x00\x3c" + _v2_nibbles(q_v2)  # f16 1.0 = 0x3c00


def test_q4_0_zero_block() -> None:
    zeros = np.zeros((1, 32), np.float32)
    assert quantize(zeros, "Q4_0", 1) == bytes(4) + bytes([0x88]) * 16  # d = 0, all q = 8
    # full range: C starts from max = +0.0 and divides by -8, so d is -0.0
    assert quantize(zeros, "Q4_0", 2) == b"\x00\x00\x00\x80" + bytes([0x88]) * 16
    assert quantize(zeros, "Q4_0", 3) == b"\x00\x80" + bytes([0x88]) * 16


def test_q4_1_block() -> None:
    x = np.array([[k % 16 + 10 for k in range(32)]], np.float32)  # min 10, max 25: d = 1, m = 10, q = k % 16
    q = [k % 16 for k in range(32)]
    assert quantize(x, "Q4_1", 1) == struct.pack("<ff", 1.0, 10.0) + _v1_nibbles(q)
    assert quantize(x, "Q4_1", 2) == struct.pack("<ff", 1.0, 10.0) + _v2_nibbles(q)
    assert quantize(x, "Q4_1", 3) == struct.pack("<ee", 1.0, 10.0) + _v2_nibbles(q)


def test_q5_blocks() -> None:
    x = np.array([[k - 16 for k in range(32)]], np.float32)  # M = -16: d = 1, q = k
    qh = struct.pack("<I", 0xFFFF0000)  # bit k = bit 4 of q(k) = (k >= 16)
    low = [k & 15 for k in range(32)]
    assert quantize(x, "Q5_0", 1) == struct.pack("<e", 1.0) + qh + _v1_nibbles(low)
    assert quantize(x, "Q5_0", 3) == struct.pack("<e", 1.0) + qh + _v2_nibbles(low)
    # Q5_1: min -16, max 15: d = 31/31 = 1, m = -16, q = k
    assert quantize(x, "Q5_1", 2) == struct.pack("<ee", 1.0, -16.0) + qh + _v2_nibbles(low)


def test_q8_0_block() -> None:
    vals = [127 - 8 * k for k in range(32)]  # amax 127: d = 1, q = x
    x = np.array([vals], np.float32)
    assert quantize(x, "Q8_0", 1) == struct.pack("<f32b", 1.0, *vals)
    assert quantize(x, "Q8_0", 3) == struct.pack("<e32b", 1.0, *vals)


def test_q4_2_q4_3_blocks() -> None:
    x = np.array([[k - 8 for k in range(16)]], np.float32)  # Q4_2: M = -8, d = 1, q = trunc(x + 8.5) = k
    assert quantize(x, "Q4_2", 1) == struct.pack("<e", 1.0) + _v1_nibbles(list(range(16)))
    # Q4_3: min -8, max 7: d = 1, m = -8, q = k
    assert quantize(x, "Q4_3", 1) == struct.pack("<ee", 1.0, -8.0) + _v1_nibbles(list(range(16)))


# ---------------------------------------------------------------------------------------------------------------
# Dequantizer: hand-packed blocks -> values from the §5.3 formulas


def test_dequantize_hand_packed_blocks() -> None:
    q = [(3 * k + 1) % 16 for k in range(32)]
    want = np.array([(v - 8) * 0.5 for v in q], np.float32)
    v1 = struct.pack("<f", 0.5) + _v1_nibbles(q)
    np.testing.assert_array_equal(dequantize(v1, "Q4_0", 1, (32,)), want)
    np.testing.assert_array_equal(dequantize(struct.pack("<e", 0.5) + _v2_nibbles(q), "Q4_0", 3, (1, 32)), [want])
    q4_1 = struct.pack("<ff", 0.25, -1.0) + _v2_nibbles(q)
    np.testing.assert_array_equal(dequantize(q4_1, "Q4_1", 2, (32,)), [v * 0.25 - 1.0 for v in q])
    q5 = [(7 * k + 3) % 32 for k in range(32)]
    qh = struct.pack("<I", sum((v >> 4) << k for k, v in enumerate(q5)))
    q5_0 = struct.pack("<e", 2.0) + qh + _v1_nibbles([v & 15 for v in q5])
    np.testing.assert_array_equal(dequantize(q5_0, "Q5_0", 1, (32,)), [(v - 16) * 2.0 for v in q5])
    q5_1 = struct.pack("<ee", 0.5, 3.0) + qh + _v2_nibbles([v & 15 for v in q5])
    np.testing.assert_array_equal(dequantize(q5_1, "Q5_1", 3, (32,)), [v * 0.5 + 3.0 for v in q5])
    q8 = [k * 7 - 100 for k in range(32)]
    np.testing.assert_array_equal(dequantize(struct.pack("<f32b", 0.125, *q8), "Q8_0", 2, (32,)), np.float32(q8) / 8)
    with pytest.raises(ValueError):
        dequantize(v1[:-1], "Q4_0", 1, (32,))


_QUANT_CASES = [(t, lv) for lv in (1, 2, 3) for t in sorted(BLOCKS[lv]) if t not in ("F32", "F16")]


def _error_bound(block: np.ndarray, type_name: str, layout: int, full_range: bool) -> float:
    """Largest |x - x^| the §5.5 rules allow for one block, including f16 rounding of stored scales."""
    amax, lo, hi = float(np.abs(block).max()), float(block.min()), float(block.max())
    f16 = 2.0**-11  # relative error of rounding to f16
    if type_name in ("Q4_0", "Q4_2"):
        if layout == 1 and type_name == "Q4_0" and not full_range:
            return amax / 7 / 2 * (1 + 1e-5) + 1e-30
        d = amax / 8  # clamping the +8 end to 15 costs a whole step
        return d * (1 + 1e-5) + (8 * d * f16 if type_name == "Q4_2" or layout == 3 else 0)
    if type_name in ("Q4_1", "Q4_3", "Q5_1"):
        levels = 31 if type_name == "Q5_1" else 15
        d = (hi - lo) / levels
        scaled = type_name != "Q4_1" or layout == 3
        return d / 2 * (1 + 1e-5) + 1e-6 * amax + ((levels * d + abs(lo)) * f16 if scaled else 0)
    if type_name == "Q5_0":
        d = amax / 16
        return d * (1 + 1e-5) + 16 * d * f16
    d = amax / 127  # Q8_0
    return d / 2 * (1 + 1e-5) + (127 * d * f16 if layout == 3 else 0)


@pytest.mark.parametrize(("type_name", "layout"), _QUANT_CASES)
@pytest.mark.parametrize("full_range", [False, True])
def test_quantize_dequantize_error_bound(type_name: str, layout: int, full_range: bool) -> None:
    rng = np.random.default_rng(_QUANT_CASES.index((type_name, layout)))  # str hash() is salted per process
    x = (rng.standard_normal((4, 64)) * rng.uniform(0.01, 10, (4, 1))).astype(np.float32)
    x[0, :32] += 5.0  # a block far from zero stresses the min of Q4_1/Q5_1
    x[1, 32:] = 0.0  # an all-zero block must come back exactly
    y = dequantize(quantize(x, type_name, layout, full_range=full_range), type_name, layout, x.shape)
    assert y.dtype == np.float32 and y.shape == x.shape
    qk = 16 if type_name in ("Q4_2", "Q4_3") else 32
    for xb, yb in zip(x.reshape(-1, qk), y.reshape(-1, qk)):
        assert np.abs(xb - yb).max() <= _error_bound(xb, type_name, layout, full_range)
    np.testing.assert_array_equal(y[1, 32:], 0.0)


@settings(max_examples=40, deadline=None)
@given(
    case=st.sampled_from(_QUANT_CASES),
    values=st.lists(st.floats(-1e4, 1e4, width=32), min_size=32, max_size=32),
)
def test_quantize_error_bound_property(case: tuple[str, int], values: list[float]) -> None:
    type_name, layout = case
    x = np.array([values], np.float32)
    y = dequantize(quantize(x, type_name, layout), type_name, layout, x.shape)
    qk = 16 if type_name in ("Q4_2", "Q4_3") else 32
    for xb, yb in zip(x.reshape(-1, qk), y.reshape(-1, qk)):
        assert np.abs(xb - yb).max() <= _error_bound(xb, type_name, layout, False) + 1e-30


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_v3_matches_gguf_py(type_name: str) -> None:
    """gguf-py's numpy quantizers are validated upstream against ggml's C code; v3 blocks = GGUF blocks (§5.2)."""
    gguf_quants = pytest.importorskip("gguf.quants")
    qtype = getattr(pytest.importorskip("gguf").GGMLQuantizationType, type_name)
    rng = np.random.default_rng(7)
    for scale in (1e-3, 1.0, 300.0):  # no all-zero block: gguf-py and C disagree on the sign of a zero scale
        x = (rng.standard_normal((8, 128)) * scale).astype(np.float32)
        x[0, :32] = (np.arange(32) - 16) * scale / 2  # exact ties for the rounding rules
        raw = quantize(x, type_name, 3)
        assert raw == gguf_quants.quantize(x, qtype).tobytes()
        reference = gguf_quants.dequantize(np.frombuffer(raw, np.uint8).reshape(8, -1), qtype)
        np.testing.assert_array_equal(dequantize(raw, type_name, 3, x.shape), reference)


def test_float_types_are_plain_casts() -> None:
    x = np.array([[1.5, -2.0, 65504.0]], np.float32)
    assert quantize(x, "F16", 2) == x.astype("<f2").tobytes()
    assert quantize(x, "F32", 1) == x.astype("<f4").tobytes()
    np.testing.assert_array_equal(dequantize(quantize(x, "F16", 1), "F16", 1, (1, 3)), x)


# ---------------------------------------------------------------------------------------------------------------
# LLaMA helpers and multi-part files (§2.3, §6, §8.2)


@pytest.mark.parametrize(("dim", "hidden"), [(4096, 11008), (5120, 13824), (6656, 17920), (8192, 22016)])
def test_n_ff_matches_meta(dim: int, hidden: int) -> None:
    assert llama_n_ff(dim, 256) == hidden
    assert llama_hparams(32000, dim, 256, dim // 128, 32, 1)["n_rot"] == 128


def test_section12_n_ff() -> None:
    assert llama_n_ff(64, 32) == 192


def test_tensor_names_order_and_count() -> None:
    names = llama_tensor_names(32)
    assert len(names) == 291 and len(llama_tensor_names(80)) == 723
    assert names[:4] == ["tok_embeddings.weight", "norm.weight", "output.weight", "layers.0.attention.wq.weight"]
    assert names[3:12] == [
        f"layers.0.{t}.weight"
        for t in (
            "attention.wq",
            "attention.wk",
            "attention.wv",
            "attention.wo",
            "feed_forward.w1",
            "feed_forward.w2",
            "feed_forward.w3",
            "attention_norm",
            "ffn_norm",
        )
    ]
    assert names[-1] == "layers.31.ffn_norm.weight"


# §6.2 per-shard PyTorch shapes: model -> (P, dim, n_heads, shapes of tok_embeddings, output, wq, wo, w1, w2)
SHARD_TABLE = {
    "13B": (2, 5120, 40, [(32000, 2560), (16000, 5120), (2560, 5120), (5120, 2560), (6912, 5120), (5120, 6912)]),
    "30B": (4, 6656, 52, [(32000, 1664), (8000, 6656), (1664, 6656), (6656, 1664), (4480, 6656), (6656, 4480)]),
    "65B": (8, 8192, 64, [(32000, 1024), (4000, 8192), (1024, 8192), (8192, 1024), (2752, 8192), (8192, 2752)]),
}


@pytest.mark.parametrize("model", sorted(SHARD_TABLE))
def test_shard_shapes_match_spec_table(model: str) -> None:
    n_parts, dim, n_heads, expected = SHARD_TABLE[model]
    shapes = llama_shapes(llama_hparams(32000, dim, 256, n_heads, 1, 1))
    names = [
        "tok_embeddings.weight",
        "output.weight",
        "layers.0.attention.wq.weight",
        "layers.0.attention.wo.weight",
        "layers.0.feed_forward.w1.weight",
        "layers.0.feed_forward.w2.weight",
    ]
    assert [shard_shape(n, shapes[n], n_parts) for n in names] == expected
    assert shard_shape("norm.weight", shapes["norm.weight"], n_parts) == (dim,)


def test_split_axis_rule() -> None:
    col = ["tok_embeddings.weight", "layers.3.attention.wo.weight", "layers.0.feed_forward.w2.weight"]
    row = ["output.weight", "layers.1.attention.wq.weight", "layers.1.attention.wk.weight"]
    row += ["layers.1.attention.wv.weight", "layers.1.feed_forward.w1.weight", "layers.1.feed_forward.w3.weight"]
    assert [split_axis(n, 2) for n in col] == [1, 1, 1]
    assert [split_axis(n, 2) for n in row] == [0] * 6
    assert split_axis("layers.0.ffn_norm.weight", 1) is None
    # docs/format.md §6 states the rule as globs: `tok_embeddings.*` is a prefix, the other two are suffixes
    assert split_axis("tok_embeddings.bias", 2) == 1 and split_axis("layers.0.tok_embeddings.weight", 2) == 0
    assert split_axis("layers.0.attention.wo.weight.scale", 2) == 0 and split_axis("x.feed_forward.w2.weight", 2) == 1


def test_split_for_parts_recombines() -> None:
    a = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    assert np.concatenate(split_for_parts("output.weight", a, 2), axis=0).tolist() == a.tolist()
    cols = split_for_parts("tok_embeddings.weight", a, 3)
    assert [c.shape for c in cols] == [(8, 2)] * 3 and np.concatenate(cols, axis=1).tolist() == a.tolist()
    v = np.arange(6, dtype=np.float32)
    assert all(p.tolist() == v.tolist() for p in split_for_parts("norm.weight", v, 4))
    with pytest.raises(ValueError):
        split_for_parts("output.weight", a, 3)


def test_split_shards_gives_owned_contiguous_numpy_and_torch_pieces() -> None:
    import torch

    a = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    for full, cat in ((a, np.concatenate), (torch.from_numpy(a), torch.cat)):
        for axis in (0, 1):
            pieces = split_shards(full, 2, axis)
            assert all(p.shape[axis] == full.shape[axis] // 2 for p in pieces)
            assert cat(pieces, axis).tolist() == a.tolist()
        copies = split_shards(full, 3, None)
        assert len(copies) == 3 and all(c.tolist() == a.tolist() for c in copies)
        for p in split_shards(full, 3, 1) + copies:
            if isinstance(p, np.ndarray):
                assert p.flags.c_contiguous and p.flags.owndata
            else:
                assert p.is_contiguous() and p.untyped_storage().nbytes() == p.numel() * p.element_size()
    with pytest.raises(ValueError):
        split_shards(a, 4, 1)


@pytest.mark.parametrize(("fmt", "two_d_type"), [("ggmf", "F16"), ("ggmf", "Q4_0"), ("ggml", "Q4_1"), ("ggmf", "F32")])
def test_build_parts(fmt: str, two_d_type: str) -> None:
    hp = llama_hparams(n_vocab=6, dim=64, n_mult=32, n_head=2, n_layer=1, ftype=TYPE_CODES[two_d_type])
    vocab = llama_vocab(6) if fmt != "ggml" else [(t, None) for t, _ in llama_vocab(6)]
    full = llama_tensors(hp, two_d_type, seed=1)
    parts = build_parts(fmt, hp, vocab, full, 2)
    parsed = [parse_file(p) for p in parts]
    head_len = 32 if fmt == "ggml" else 36
    assert parts[0][:head_len] == parts[1][:head_len]  # identical headers, full n_vocab
    assert all(p["vocab"] == vocab and p["hparams"] == hp for p in parsed)
    for k, part in enumerate(parsed):
        assert [t["name"] for t in part["tensors"]] == list(full)
        for info in part["tensors"]:
            t, a = full[info["name"]]
            assert info["ne"] == tuple(reversed(shard_shape(info["name"], a.shape, 2)))
            assert info["type"] == TYPE_CODES[t]
            shard = split_for_parts(info["name"], a, 2)[k]
            got = tensor_array(parts[k], info, 1)
            if t in ("F32", "F16"):
                np.testing.assert_array_equal(got, shard)
            else:
                assert got.shape == shard.shape
    # per-shard quantization equals quantizing the full tensor (shard edges are block edges)
    for name, (t, a) in full.items():
        full_bytes = quantize(a, t, 1)
        shard_bytes = [
            parts[k][i["data_offset"] : i["data_offset"] + i["nbytes"]]
            for k, p in enumerate(parsed)
            for i in p["tensors"]
            if i["name"] == name
        ]
        axis = split_axis(name, a.ndim)
        if axis is None:
            assert shard_bytes == [full_bytes, full_bytes]
        elif axis == 0:
            assert b"".join(shard_bytes) == full_bytes
        else:  # column split: each full row is part 0's row then part 1's row
            rows = [np.frombuffer(s, np.uint8).reshape(a.shape[0], -1) for s in shard_bytes]
            assert np.hstack(rows).tobytes() == full_bytes


def test_build_model_is_single_ggjt() -> None:
    hp = llama_hparams(n_vocab=4, dim=64, n_mult=32, n_head=2, n_layer=1, ftype=TYPE_CODES["Q8_0"])
    full = llama_tensors(hp, "Q8_0")
    data = build_model("ggjt", 3, hp, llama_vocab(4), full)
    parsed = parse_file(data)
    assert [t["name"] for t in parsed["tensors"]] == llama_tensor_names(1)
    for info in parsed["tensors"]:
        assert info["data_offset"] % 32 == 0
        t, a = full[info["name"]]
        got = tensor_array(data, info, 3)
        assert got.shape == a.shape
        if t == "F32":
            np.testing.assert_array_equal(got, a)
        else:
            np.testing.assert_allclose(got, a, atol=float(np.abs(a).max()) / 127)


def test_llama_vocab_specials() -> None:
    vocab = llama_vocab(300)
    assert vocab[0] == (b" \xe2\x81\x87 ", 0.0) and vocab[1][0] == b"" and vocab[2][0] == b""
    assert vocab[13][0] == b"\n"  # token 13 is the newline byte token <0x0A>
    assert len(vocab) == 300
