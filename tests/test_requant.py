"""ggmlfmt.blocks.requant against gguf-py's dequantizer, a struct-based restatement of the conversion, hand-built blocks."""

from __future__ import annotations

import math
import struct

import gguf
import numpy as np
import pytest
from gguf import quants
from hypothesis import given
from hypothesis import strategies as st

import builders
from ggmlfmt.constants import BLOCK_LAYOUTS, GGMLType
from ggmlfmt.blocks.dequant import dequantize_blocks
from ggmlfmt.errors import BadValue, CannotWrite
from ggmlfmt.blocks.requant import Rounding, ScaleOverflow, convert_blocks, gguf_target, scale_rounding, scan

QUANTIZED = [(gen, t) for gen in (1, 2, 3) for t in builders.BLOCKS[gen] if t not in ("F32", "F16")]
IDS = [f"v{gen}-{t}" for gen, t in QUANTIZED]
GGUF_BLOCKS = {t for t in builders.BLOCKS[3] if t not in ("F32", "F16")}
F32_SCALES = {(1, "Q4_0"), (1, "Q4_1"), (1, "Q8_0"), (2, "Q4_0"), (2, "Q4_1"), (2, "Q8_0")}  # docs/format.md §12.1


# ------------------------------------------------------------------ an independent restatement, block by block


def _half(x: float) -> bytes:
    return struct.pack("<e", x)  # Python's f16 packing rounds a double to nearest even: exact from f32


HEAD = {"Q4_0": 4, "Q4_1": 8, "Q8_0": 4, "Q5_0": 6, "Q5_1": 8}  # bytes before qs in generations 1 and 2 (docs/format.md §5.2)


def reference_convert(raw: bytes, type_name: str, gen: int) -> bytes:
    """Generation 1/2 block bytes -> GGUF block bytes with struct, one block and one nibble at a time."""
    size = builders.BLOCKS[gen][type_name][1]
    out = bytearray()
    for b in range(0, len(raw), size):
        head, qs = raw[b:b + HEAD[type_name]], raw[b + HEAD[type_name]:b + size]
        if (gen, type_name) in F32_SCALES:  # d (and m) f32 -> f16; Q5's f16 scales and qh stay
            head = b"".join(_half(v) for (v,) in struct.iter_unpack("<f", head))
        if gen == 1 and type_name != "Q8_0":  # element k sits in byte k // 2, low nibble when k is even
            nib = [(qs[k // 2] >> (4 * (k % 2))) & 0xF for k in range(32)]
            qs = bytes(nib[j] | (nib[j + 16] << 4) for j in range(16))
        out += head + qs
    return bytes(out)


def _blocks(raw: bytes, type_name: str, gen: int, rows: int) -> np.ndarray:
    return np.frombuffer(raw, BLOCK_LAYOUTS[gen][GGMLType[type_name]].dtype).reshape(rows, -1)


def _gguf_values(blocks: np.ndarray, type_name: str) -> np.ndarray:
    """gguf-py's own dequantizer on our bytes (an independent reader of the GGUF block layouts)."""
    raw = np.ascontiguousarray(blocks).view(np.uint8).reshape(blocks.shape[0], -1)
    return quants.dequantize(raw, gguf.GGMLQuantizationType[type_name])


def _scale_change(values: list[float]) -> float:
    """Largest |f16(s) - s| / |s| over finite non-zero s, computed from struct's f16 (docs/format.md §12.3)."""
    worst = 0.0
    for s in values:
        if math.isfinite(s) and s != 0:
            worst = max(worst, abs(struct.unpack("<e", _half(s))[0] - s) / abs(s))
    return worst


# ------------------------------------------------------------------ the table


EXPECTED = {  # (generation, type) -> (GGUF type, bytes unchanged), by docs/format.md §12.1
    **{(g, t): (t, g == 3 or (g == 2 and t.startswith("Q5"))) for g, t in QUANTIZED},
    (1, "Q4_2"): ("F32", False),
    (1, "Q4_3"): ("F32", False),
}


@pytest.mark.parametrize(("gen", "type_name"), QUANTIZED, ids=IDS)
def test_the_target_table(gen, type_name):
    target = gguf_target(gen, GGMLType[type_name])
    want_type, unchanged = EXPECTED[(gen, type_name)]
    assert target.type == GGMLType[want_type]
    assert (target.convert is None) == unchanged
    if unchanged:  # nothing to do only where the bytes already are the GGUF block
        assert BLOCK_LAYOUTS[gen][GGMLType[type_name]].dtype == BLOCK_LAYOUTS[3][GGMLType[type_name]].dtype
        x = np.random.default_rng(gen).standard_normal(256).astype(np.float32)  # and the test-side encoders agree
        assert builders.quantize(x, type_name, gen) == builders.quantize(x, type_name, 3)
    lossless = gguf_target(gen, GGMLType[type_name], lossless=True)
    assert lossless.type == (GGMLType.F32 if (gen, type_name) in F32_SCALES else target.type)


@pytest.mark.parametrize("gen", [1, 2, 3])
@pytest.mark.parametrize("type_name", ["F32", "F16"])
def test_float_tensors_are_copied(gen, type_name):
    assert gguf_target(gen, GGMLType[type_name], lossless=True) == (GGMLType[type_name], None)


# ------------------------------------------------------------------ against gguf-py and the restatement


@pytest.mark.parametrize(("gen", "type_name"), QUANTIZED, ids=IDS)
def test_converted_blocks_against_gguf_and_the_restatement(gen, type_name):
    x = np.random.default_rng(gen * 10 + builders.TYPE_CODES[type_name]).standard_normal((3, 128)).astype(np.float32)
    raw = builders.quantize(x, type_name, gen)
    src = _blocks(raw, type_name, gen, 3)
    source_values = builders.dequantize(raw, type_name, gen, (3, 128))
    target = gguf_target(gen, GGMLType[type_name])
    out = src if target.convert is None else target.convert(src)
    if target.type == GGMLType.F32:  # Q4_2, Q4_3: the exact values
        assert out.dtype == np.float32 and out.shape == (3, 128)
        np.testing.assert_array_equal(out, source_values)
        return
    assert out.dtype == BLOCK_LAYOUTS[3][GGMLType[type_name]].dtype and out.shape == src.shape
    assert out.tobytes() == reference_convert(raw, type_name, gen)
    got = _gguf_values(out, type_name)
    if (gen, type_name) not in F32_SCALES:
        np.testing.assert_array_equal(got, source_values)  # a lossless repack
    else:  # each value q*d (+ m) moves with its block's scales, each by at most 2^-11 of itself (+ f32 rounding)
        change = scale_rounding(src, gen, GGMLType[type_name])
        assert 0 < change.max_rel_change <= 2.0 ** -11
        max_q = {"Q4_0": 8, "Q4_1": 15, "Q8_0": 128}[type_name]
        bound = max_q * np.abs(src["d"].astype(np.float64))
        if "m" in src.dtype.names:
            bound = bound + np.abs(src["m"].astype(np.float64))
        assert np.all(np.abs(got - source_values) <= np.repeat(bound, 32, axis=-1) * (2.0 ** -11 + 2.0 ** -20))


def test_a_hand_built_v1_q4_0_block():
    # values -8..7 twice at scale 0.5 (exact in f16): v1 byte j = x[2j] | x[2j+1] << 4 with q = value + 8
    q = list(range(16)) * 2
    v1 = struct.pack("<f", 0.5) + bytes(q[2 * j] | q[2 * j + 1] << 4 for j in range(16))
    target = gguf_target(1, GGMLType.Q4_0)
    out = target.convert(np.frombuffer(v1, BLOCK_LAYOUTS[1][GGMLType.Q4_0].dtype))
    assert out.tobytes() == struct.pack("<e", 0.5) + bytes(q[j] | q[j + 16] << 4 for j in range(16))
    np.testing.assert_array_equal(_gguf_values(out.reshape(1, 1), "Q4_0")[0], (np.array(q) - 8) * 0.5)


def test_chunks_give_the_whole():
    x = np.random.default_rng(5).standard_normal((6, 96)).astype(np.float32)
    src = _blocks(builders.quantize(x, "Q4_1", 1), "Q4_1", 1, 6)
    whole, whole_rounding = convert_blocks(src, 1, GGMLType.Q4_1)
    parts = [convert_blocks(src[i:i + 2], 1, GGMLType.Q4_1) for i in range(0, 6, 2)]
    assert np.concatenate([p for p, _ in parts]).tobytes() == whole.tobytes()
    assert sum((r for _, r in parts), Rounding()) == whole_rounding
    assert scan(src, 1, GGMLType.Q4_1, chunk_blocks=5) == whole_rounding == scan(src, 1, GGMLType.Q4_1)
    assert str(whole_rounding).startswith(f"{whole_rounding.rounded} of 36 f32 scales change in f16")
    assert str(scan(src[:0], 1, GGMLType.Q4_1)) == "no f32 scales"


# ------------------------------------------------------------------ the reported rounding


finite_scale = st.floats(min_value=-65000, max_value=65000, width=32, allow_subnormal=True)


@given(case=st.sampled_from(sorted(F32_SCALES)), scales=st.lists(finite_scale, min_size=1, max_size=12),
       seed=st.integers(0, 2**32 - 1))
def test_reported_rounding_is_what_struct_gives(case, scales, seed):
    gen, type_name = case
    dtype = BLOCK_LAYOUTS[gen][GGMLType[type_name]].dtype
    blocks = np.frombuffer(np.random.default_rng(seed).bytes(len(scales) * dtype.itemsize), dtype).copy()
    blocks["d"] = scales
    if "m" in dtype.names:
        blocks["m"] = scales[::-1]
    values = [float(v) for name in ("d", "m") if name in dtype.names for v in blocks[name]]
    rounding = scale_rounding(blocks, gen, GGMLType[type_name])
    assert rounding.max_rel_change == _scale_change(values)
    assert rounding.rounded == sum(struct.unpack("<e", _half(v))[0] != v for v in values)
    assert rounding.scales == len(values) and rounding.overflow == 0
    out, again = convert_blocks(blocks, gen, GGMLType[type_name])
    assert again == rounding
    ours = dequantize_blocks(out, GGMLType[type_name], 3)
    if rounding.exact:  # exact scales: the repack is lossless, value for value
        np.testing.assert_array_equal(ours, dequantize_blocks(blocks, GGMLType[type_name], gen))
        assert gguf_target(gen, GGMLType[type_name], lossless=True, rounding=rounding).type == GGMLType[type_name]
    else:
        assert gguf_target(gen, GGMLType[type_name], lossless=True, rounding=rounding).type == GGMLType.F32
    np.testing.assert_array_equal(ours, _gguf_values(out.reshape(1, -1), type_name)[0])


@given(case=st.sampled_from([c for c in QUANTIZED if c not in F32_SCALES]), seed=st.integers(0, 2**32 - 1),
       n=st.integers(1, 8))
def test_lossless_repacks_keep_every_value(case, seed, n):
    gen, type_name = case
    dtype = BLOCK_LAYOUTS[gen][GGMLType[type_name]].dtype
    blocks = np.frombuffer(np.random.default_rng(seed).bytes(n * dtype.itemsize), dtype).copy()
    for name in ("d", "m"):  # random bits can be NaN; any finite f16 will do
        if name in dtype.names:
            blocks[name] = np.random.default_rng(seed).uniform(-100, 100, n).astype("<f2")
    target = gguf_target(gen, GGMLType[type_name])
    out = blocks if target.convert is None else target.convert(blocks)
    want = dequantize_blocks(blocks, GGMLType[type_name], gen)
    if target.type == GGMLType.F32:
        np.testing.assert_array_equal(out, want)
    else:
        np.testing.assert_array_equal(_gguf_values(out.reshape(1, -1), type_name)[0], want)
    assert scale_rounding(blocks, gen, GGMLType[type_name]) == Rounding()


def test_a_scale_beyond_f16_is_never_written_as_inf():
    dtype = BLOCK_LAYOUTS[2][GGMLType.Q8_0].dtype
    blocks = np.zeros(3, dtype)
    blocks["d"] = [1.0, 70000.0, 2.0**-30]  # fits; overflows f16; underflows to 0 (a 100% change)
    rounding = scale_rounding(blocks, 2, GGMLType.Q8_0)
    assert (rounding.overflow, rounding.rounded, rounding.max_rel_change) == (1, 2, 1.0)
    with pytest.raises(ScaleOverflow, match=r"d: scale 70000\.0 of block 1 .*beyond f16 .*F32"):
        gguf_target(2, GGMLType.Q8_0).convert(blocks)
    forced = gguf_target(2, GGMLType.Q8_0, rounding=rounding)  # not --lossless, still exact
    assert forced.type == GGMLType.F32
    np.testing.assert_array_equal(forced.convert(blocks), dequantize_blocks(blocks, GGMLType.Q8_0, 2))


def test_non_finite_source_scales_are_not_counted_as_rounding():
    blocks = np.zeros(2, BLOCK_LAYOUTS[1][GGMLType.Q4_0].dtype)
    blocks["d"] = [np.inf, np.nan]
    assert scale_rounding(blocks, 1, GGMLType.Q4_0) == Rounding(scales=2)


def test_bad_calls():
    with pytest.raises(BadValue, match="Q4_2.*generation 3"):
        gguf_target(3, GGMLType.Q4_2)
    with pytest.raises(CannotWrite, match="no GGUF block"):  # GGUF cannot hold a Q4_2 block: a request error
        convert_blocks(np.zeros(1, BLOCK_LAYOUTS[1][GGMLType.Q4_2].dtype), 1, GGMLType.Q4_2)
    with pytest.raises(ValueError, match="dtype"):
        gguf_target(1, GGMLType.Q4_0).convert(np.zeros(1, BLOCK_LAYOUTS[3][GGMLType.Q4_0].dtype))


@pytest.mark.parametrize(("fmt", "version", "type_name"), [("ggmf", 1, "Q4_0"), ("ggjt", 1, "Q5_1"),
                                                          ("ggjt", 2, "Q8_0"), ("ggjt", 1, "Q4_2")])
def test_a_mapped_file_tensor_converts_in_row_chunks(tmp_path, fmt, version, type_name):
    from ggmlfmt import dequantize, load
    gen = builders.layout_of(fmt, version)
    x = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    rec = ("t", builders.TYPE_CODES[type_name], (64, 5), builders.quantize(x, type_name, gen))
    raw = builders.build_file(fmt, version, builders.llama_hparams(1, 64, 32, 2, 1, 2), [(b"a", 0.0)], [rec])
    (tmp_path / "m.bin").write_bytes(raw)
    model = load(tmp_path / "m.bin")
    view = model.tensors["t"]  # read-only blocks in the map
    rounding = scan(view, gen, GGMLType[type_name], chunk_blocks=3)
    target = gguf_target(gen, GGMLType[type_name], rounding=rounding)
    chunks = [target.convert(view[r:r + 2]) for r in range(0, 5, 2)]
    out = np.concatenate(chunks)
    source = dequantize(view, model.info["t"], gen)
    if target.type == GGMLType.F32:
        np.testing.assert_array_equal(out, source)
    else:
        got = _gguf_values(out, type_name)
        assert (got == source).all() == rounding.exact
        np.testing.assert_allclose(got, source, rtol=0, atol=float(np.abs(source).max()) * 2.0 ** -10)
