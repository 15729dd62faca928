"""bf16 casts against torch, q8_0 against gguf.quants (llama.cpp's reference quantizer), and what
convert-model does with them: byte copies, rounding, refusals naming the tensor.

Expectations come from torch's Tensor.to(torch.bfloat16) and gguf.quants.quantize; every comparison
has a control that must fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from convert import convert_checkpoint
from convert.cli import main
from ggmlfmt.errors import CannotWrite
from ggmlfmt.blocks.floats import NotFinite, f16_to_bf16, f32_bits_to_bf16
from ggmlfmt.blocks.quantize import Q8_0_LAYOUT, quantize_q8_0, quantize_rows_q8_0
from meta import build, load_shards

Q8_0 = gguf.GGMLQuantizationType.Q8_0
F16_MAX = float(np.finfo(np.float16).max)
BF16_MAX_BITS = 0x7F7F  # the largest finite bf16


def torch_bf16_bits(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(a)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def reference_q8_0(a: np.ndarray) -> bytes:
    with np.errstate(all="ignore"):  # subnormal scales: 1/d overflows, as in the C reference
        return gguf.quants.quantize(np.asarray(a, np.float32), Q8_0).tobytes()


# ------------------------------------------------------------------ bf16 rounding, bit for bit with torch


def test_every_f16_pattern_rounds_to_bf16_as_torch() -> None:
    f16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    ours = f16_to_bf16(f16, np.empty(f16.shape, np.uint16))
    want = torch_bf16_bits(f16)
    np.testing.assert_array_equal(ours, want)
    assert np.count_nonzero(np.isnan(f16)) == 2046  # NaNs included (to 0x7fc0, as torch)
    changed = ours.copy()
    changed[12345] ^= 1
    assert not np.array_equal(changed, want)  # control


def test_random_f32_patterns_round_to_bf16_as_torch() -> None:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    bits[:8] = [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFFFFFFF, 0x00000001, 0x807FFFFF, 0x3F808000, 0x3F818000]
    bits[8:16] = 0x7F7F7FFF  # just below the value that rounds to infinity
    bits[16:24] = 0x00008000 + np.arange(8, dtype=np.uint32) * 0x10000  # subnormal ties
    a = bits.view(np.float32)
    big = np.isfinite(a) & (np.abs(a) >= np.float32(np.uint32(0x7F7F8000).view(np.float32)))
    a = np.where(big, np.float32(1.5), a).astype(np.float32)  # those overflow: tested below
    ours = f32_bits_to_bf16(a, np.empty(a.shape, np.uint16))
    want = torch_bf16_bits(a)
    np.testing.assert_array_equal(ours, want)
    assert np.isnan(a).sum() > 1000 and (np.abs(a) < np.finfo(np.float32).tiny).sum() > 1000
    with np.errstate(invalid="ignore"):
        assert not np.array_equal(ours, torch_bf16_bits(a * np.float32(1.0000001)))  # control


def test_f32_beyond_bf16_is_an_overflow_not_infinity() -> None:
    a = np.array([1.0, 0, 0], np.float32)
    a.view(np.uint32)[1:] = [0x7F7F7FFF, 0xFF7F8000]  # just below the rounding point; on it (a tie, to even: inf)
    assert torch_bf16_bits(a[2:])[0] == 0xFF80  # torch rounds it to -inf: what we refuse
    with pytest.raises(FloatingPointError):
        f32_bits_to_bf16(a, np.empty(3, np.uint16))
    ok = f32_bits_to_bf16(a[:2], np.empty(2, np.uint16))
    assert ok[1] == BF16_MAX_BITS  # the largest finite value still rounds down


# ------------------------------------------------------------------ q8_0, byte for byte with gguf.quants


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    normal = (0.05 * rng.standard_normal((64, 256))).astype(np.float32)
    ties = np.tile(np.arange(-127, 128, 0.5, dtype=np.float32)[:-1], 2)[: 16 * 32].reshape(16, 32)
    ties[:, 0] = 127  # amax 127: scale 1, so x * id lands exactly on every .5
    near_half = np.full((2, 32), np.nextafter(np.float32(0.5), np.float32(0)), np.float32)
    near_half[:, 0] = 127
    subnormal = (rng.standard_normal((8, 64)) * 1e-40).astype(np.float32)
    tiny = (rng.standard_normal((8, 64)) * 1e-7).astype(np.float32)  # scales below f16's normal range
    huge = (rng.standard_normal((8, 64)) * 2e6).astype(np.float32)
    huge[0, 0] = 65504 * 127  # the largest |x| whose scale f16 holds
    f16_max = np.full((2, 64), F16_MAX, np.float32) * np.sign(rng.standard_normal((2, 64))).astype(np.float32)
    mixed = normal.copy()
    mixed[::3] = 0  # whole zero rows
    mixed[1, :32] = 0
    return {"normal": normal, "ties": ties, "near_half": near_half, "subnormal": subnormal, "tiny": tiny,
            "huge": huge, "f16_max": f16_max, "zeros": mixed, "row32": normal[:5, :32].copy()}


@pytest.mark.parametrize("case", list(_cases()))
def test_q8_0_equals_the_reference(case: str) -> None:
    a = _cases()[case]
    ours = quantize_rows_q8_0(a)
    assert ours.dtype == Q8_0_LAYOUT.dtype and ours.shape == (a.shape[0], a.shape[1] // 32)
    want = reference_q8_0(a)
    assert ours.tobytes() == want
    if case != "huge":  # f16 input (huge would overflow f16): the reference on the widened values
        assert quantize_rows_q8_0(a.astype(np.float16)).tobytes() == reference_q8_0(a.astype(np.float16))
    mutated = bytearray(ours.tobytes())
    mutated[2] ^= 1
    assert bytes(mutated) != want  # control


def test_q8_0_from_f16_and_bf16_bits() -> None:
    rng = np.random.default_rng(5)
    f16 = (rng.standard_normal((32, 128)) * 3).astype(np.float16)
    f16[0, :2] = [F16_MAX, -F16_MAX]
    assert quantize_rows_q8_0(f16).tobytes() == reference_q8_0(f16)
    bf16 = torch.from_numpy((rng.standard_normal((32, 128)) * 50).astype(np.float32)).to(torch.bfloat16)
    bits = bf16.view(torch.int16).numpy().view(np.uint16)
    assert quantize_rows_q8_0(bits).tobytes() == reference_q8_0(bf16.float().numpy())
    assert quantize_rows_q8_0(bits).tobytes() != reference_q8_0(bits.astype(np.float32))  # control: bits, not values


def test_q8_0_threads_and_steps_change_nothing() -> None:
    rng = np.random.default_rng(9)
    a = (rng.standard_normal((1031, 96)) * 0.02).astype(np.float32)  # odd rows: uneven thread ranges
    whole = quantize_rows_q8_0(a)
    assert whole.tobytes() == reference_q8_0(a)
    by_rows = np.concatenate([quantize_rows_q8_0(a[r : r + 3]) for r in range(0, len(a), 3)])
    assert by_rows.tobytes() == whole.tobytes()


@pytest.mark.parametrize("value", [np.finfo(np.float32).max, -np.finfo(np.float32).max, 65504 * 128.0,
                                   np.uint16(BF16_MAX_BITS).astype(np.uint32) << 16])
def test_q8_0_scale_beyond_f16_is_an_overflow(value) -> None:
    a = np.zeros((2, 32), np.float32)
    if isinstance(value, np.ndarray) or isinstance(value, np.integer):
        a[1, 5] = np.uint32(value).view(np.float32)  # bf16's largest value
    else:
        a[1, 5] = value
    with np.errstate(over="ignore"):
        d = np.frombuffer(gguf.quants.quantize(a, Q8_0)[1, :2].tobytes(), np.float16)[0]
    assert np.isinf(d)  # the reference would store an infinite scale: we refuse instead
    with pytest.raises(FloatingPointError):
        quantize_rows_q8_0(a)


def test_q8_0_non_finite_is_named_by_its_first_index() -> None:
    a = np.ones((6, 64), np.float32)
    a[4, 33] = np.inf
    a[3, 7] = np.nan
    with pytest.raises(NotFinite) as e:
        quantize_q8_0(a, np.empty((6, 2), Q8_0_LAYOUT.dtype))
    assert e.value.index == 3 * 64 + 7
    with pytest.raises(ValueError):
        quantize_rows_q8_0(np.ones((2, 48), np.float32))  # rows must be whole blocks


# ------------------------------------------------------------------ convert-model


def test_bf16_checkpoint_to_bf16_is_a_byte_copy(tmp_path: Path) -> None:
    ck = build(tmp_path, 2, dtype="bfloat16")
    cp = convert_checkpoint(ck.model_dir)  # auto: bf16 stays bf16
    assert cp.outfile.name == "ggml-model-bf16.gguf"
    reader = gguf.GGUFReader(cp.outfile)
    shards = load_shards(ck.paths)
    wq = reader.get_tensor(3)
    assert wq.name == "blk.0.attn_q.weight" and wq.tensor_type == gguf.GGMLQuantizationType.BF16
    want = torch.cat([s["layers.0.attention.wq.weight"] for s in shards]).view(torch.int16).numpy().tobytes()
    assert np.asarray(wq.data).tobytes() == want
    assert np.asarray(reader.get_tensor(4).data).tobytes() != want  # control: another tensor


def test_q8_0_refuses_nan_naming_tensor_and_index(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 2, dtype="float32")
    state = load_shards(ck.paths)[1]
    state["layers.1.feed_forward.w2.weight"][5, 7] = float("nan")  # shard 1 holds columns 96.. of w2
    torch.save(state, ck.paths[1])
    assert main([str(ck.model_dir), "--outtype", "q8_0"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "blk.1.ffn_down.weight" in err and "row 5, column 103" in err, err
    assert f"element {5 * 192 + 103:,}" in err and "nan" in err
    assert not list(ck.model_dir.glob("*.gguf")) and not list(ck.model_dir.glob(".*"))
    assert main([str(ck.model_dir), "--outtype", "f32", "--quiet"]) == 0  # control: f32 carries NaN unchanged


def test_q8_0_refuses_rows_that_are_not_whole_blocks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1, dim=48, n_heads=4)
    assert main([str(ck.model_dir), "--outtype", "q8_0"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "tok_embeddings.weight" in err and "48" in err and "32" in err, err
    assert not list(ck.model_dir.glob("*.gguf"))
    assert main([str(ck.model_dir), "--outtype", "bf16", "--quiet"]) == 0  # control: any row length is fine


def test_bf16_overflow_names_the_tensor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1, dtype="float32")
    state = load_shards(ck.paths)[0]
    state["output.weight"][3, 3] = 3.4e38
    torch.save(state, ck.paths[0])
    assert main([str(ck.model_dir), "--outtype", "bf16"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "output.weight" in err and "BF16" in err and "infinity" in err, err
    assert main([str(ck.model_dir), "--quiet"]) == 0  # control: auto keeps f32


@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_ggjt_refuses_gguf_only_outtypes(tmp_path: Path, outtype: str, capsys: pytest.CaptureFixture) -> None:
    ck = build(tmp_path, 1)
    assert main([str(ck.model_dir), "--format", "ggjt", "--outtype", outtype]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("convert-model: error: ") and "--format gguf" in err, err
    assert not list(ck.model_dir.glob("*.bin"))
    with pytest.raises(CannotWrite, match="--format gguf"):
        convert_checkpoint(ck.model_dir, tmp_path / "x.bin", outtype=outtype)
    assert main([str(ck.model_dir), "--format", "ggjt", "--quiet"]) == 0  # auto: f16, the 2023 default
    assert (ck.model_dir / "ggml-model-f16.bin").read_bytes()[:4] == b"tjgg"
    assert json.loads((ck.model_dir / "params.json").read_text())["dim"] == 64
