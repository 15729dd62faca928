"""ggmlfmt.blocks.dequant against the element-by-element reference dequantizer in tests/builders.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import builders
from ggmlfmt import GGMLType, dequantize, load
from ggmlfmt.constants import BLOCK_LAYOUTS
from ggmlfmt.blocks.dequant import dequantize_blocks

CASES = [(gen, t) for gen in (1, 2, 3) for t in builders.BLOCKS[gen]]  # every type of every generation
IDS = [f"v{gen}-{t}" for gen, t in CASES]


def random_blocks(type_name: str, gen: int, n_blocks: int, seed: int) -> bytes:
    """Random block bytes with finite scales: every nibble, qh bit and int8 value is equally likely."""
    elems, size = builders.BLOCKS[gen][type_name]
    rng = np.random.default_rng(seed)
    raw = bytearray(rng.bytes(n_blocks * size))
    if type_name in ("F32", "F16"):
        dtype = "<f4" if type_name == "F32" else "<f2"
        return rng.standard_normal(n_blocks).astype(dtype).tobytes()
    dtype = BLOCK_LAYOUTS[gen][GGMLType[type_name]].dtype
    blocks = np.frombuffer(raw, dtype).copy()
    for field in ("d", "m"):  # random bits would give NaN/inf scales; keep them finite and of either sign
        if field in dtype.names:
            blocks[field] = rng.uniform(-2, 2, n_blocks).astype(blocks[field].dtype)
    return blocks.tobytes()


@pytest.mark.parametrize(("gen", "type_name"), CASES, ids=IDS)
def test_dequantize_matches_the_reference_on_random_blocks(gen, type_name):
    elems, size = builders.BLOCKS[gen][type_name]
    rows, row_blocks = 3, 4
    raw = random_blocks(type_name, gen, rows * row_blocks, seed=gen * 100 + builders.TYPE_CODES[type_name])
    blocks = np.frombuffer(raw, BLOCK_LAYOUTS[gen][GGMLType[type_name]].dtype).reshape(rows, row_blocks)
    got = dequantize_blocks(blocks, GGMLType[type_name], gen)
    want = builders.dequantize(raw, type_name, gen, (rows, row_blocks * elems))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # both compute in float32 step by step: bit-equal


@pytest.mark.parametrize(("gen", "type_name"), CASES, ids=IDS)
def test_dequantize_reads_a_file_tensor_like_the_reference(tmp_path, gen, type_name):
    fmt, version = ("ggjt", gen) if gen > 1 else ("ggmf", 1)
    x = np.random.default_rng(gen).standard_normal((2, 3, 64)).astype(np.float32)
    data = builders.quantize(x, type_name, gen)
    rec = ("t", builders.TYPE_CODES[type_name], (64, 3, 2), data)
    raw = builders.build_file(fmt, version, builders.llama_hparams(1, 64, 32, 2, 1, 1), [(b"a", 0.0)], [rec])
    (tmp_path / "m.bin").write_bytes(raw)
    model = load(tmp_path / "m.bin")
    got = dequantize(model.tensors["t"], model.info["t"], model.version.block_generation)
    assert got.shape == (2, 3, 64)
    np.testing.assert_array_equal(got, builders.dequantize(data, type_name, gen, (2, 3, 64)))
    if type_name not in ("F32", "F16"):  # quantization is lossy, but must stay near the input
        assert np.abs(got - x).max() < np.abs(x).max() / 3


@given(seed=st.integers(0, 2**32 - 1), case=st.sampled_from(CASES), n_blocks=st.integers(0, 9))
def test_dequantize_matches_the_reference_for_any_block_bytes(seed, case, n_blocks):
    gen, type_name = case
    raw = random_blocks(type_name, gen, n_blocks, seed)
    blocks = np.frombuffer(raw, BLOCK_LAYOUTS[gen][GGMLType[type_name]].dtype)
    got = dequantize_blocks(blocks, GGMLType[type_name], gen)
    elems = builders.BLOCKS[gen][type_name][0]
    np.testing.assert_array_equal(got, builders.dequantize(raw, type_name, gen, (n_blocks * elems,)))


def test_nibble_order_differs_between_v1_and_v2():
    qs = bytes([0x10 + k for k in range(16)])  # byte j: low nibble j, high nibble 1
    raw_v1 = np.float32(1).tobytes() + qs
    v1 = dequantize_blocks(np.frombuffer(raw_v1, BLOCK_LAYOUTS[1][GGMLType.Q4_0].dtype), GGMLType.Q4_0, 1)
    v2 = dequantize_blocks(np.frombuffer(raw_v1, BLOCK_LAYOUTS[2][GGMLType.Q4_0].dtype), GGMLType.Q4_0, 2)
    # docs/format.md §5.4: v1 byte j = elements 2j (low), 2j+1 (high); v2 byte j = elements j (low), j+16 (high)
    assert v1.tolist() == [v for j in range(16) for v in (j - 8, 1 - 8)]
    assert v2.tolist() == [j - 8 for j in range(16)] + [1 - 8] * 16


def test_q5_high_bit_k_belongs_to_element_k():
    raw = np.float16(1).tobytes() + (1 << 31 | 1).to_bytes(4, "little") + bytes(16)
    for gen in (1, 2, 3):
        x = dequantize_blocks(np.frombuffer(raw, BLOCK_LAYOUTS[gen][GGMLType.Q5_0].dtype), GGMLType.Q5_0, gen)
        assert x[0] == x[31] == 0 and set(x[1:31].tolist()) == {-16}


def test_wrong_block_dtype_is_refused():
    blocks = np.zeros(2, BLOCK_LAYOUTS[1][GGMLType.Q4_0].dtype)
    with pytest.raises(ValueError, match="Q4_0 v3 blocks have dtype"):
        dequantize_blocks(blocks, GGMLType.Q4_0, 3)


@pytest.mark.parametrize("ne", [(64, 0), (0, 3)])
def test_zero_size_quantized_tensor_dequantizes_to_an_empty_array(tmp_path, ne):
    rec = ("empty", builders.TYPE_CODES["Q4_1"], ne, b"")
    raw = builders.build_file("ggjt", 2, builders.llama_hparams(0, 64, 32, 2, 1, 3), [], [rec], validate=False)
    (tmp_path / "m.bin").write_bytes(raw)
    model = load(tmp_path / "m.bin")
    got = dequantize(model.tensors["empty"], model.info["empty"], 2)
    assert got.shape == tuple(reversed(ne)) and got.dtype == np.float32
