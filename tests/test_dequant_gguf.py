"""GGUF's block types (K-quants, IQ4, TQ, MXFP4) dequantized against the gguf package, bit pattern for bit pattern.

The judge is `gguf.quants.dequantize` (numpy, the loader transformers uses), on blocks made by
`gguf.quants.quantize` where it can make them and on random block bytes: any bit pattern, so NaN and
infinite f16 scales are included, and values are compared as uint32 bit patterns, not as floats.
"""

from __future__ import annotations

import struct
import warnings

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ggmlfmt.blocks.dequant
from ggmlfmt import GGMLType
from ggmlfmt.constants import BLOCK_LAYOUTS, GGUF_BLOCK_GENERATION, GGUF_TYPE_SIZES
from ggmlfmt.blocks.dequant import dequantize_blocks
from ggmlfmt.errors import BadValue

Q = gguf.GGMLQuantizationType
GEN = GGUF_BLOCK_GENERATION
# every type with a dequantizer here that gguf-py can also dequantize (Q8_K: it cannot, see below)
JUDGED = [t for t in ggmlfmt.blocks.dequant.KERNELS if t in BLOCK_LAYOUTS[GEN] and t != GGMLType.Q8_K]
QUANTIZABLE = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.TQ1_0,
               GGMLType.TQ2_0, GGMLType.MXFP4]  # the ones gguf.quants can quantize
LEFT_OUT = [GGMLType.Q1_0, GGMLType.Q8_1]  # docs/format.md §17.6


def theirs(raw: np.ndarray, t: GGMLType) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # gguf-py warns on NaN scales; we compare the bits
        return gguf.quants.dequantize(raw, Q[t.name])


def ours(raw: np.ndarray, t: GGMLType) -> np.ndarray:
    return dequantize_blocks(raw.view(BLOCK_LAYOUTS[GEN][t].dtype), t, GEN)


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint32)


def random_rows(t: GGMLType, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """(rows, bytes) of uniformly random block bytes: every scale bit pattern, NaN and inf included."""
    nbytes = GGUF_TYPE_SIZES[t][1]
    return np.frombuffer(np.random.default_rng(seed).bytes(rows * blocks_per_row * nbytes), np.uint8).reshape(rows, -1)


# f16 scale bit patterns that random bytes hit rarely: signalling and quiet NaNs of both signs and
# payloads, infinities, a subnormal, negative zero; block 0 on gets them in turn, the min (dmin, m) another
SPECIAL_F16 = [0x7C01, 0xFE00, 0x7E55, 0xFC00, 0x7C00, 0x0001, 0x8000]


def with_special_scales(raw: np.ndarray, t: GGMLType) -> np.ndarray:
    raw = raw.copy()
    blocks = raw.view(BLOCK_LAYOUTS[GEN][t].dtype).reshape(-1)
    if t == GGMLType.IQ1_M:  # its f16 scale is the top nibbles of the four u16 scales, lowest first
        for i, special in enumerate(SPECIAL_F16[: len(blocks)]):
            for j in range(4):
                blocks["scales"][i, j] = blocks["scales"][i, j] & 0x0FFF | (special >> 4 * j & 0xF) << 12
    for i, field in enumerate(f for f in ("d", "dmin", "m") if f in blocks.dtype.names and blocks.dtype[f] == np.float16):
        n = min(len(blocks), len(SPECIAL_F16))
        blocks[field][:n] = np.array(np.roll(SPECIAL_F16, i)[:n], np.uint16).view(np.float16)
    return raw


def test_gguf_py_lists_the_types_we_leave_out_and_cannot_judge_q8_k():
    """The coverage claims of docs/format.md §17.6 are about today's gguf-py, checked here."""
    raw = random_rows(GGMLType.Q8_K, 1, 1, 0)
    with pytest.raises(NotImplementedError):
        gguf.quants.dequantize(raw, Q.Q8_K)
    for t in LEFT_OUT:
        assert t not in ggmlfmt.blocks.dequant.KERNELS
        with pytest.raises(ValueError, match=f"no numpy dequantizer for {t.name}"):
            ours(random_rows(t, 1, 2, 0), t)


def test_every_field_layout_has_gguf_py_s_block_size():
    for t in JUDGED + [GGMLType.Q8_K]:
        layout = BLOCK_LAYOUTS[GEN][t]
        assert (layout.elements, layout.nbytes) == tuple(gguf.GGML_QUANT_SIZES[Q[t.name]]), t.name
        assert layout.dtype.names is not None, t.name


@pytest.mark.parametrize("t", JUDGED, ids=lambda t: t.name)
def test_random_block_bytes_match_gguf_py_bit_for_bit(t):
    raw = with_special_scales(random_rows(t, 3, 7, seed=int(t)), t)
    want, got = theirs(raw, t), ours(raw, t)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(bits(got), bits(want))
    if t not in (GGMLType.MXFP4, GGMLType.NVFP4):  # E8M0 and UE4M3 scales are never NaN; every f16 scale can be
        assert np.isnan(want).any() and np.isinf(want).any()  # the case does hold them


@pytest.mark.parametrize("t", QUANTIZABLE, ids=lambda t: t.name)
def test_blocks_quantized_by_gguf_py_match_its_dequantizer(t):
    x = np.random.default_rng(int(t)).standard_normal((5, 512)).astype(np.float32) * 3
    raw = gguf.quants.quantize(x, Q[t.name])
    want, got = theirs(raw, t), ours(raw, t)
    np.testing.assert_array_equal(bits(got), bits(want))
    assert np.abs(got - x).max() < np.abs(x).max()  # and they are x's values, roughly (all are lossy)


@pytest.mark.parametrize("t", JUDGED, ids=lambda t: t.name)
def test_chunk_boundaries_do_not_show(t, monkeypatch):
    """Whole tensors are converted a chunk at a time; a tensor of several chunks and a ragged last one."""
    elements = BLOCK_LAYOUTS[GEN][t].elements
    monkeypatch.setattr(ggmlfmt.blocks.dequant, "CHUNK_ELEMENTS", 3 * elements)  # 3 blocks per chunk
    raw = random_rows(t, 2, 5, seed=100 + int(t))  # 10 blocks: chunks of 3, 3, 3, 1
    np.testing.assert_array_equal(bits(ours(raw, t)), bits(theirs(raw, t)))


@settings(max_examples=60, deadline=None)
@given(t=st.sampled_from(JUDGED), n_blocks=st.integers(0, 6), seed=st.integers(0, 2**32 - 1))
def test_any_block_bytes_match_gguf_py(t, n_blocks, seed):
    raw = random_rows(t, 1, n_blocks, seed)
    got = ours(raw, t)
    assert got.shape == (1, n_blocks * BLOCK_LAYOUTS[GEN][t].elements)
    if n_blocks:  # gguf-py cannot take an empty row
        np.testing.assert_array_equal(bits(got), bits(theirs(raw, t)))


@pytest.mark.parametrize("t", JUDGED, ids=lambda t: t.name)
def test_control_a_flipped_byte_changes_the_values(t):
    """Control: every byte of a block matters (or the comparisons above could pass on ignored bytes)."""
    raw = gguf.quants.quantize(np.linspace(-1, 1, 256, dtype=np.float32), Q[t.name]) if t in QUANTIZABLE else None
    if raw is None:  # finite, non-zero scales so that no flip is hidden by a NaN or zero scale
        raw = random_rows(t, 1, 256 // BLOCK_LAYOUTS[GEN][t].elements, seed=7).copy()
        blocks = raw.view(BLOCK_LAYOUTS[GEN][t].dtype)
        for f in ("d", "dmin"):
            if f in blocks.dtype.names:
                blocks[f] = 0.5
    base = ours(raw, t)
    nbytes = GGUF_TYPE_SIZES[t][1]
    for i in range(nbytes):  # each byte of the first block
        flipped = raw.copy()
        flipped.reshape(-1)[i] ^= 0xFF
        changed = bits(ours(flipped, t)) != bits(base)
        assert changed.any(), f"{t.name}: byte {i} changed nothing"
        assert not changed.reshape(-1)[BLOCK_LAYOUTS[GEN][t].elements:].any()  # only its own block


def test_control_a_wrong_layout_is_caught():
    """Control: IQ4_NL and Q4_0 blocks have the same size and fields; reading one as the other must not pass."""
    raw = random_rows(GGMLType.IQ4_NL, 2, 4, seed=3)
    assert not np.array_equal(bits(ours(raw, GGMLType.Q4_0)), bits(theirs(raw, GGMLType.IQ4_NL)))
    with pytest.raises(ValueError, match="Q5_K v4 blocks have dtype"):
        dequantize_blocks(raw.view(BLOCK_LAYOUTS[GEN][GGMLType.Q4_0].dtype), GGMLType.Q5_K, GEN)


@pytest.mark.parametrize(("code", "generation", "words"), [
    (99, GEN, "unknown tensor type code 99"), (int(GGMLType.Q4_0), 7, "generation 7 does not exist"),
    (int(GGMLType.Q4_2), GEN, r"code 4 \(Q4_2, a 2023 type GGUF does not have\)"),
    (int(GGMLType.Q6_K), 3, "Q6_K does not exist in block layout generation 3")])
def test_a_type_or_generation_that_does_not_exist_is_bad_value(code, generation, words):
    """A type code or generation from nowhere is a BadValue naming it (the code 99 was a bare ValueError of the enum
    before); the control: the same blocks as Q4_0 in GGUF dequantize."""
    blocks = np.zeros(2, BLOCK_LAYOUTS[GEN][GGMLType.Q4_0].dtype)
    with pytest.raises(BadValue, match=words):
        dequantize_blocks(blocks, code, generation)
    assert dequantize_blocks(blocks, int(GGMLType.Q4_0), GEN).shape == (64,)


def test_q8_k_against_its_stated_layout():
    """gguf-py has no Q8_K; the judge is docs/format.md §17.1 read with struct: f32 d, 256 i8, 16 i16 sums."""
    raw = random_rows(GGMLType.Q8_K, 1, 3, seed=8)
    got = ours(raw, GGMLType.Q8_K).reshape(-1)
    want = []
    for b in range(3):
        block = raw.tobytes()[b * 292 : (b + 1) * 292]
        d = np.float32(struct.unpack_from("<f", block)[0])
        with np.errstate(all="ignore"):
            want += [d * np.float32(q) for q in struct.unpack_from("<256b", block, 4)]
    np.testing.assert_array_equal(bits(got), bits(np.array(want, np.float32)))


GRIDS = {"IQ2XXS_GRID": "IQ2_XXS", "IQ2XS_GRID": "IQ2_XS", "IQ2S_GRID": "IQ2_S", "IQ3XXS_GRID": "IQ3_XXS",
         "IQ3S_GRID": "IQ3_S", "IQ1S_GRID": "IQ1_S"}


@pytest.mark.parametrize("name", GRIDS)
def test_every_grid_entry_is_gguf_py_s(name):
    """ggmlfmt/blocks/iqgrids.py (generated from llama.cpp's ggml-common.h) against the gguf package's own copy."""
    cls = getattr(gguf.quants, GRIDS[name])
    cls.init_grid()
    theirs = cls.grid.reshape(cls.grid_shape)  # float32 (entries, values per entry)
    ours = ggmlfmt.blocks.dequant._grid(name).view(np.int8).reshape(theirs.shape)
    np.testing.assert_array_equal(ours.astype(np.float32), theirs)
    assert len(np.unique(ours.view(f"V{ours.shape[1]}"))) == len(ours)  # no entry twice: a shifted parse would show


def test_sign_parity_rule_gives_gguf_py_s_sign_table():
    ksigns = np.frombuffer(gguf.quants.IQ2_XXS.ksigns, np.uint8)
    masks = ggmlfmt.blocks.dequant._sign_masks().view(np.uint8).reshape(128, 8)
    np.testing.assert_array_equal(np.packbits(masks == 0xFF, axis=1, bitorder="little").reshape(-1), ksigns)
